"""Lesson 04: wrong and right answers for fold_bn and sensitivity."""
import numpy as np
import torch

from qedu import checks
from qedu.checks import ptq as ptq_checks
from qedu.checks.ptq import FOLD_BN
from qedu.models import evaluate
from qedu.ptq import PTQConfig, quantizable_layers, quantize_model
from tests.wrong_answers import AnswerSet

FB = AnswerSet("fold_bn", checks.check_fold_bn, FOLD_BN, "04")
SE = AnswerSet("sensitivity", checks.check_sensitivity, lambda: ptq_checks._SENSITIVITY[0], "04")


def _s(var, gamma, eps):
    return gamma / torch.sqrt(var + eps)


def _axis0(s, w):
    return s.reshape(-1, *[1] * (w.ndim - 1))


# --- fold_bn --------------------------------------------------------------------------------------

@FB.wrong("forgot eps")
def fb_no_eps(w, b, mean, var, gamma, beta, eps):
    s = gamma / torch.sqrt(var)
    b = torch.zeros_like(mean) if b is None else b
    return w * _axis0(s, w), beta + (b - mean) * s


@FB.wrong("forgot the layer's own bias")
def fb_no_bias(w, b, mean, var, gamma, beta, eps):
    s = _s(var, gamma, eps)
    return w * _axis0(s, w), beta - mean * s


@FB.wrong("did not scale the bias by s")
def fb_bias_unscaled(w, b, mean, var, gamma, beta, eps):
    s = _s(var, gamma, eps)
    b = torch.zeros_like(mean) if b is None else b
    return w * _axis0(s, w), beta + b - mean * s


@FB.wrong("divided by the variance")
def fb_var(w, b, mean, var, gamma, beta, eps):
    s = gamma / (var + eps)
    b = torch.zeros_like(mean) if b is None else b
    return w * _axis0(s, w), beta + (b - mean) * s


@FB.wrong("did not scale the weight")
def fb_w_unscaled(w, b, mean, var, gamma, beta, eps):
    s = _s(var, gamma, eps)
    b = torch.zeros_like(mean) if b is None else b
    return w.clone(), beta + (b - mean) * s


@FB.wrong("scaled the input axis of the weight")
def fb_axis1(w, b, mean, var, gamma, beta, eps):
    s = _s(var, gamma, eps)
    b = torch.zeros_like(mean) if b is None else b
    shape = [1] * w.ndim
    shape[1] = -1
    return w * s.reshape(shape), beta + (b - mean) * s


@FB.wrong("fails only on inputs like this one")
def fb_bias_none_crash(w, b, mean, var, gamma, beta, eps):
    s = _s(var, gamma, eps)
    return w * _axis0(s, w), beta + (b - mean) * s


@FB.wrong("changed its input `w`")
def fb_in_place(w, b, mean, var, gamma, beta, eps):
    s = _s(var, gamma, eps)
    b = torch.zeros_like(mean) if b is None else b
    w.mul_(_axis0(s, w))
    return w, beta + (b - mean) * s


@FB.wrong("w_fold right, b_fold wrong")
def fb_beta_subtracted(w, b, mean, var, gamma, beta, eps):  # beta - (b - mean) * s
    s = _s(var, gamma, eps)
    b = torch.zeros_like(mean) if b is None else b
    return w * _axis0(s, w), beta - (b - mean) * s


@FB.right
def fb_loop_channels(w, b, mean, var, gamma, beta, eps):
    w_fold, b_fold = torch.empty_like(w), torch.empty_like(mean)
    for c in range(w.shape[0]):
        s = gamma[c] / torch.sqrt(var[c] + eps)
        w_fold[c] = w[c] * s
        b_fold[c] = beta[c] + ((b[c] if b is not None else 0.0) - mean[c]) * s
    return w_fold, b_fold


@FB.right
def fb_einsum_rsqrt(w, b, mean, var, gamma, beta, eps):
    s = gamma * torch.rsqrt(var + eps)
    w_fold = torch.einsum("o...,o->o...", w, s)
    return w_fold, beta - mean * s + (0 if b is None else b * s)


# --- sensitivity (slow-ish: each run quantizes the trained MLP) -------------------------------------

def _drops(model, data, bits, x, y, keep):
    layers = quantizable_layers(model)
    base = evaluate(model, x, y)
    out = {}
    for name in layers:
        q = quantize_model(model, PTQConfig(weight_bits=bits, act_bits=None, keep_float=keep(layers, name)))
        out[name] = base - evaluate(q, x, y)
    return out


@SE.wrong("measured on the test set")
def se_test_set(model, data, bits):
    return _drops(model, data, bits, data.x_test, data.y_test, lambda ls, n: [m for m in ls if m != n])


@SE.wrong("quantized all layers at once")
def se_all_layers(model, data, bits):
    return _drops(model, data, bits, data.x_calib, data.y_calib, lambda ls, n: [])


@SE.wrong("returned the quantized accuracy, not the drop")
def se_accuracy(model, data, bits):
    layers = quantizable_layers(model)
    return {n: evaluate(quantize_model(model, PTQConfig(weight_bits=bits, act_bits=None,
                                                        keep_float=[m for m in layers if m != n])), data.x_calib, data.y_calib)
            for n in layers}


@SE.wrong("changed its input `model`")
def se_mutates(model, data, bits):
    drops = _drops(model, data, bits, data.x_calib, data.y_calib, lambda ls, n: [m for m in ls if m != n])
    model.train()
    return drops


@SE.wrong("result has keys")
def se_missing_layer(model, data, bits):
    drops = _drops(model, data, bits, data.x_calib, data.y_calib, lambda ls, n: [m for m in ls if m != n])
    drops.pop(sorted(drops)[-1])
    return drops


@SE.wrong("quantized every layer except this one")
def se_others(model, data, bits):
    return _drops(model, data, bits, data.x_calib, data.y_calib, lambda ls, n: [n])


@SE.right
def se_numpy_floats(model, data, bits):
    layers = quantizable_layers(model)
    base = evaluate(model, data.x_calib, data.y_calib)
    return {n: np.float64(base - evaluate(quantize_model(model, PTQConfig(weight_bits=bits, act_bits=None,
                                                                         keep_float=[m for m in layers if m != n])),
                                          data.x_calib, data.y_calib)) for n in layers}
