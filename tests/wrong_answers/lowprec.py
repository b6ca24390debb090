"""Lesson 12: wrong and right answers for e8m0_exponent, lora_forward, delayed_scale and mxfp4_block."""
import math

import torch

from qedu import checks
from qedu.checks.lowprec import DELAYED_SCALE, E8M0_EXPONENT, LORA_FORWARD, MXFP4_BLOCK
from tests.wrong_answers import AnswerSet

EE = AnswerSet("e8m0_exponent", checks.check_e8m0_exponent, E8M0_EXPONENT, "12")
LF = AnswerSet("lora_forward", checks.check_lora_forward, LORA_FORWARD, "12")
DS = AnswerSet("delayed_scale", checks.check_delayed_scale, DELAYED_SCALE, "12")
MB = AnswerSet("mxfp4_block", checks.check_mxfp4_block, MXFP4_BLOCK, "12")


# --- e8m0_exponent --------------------------------------------------------------------------------

@EE.wrong("ceil instead of floor")
def ee_ceil(block, emax_elem):
    amax = block.abs().max().item()
    return -127 if amax == 0 else max(-127, min(127, math.ceil(math.log2(amax)) - emax_elem))


@EE.wrong("emax_elem not subtracted")
def ee_no_emax(block, emax_elem):
    amax = block.abs().max().item()
    return -127 if amax == 0 else max(-127, min(127, math.floor(math.log2(amax))))


@EE.wrong("max of the values instead of max of |values|")
def ee_signed(block, emax_elem):
    amax = block.max().item()
    return -127 if amax <= 0 else max(-127, min(127, math.floor(math.log2(amax)) - emax_elem))


@EE.wrong("an all-zero block")
def ee_zero_block_crashes(block, emax_elem):
    return max(-127, min(127, math.floor(math.log2(block.abs().max().item())) - emax_elem))


@EE.wrong("a tiny block: clamp to -127")
def ee_no_clamp(block, emax_elem):
    amax = block.abs().max().item()
    return -127 if amax == 0 else math.floor(math.log2(amax)) - emax_elem


@EE.wrong("fp4 (emax 2): max 7.9")
def ee_round(block, emax_elem):
    amax = block.abs().max().item()
    return -127 if amax == 0 else max(-127, min(127, round(math.log2(amax)) - emax_elem))


@EE.right
def ee_frexp(block, emax_elem):
    amax = block.abs().max()
    if amax == 0:
        return -127
    return int(max(-127, min(127, int(torch.frexp(amax).exponent) - 1 - emax_elem)))


# --- lora_forward ---------------------------------------------------------------------------------

@LF.wrong("scaled by alpha instead of alpha / r")
def lf_alpha(x, weight, bias, lora_A, lora_B, alpha):
    return x @ weight.T + bias + alpha * (x @ lora_A.T @ lora_B.T)


@LF.wrong("scaled by r / alpha instead of alpha / r")
def lf_r_over_alpha(x, weight, bias, lora_A, lora_B, alpha):
    return x @ weight.T + bias + lora_A.shape[0] / alpha * (x @ lora_A.T @ lora_B.T)


@LF.wrong("the frozen base layer x W^T was left out")
def lf_no_base(x, weight, bias, lora_A, lora_B, alpha):
    return bias + alpha / lora_A.shape[0] * (x @ lora_A.T @ lora_B.T)


@LF.wrong("r=2, alpha=16")
def lf_no_bias(x, weight, bias, lora_A, lora_B, alpha):
    return x @ weight.T + alpha / lora_A.shape[0] * (x @ lora_A.T @ lora_B.T)


@LF.wrong("r=2, alpha=16")
def lf_r_from_b(x, weight, bias, lora_A, lora_B, alpha):
    return x @ weight.T + bias + alpha / lora_B.shape[0] * (x @ lora_A.T @ lora_B.T)


