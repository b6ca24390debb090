"""Checks for the exercises of lesson 12: the E8M0 shared exponent of an MX block, a LoRA forward, and
the amax history of delayed FP8 scaling, and one MXFP4 block.

After a mismatch a classic mistake is named only when a second probe confirms it (the framework's rule).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from qedu.checks.framework import Case, CheckSpec, Mistake, run_check

__all__ = ["e8m0_exponent_reference", "lora_forward_reference", "delayed_scale_reference", "check_e8m0_exponent",
           "check_lora_forward", "check_delayed_scale", "E8M0_EXPONENT", "LORA_FORWARD", "DELAYED_SCALE",
           "mxfp4_block_reference", "check_mxfp4_block", "MXFP4_BLOCK"]


# --- 1. the shared exponent of an MX block (OCP MX v1.0, floor rule) -----------------------------

def e8m0_exponent_reference(block: torch.Tensor, emax_elem: int) -> int:
    """``floor(log2(max|block|)) - emax_elem``, clamped to [-127, 127]; an all-zero block gives -127."""
    amax = float(block.abs().max())
    if amax == 0:
        return -127
    return int(min(max(math.floor(math.log2(amax)) - emax_elem, -127), 127))


def _ceil_instead_of_floor(block, emax_elem):
    amax = float(block.abs().max())
    if amax == 0:
        return -127
    return int(min(max(math.ceil(math.log2(amax)) - emax_elem, -127), 127))


def _emax_not_subtracted(block, emax_elem):
    amax = float(block.abs().max())
    return -127 if amax == 0 else int(min(max(math.floor(math.log2(amax)), -127), 127))


def _signed_max(block, emax_elem):
    amax = float(block.max())  # the largest value, not the largest magnitude
    if amax <= 0:
        return -127
    return int(min(max(math.floor(math.log2(amax)) - emax_elem, -127), 127))


def _block_case(rng: np.random.Generator) -> Case:
    exponent = int(rng.integers(-20, 20))
    block = torch.tensor(rng.standard_normal(32) * 2.0**exponent, dtype=torch.float32)
    return Case((block, int(rng.choice([2, 8, 15]))), label=f"32 values of size ~2^{exponent}")


E8M0_EXPONENT = CheckSpec(
    name="e8m0_exponent",
    reference=e8m0_exponent_reference,
    golden=[
        Case((torch.tensor([0.5, -1.0, 3.0, 7.9]), 2), label="fp4 (emax 2): max 7.9 -> floor(log2 7.9) - 2 = 0"),
        Case((torch.tensor([6.0, 1.0]), 2), label="fp4: max exactly 6"),
        Case((torch.tensor([1.0, -448.0]), 8), label="fp8 e4m3 (emax 8): the largest magnitude is negative"),
        Case((torch.tensor([0.75, 0.1]), 2), label="fp4: a block below 1"),
        Case((torch.zeros(4), 2), label="an all-zero block"),
        Case((torch.tensor([2.0**-130, 0.0]), 2), label="a tiny block: clamp to -127"),
    ],
    random_case=_block_case,
    probes=[Case((torch.tensor([-8.0, 1.0, 0.5]), 2), label="fp4: a negative largest magnitude"),
            Case((torch.tensor([-100.0, 3.0]), 8), label="e4m3: a negative largest magnitude"),
            Case((torch.tensor([5.0, 0.25]), 2), label="fp4: max 5, not a power of two")],
    mistakes=[
        Mistake("ceil instead of floor", _ceil_instead_of_floor,
                "the spec's rule floors: e = floor(log2(amax)) - emax_elem (ceil is a different rule, RCEIL's cousin)."),
        Mistake("emax_elem not subtracted", _emax_not_subtracted,
                "subtract emax_elem, so that the block's largest value lands in the element's top binade."),
        Mistake("max of the values instead of max of |values|", _signed_max,
                "use the largest magnitude: block.abs().max(); a block's largest value can be negative."),
    ],
    hints=["e = floor(log2(max|block|)) - emax_elem, clamped to [-127, 127]; an all-zero block gives -127."],
)


def check_e8m0_exponent(fn):
    """Check ``fn(block, emax_elem) -> int``: the MX shared exponent (floor rule)."""
    return run_check(E8M0_EXPONENT, fn)


# --- 2. a LoRA forward pass ---------------------------------------------------------------------

def lora_forward_reference(x, weight, bias, lora_A, lora_B, alpha):
    """``x W^T + b + (alpha / r) (x A^T) B^T`` with ``r = lora_A.shape[0]`` (as :class:`qedu.lora.LoRALinear`)."""
    r = lora_A.shape[0]
    return x @ weight.t() + bias + (alpha / r) * ((x @ lora_A.t()) @ lora_B.t())


def _alpha_not_divided(x, weight, bias, lora_A, lora_B, alpha):
    return x @ weight.t() + bias + alpha * ((x @ lora_A.t()) @ lora_B.t())


def _r_over_alpha(x, weight, bias, lora_A, lora_B, alpha):
    r = lora_A.shape[0]
    return x @ weight.t() + bias + (r / alpha) * ((x @ lora_A.t()) @ lora_B.t())


def _no_base(x, weight, bias, lora_A, lora_B, alpha):
    r = lora_A.shape[0]
    return bias + (alpha / r) * ((x @ lora_A.t()) @ lora_B.t())


def _lora_case(rng: np.random.Generator) -> Case:
    n, c_in, c_out, r = (int(v) for v in (rng.integers(1, 5), rng.integers(4, 12), rng.integers(3, 10), rng.integers(1, 4)))
    t = lambda *shape: torch.tensor(rng.standard_normal(shape), dtype=torch.float32)  # noqa: E731
    alpha = float(rng.choice([1.0, 8.0, 16.0, 32.0]))
    if alpha == r:
        alpha = 2.0 * r + 1  # so that alpha / r, alpha and r / alpha all differ
    return Case((t(n, c_in), t(c_out, c_in), t(c_out), t(r, c_in), t(c_out, r), alpha), label=f"r={r}, alpha={alpha:g}")


def _fixed_lora(seed: int, r: int, alpha: float, zero_b: bool = False) -> Case:
    g = torch.Generator().manual_seed(seed)
    x, w, b = torch.randn(3, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, generator=g)
    a = torch.randn(r, 8, generator=g)
    bb = torch.zeros(4, r) if zero_b else torch.randn(4, r, generator=g)
    return Case((x, w, b, a, bb, alpha), label=f"r={r}, alpha={alpha:g}" + (", B = 0 (a fresh adapter)" if zero_b else ""))


LORA_FORWARD = CheckSpec(
    name="lora_forward",
    reference=lora_forward_reference,
    golden=[_fixed_lora(0, 2, 16.0, zero_b=True), _fixed_lora(1, 2, 16.0), _fixed_lora(2, 4, 8.0), _fixed_lora(3, 8, 1.0)],
    random_case=_lora_case,
    mistakes=[
        Mistake("scaled by alpha instead of alpha / r", _alpha_not_divided,
                "the adapter's output is multiplied by alpha / r, with r = lora_A.shape[0]."),
        Mistake("scaled by r / alpha instead of alpha / r", _r_over_alpha, "the scale is alpha / r, not r / alpha."),
        Mistake("the frozen base layer x W^T was left out", _no_base,
                "LoRA adds to the frozen layer: x @ weight.T + bias + the adapter's term."),
    ],
    hints=["y = x @ W.T + b + (alpha / r) * (x @ A.T) @ B.T, with r = A.shape[0]."],
    atol=1e-5, rtol=1e-5,
)


def check_lora_forward(fn):
    """Check ``fn(x, weight, bias, lora_A, lora_B, alpha) -> y``."""
    return run_check(LORA_FORWARD, fn)


# --- 3. delayed scaling's amax history ----------------------------------------------------------

def delayed_scale_reference(history, amax, history_len, fp8_max=448.0):
    """``(new_history, scale)``: append ``amax``, keep the newest ``history_len`` values, and
    ``scale = fp8_max / max(new_history)`` (1.0 while the history holds only zeros), as
    :class:`qedu.loss_scaling.DelayedScaling` (Transformer Engine's ``amax_compute_algo="max"``)."""
    new = (list(history) + [float(amax)])[-history_len:]
    top = max(new)
    return new, (fp8_max / top if top > 0 else 1.0)


def _history_never_truncated(history, amax, history_len, fp8_max=448.0):
    new = list(history) + [float(amax)]
    top = max(new)
    return new, (fp8_max / top if top > 0 else 1.0)


def _newest_amax_only(history, amax, history_len, fp8_max=448.0):
    new = (list(history) + [float(amax)])[-history_len:]
    return new, (fp8_max / amax if amax > 0 else 1.0)


def _oldest_kept(history, amax, history_len, fp8_max=448.0):
    new = (list(history) + [float(amax)])[:history_len]
    top = max(new)
    return new, (fp8_max / top if top > 0 else 1.0)


def _history_case(rng: np.random.Generator) -> Case:
    n, length = int(rng.integers(0, 8)), int(rng.integers(1, 6))
    history = [float(v) for v in np.exp2(rng.uniform(-4, 4, n)).round(3)]
    return Case((history, float(np.exp2(rng.uniform(-4, 4)).round(3)), length), label=f"history of {n}, history_len={length}")


DELAYED_SCALE = CheckSpec(
    name="delayed_scale",
    reference=delayed_scale_reference,
    golden=[
        Case(([], 2.0, 4), label="the first step: an empty history"),
        Case(([1.0, 8.0, 2.0], 4.0, 4), label="the history's max (8), not the newest amax, sets the scale"),
        Case(([8.0, 1.0, 2.0], 4.0, 3), label="history_len=3: the oldest value (8) drops out"),
        Case(([0.0], 0.0, 2), label="only zeros: scale 1"),
        Case(([1.0, 2.0], 16.0, 1), {"fp8_max": 57344.0}, label="history_len=1, e5m2"),
    ],
    random_case=_history_case,
    probes=[Case(([9.0, 1.0, 1.0, 1.0], 2.0, 2), label="an old spike outside the window"),
            Case(([3.0, 1.0], 0.5, 2), label="a quiet step after a larger one")],
    mistakes=[
        Mistake("the history was never truncated to history_len", _history_never_truncated,
                "keep only the newest history_len values: (history + [amax])[-history_len:]."),
        Mistake("the scale came from the newest amax alone", _newest_amax_only,
                "the scale comes from the max over the whole (truncated) history, not from this step's amax."),
        Mistake("the oldest values were kept instead of the newest", _oldest_kept,
                "drop the oldest values: slice from the end, [-history_len:]."),
    ],
    hints=["new = (history + [amax])[-history_len:]; scale = fp8_max / max(new) (1.0 if max(new) == 0)."],
    rtol=1e-6,
)


def check_delayed_scale(fn):
    """Check ``fn(history, amax, history_len, fp8_max=448.0) -> (new_history, scale)``."""
    return run_check(DELAYED_SCALE, fn)


# --- 4. one MXFP4 block -------------------------------------------------------------------------

FP4_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def mxfp4_block_reference(block: torch.Tensor) -> tuple[int, torch.Tensor]:
    """``(scale_code, elements)`` of one MXFP4 block (floor rule): :func:`qedu.mx.mx_quantize`'s answer."""
    from qedu.mx import mx_quantize

    mx = mx_quantize(block.reshape(1, -1).float(), "fp4_e2m1", block.numel(), "floor")
    return int(mx.scale_code.reshape(-1)[0]), mx.elements.reshape(-1)


def _fp4_round(v: torch.Tensor, ties_away: bool) -> torch.Tensor:
    grid = torch.tensor(FP4_GRID)
    a = v.abs().clamp(max=6.0)
    d = (a[:, None] - grid).abs()
    idx = d.argmin(dim=1)
    if ties_away:  # a tie goes to the larger magnitude
        idx = (d.shape[1] - 1) - d.flip(1).argmin(dim=1)
    return torch.sign(v) * grid[idx]


def _mxfp4_from(block, e, ties_away=False):
    from qedu.floats import FP4_E2M1, cast

    v = block.float() / 2.0**e
    return e + 127, (_fp4_round(v, True) if ties_away else cast(v.clamp(-6.0, 6.0), FP4_E2M1))


def _mx_e(block, ceil=False, emax=2):
    amax = float(block.abs().max())
    if amax == 0:
        return -127
    e = (math.ceil if ceil else math.floor)(math.log2(amax)) - emax
    return int(min(max(e, -127), 127))


def _mxfp4_ties_away(block):
    return _mxfp4_from(block, _mx_e(block), ties_away=True)


def _mxfp4_no_emax(block):
    return _mxfp4_from(block, _mx_e(block, emax=0))


def _mxfp4_dequantized(block):
    e = _mx_e(block)
    code, elements = _mxfp4_from(block, e)
    return code, elements * 2.0**e


def _mxfp4_case(rng: np.random.Generator) -> Case:
    k = int(rng.integers(-10, 10))
    return Case((torch.tensor(rng.standard_normal(32) * 2.0**k, dtype=torch.float32),), label=f"32 values of size ~2^{k}")


MXFP4_BLOCK = CheckSpec(
    name="mxfp4_block",
    reference=mxfp4_block_reference,
    golden=[
        Case((torch.tensor([0.5, -1.0, 3.0, 7.9]),), label="max 7.9: e = 0, 7.9 saturates to 6"),
        Case((torch.tensor([2.5, 0.25, -5.0, 1.0]),), label="ties: 2.5 -> 2 and 5 -> 4 (to even), 0.25 -> 0"),
        Case((torch.tensor([0.02, -0.011, 0.003, 0.0]),), label="small weights: a negative exponent"),
        Case((torch.zeros(4),), label="an all-zero block"),
    ],
    random_case=_mxfp4_case,
    probes=[Case((torch.tensor([1.25, 0.75, -2.5, 4.0]),), label="ties at 1.25, 0.75 and 2.5"),
            Case((torch.tensor([12.0, 5.0, -1.0, 0.3]),), label="max 12: e = 1")],
    mistakes=[
        Mistake("ties rounded away from zero instead of to even", _mxfp4_ties_away,
                "a value halfway between two fp4 values goes to the one with an even mantissa: 2.5 -> 2, 5 -> 4."),
        Mistake("emax_elem (2 for fp4) not subtracted from the exponent", _mxfp4_no_emax,
                "e = floor(log2(amax)) - 2, so that the block's max lands in fp4's top binade [4, 6]."),
        Mistake("returned x_hat (elements times the scale) instead of the elements", _mxfp4_dequantized,
                "return the fp4 elements themselves (values in ±{0, 0.5, ..., 6}), not elements * 2**e."),
    ],
    hints=["e = floor(log2(max|x|)) - 2; scale_code = e + 127; elements = x / 2**e rounded to the nearest fp4 "
           "value (ties to even), saturating at ±6."],
)


def check_mxfp4_block(fn):
    """Check ``fn(block) -> (scale_code: int, elements: float tensor of fp4 values)``."""
    return run_check(MXFP4_BLOCK, fn)
