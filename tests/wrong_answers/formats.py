"""Lesson 01: wrong and right answers for int_range, exmy_value, float_max and round_to_exmy."""
import math

import numpy as np
import torch

from qedu import checks
from qedu.checks.formats import EXMY_VALUE, FLOAT_MAX, INT_RANGE, ROUND_TO_EXMY
from tests.wrong_answers import AnswerSet

IR = AnswerSet("int_range", checks.check_int_range, INT_RANGE, "01")
EV = AnswerSet("exmy_value", checks.check_exmy_value, EXMY_VALUE, "01")
FM = AnswerSet("float_max", checks.check_float_max, FLOAT_MAX, "01")
RE = AnswerSet("round_to_exmy", checks.check_round_to_exmy, ROUND_TO_EXMY, "01")


# --- int_range ------------------------------------------------------------------------------------

@IR.wrong("qmax = 2**bits instead of 2**bits - 1")
def ir_qmax_2b(bits, signed):
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1)
    return 0, 2**bits


@IR.wrong("the unsigned range used for signed codes")
def ir_ignores_signed(bits, signed):
    return 0, 2**bits - 1


@IR.wrong("the signed range used for unsigned codes")
def ir_always_signed(bits, signed):
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


@IR.wrong("a symmetric signed range (-127..127)")
def ir_symmetric(bits, signed):
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@IR.wrong("2**bits instead of 2**(bits - 1) for signed codes")
def ir_signed_full(bits, signed):
    return (-(2**bits), 2**bits - 1) if signed else (0, 2**bits - 1)


@IR.wrong("right value, but a float")
def ir_float_division(bits, signed):
    if signed:
        return -(2**bits) / 2, 2**bits / 2 - 1
    return 0, 2**bits - 1


@IR.wrong("your two numbers are swapped")
def ir_swapped(bits, signed):
    if signed:
        return 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    return 2**bits - 1, 0


@IR.wrong("right for 8 bits")
def ir_hardcoded(bits, signed):
    return (-128, 127) if signed else (0, 255)


@IR.wrong("wrong only for odd bits")
def ir_negative_base(bits, signed):
    if signed:
        return (-2) ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@IR.wrong("only the unsigned branch is wrong")
def ir_unsigned_bits_minus_one(bits, signed):
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** (bits - 1) - 1


@IR.wrong("fails only on inputs like this one")
def ir_numpy_iinfo(bits, signed):  # np.iinfo only knows 8, 16, 32, 64 bits
    info = np.iinfo(f"{'' if signed else 'u'}int{bits}")
    return int(info.min), int(info.max)


@IR.right
def ir_shifts(bits, signed):
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


@IR.right
def ir_list_of_numpy_ints(bits, signed):
    lo = -(2 ** (bits - 1)) if signed else 0
    return [np.int64(lo), np.int64(lo + 2**bits - 1)]


# --- exmy_value -----------------------------------------------------------------------------------

def _bias(E):
    return 2 ** (E - 1) - 1


@EV.wrong("forgot the implicit leading 1")
def ev_no_lead(sign, exponent, mantissa, exp_bits, man_bits):
    e = exponent if exponent else 1
    return (-1) ** sign * 2.0 ** (e - _bias(exp_bits)) * (mantissa / 2**man_bits)


@EV.wrong("ignored the sign bit")
def ev_no_sign(sign, exponent, mantissa, exp_bits, man_bits):
    if exponent == 0:
        return 2.0 ** (1 - _bias(exp_bits)) * mantissa / 2**man_bits
    return 2.0 ** (exponent - _bias(exp_bits)) * (1 + mantissa / 2**man_bits)


@EV.wrong("treated subnormals (exponent field 0) like normal numbers")
def ev_no_subnormals(sign, exponent, mantissa, exp_bits, man_bits):
    return (-1) ** sign * 2.0 ** (exponent - _bias(exp_bits)) * (1 + mantissa / 2**man_bits)


@EV.wrong("used 2**(-bias) instead of 2**(1 - bias) for subnormals")
def ev_sub_bias(sign, exponent, mantissa, exp_bits, man_bits):
    if exponent == 0:
        v = 2.0 ** (-_bias(exp_bits)) * mantissa / 2**man_bits
    else:
        v = 2.0 ** (exponent - _bias(exp_bits)) * (1 + mantissa / 2**man_bits)
    return -v if sign else v


@EV.wrong("off-by-one bias")
def ev_bias_2e(sign, exponent, mantissa, exp_bits, man_bits):
    bias = 2 ** (exp_bits - 1)
    if exponent == 0:
        v = 2.0 ** (1 - bias) * mantissa / 2**man_bits
    else:
        v = 2.0 ** (exponent - bias) * (1 + mantissa / 2**man_bits)
    return -v if sign else v


