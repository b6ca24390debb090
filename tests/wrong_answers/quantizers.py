"""Lesson 02: wrong and right answers for qparams, quantize, dequantize, per_channel,
stochastic_round and pack4, written the way learners write them."""
import math

import numpy as np
import torch

from qedu import checks
from qedu.checks.quantizers import DEQUANTIZE, PACK4, PER_CHANNEL, QPARAMS, QUANTIZE, STOCHASTIC_ROUND
from tests.wrong_answers import AnswerSet

QP = AnswerSet("qparams", checks.check_qparams, QPARAMS, "02")
Q = AnswerSet("quantize", checks.check_quantize, QUANTIZE, "02")
DQ = AnswerSet("dequantize", checks.check_dequantize, DEQUANTIZE, "02")
PC = AnswerSet("per_channel", checks.check_per_channel, PER_CHANNEL, "02")
SR = AnswerSet("stochastic_round", checks.check_stochastic_round, STOCHASTIC_ROUND, "02")
P4 = AnswerSet("pack4", checks.check_pack4, PACK4, "02")

EPS = 1.1920929e-07


def _rng(bits):
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


# --- qparams --------------------------------------------------------------------------------------

@QP.wrong("qmax = 2**bits instead of 2**(bits-1) - 1")
def qp_qmax_2b(x, bits, symmetric):
    qmin, qmax = -(2 ** (bits - 1)), 2**bits
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    if symmetric:
        return max(max(-lo, hi) / ((qmax - qmin) / 2), EPS), 0
    scale = max((hi - lo) / (qmax - qmin), EPS)
    return scale, int(min(max(qmin - round(lo / scale), qmin), qmax))


@QP.wrong("the range was not widened to include 0")
def qp_no_widen(x, bits, symmetric):
    qmin, qmax = _rng(bits)
    lo, hi = x.min().item(), x.max().item()
    if symmetric:
        return max(max(abs(lo), abs(hi)) / ((qmax - qmin) / 2), EPS), 0
    scale = max((hi - lo) / (qmax - qmin), EPS)
    return scale, int(min(max(qmin - round(lo / scale), qmin), qmax))


@QP.wrong("symmetric scale max|x| / qmax")
def qp_sym_127(x, bits, symmetric):
    qmin, qmax = _rng(bits)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        return max(max(-lo, hi) / qmax, EPS), 0
    scale = max((hi - lo) / (qmax - qmin), EPS)
    return scale, int(min(max(qmin - round(lo / scale), qmin), qmax))


@QP.wrong("zero point with the wrong sign (qmin + round(lo / scale))")
def qp_zp_sign(x, bits, symmetric):
    qmin, qmax = _rng(bits)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        return max(max(-lo, hi) / ((qmax - qmin) / 2), EPS), 0
    scale = max((hi - lo) / (qmax - qmin), EPS)
    return scale, int(min(max(qmin + round(lo / scale), qmin), qmax))


@QP.wrong("no eps floor: an all-zero x gives scale 0")
def qp_no_eps(x, bits, symmetric):
    qmin, qmax = _rng(bits)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        return max(-lo, hi) / ((qmax - qmin) / 2), 0
    scale = (hi - lo) / (qmax - qmin)
    if scale == 0:
        return 0.0, qmin
    return scale, int(min(max(qmin - round(lo / scale), qmin), qmax))


@QP.wrong("scale right, zero point off by")
def qp_round_half_up(x, bits, symmetric):  # floor(v + 0.5): differs only at exact ties
    qmin, qmax = _rng(bits)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        return max(max(-lo, hi) / ((qmax - qmin) / 2), EPS), 0
    scale = max((hi - lo) / (qmax - qmin), EPS)
    return scale, int(min(max(qmin - math.floor(lo / scale + 0.5), qmin), qmax))


@QP.wrong("scale right, zero point off by")
def qp_int_truncates(x, bits, symmetric):  # int() instead of round()
    qmin, qmax = _rng(bits)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        return max(max(-lo, hi) / ((qmax - qmin) / 2), EPS), 0
    scale = max((hi - lo) / (qmax - qmin), EPS)
    return scale, int(min(max(qmin - int(lo / scale), qmin), qmax))


