"""A second batch of wrong answers, written after the checks' probes were built and run once
without retuning them: a measure of how the diagnoses do on mistakes they were not tuned for.
First run, untuned: 28/28 rejected, 23/28 diagnosed as recorded, none misnamed. Afterwards three
probes were added (values off the format's grid, "always too low / nearer to zero" pooled over
cases, codes at qmin) and the single-row probe of per_channel was fixed; two recorded expectations
were corrected (floor and trunc are wrong for both signs, not "only x < 0")."""
import math

import numpy as np
import torch
import torch.nn.functional as F

from qedu import checks
from qedu.checks.evaluation import CLIP_RATE, FGSM
from qedu.checks.formats import INT_RANGE, ROUND_TO_EXMY
from qedu.checks.ptq import MINMAX_OBSERVER
from qedu.checks.quantizers import DEQUANTIZE, PACK4, PER_CHANNEL, QPARAMS, QUANTIZE, STOCHASTIC_ROUND
from qedu.checks.training import BLOCKWISE_ABSMAX, STOCHASTIC_ROUND_BF16, UPDATE_LOSS_SCALE
from tests.wrong_answers import AnswerSet

H_IR = AnswerSet("int_range", checks.check_int_range, INT_RANGE, "01*")
H_RE = AnswerSet("round_to_exmy", checks.check_round_to_exmy, ROUND_TO_EXMY, "01*")
H_QP = AnswerSet("qparams", checks.check_qparams, QPARAMS, "02*")
H_Q = AnswerSet("quantize", checks.check_quantize, QUANTIZE, "02*")
H_DQ = AnswerSet("dequantize", checks.check_dequantize, DEQUANTIZE, "02*")
H_PC = AnswerSet("per_channel", checks.check_per_channel, PER_CHANNEL, "02*")
H_SR = AnswerSet("stochastic_round", checks.check_stochastic_round, STOCHASTIC_ROUND, "02*")
H_P4 = AnswerSet("pack4", checks.check_pack4, PACK4, "02*")
H_MM = AnswerSet("minmax_observer", checks.check_minmax_observer, MINMAX_OBSERVER, "03*")
H_LS = AnswerSet("update_loss_scale", checks.check_update_loss_scale, UPDATE_LOSS_SCALE, "06*")
H_BF = AnswerSet("stochastic_round_bf16", checks.check_stochastic_round_bf16, STOCHASTIC_ROUND_BF16, "06*")
H_BA = AnswerSet("blockwise_absmax", checks.check_blockwise_absmax, BLOCKWISE_ABSMAX, "07*")
H_CR = AnswerSet("clip_rate", checks.check_clip_rate, CLIP_RATE, "09*")
H_FG = AnswerSet("fgsm", checks.check_fgsm, FGSM, "09*")

EPS = 1.1920929e-07


