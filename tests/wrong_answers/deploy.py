"""Lesson 11: wrong and right answers for quantize_multiplier, integer_linear and psi."""
import math

import numpy as np
import torch

from qedu import checks
from qedu.checks.deploy import INTEGER_LINEAR, PSI, QUANTIZE_MULTIPLIER
from tests.wrong_answers import AnswerSet

QM = AnswerSet("quantize_multiplier", checks.check_quantize_multiplier, QUANTIZE_MULTIPLIER, "11")
IL = AnswerSet("integer_linear", checks.check_integer_linear, INTEGER_LINEAR, "11")
PS = AnswerSet("psi", checks.check_psi, PSI, "11")


# --- quantize_multiplier ----------------------------------------------------------------------------

@QM.wrong("a fraction that rounds up to 2^31 was kept")
def qm_no_halving(real):
    frac, shift = math.frexp(real)
    return math.floor(frac * 2**31 + 0.5), shift


@QM.wrong("truncated frac * 2^31 instead of rounding it")
def qm_int(real):
    frac, shift = math.frexp(real)
    q = int(frac * 2**31)
    if q == 2**31:
        q, shift = q // 2, shift + 1
    return q, shift


@QM.wrong("Python's round() rounds ties to even")
def qm_round(real):
    frac, shift = math.frexp(real)
    q = round(frac * 2**31)
    if q == 2**31:
        q, shift = q // 2, shift + 1
    return q, shift


@QM.wrong("scaled the fraction by 2^30 instead of 2^31")
def qm_q30(real):
    frac, shift = math.frexp(real)
    q = math.floor(frac * 2**30 + 0.5)
    if q == 2**30:
        q, shift = q // 2, shift + 1
    return q, shift


@QM.wrong("outside [2^30, 2^31)")
def qm_log2(real):
    shift = math.floor(math.log2(real))  # frac in [1, 2): M0 does not fit
    q = math.floor(real / 2.0**shift * 2**31 + 0.5)
    return q, shift


@QM.wrong("return an int")
def qm_float(real):
    frac, shift = math.frexp(real)
    q = math.floor(frac * 2**31 + 0.5)
    if q == 2**31:
        q, shift = q // 2, shift + 1
    return float(q), shift


@QM.wrong("0.25: shift -1")
def qm_shift_sign(real):
    frac, shift = math.frexp(real)
    q = math.floor(frac * 2**31 + 0.5)
    if q == 2**31:
        q, shift = q // 2, shift + 1
    return q, abs(shift)


@QM.right
def qm_numpy(real):
    frac, shift = np.frexp(real)
    q = int(np.floor(float(frac) * 2.0**31 + 0.5))
    if q == 2**31:
        q, shift = q // 2, shift + 1
    return q, int(shift)