@QP.wrong("scale off by a factor")
def qp_affine_from_absmax(x, bits, symmetric):  # affine range taken as [-max|x|, max|x|]
    qmin, qmax = _rng(bits)
    m = float(x.abs().max())
    if symmetric:
        return max(m / ((qmax - qmin) / 2), EPS), 0
    scale = max(2 * m / (qmax - qmin), EPS)
    return scale, int(min(max(qmin - round(min(float(x.min()), 0.0) / scale), qmin), qmax))


@QP.wrong("the unsigned range 0 .. 2**bits - 1 for signed codes")
def qp_unsigned(x, bits, symmetric):
    qmin, qmax = 0, 2**bits - 1
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        return max(max(-lo, hi) / ((qmax - qmin) / 2), EPS), 0
    scale = max((hi - lo) / (qmax - qmin), EPS)
    return scale, int(min(max(qmin - round(lo / scale), qmin), qmax))


@QP.wrong("right for 8 bits, wrong for")
def qp_hardcoded_int8(x, bits, symmetric):
    qmin, qmax = -128, 127
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        return max(max(-lo, hi) / 127.5, EPS), 0
    scale = max((hi - lo) / 255, EPS)
    return scale, int(min(max(qmin - round(lo / scale), qmin), qmax))


@QP.wrong("right value, but a float")
def qp_float_zero_point(x, bits, symmetric):
    qmin, qmax = _rng(bits)
    lo, hi = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    if symmetric:
        return torch.clamp(torch.maximum(-lo, hi) / ((qmax - qmin) / 2), min=EPS).item(), 0.0
    scale = torch.clamp((hi - lo) / (qmax - qmin), min=EPS)
    return scale.item(), torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).item()


@QP.wrong("only the symmetric branch is wrong")
def qp_sym_uses_max_only(x, bits, symmetric):  # symmetric from the max, forgets negative values
    qmin, qmax = _rng(bits)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        return max(hi / ((qmax - qmin) / 2), EPS), 0
    scale = max((hi - lo) / (qmax - qmin), EPS)
    return scale, int(min(max(qmin - round(lo / scale), qmin), qmax))


@QP.right
def qp_python_floats(x, bits, symmetric):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        return max(max(-lo, hi) / ((qmax - qmin) / 2), EPS), 0
    scale = max((hi - lo) / (qmax - qmin), EPS)
    return scale, min(max(qmin - round(lo / scale), qmin), qmax)


@QP.right
def qp_numpy_float64(x, bits, symmetric):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    v = x.double().numpy()
    lo, hi = min(v.min(), 0.0), max(v.max(), 0.0)
    if symmetric:
        return float(max(max(-lo, hi) / ((qmax - qmin) / 2), EPS)), 0
    scale = np.float32(max((hi - lo) / (qmax - qmin), EPS))
    return float(scale), int(np.clip(qmin - np.round(np.float32(lo) / scale), qmin, qmax))


@QP.right
def qp_tensors(x, bits, symmetric):  # 0-d tensors are fine
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
    if symmetric:
        return (torch.maximum(-lo, hi) / ((qmax - qmin) / 2)).clamp(min=EPS), torch.tensor(0)
    scale = ((hi - lo) / (qmax - qmin)).clamp(min=EPS)
    return scale, torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int64)


# --- quantize -------------------------------------------------------------------------------------

def _inv(scale):
    return 1.0 / torch.tensor(scale, dtype=torch.float32)


@Q.wrong("computed in float32 as x / scale")
def q_divides(x, scale, zero_point, bits):
    qmin, qmax = _rng(bits)
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax).to(torch.int32)


@Q.wrong("forgot the zero point")
def q_no_zp(x, scale, zero_point, bits):
    qmin, qmax = _rng(bits)
    return torch.clamp(torch.round(x * _inv(scale)), qmin, qmax).int()