@EV.wrong("wrong only where sign = 0")
def ev_precedence_sign(sign, exponent, mantissa, exp_bits, man_bits):  # -1**sign is -(1**sign) = -1
    if exponent == 0:
        return -1**sign * 2.0 ** (1 - _bias(exp_bits)) * mantissa / 2**man_bits
    return -1**sign * 2.0 ** (exponent - _bias(exp_bits)) * (1 + mantissa / 2**man_bits)


@EV.wrong("wrong only where the mantissa field is > 0")
def ev_mantissa_bits_minus_one(sign, exponent, mantissa, exp_bits, man_bits):  # m / 2**(M-1)
    if exponent == 0:
        v = 2.0 ** (1 - _bias(exp_bits)) * mantissa / 2 ** (man_bits - 1)
    else:
        v = 2.0 ** (exponent - _bias(exp_bits)) * (1 + mantissa / 2 ** (man_bits - 1))
    return -v if sign else v


@EV.right
def ev_bits_and_ldexp(sign, exponent, mantissa, exp_bits, man_bits):
    bias = (1 << (exp_bits - 1)) - 1
    significand = mantissa + ((1 << man_bits) if exponent else 0)
    return math.copysign(math.ldexp(significand, max(exponent, 1) - bias - man_bits), -1.0 if sign else 1.0) \
        if significand else (-0.0 if sign else 0.0)


@EV.right
def ev_torch(sign, exponent, mantissa, exp_bits, man_bits):
    bias = 2 ** (exp_bits - 1) - 1
    lead = 1.0 if exponent else 0.0
    e = exponent if exponent else 1
    return (torch.tensor(-1.0) ** sign * 2.0 ** (e - bias) * (lead + mantissa / 2**man_bits)).item()


# --- float_max ------------------------------------------------------------------------------------

@FM.wrong("used the all-ones exponent, which 'ieee' reserves")
def fm_ieee_top(exp_bits, man_bits, special):
    bias = 2 ** (exp_bits - 1) - 1
    top_m = 2**man_bits - 1 - (special == "fn")
    return 2.0 ** (2**exp_bits - 1 - bias) * (1 + top_m / 2**man_bits)


@FM.wrong("forgot that 'fn' keeps the top exponent but loses")
def fm_fn_mantissa(exp_bits, man_bits, special):
    bias = 2 ** (exp_bits - 1) - 1
    top_e = 2**exp_bits - 1 - (special == "ieee")
    return 2.0 ** (top_e - bias) * (1 + (2**man_bits - 1) / 2**man_bits)


@FM.wrong("treated 'fn' like 'ieee'")
def fm_fn_as_ieee(exp_bits, man_bits, special):
    bias = 2 ** (exp_bits - 1) - 1
    top_e = 2**exp_bits - 1 - (special != "none")
    return 2.0 ** (top_e - bias) * (2 - 2.0**-man_bits)


@FM.wrong("forgot the implicit leading 1")
def fm_no_lead(exp_bits, man_bits, special):
    bias = 2 ** (exp_bits - 1) - 1
    top_e, top_m = 2**exp_bits - 1, 2**man_bits - 1
    if special == "ieee":
        top_e -= 1
    elif special == "fn":
        top_m -= 1
    return 2.0 ** (top_e - bias) * (top_m / 2**man_bits)


@FM.wrong("off by a factor")
def fm_bias_2e(exp_bits, man_bits, special):
    bias = 2 ** (exp_bits - 1)
    top_e, top_m = 2**exp_bits - 1, 2**man_bits - 1
    if special == "ieee":
        top_e -= 1
    elif special == "fn":
        top_m -= 1
    return 2.0 ** (top_e - bias) * (1 + top_m / 2**man_bits)


@FM.wrong("wrong only where special = 'none'")
def fm_none_like_fn(exp_bits, man_bits, special):
    bias = 2 ** (exp_bits - 1) - 1
    top_e, top_m = 2**exp_bits - 1, 2**man_bits - 1
    if special == "ieee":
        top_e -= 1
    else:
        top_m -= 1
    return 2.0 ** (top_e - bias) * (1 + top_m / 2**man_bits)


@FM.right
def fm_loop_over_patterns(exp_bits, man_bits, special):
    bias = 2 ** (exp_bits - 1) - 1
    best = 0.0
    for e in range(1, 2**exp_bits):
        for m in range(2**man_bits):
            if special == "ieee" and e == 2**exp_bits - 1:
                continue
            if special == "fn" and e == 2**exp_bits - 1 and m == 2**man_bits - 1:
                continue
            best = max(best, 2.0 ** (e - bias) * (1 + m / 2**man_bits))
    return best


