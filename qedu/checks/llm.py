"""Checks for lesson 10's exercises: group-wise RTN, one GPTQ column update, SmoothQuant scales, NF4 bits."""
from __future__ import annotations

import numpy as np
import torch

from qedu.checks.framework import Case, CheckSpec, Mistake, run_check
from qedu.nf4 import nf4_bits_per_parameter
from qedu.rtn import rtn_quantize
from qedu.smoothquant import smoothing_scales

__all__ = ["RTN_GROUPWISE", "GPTQ_COLUMN_UPDATE", "SMOOTHQUANT_SCALES", "NF4_BITS", "check_rtn_groupwise",
           "check_gptq_column_update", "check_smoothquant_scales", "check_nf4_bits_per_parameter"]


# --- 1. group-wise RTN (asymmetric, range widened to include 0, as GPTQ's quant.py) ------------------

def rtn_groupwise_reference(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Asymmetric RTN per group of ``group_size`` consecutive inputs (``qedu.rtn.rtn_quantize``, GPTQ convention)."""
    return rtn_quantize(w, bits, group_size, symmetric=False, convention="gptq")


def _per_row(w, bits, group_size):
    return rtn_quantize(w, bits, None, symmetric=False, convention="gptq")


def _not_widened(w, bits, group_size):
    return rtn_quantize(w, bits, group_size, symmetric=False, convention="awq")


def _qmax_2_pow_bits(w, bits, group_size):
    g = w.reshape(w.shape[0], -1, group_size)  # (C_out, C_in) -> (C_out, n_groups, g)
    lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
    scale = (hi - lo).clamp(min=1e-8) / 2**bits
    zp = torch.round(-lo / scale)
    q = torch.clamp(torch.round(g / scale) + zp, 0, 2**bits)
    return (scale * (q - zp)).reshape(w.shape)


def _rtn_case(rng: np.random.Generator) -> Case:
    g = int(rng.choice([2, 4, 8]))
    w = torch.tensor(rng.normal(size=(int(rng.integers(1, 4)) * 2, g * int(rng.integers(1, 4)))), dtype=torch.float32)
    if rng.random() < 0.3:
        w = w.abs()  # all-positive groups: where widening to 0 matters
    return Case((w, int(rng.choice([2, 3, 4])), g))


RTN_GROUPWISE = CheckSpec(
    name="rtn_groupwise",
    reference=rtn_groupwise_reference,
    golden=[
        Case((torch.tensor([[-1.0, 0.5, 2.0, 0.25]]), 2, 4), label="one group, 2 bits"),
        Case((torch.tensor([[-1.0, 0.5, 2.0, 0.25], [0.1, 0.2, -0.3, 0.4]]), 3, 2), label="groups of 2"),
        Case((torch.tensor([[0.5, 1.0, 0.75, 0.9]]), 2, 4), label="all positive: widen to 0"),
    ],
    random_case=_rtn_case,
    mistakes=[
        Mistake("one grid per row: group_size was ignored", _per_row,
                "reshape each row into (n_groups, group_size) and take min/max over the last axis."),
        Mistake("the range was not widened to include 0", _not_widened,
                "lo = min(w.min(), 0) and hi = max(w.max(), 0), so that 0 is exactly on the grid."),
        Mistake("qmax = 2**bits instead of 2**bits - 1", _qmax_2_pow_bits,
                "b bits give the codes 0 .. 2**b - 1: there are 2**b - 1 steps."),
    ],
    hints=("scale = (hi - lo) / (2**bits - 1), zero_point = round(-lo / scale), "
           "q = clamp(round(w / scale) + zero_point, 0, 2**bits - 1), w_hat = scale * (q - zero_point).",),
    atol=1e-6, rtol=1e-5,
)


def check_rtn_groupwise(fn):
    """Check ``fn(w, bits, group_size) -> w_hat``: asymmetric RTN per group, range widened to include 0."""
    return run_check(RTN_GROUPWISE, fn)


# --- 2. one GPTQ column update ---------------------------------------------------------------------

def gptq_column_update_reference(W: torch.Tensor, U: torch.Tensor, i: int, q: torch.Tensor) -> torch.Tensor:
    """``err = (W[:, i] - q) / U[i, i]``; ``W[:, i:] -= err[:, None] * U[i, i:]`` on a copy; return it."""
    W = W.clone()
    err = (W[:, i] - q) / U[i, i]  # (C_out,)
    W[:, i:] -= err[:, None] * U[i, i:][None, :]
    return W


def _no_divide(W, U, i, q):
    W = W.clone()
    W[:, i:] -= (W[:, i] - q)[:, None] * U[i, i:][None, :]
    return W


def _column_of_u(W, U, i, q):
    W = W.clone()
    W[:, i:] -= ((W[:, i] - q) / U[i, i])[:, None] * U[i:, i][None, :]
    return W


def _plus(W, U, i, q):
    W = W.clone()
    W[:, i:] += ((W[:, i] - q) / U[i, i])[:, None] * U[i, i:][None, :]
    return W


def _gptq_case(rng: np.random.Generator) -> Case:
    c_out, c_in = int(rng.integers(1, 5)), int(rng.integers(2, 7))
    x = torch.tensor(rng.normal(size=(4 * c_in, c_in)), dtype=torch.float64)
    H = 2 / len(x) * x.T @ x + 0.01 * torch.eye(c_in, dtype=torch.float64)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    W = torch.tensor(rng.normal(size=(c_out, c_in)), dtype=torch.float64)
    i = int(rng.integers(0, c_in))
    return Case((W, U, i, torch.round(W[:, i] * 2) / 2))


GPTQ_COLUMN_UPDATE = CheckSpec(
    name="gptq_column_update",
    reference=gptq_column_update_reference,
    golden=[
        Case((torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64),
              torch.tensor([[2.0, 1.0, 0.5], [0.0, 1.0, 0.25], [0.0, 0.0, 1.0]], dtype=torch.float64), 0,
              torch.tensor([0.0], dtype=torch.float64)), label="column 0 of a 1x3 weight"),
        Case((torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], dtype=torch.float64),
              torch.tensor([[2.0, 1.0, 0.5], [0.0, 1.0, 0.25], [0.0, 0.0, 1.0]], dtype=torch.float64), 1,
              torch.tensor([2.5, -1.0], dtype=torch.float64)), label="middle column"),
    ],
    random_case=_gptq_case,
    mistakes=[
        Mistake("the error was not divided by U[i, i]", _no_divide,
                "err = (w_i - q) / U[i, i]: then column i lands exactly on q."),
        Mistake("used column i of U instead of row i", _column_of_u,
                "U is upper triangular: the update after column i is the ROW U[i, i:]."),
        Mistake("added the update instead of subtracting it", _plus,
                "W[:, i:] -= err * U[i, i:] moves the other columns to compensate, not to double the error."),
    ],
    hints=("after the update, W[:, i] must equal q exactly; columns left of i never change.",),
    atol=1e-9, rtol=1e-9,
)


def check_gptq_column_update(fn):
    """Check ``fn(W, U, i, q) -> W_new``: GPTQ's update after rounding column ``i`` to ``q``."""
    return run_check(GPTQ_COLUMN_UPDATE, fn)


# --- 3. SmoothQuant scales -------------------------------------------------------------------------

def smoothquant_scales_reference(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = act_absmax**alpha / weight_absmax**(1 - alpha)`` (``qedu.smoothquant.smoothing_scales``)."""
    return smoothing_scales(act_absmax, weight_absmax, alpha)


def _swapped(a, w, alpha):
    return smoothing_scales(a, w, 1 - alpha)


def _product(a, w, alpha):
    return (a.float().pow(alpha) * w.float().pow(1 - alpha)).clamp(min=1e-5)


def _inverted(a, w, alpha):
    return (w.float().pow(1 - alpha) / a.float().pow(alpha).clamp(min=1e-5)).clamp(min=1e-5)


def _sq_case(rng: np.random.Generator) -> Case:
    n = int(rng.integers(1, 8))
    a = torch.tensor(rng.uniform(0.1, 20, size=n), dtype=torch.float32)
    w = torch.tensor(rng.uniform(0.01, 2, size=n), dtype=torch.float32)
    return Case((a, w, float(rng.choice([0.25, 0.5, 0.6, 0.75, 0.85]))))


SMOOTHQUANT_SCALES = CheckSpec(
    name="smoothquant_scales",
    reference=smoothquant_scales_reference,
    golden=[
        Case((torch.tensor([16.0, 1.0]), torch.tensor([1.0, 4.0]), 0.5), label="alpha 0.5"),
        Case((torch.tensor([16.0, 1.0]), torch.tensor([1.0, 4.0]), 0.75), label="alpha 0.75"),
    ],
    random_case=_sq_case,
    mistakes=[
        Mistake("alpha and 1 - alpha were swapped", _swapped,
                "alpha is the exponent of the ACTIVATION maximum: s = a**alpha / w**(1 - alpha)."),
        Mistake("multiplied by the weight term instead of dividing", _product,
                "s = a**alpha / w**(1 - alpha): the weight maximum goes in the denominator."),
        Mistake("returned 1 / s", _inverted,
                "s is what the activations are DIVIDED by (and the weights multiplied by): large for large activations."),
    ],
    hints=("at alpha = 1, s equals the activation maxima; at alpha = 0, s = 1 / weight maxima.",),
    atol=1e-6, rtol=1e-5,
)


def check_smoothquant_scales(fn):
    """Check ``fn(act_absmax, weight_absmax, alpha) -> s``: SmoothQuant's per-channel scales."""
    return run_check(SMOOTHQUANT_SCALES, fn)


# --- 4. NF4 bits per parameter with double quantization ---------------------------------------------

def nf4_bits_reference(block_size: int = 64, block_size2: int = 256) -> float:
    """``4 + 8 / block_size + 32 / (block_size * block_size2)`` (QLoRA: 4.127 for 64 and 256)."""
    return nf4_bits_per_parameter(block_size, True, block_size2)


NF4_BITS = CheckSpec(
    name="nf4_bits_per_parameter",
    reference=nf4_bits_reference,
    golden=[Case((64, 256), label="QLoRA's 64 and 256"), Case((32, 128), label="smaller blocks")],
    random_case=lambda rng: Case((int(rng.choice([16, 32, 64, 128, 256])), int(rng.choice([64, 128, 256, 512])))),
    mistakes=[
        Mistake("no double quantization: a float32 absmax per block", lambda b, b2: 4 + 32 / b,
                "with double quantization the absmax of a block is stored in 8 bits, not 32."),
        Mistake("forgot the float32 absmax of each block of absmax values", lambda b, b2: 4 + 8 / b,
                "the 8-bit absmax values need their own float32 scale, one per block2 of them: + 32 / (b * b2)."),
        Mistake("the second-level scale was counted once per block2 weights, not per block2 absmax values",
                lambda b, b2: 4 + 8 / b + 32 / b2,
                "one float32 covers block2 absmax values, i.e. block * block2 weights."),
    ],
    hints=("count bits per weight: 4 for the code, + the absmax's bits / block_size, + the absmax-of-absmax's bits / (block_size * block_size2).",),
    rtol=1e-12,
)


def check_nf4_bits_per_parameter(fn):
    """Check ``fn(block_size, block_size2) -> float``: bits per weight of NF4 with double quantization."""
    return run_check(NF4_BITS, fn)
