"""Lesson 05: wrong and right answers for round_ste, fake_quant_linear and lsq_grad_scale."""
import math

import numpy as np
import torch
import torch.nn.functional as F

from qedu import checks
from qedu.checks.qat import FAKE_QUANT_LINEAR, LSQ_GRAD_SCALE, ROUND_STE
from tests.wrong_answers import AnswerSet

RS = AnswerSet("round_ste", checks.check_round_ste, ROUND_STE, "05")
FQ = AnswerSet("fake_quant_linear", checks.check_fake_quant_linear, FAKE_QUANT_LINEAR, "05")
LG = AnswerSet("lsq_grad_scale", checks.check_lsq_grad_scale, LSQ_GRAD_SCALE, "05")


# --- round_ste ------------------------------------------------------------------------------------

@RS.wrong("plain torch.round: its gradient is zero everywhere")
def rs_plain(v):
    return torch.round(v)


@RS.wrong("plain torch.round: its gradient is zero everywhere")
def rs_no_detach(v):  # the trick without .detach() cancels itself
    return v + (torch.round(v) - v)


@RS.wrong("detached the result")
def rs_detached(v):
    return torch.round(v).detach()


@RS.wrong("rounded half away from zero")
def rs_half_away(v):
    r = torch.sign(v) * torch.floor(v.abs() + 0.5)
    return v + (r - v).detach()


@RS.wrong("floor instead of round")
def rs_floor(v):
    return v + (torch.floor(v) - v).detach()


@RS.wrong("the gradient of v is 2 x the expected")
def rs_double_grad(v):
    return 2 * v + (torch.round(v) - 2 * v).detach()


@RS.wrong("the value is wrong only where v is an exact tie")
def rs_half_up(v):  # floor(v + 0.5): ties go up
    return v + (torch.floor(v + 0.5) - v).detach()


@RS.wrong("no gradient reaches v")
def rs_new_tensor(v):
    return torch.tensor(torch.round(v).tolist())


@RS.right
def rs_minus_trick(v):
    return v - (v - torch.round(v)).detach()


@RS.right
def rs_no_grad_data(v):
    out = v.clone()
    out.data = torch.round(v.data)
    return out


# --- fake_quant_linear ----------------------------------------------------------------------------

def _ste(v):
    return v + (torch.round(v) - v).detach()


def _rng(bits):
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


@FQ.wrong("detached the scale: it gets no gradient")
def fq_detach_scale(x, weight, bias, scale, bits):
    qmin, qmax = _rng(bits)
    s = scale.detach()
    return x @ (_ste(torch.clamp(weight * (1 / s), qmin, qmax)) * s).T + bias


@FQ.wrong("plain torch.round: no gradient reaches the weights")
def fq_plain_round(x, weight, bias, scale, bits):
    qmin, qmax = _rng(bits)
    return x @ (torch.round(torch.clamp(weight * (1 / scale), qmin, qmax)) * scale).T + bias


@FQ.wrong("forgot to clip to [qmin, qmax]")
def fq_no_clip(x, weight, bias, scale, bits):
    return x @ (_ste(weight * (1 / scale)) * scale).T + bias


@FQ.wrong("rounded, then clipped")
def fq_round_then_clip(x, weight, bias, scale, bits):
    qmin, qmax = _rng(bits)
    return x @ (torch.clamp(_ste(weight * (1 / scale)), qmin, qmax) * scale).T + bias


@FQ.wrong("forgot to multiply the codes by scale")
def fq_codes(x, weight, bias, scale, bits):
    qmin, qmax = _rng(bits)
    return x @ _ste(torch.clamp(weight * (1 / scale), qmin, qmax)).T + bias


@FQ.wrong("qmax = 2**(bits-1): one code too many")
def fq_qmax(x, weight, bias, scale, bits):
    return x @ (_ste(torch.clamp(weight * (1 / scale), -(2 ** (bits - 1)), 2 ** (bits - 1))) * scale).T + bias


@FQ.wrong("divided by scale instead of multiplying by 1/scale")
def fq_divide(x, weight, bias, scale, bits):
    qmin, qmax = _rng(bits)
    return F.linear(x, _ste(torch.clamp(weight / scale, qmin, qmax)) * scale, bias)


@FQ.wrong("no gradient reaches weight")
def fq_item_scale_and_no_grad(x, weight, bias, scale, bits):  # builds w_hat under no_grad
    qmin, qmax = _rng(bits)
    with torch.no_grad():
        w_hat = torch.clamp(torch.round(weight * (1 / scale)), qmin, qmax) * scale
    return x @ w_hat.T + bias


@FQ.wrong("add the bias")
def fq_no_bias(x, weight, bias, scale, bits):
    qmin, qmax = _rng(bits)
    return x @ (_ste(torch.clamp(weight * (1 / scale), qmin, qmax)) * scale).T


@FQ.right
def fq_f_linear(x, weight, bias, scale, bits):
    qmin, qmax = _rng(bits)
    return F.linear(x, _ste(torch.clamp(weight * (1 / scale), qmin, qmax)) * scale, bias)


# --- lsq_grad_scale -------------------------------------------------------------------------------

@LG.wrong("g = 1/sqrt(N) without Qp")
def lg_no_qp(n, bits, signed):
    return 1 / math.sqrt(n)


@LG.wrong("counted levels instead of the largest code")
def lg_levels(n, bits, signed):
    return 1 / math.sqrt(n * (2 ** (bits - 1) if signed else 2**bits))


@LG.wrong("used the unsigned Qp (2**bits - 1) for signed codes")
def lg_unsigned(n, bits, signed):
    return 1 / math.sqrt(n * (2**bits - 1))


@LG.wrong("forgot the square root")
def lg_no_sqrt(n, bits, signed):
    qp = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return 1 / (n * qp)


@LG.wrong("g = sqrt(N * Qp), upside down")
def lg_upside_down(n, bits, signed):
    qp = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return math.sqrt(n * qp)


@LG.wrong("right for signed=True, wrong for signed=False")
def lg_signed_qp_always(n, bits, signed):
    return 1 / math.sqrt(n * (2 ** (bits - 1) - 1))


@LG.wrong("yours is")
def lg_bits_for_n(n, bits, signed):  # mixes up the arguments: bits where n belongs
    qp = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return 1 / math.sqrt(bits * qp)


@LG.right
def lg_numpy(n, bits, signed):
    qp = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    return np.float64(n * qp) ** -0.5


@LG.right
def lg_torch_rsqrt(n, bits, signed):
    qp = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return torch.rsqrt(torch.tensor(float(n * qp), dtype=torch.float64))


@FQ.right
def fq_clamp_real_units(x, weight, bias, scale, bits):
    qmin, qmax = _rng(bits)
    w = torch.clamp(weight, qmin * scale, qmax * scale)  # clip the weights, then find their codes
    return x @ (_ste(w * (1 / scale)) * scale).T + bias


@LG.right
def lg_float32(n, bits, signed):
    qp = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return torch.tensor(float(n * qp), dtype=torch.float32).rsqrt()