# --- round_to_exmy --------------------------------------------------------------------------------

def _e_step(x, M):
    e = torch.floor(torch.log2(x.abs()))
    return torch.exp2(e - M)


@RE.wrong("truncation (rounding toward zero)")
def re_trunc(x, exp_bits, man_bits):
    step = _e_step(x, man_bits)
    return torch.trunc(x / step) * step


@RE.wrong("floor instead of rounding")
def re_floor(x, exp_bits, man_bits):
    step = _e_step(x, man_bits)
    return torch.floor(x / step) * step


@RE.wrong("round half up (away from zero)")
def re_half_away(x, exp_bits, man_bits):
    step = _e_step(x, man_bits)
    v = x / step
    return torch.sign(v) * torch.floor(v.abs() + 0.5) * step


@RE.wrong("the exponent one too high")
def re_frexp(x, exp_bits, man_bits):
    _, e = torch.frexp(x)
    step = torch.exp2(e.float() - man_bits)
    return torch.round(x / step) * step


@RE.wrong("a fixed step 2**-man_bits")
def re_fixed_step(x, exp_bits, man_bits):
    step = 2.0**-man_bits
    return torch.round(x / step) * step


@RE.wrong("right values, but dtype float64")
def re_float64(x, exp_bits, man_bits):
    x = x.double()
    step = torch.exp2(torch.floor(torch.log2(x.abs())) - man_bits)
    return torch.round(x / step) * step


@RE.wrong("for negative x: take log2 of |x|")
def re_log2_no_abs(x, exp_bits, man_bits):
    step = torch.exp2(torch.floor(torch.log2(x)) - man_bits)
    return torch.round(x / step) * step


@RE.wrong("changed its input `x`")
def re_in_place(x, exp_bits, man_bits):
    step = _e_step(x, man_bits)
    return x.div_(step).round_().mul_(step)


@RE.wrong("exact tie")
def re_numpy_half_up(x, exp_bits, man_bits):  # numpy, floor(v + 0.5)
    a = x.numpy()
    step = 2.0 ** (np.floor(np.log2(np.abs(a))) - man_bits)
    return torch.from_numpy((np.floor(a / step + 0.5) * step).astype(np.float32))


@RE.wrong("the exponent one too high")
def re_ceil_log(x, exp_bits, man_bits):  # ceil(log2|x|) puts every non-power of two one binade too high
    step = torch.exp2(torch.ceil(torch.log2(x.abs())) - man_bits)
    return torch.round(x / step) * step


@RE.wrong("should be a torch.Tensor")
def re_list_loop(x, exp_bits, man_bits):
    out = []
    for v in x.reshape(-1).tolist():
        step = 2.0 ** (math.floor(math.log2(abs(v))) - man_bits)
        out.append(round(v / step) * step)
    return out


@RE.right
def re_loop_python(x, exp_bits, man_bits):
    out = []
    for v in x.reshape(-1).tolist():
        step = 2.0 ** (math.floor(math.log2(abs(v))) - man_bits)
        out.append(round(v / step) * step)  # Python's round() also sends ties to even
    return torch.tensor(out, dtype=torch.float32).reshape(x.shape)


@RE.right
def re_frexp_fixed(x, exp_bits, man_bits):
    _, e = torch.frexp(x)
    step = torch.exp2((e - 1 - man_bits).float())
    return torch.round(x / step) * step


@RE.right
def re_numpy_float32(x, exp_bits, man_bits):
    a = x.numpy()
    step = np.exp2(np.floor(np.log2(np.abs(a))) - man_bits).astype(np.float32)
    return torch.from_numpy(np.round(a / step) * step)


@EV.right
def ev_float32(sign, exponent, mantissa, exp_bits, man_bits):
    bias = 2 ** (exp_bits - 1) - 1
    frac = np.float32(mantissa) / np.float32(2**man_bits)
    mag = np.float32(2.0) ** np.float32(max(exponent, 1) - bias) * (frac + np.float32(1 if exponent else 0))
    return -mag if sign else mag


@FM.right
def fm_float32_torch(exp_bits, man_bits, special):
    bias = 2 ** (exp_bits - 1) - 1
    top_e = 2**exp_bits - 1 - (special == "ieee")
    top_m = 2**man_bits - 1 - (special == "fn")
    return (torch.tensor(2.0) ** (top_e - bias) * (1 + top_m / 2**man_bits)).item()