@Q.wrong("clamped before adding the zero point")
def q_clamp_first(x, scale, zero_point, bits):
    qmin, qmax = _rng(bits)
    return (torch.clamp(torch.round(x * _inv(scale)), qmin, qmax) + zero_point).long()


@Q.wrong("exact tie")
def q_half_up(x, scale, zero_point, bits):  # floor(v + 0.5)
    qmin, qmax = _rng(bits)
    return torch.clamp(torch.floor(x * _inv(scale) + 0.5) + zero_point, qmin, qmax).to(torch.int32)


@Q.wrong("exact tie")
def q_python_round_half_away(x, scale, zero_point, bits):  # a loop with "round half away from zero"
    qmin, qmax = _rng(bits)
    inv = float(_inv(scale))
    out = []
    for v in x.tolist():
        v = float(np.float32(v) * np.float32(inv))
        r = math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)
        out.append(min(max(r + zero_point, qmin), qmax))
    return torch.tensor(out, dtype=torch.int32)


@Q.wrong("truncated toward zero")
def q_int_cast(x, scale, zero_point, bits):
    qmin, qmax = _rng(bits)
    return torch.clamp((x * _inv(scale)).int() + zero_point, qmin, qmax)


@Q.wrong("qmax = 2**bits instead of 2**(bits-1) - 1")
def q_qmax_2b(x, scale, zero_point, bits):
    return torch.clamp(torch.round(x * _inv(scale)) + zero_point, -(2 ** (bits - 1)), 2**bits).to(torch.int32)


@Q.wrong("the unsigned range 0 .. 2**bits - 1")
def q_unsigned(x, scale, zero_point, bits):
    return torch.clamp(torch.round(x * _inv(scale)) + zero_point, 0, 2**bits - 1).to(torch.int32)


@Q.wrong("clamp")
def q_off_by_one_qmin(x, scale, zero_point, bits):  # qmin = -2**(bits-1) + 1 (a symmetric range)
    qmin, qmax = -(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x * _inv(scale)) + zero_point, qmin, qmax).to(torch.int32)


@Q.wrong("right values, but dtype float32")
def q_returns_float(x, scale, zero_point, bits):
    qmin, qmax = _rng(bits)
    return torch.clamp(torch.round(x * _inv(scale)) + zero_point, qmin, qmax)


@Q.wrong("your function changed its input `x`")
def q_in_place(x, scale, zero_point, bits):
    qmin, qmax = _rng(bits)
    x.mul_(_inv(scale)).round_().add_(zero_point).clamp_(qmin, qmax)
    return x.to(torch.int32)


@Q.wrong("subtracted the zero point instead of adding it")
def q_minus_zp(x, scale, zero_point, bits):
    qmin, qmax = _rng(bits)
    return torch.clamp(torch.round(x * _inv(scale)) - zero_point, qmin, qmax).to(torch.int32)


@Q.wrong("computed in float64")
def q_numpy_float64(x, scale, zero_point, bits):  # float64 numpy, divides
    qmin, qmax = _rng(bits)
    return torch.from_numpy(np.clip(np.round(x.numpy().astype(np.float64) / scale) + zero_point, qmin, qmax).astype(np.int32))