@QM.right
def qm_loop(real):
    shift = 0
    while real >= 1:
        real, shift = real / 2, shift + 1
    while real < 0.5:
        real, shift = real * 2, shift - 1
    q = int(math.floor(real * 2**31 + 0.5))
    return (q // 2, shift + 1) if q == 2**31 else (q, shift)


# --- integer_linear ---------------------------------------------------------------------------------

@IL.wrong("forgot the input zero point z_x")
def il_no_zx(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    return (q_x.long() @ (q_w.long() - zero_point_w).T + bias_q).to(torch.int32)


@IL.wrong("forgot the weight zero point z_w")
def il_no_zw(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    return ((q_x.long() - zero_point_x) @ q_w.long().T + bias_q).to(torch.int32)


@IL.wrong("dropped the constant term K * z_x * z_w")
def il_expansion(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    x, w = q_x.long(), q_w.long()
    acc = x @ w.T - zero_point_w * x.sum(1, keepdim=True) - zero_point_x * w.sum(1)
    return (acc + bias_q).to(torch.int32)


@IL.wrong("forgot to add the int32 bias")
def il_no_bias(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    return ((q_x.long() - zero_point_x) @ (q_w.long() - zero_point_w).T).to(torch.int32)


@IL.wrong("accumulated in 16 bits")
def il_int16(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    acc = (q_x.long() - zero_point_x) @ (q_w.long() - zero_point_w).T
    return (acc.to(torch.int16) + bias_q).to(torch.int32)


@IL.wrong("right values, but dtype int64")
def il_int64(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    return (q_x.long() - zero_point_x) @ (q_w.long() - zero_point_w).T + bias_q


@IL.wrong("dtype float32")
def il_float(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    return (q_x.float() - zero_point_x) @ (q_w.float() - zero_point_w).T + bias_q.float()


@IL.wrong("both zero points and a bias")
def il_sign(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    x, w = q_x.long(), q_w.long()
    acc = x @ w.T - zero_point_w * x.sum(1, keepdim=True) - zero_point_x * w.sum(1) - x.shape[1] * zero_point_x * zero_point_w
    return (acc + bias_q).to(torch.int32)


@IL.right
def il_expanded(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    x, w = q_x.to(torch.int32), q_w.to(torch.int32)
    k = x.shape[1]
    acc = x @ w.T - zero_point_w * x.sum(1, keepdim=True) - zero_point_x * w.sum(1) + k * zero_point_x * zero_point_w
    return (acc + bias_q).to(torch.int32)


@IL.right
def il_loops(q_x, zero_point_x, q_w, zero_point_w, bias_q):
    n, k = q_x.shape
    out = torch.zeros(n, q_w.shape[0], dtype=torch.int32)
    for i in range(n):
        for o in range(q_w.shape[0]):
            out[i, o] = sum((int(q_x[i, j]) - zero_point_x) * (int(q_w[o, j]) - zero_point_w) for j in range(k)) + int(bias_q[o])
    return out


# --- psi ----------------------------------------------------------------------------------------------

@PS.wrong("without normalising them to shares")
def ps_counts(expected, actual, floor=1e-4):
    e, a = expected.double().clamp(min=floor), actual.double().clamp(min=floor)
    return float(((a - e) * torch.log(a / e)).sum())


@PS.wrong("no floor: an empty bin")
def ps_no_floor(expected, actual, floor=1e-4):
    e, a = expected.double() / expected.sum(), actual.double() / actual.sum()
    return float(((a - e) * torch.log(a / e)).sum())


@PS.wrong("computed KL(a || e)")
def ps_kl(expected, actual, floor=1e-4):
    e = (expected.double() / expected.sum()).clamp(min=floor)
    a = (actual.double() / actual.sum()).clamp(min=floor)
    return float((a * torch.log(a / e)).sum())


@PS.wrong("used log10 instead of the natural log")
def ps_log10(expected, actual, floor=1e-4):
    e = (expected.double() / expected.sum()).clamp(min=floor)
    a = (actual.double() / actual.sum()).clamp(min=floor)
    return float(((a - e) * torch.log10(a / e)).sum())


@PS.wrong("the log ratio is upside down")
def ps_flipped(expected, actual, floor=1e-4):
    e = (expected.double() / expected.sum()).clamp(min=floor)
    a = (actual.double() / actual.sum()).clamp(min=floor)
    return float(((a - e) * torch.log(e / a)).sum())


@PS.wrong("two empty bins")
def ps_skip_empty(expected, actual, floor=1e-4):
    e, a = expected.double() / expected.sum(), actual.double() / actual.sum()
    keep = (a > 0) & (e > 0)  # drops the empty bins instead of flooring them
    return float(((a[keep] - e[keep]) * torch.log(a[keep] / e[keep])).sum())


@PS.right
def ps_numpy(expected, actual, floor=1e-4):
    e = np.maximum(np.asarray(expected, dtype=np.float64) / float(expected.sum()), floor)
    a = np.maximum(np.asarray(actual, dtype=np.float64) / float(actual.sum()), floor)
    return float(np.sum((a - e) * np.log(a / e)))


@PS.right
def ps_two_kls(expected, actual, floor=1e-4):
    e = (expected / expected.sum()).clamp(min=floor).double()
    a = (actual / actual.sum()).clamp(min=floor).double()
    return float((a * torch.log(a / e)).sum() + (e * torch.log(e / a)).sum())