@LF.right
def lf_linear(x, weight, bias, lora_A, lora_B, alpha):
    r = lora_A.shape[0]
    return torch.nn.functional.linear(x, weight + (alpha / r) * lora_B @ lora_A, bias)


# --- delayed_scale --------------------------------------------------------------------------------

@DS.wrong("the history was never truncated to history_len")
def ds_never_truncated(history, amax, history_len, fp8_max=448.0):
    new = history + [amax]
    return new, fp8_max / max(new) if max(new) > 0 else 1.0


@DS.wrong("the scale came from the newest amax alone")
def ds_newest(history, amax, history_len, fp8_max=448.0):
    new = (history + [amax])[-history_len:]
    return new, fp8_max / amax if amax > 0 else 1.0


@DS.wrong("the oldest values were kept instead of the newest")
def ds_oldest(history, amax, history_len, fp8_max=448.0):
    new = (history + [amax])[:history_len]
    return new, fp8_max / max(new) if max(new) > 0 else 1.0


@DS.wrong("only zeros: scale 1")
def ds_zero_division(history, amax, history_len, fp8_max=448.0):
    new = (history + [amax])[-history_len:]
    return new, fp8_max / max(new)


@DS.wrong("history_len=1, e5m2")
def ds_fixed_448(history, amax, history_len, fp8_max=448.0):
    new = (history + [amax])[-history_len:]
    return new, 448.0 / max(new) if max(new) > 0 else 1.0


@DS.right
def ds_deque(history, amax, history_len, fp8_max=448.0):
    from collections import deque

    d = deque(history, maxlen=history_len)
    d.append(amax)
    top = max(d)
    return list(d), (fp8_max / top if top > 0 else 1.0)


# --- mxfp4_block ----------------------------------------------------------------------------------

GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _exponent(block, emax=2, rounding=math.floor):
    amax = block.abs().max().item()
    return -127 if amax == 0 else max(-127, min(127, rounding(math.log2(amax)) - emax))


def _nearest(v, ties_even=True):
    a = v.abs().clamp(max=6.0)
    d = (a[:, None] - GRID).abs()
    if ties_even:
        even = torch.tensor([True, False, True, False, True, False, True, False])
        tied = d == d.min(dim=1, keepdim=True).values
        idx = torch.where(tied.sum(1) > 1, (tied & even).float().argmax(1), d.argmin(1))
    else:
        idx = (len(GRID) - 1) - d.flip(1).argmin(1)
    return torch.sign(v) * GRID[idx]


@MB.wrong("ties rounded away from zero instead of to even")
def mb_ties_away(block):
    e = _exponent(block)
    return e + 127, _nearest(block / 2.0**e, ties_even=False)


@MB.wrong("emax_elem (2 for fp4) not subtracted")
def mb_no_emax(block):
    e = _exponent(block, emax=0)
    return e + 127, _nearest(block / 2.0**e)


@MB.wrong("returned x_hat (elements times the scale) instead of the elements")
def mb_dequantized(block):
    e = _exponent(block)
    return e + 127, _nearest(block / 2.0**e) * 2.0**e


@MB.wrong("max 7.9: e = 0, 7.9 saturates to 6")
def mb_no_saturation(block):
    e = _exponent(block)
    grid = torch.cat([GRID, torch.tensor([8.0])])
    v = block / 2.0**e
    d = (v.abs()[:, None] - grid).abs()
    return e + 127, torch.sign(v) * grid[d.argmin(1)]


@MB.wrong("an all-zero block")
def mb_code_minus_one(block):
    e = _exponent(block)
    return (e + 127 if block.abs().max() > 0 else -1), _nearest(block / 2.0**e)


@MB.right
def mb_via_qedu_floats(block):
    from qedu.floats import FP4_E2M1, cast

    e = _exponent(block)
    return e + 127, cast((block / 2.0**e).clamp(-6, 6), FP4_E2M1)