@H_IR.wrong("qmax right, qmin off by")
def h_ir_qmin_minus_one(bits, signed):
    return (-(2 ** (bits - 1)) - 1, 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


@H_IR.wrong("only the unsigned branch is wrong")
def h_ir_unsigned_from_one(bits, signed):
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (1, 2**bits)


@H_RE.wrong("wrong only where x is an exact tie")
def h_re_np_round_half_up_loop(x, exp_bits, man_bits):
    out = []
    for v in x.reshape(-1).tolist():
        step = 2.0 ** (math.floor(math.log2(abs(v))) - man_bits)
        out.append(math.floor(v / step + 0.5) * step)
    return torch.tensor(out, dtype=torch.float32).reshape(x.shape)


@H_RE.wrong("not values of the format")
def h_re_step_too_fine(x, exp_bits, man_bits):
    step = torch.exp2(torch.floor(torch.log2(x.abs())) - man_bits - 1)
    return torch.round(x / step) * step


@H_QP.wrong("scale off by a factor")
def h_qp_levels(x, bits, symmetric):  # divides by 2**bits, the number of levels
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        return max(max(-lo, hi) / (2**bits / 2), EPS), 0
    scale = max((hi - lo) / 2**bits, EPS)
    return scale, int(min(max(qmin - round(lo / scale), qmin), qmax))


@H_QP.wrong("zero point off by")
def h_qp_zp_from_qmax(x, bits, symmetric):  # zero point from the top end, with the wrong sign
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        return max(max(-lo, hi) / ((qmax - qmin) / 2), EPS), 0
    scale = max((hi - lo) / (qmax - qmin), EPS)
    return scale, int(min(max(qmax + round(hi / scale), qmin), qmax))


@H_Q.wrong("too low (rounded down?)")
def h_q_floor(x, scale, zero_point, bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return torch.clamp(torch.floor(x * (1 / torch.tensor(scale))) + zero_point, qmin, qmax).int()


@H_Q.wrong("right values, but a numpy")
def h_q_numpy_out(x, scale, zero_point, bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return np.clip(np.round(x.numpy() * (np.float32(1) / np.float32(scale))) + zero_point, qmin, qmax).astype(np.int32)


@H_Q.wrong("qmin or below")
def h_q_qmin_zero_when_zp(x, scale, zero_point, bits):  # a narrow range: qmin = -2**(bits-1) + 1
    qmin, qmax = -(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x * (1 / torch.tensor(scale))) + zero_point, qmin, qmax).int()


@H_DQ.wrong("right with zero_point = 0")
def h_dq_zp_scaled(q, scale, zero_point):  # zero point multiplied in twice
    return (q.float() - zero_point * scale) * scale


@H_DQ.wrong("integer dtype")
def h_dq_int_codes_times_int_scale(q, scale, zero_point):
    return (q - zero_point) * int(scale * 1000) // 1000


@H_PC.wrong("single row")
def h_pc_first_row_scale(w, bits):  # every row uses the first row's scale
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = max(w[0].abs().max().item() / ((qmax - qmin) / 2), EPS)
    return torch.clamp(torch.round(w * (1 / torch.tensor(scale))), qmin, qmax) * scale


@H_PC.wrong("nearer to zero than expected")
def h_pc_trunc(w, bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = torch.clamp(w.abs().amax(dim=1, keepdim=True) / ((qmax - qmin) / 2), min=EPS)
    return torch.clamp(torch.trunc(w * (1 / scale)), qmin, qmax) * scale


@H_SR.wrong("rounded up with probability 1/2")
def h_sr_randint(v, generator):
    return torch.floor(v) + torch.randint(0, 2, v.shape, generator=generator).float()


@H_SR.wrong("float tensor of integers")
def h_sr_bool_added(v, generator):
    return torch.floor(v).int() + (torch.rand(v.shape, generator=generator) < v - torch.floor(v)).int()


@H_P4.wrong("right values, but dtype int8")
def h_p4_int8(q):
    q = torch.nn.functional.pad(q, (0, q.numel() % 2))
    return (q[0::2] | (q[1::2] << 4)).to(torch.int8)


@H_P4.wrong("first code")
def h_p4_low_nibble_shifted(q):  # shifts the first code too
    q = torch.nn.functional.pad(q, (0, q.numel() % 2))
    return ((q[0::2] << 1) | (q[1::2] << 4)).to(torch.uint8)


@H_MM.wrong("zero point")
def h_mm_zp_from_hi(batches, bits):
    lo = min(min(float(x.min()) for x in batches), 0.0)
    hi = max(max(float(x.max()) for x in batches), 0.0)
    scale = max((hi - lo) / (2**bits - 1), EPS)
    return scale, int(min(max(round(hi / scale), 0), 2**bits - 1))


@H_MM.wrong("scale off by a factor")
def h_mm_symmetric_scale(batches, bits):
    m = max(float(x.abs().max()) for x in batches)
    lo = min(min(float(x.min()) for x in batches), 0.0)
    scale = max(2 * m / (2**bits - 1), EPS)
    return scale, int(min(max(-round(lo / scale), 0), 2**bits - 1))


@H_LS.wrong("found_inf")
def h_ls_no_backoff(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale, 0
    clean_steps += 1
    if clean_steps == growth_interval:
        return scale * growth_factor, 0
    return scale, clean_steps


@H_LS.wrong("the new clean_steps")
def h_ls_inf_sets_minus_one(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, -1
    clean_steps += 1
    if clean_steps == growth_interval:
        return scale * growth_factor, 0
    return scale, clean_steps


@H_BF.wrong("x < 0")
def h_bf_abs_bits(x, r):  # rounds the magnitude with abs(), loses the sign
    bits = x.abs().view(torch.int32)
    return ((bits + r) & -65536).view(torch.float32)


@H_BF.wrong("not bf16 values")
def h_bf_mask_15_bits(x, r):
    return ((x.view(torch.int32) + r) & -32768).view(torch.float32)


@H_BA.wrong("absmax right, codes wrong")
def h_ba_codes_from_levels_times_255(x, levels, block_size):
    flat = x.reshape(-1)
    n_blocks = math.ceil(flat.numel() / block_size)
    blocks = torch.nn.functional.pad(flat, (0, n_blocks * block_size - flat.numel())).reshape(n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)
    normalized = blocks / torch.where(absmax > 0, absmax, 1.0)[:, None]
    q = torch.round((normalized + 1) / 2 * (len(levels) - 1))  # assumes evenly spaced levels
    return q.reshape(-1)[: flat.numel()].reshape(x.shape).to(torch.uint8), absmax


@H_BA.wrong("result[1]: right values, but dtype float64")
def h_ba_absmax_2d(x, levels, block_size):
    flat = x.reshape(-1)
    n_blocks = math.ceil(flat.numel() / block_size)
    blocks = torch.nn.functional.pad(flat, (0, n_blocks * block_size - flat.numel())).reshape(n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    q = torch.argmin((blocks / torch.where(absmax > 0, absmax, 1.0))[..., None].sub(levels).abs(), dim=-1)
    return q.reshape(-1)[: flat.numel()].reshape(x.shape).to(torch.uint8), absmax.double().squeeze(1)


@H_CR.wrong("exactly qmin or qmax")
def h_cr_ge_only_top(x, scale, zero_point, qmin, qmax):
    c = torch.round(x * (1 / scale)) + zero_point
    return ((c < qmin) | (c >= qmax)).float().mean().item()


@H_CR.wrong("zero point")
def h_cr_zp_subtracted(x, scale, zero_point, qmin, qmax):
    c = torch.round(x * (1 / scale)) - zero_point
    return ((c < qmin) | (c > qmax)).float().mean().item()


@H_FG.wrong("in the wrong direction")
def h_fg_mse_loss(model, x, y, eps):  # MSE against one-hot labels instead of cross-entropy
    x = x.clone().requires_grad_(True)
    loss = F.mse_loss(model(x), F.one_hot(y, model(x).shape[1]).float())
    (g,) = torch.autograd.grad(loss, x)
    return (x + eps * g.sign()).clamp(0, 1).detach()


@H_FG.wrong("not by exactly eps")
def h_fg_half_eps(model, x, y, eps):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return (x + eps / 2 * g.sign()).clamp(0, 1).detach()