@Q.right
def q_int64(x, scale, zero_point, bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    inv_scale = 1.0 / torch.tensor(scale, dtype=torch.float32)
    return torch.clamp(torch.round(x * inv_scale) + zero_point, qmin, qmax).to(torch.int64)


@Q.right
def q_loop_float32(x, scale, zero_point, bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    inv = np.float32(1.0) / np.float32(scale)
    codes = [int(min(max(np.round(np.float32(v) * inv) + zero_point, qmin), qmax)) for v in x.tolist()]
    return torch.tensor(codes, dtype=torch.int32)


@Q.right
def q_int16(x, scale, zero_point, bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x * (1.0 / torch.tensor(scale))) + zero_point, qmin, qmax).short()


@Q.right
def q_numpy_float32(x, scale, zero_point, bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    v = x.numpy() * (np.float32(1.0) / np.float32(scale))
    return torch.from_numpy(np.clip(np.round(v) + zero_point, qmin, qmax).astype(np.int32))


# --- dequantize -----------------------------------------------------------------------------------

@DQ.wrong("forgot the zero point")
def dq_no_zp(q, scale, zero_point):
    return q.float() * scale


@DQ.wrong("added the zero point instead of subtracting it")
def dq_plus_zp(q, scale, zero_point):
    return (q + zero_point).float() * scale


@DQ.wrong("divided by scale")
def dq_divides(q, scale, zero_point):
    return (q - zero_point).float() / scale


@DQ.wrong("subtracted the zero point after scaling")
def dq_zp_after(q, scale, zero_point):
    return q.float() * scale - zero_point


@DQ.wrong("integer dtype")
def dq_integer(q, scale, zero_point):
    return ((q - zero_point) * scale).long()


@DQ.wrong("right values, but dtype float64")
def dq_float64(q, scale, zero_point):
    return (q - zero_point).double() * scale


@DQ.wrong("right values, but a numpy")
def dq_numpy(q, scale, zero_point):
    return (q.numpy() - zero_point).astype(np.float32) * np.float32(scale)


@DQ.wrong("changed its input `q`")
def dq_in_place(q, scale, zero_point):
    q -= zero_point
    return q.float() * scale


@DQ.wrong("off by a factor")
def dq_scale_squared(q, scale, zero_point):
    return (q - zero_point).float() * scale * scale


@DQ.wrong("right with zero_point = 0")
def dq_zp_times_two(q, scale, zero_point):  # subtracts the zero point twice
    return (q - 2 * zero_point).float() * scale


@DQ.right
def dq_expanded(q, scale, zero_point):
    return q.float() * scale - zero_point * scale


@DQ.right
def dq_loop(q, scale, zero_point):
    return torch.tensor([(c - zero_point) * scale for c in q.tolist()], dtype=torch.float32)


@DQ.right
def dq_torch_ops(q, scale, zero_point):
    return torch.sub(q, zero_point).to(torch.float32).mul(scale)


# --- per_channel ----------------------------------------------------------------------------------

@PC.wrong("reduced over the wrong axis")
def pc_axis0(w, bits):
    qmin, qmax = _rng(bits)
    scale = torch.clamp(w.abs().amax(dim=0, keepdim=True) / ((qmax - qmin) / 2), min=EPS)
    return torch.clamp(torch.round(w * (1.0 / scale)), qmin, qmax) * scale


@PC.wrong("forgot keepdim=True")
def pc_no_keepdim(w, bits):
    qmin, qmax = _rng(bits)
    scale = torch.clamp(w.abs().amax(dim=1) / ((qmax - qmin) / 2), min=EPS)
    return torch.clamp(torch.round(w * (1.0 / scale)), qmin, qmax) * scale


@PC.wrong("one scale for the whole tensor")
def pc_per_tensor(w, bits):
    qmin, qmax = _rng(bits)
    scale = max(w.abs().max().item() / ((qmax - qmin) / 2), EPS)
    return torch.clamp(torch.round(w * (1.0 / scale)), qmin, qmax) * scale


@PC.wrong("no eps floor")
def pc_no_eps(w, bits):
    qmin, qmax = _rng(bits)
    scale = w.abs().amax(dim=1, keepdim=True) / ((qmax - qmin) / 2)
    return torch.clamp(torch.round(w * (1.0 / scale)), qmin, qmax) * scale


@PC.wrong("scale = max|w| / qmax")
def pc_div_qmax(w, bits):
    qmin, qmax = _rng(bits)
    scale = torch.clamp(w.abs().amax(dim=1, keepdim=True) / qmax, min=EPS)
    return torch.clamp(torch.round(w * (1.0 / scale)), qmin, qmax) * scale


@PC.wrong("the code must be clamped to qmax")
def pc_no_clamp(w, bits):
    qmin, qmax = _rng(bits)
    scale = torch.clamp(w.abs().amax(dim=1, keepdim=True) / ((qmax - qmin) / 2), min=EPS)
    return torch.round(w * (1.0 / scale)) * scale


@PC.wrong("returned the codes")
def pc_codes(w, bits):
    qmin, qmax = _rng(bits)
    scale = torch.clamp(w.abs().amax(dim=1, keepdim=True) / ((qmax - qmin) / 2), min=EPS)
    return torch.clamp(torch.round(w * (1.0 / scale)), qmin, qmax)


@PC.wrong("changed its input `w`")
def pc_in_place(w, bits):
    qmin, qmax = _rng(bits)
    scale = torch.clamp(w.abs().amax(dim=1, keepdim=True) / ((qmax - qmin) / 2), min=EPS)
    w.mul_(1.0 / scale).round_().clamp_(qmin, qmax).mul_(scale)
    return w


@PC.wrong("exact tie")
def pc_loop_half_up(w, bits):  # a loop over rows with floor(v + 0.5)
    qmin, qmax = _rng(bits)
    rows = []
    for row in w:
        scale = max(row.abs().max().item() / ((qmax - qmin) / 2), EPS)
        rows.append(torch.clamp(torch.floor(row * (1.0 / torch.tensor(scale)) + 0.5), qmin, qmax) * scale)
    return torch.stack(rows)


@PC.wrong("has dtype float64")
def pc_numpy_float64(w, bits):
    qmin, qmax = _rng(bits)
    a = w.double().numpy()
    scale = np.maximum(np.abs(a).max(axis=1, keepdims=True) / ((qmax - qmin) / 2), EPS)
    return torch.from_numpy(np.clip(np.round(a / scale), qmin, qmax) * scale)


@PC.right
def pc_loop_rows(w, bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    out = torch.empty_like(w)
    for i in range(w.shape[0]):
        scale = torch.clamp(w[i].abs().max() / ((qmax - qmin) / 2), min=EPS)
        out[i] = torch.clamp(torch.round(w[i] * (1.0 / scale)), qmin, qmax) * scale
    return out


@PC.right
def pc_torch_builtin(w, bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = torch.clamp(w.abs().amax(dim=1) / ((qmax - qmin) / 2), min=EPS)
    return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(w.shape[0], dtype=torch.int32), 0, qmin, qmax)


# --- stochastic_round -----------------------------------------------------------------------------

@SR.wrong("round(v + u) with u uniform in [0, 1)")
def sr_round_plus_u(v, generator):
    return torch.round(v + torch.rand(v.shape, generator=generator))


@SR.wrong("no noise")
def sr_nearest(v, generator):
    return torch.floor(v + 0.5)


@SR.wrong("probability 1/2")
def sr_coin(v, generator):
    return torch.floor(v) + (torch.rand(v.shape, generator=generator) < 0.5).float()


@SR.wrong("compared the wrong way")
def sr_wrong_way(v, generator):
    u = torch.rand(v.shape, generator=generator)
    return torch.floor(v) + (u > v - torch.floor(v)).float()


@SR.wrong("same seed, different results")
def sr_rand_like(v, generator):
    return torch.floor(v + torch.rand_like(v))


@SR.wrong("same seed, different results")
def sr_numpy_global(v, generator):
    return torch.floor(v + torch.from_numpy(np.random.random(tuple(v.shape))).float())


@SR.wrong("different seeds, same results")
def sr_fixed_seed(v, generator):
    g = torch.Generator().manual_seed(0)
    return torch.floor(v + torch.rand(v.shape, generator=g))


@SR.wrong("float tensor of integers")
def sr_long(v, generator):
    return torch.floor(v + torch.rand(v.shape, generator=generator)).long()


@SR.wrong("wrong only where v < 0")
def sr_trunc(v, generator):
    return torch.trunc(v + torch.rand(v.shape, generator=generator))


@SR.wrong("draw one u per value")
def sr_one_u(v, generator):
    u = torch.rand(1, generator=generator)
    return torch.floor(v + u)


@SR.wrong("changed its input `v`")
def sr_in_place(v, generator):
    return v.add_(torch.rand(v.shape, generator=generator)).floor_()


@SR.right
def sr_bernoulli(v, generator):
    lower = torch.floor(v)
    return lower + torch.bernoulli(v - lower, generator=generator)


@SR.right
def sr_ceil_minus(v, generator):
    return torch.ceil(v - torch.rand(v.shape, generator=generator))


@SR.right
def sr_float64_draws(v, generator):
    u = torch.rand(v.shape, generator=generator, dtype=torch.float64)
    return (torch.floor(v.double() + u)).float()


# --- pack4 ----------------------------------------------------------------------------------------

@P4.wrong("nibble order swapped")
def p4_swapped(q):
    if len(q) % 2:
        q = torch.cat([q, torch.zeros(1, dtype=q.dtype)])
    return ((q[0::2] << 4) | q[1::2]).to(torch.uint8)


@P4.wrong("paired the first half with the second half")
def p4_halves(q):
    if len(q) % 2:
        q = torch.cat([q, torch.zeros(1, dtype=q.dtype)])
    n = len(q) // 2
    return (q[:n] | (q[n:] << 4)).to(torch.uint8)


@P4.wrong("pad with one 0 code")
def p4_no_pad(q):
    return (q[0::2] | (q[1::2] << 4)).to(torch.uint8)


@P4.wrong("pad with one 0 code")
def p4_pad_front(q):
    if len(q) % 2:
        q = torch.cat([torch.zeros(1, dtype=q.dtype), q])
    return (q[0::2] | (q[1::2] << 4)).to(torch.uint8)


@P4.wrong("right values, but dtype int64")
def p4_int64(q):
    if len(q) % 2:
        q = torch.cat([q, torch.zeros(1, dtype=q.dtype)])
    return q[0::2] | (q[1::2] << 4)


@P4.wrong("shift the second code left by 4")
def p4_shift8(q):
    if len(q) % 2:
        q = torch.cat([q, torch.zeros(1, dtype=q.dtype)])
    return (q[0::2] | (q[1::2] << 8)).to(torch.uint8)


@P4.wrong("should be a torch.Tensor")
def p4_list(q):
    codes = q.tolist() + [0] * (len(q) % 2)
    return [codes[i] | (codes[i + 1] << 4) for i in range(0, len(codes), 2)]


@P4.wrong("shift the second code left by 4")
def p4_times_15(q):  # multiplies by 15 instead of 16
    if len(q) % 2:
        q = torch.cat([q, torch.zeros(1, dtype=q.dtype)])
    return (q[0::2] + q[1::2] * 15).to(torch.uint8)


@P4.wrong("nibble order swapped")
def p4_loop_swapped(q):
    codes = q.tolist()
    if len(codes) % 2:
        codes.append(0)
    return torch.tensor([codes[i] * 16 + codes[i + 1] for i in range(0, len(codes), 2)], dtype=torch.uint8)


@P4.wrong("changed its input `q`")
def p4_in_place(q):
    q[1::2] <<= 4
    if len(q) % 2:
        q = torch.cat([q, torch.zeros(1, dtype=q.dtype)])
    return (q[0::2] | q[1::2]).to(torch.uint8)


@P4.right
def p4_loop(q):
    codes = q.tolist() + [0] * (len(q) % 2)
    return torch.tensor([codes[i] + 16 * codes[i + 1] for i in range(0, len(codes), 2)], dtype=torch.uint8)


@P4.right
def p4_numpy(q):
    a = q.numpy().astype(np.uint8)
    if a.size % 2:
        a = np.append(a, np.uint8(0))
    return torch.from_numpy(a[0::2] | (a[1::2] << 4))


@P4.right
def p4_pad_reshape(q):
    q = torch.nn.functional.pad(q, (0, q.numel() % 2)).reshape(-1, 2)  # (n,) -> (n/2, 2)
    return (q[:, 0] + q[:, 1] * 16).to(torch.uint8)


@Q.wrong("computed in float64")
def q_float64_multiply(x, scale, zero_point, bits):  # multiplies, as asked, but in float64
    qmin, qmax = _rng(bits)
    return torch.clamp(torch.round(x.double() * (1.0 / scale)) + zero_point, qmin, qmax).to(torch.int32)
