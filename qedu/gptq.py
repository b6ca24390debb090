"""GPTQ (Frantar et al. 2022): quantize a layer's weights one column at a time, fixing each
rounding error by nudging the columns not yet quantized.

Round-to-nearest (:mod:`qedu.rtn`) treats every weight alone. GPTQ minimises what matters,
the error of the layer's *output* on calibration inputs ``X`` (shape ``(n, C_in)``)::

    minimise  || X W^T - X W_hat^T ||^2     row by row of W (each output neuron is independent)

The loss of one row ``w`` is ``(w - w_hat) H (w - w_hat)^T / 2`` with the Hessian
``H = 2/n X^T X`` (``C_in x C_in``, the same for every row). Optimal Brain Quantization says:
after rounding column ``i`` (error ``e = w_i - q_i``), the best change of the columns still
free is::

    W[:, i+1:] -= e / Hinv[i, i] * Hinv[i, i+1:]         Hinv = inverse of H over the free columns

and then column ``i`` leaves ``Hinv`` (one step of Gaussian elimination). GPTQ makes this fast:

1. **Cholesky.** The rows ``Hinv[i, i:] / sqrt(Hinv[i, i])`` that the update needs, for every
   ``i`` with the earlier columns eliminated, are exactly the rows of the upper Cholesky factor
   ``U`` of ``H^-1`` (``H^-1 = U^T U``). Eliminating column ``i`` from ``H^-1`` is one step of
   the Cholesky factorisation, so computing ``U`` once does all the eliminations in advance::

       Hinv = cholesky(cholesky_inverse(cholesky(H)), upper=True)
       err  = (w_i - q_i) / U[i, i]            W[:, i:] -= err * U[i, i:]

2. **Lazy batches.** Updating all later columns after every column moves the whole matrix
   through memory ``C_in`` times. Instead columns are done in blocks of 128: inside a block the
   update is applied to the block only, and the block's accumulated errors reach the later
   columns in one matrix product at the end of the block. Same result, far fewer passes.
3. **Dead columns and damping.** An input that is always 0 has ``H[i, i] = 0``: its weight
   cannot matter, so it is set to 0 and ``H[i, i]`` to 1. Adding 1 % of the mean diagonal to the
   diagonal keeps ``H`` safely positive definite.
4. **act-order** (optional): quantize the columns with the largest ``H[i, i]`` (the inputs with
   the most energy) first, while many columns are still free to absorb their error.

Groups: with ``group_size`` every run of ``group_size`` columns gets its own RTN grid
(:func:`qedu.rtn.rtn_qparams`), chosen when the quantizer reaches its first column, from the
weights as updated so far. Per-channel (``group_size=None``) grids come from the original weights.
With act-order the groups are runs in the *quantization* order, so a group's columns are
scattered in the stored order (GPTQ checkpoints keep a per-column group index, ``g_idx``; here
``GPTQResult.scale`` simply holds every column's grid).

>>> g = torch.Generator().manual_seed(0); W, X = torch.randn(4, 8, generator=g), torch.randn(64, 8, generator=g)
>>> result = gptq_quantize(W, X, bits=3, group_size=None)
>>> layer_error(W, result.weight, X) <= layer_error(W, rtn_quantize(W, 3, None), X)
True
"""
from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from torch import nn

from qedu._validation import check_bool, check_choice, check_int
from qedu.rtn import CONVENTIONS, _check_group_size, _check_weight, rtn_qparams
from qedu.rtn import rtn_quantize  # noqa: F401  (the module doctest compares with it)

__all__ = ["hessian", "layer_error", "GPTQResult", "gptq_quantize", "gptq_linear"]


def hessian(x) -> torch.Tensor:
    """The GPTQ Hessian of a Linear layer's calibration inputs: ``H = 2/n X^T X``.

    Args:
        x: inputs of shape ``(n, C_in)`` or ``(..., C_in)`` (batch and sequence dims are
            flattened into ``n`` rows), finite.

    Returns:
        float32 ``(C_in, C_in)`` symmetric positive semi-definite matrix (float64 for float64 input).

    >>> hessian(torch.tensor([[1.0, 0.0], [1.0, 2.0]]))
    tensor([[2., 2.],
            [2., 4.]])
    """
    x = _check_inputs(x)
    H = (2.0 / x.shape[0]) * (x.T @ x)  # (C_in, n) @ (n, C_in) -> (C_in, C_in)
    _check_finite_hessian(H, "x")
    return H


def _check_finite_hessian(H: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(H).all()):
        raise ValueError(f"{name} gives a Hessian 2/n X^T X beyond the range of {H.dtype} (inputs up to "
                         f"|x| ~ {math.sqrt(torch.finfo(H.dtype).max / 2):.3g} fit); rescale the calibration inputs.")


def _check_inputs(x, in_features: int | None = None, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of layer inputs (n, C_in), got {type(x).__name__}.")
    if not x.is_floating_point() or x.ndim < 1 or x.numel() == 0:
        raise ValueError(f"{name} must be a non-empty float tensor of layer inputs (n, C_in), "
                         f"got dtype {x.dtype}, shape {tuple(x.shape)}.")
    x = x.reshape(-1, x.shape[-1])  # (..., C_in) -> (n, C_in)
    if in_features is not None and x.shape[1] != in_features:
        raise ValueError(f"{name} has {x.shape[1]} features per row, but the weight has {in_features} input columns; "
                         "pass the inputs of this layer, shape (n, C_in).")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf; calibration inputs must be finite.")
    return x if x.dtype == torch.float64 else x.float()


def layer_error(weight, weight_hat, x) -> float:
    """Mean squared output error of a quantized layer: ``mean((X W^T - X W_hat^T)^2)`` (float64).

    >>> layer_error(torch.eye(2), torch.zeros(2, 2), torch.ones(3, 2))
    1.0
    """
    w = _check_weight(weight).double()
    w_hat = _check_weight(weight_hat, "weight_hat").double()
    if w.shape != w_hat.shape:
        raise ValueError(f"weight and weight_hat must have the same shape, got {tuple(w.shape)} and {tuple(w_hat.shape)}.")
    x = _check_inputs(x, w.shape[1]).double()
    return float(((x @ (w - w_hat).T) ** 2).mean())


class GPTQResult(NamedTuple):
    """What :func:`gptq_quantize` returns.

    ``weight``: the quantized weight ``(C_out, C_in)`` in the original column order;
    ``scale``, ``zero_point``: every weight's grid, in the weight's shape (``fake_quantize``
    of ``weight`` with them is ``weight`` again); ``perm``: the column order used (``None``
    without act-order); ``loss``: GPTQ's own estimate ``sum (w - q)^2 / U[i, i]^2 / 2``.
    """

    weight: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    perm: torch.Tensor | None
    loss: float


class _Grid(NamedTuple):
    """One grid per row for the columns of a group, ready for :func:`_round_column`."""

    scale: torch.Tensor  # (C_out, 1) float32
    inv_scale: torch.Tensor  # 1 / scale, as qedu.quantizers.fake_quantize computes it
    zero_point: torch.Tensor  # (C_out, 1) float32 (integer values)
    qmin: int
    qmax: int


def _grid(w: torch.Tensor, bits: int, symmetric: bool, convention: str) -> _Grid:
    scale, zero_point, fmt = rtn_qparams(w, bits, None, symmetric, convention)  # (C_out, 1) each
    return _Grid(scale, 1.0 / scale, zero_point.to(torch.float32), fmt.qmin, fmt.qmax)


def _round_column(w: torch.Tensor, grid: _Grid) -> torch.Tensor:
    """``fake_quantize(w, scale, zero_point, fmt)`` for one column: the same float32 arithmetic
    (the tests check the results lie on the grid), without the input checks, which cost more
    than the arithmetic when done for every one of thousands of columns."""
    q = torch.round(w.float() * grid.inv_scale).add_(grid.zero_point).clamp_(grid.qmin, grid.qmax)
    return q.sub_(grid.zero_point).mul_(grid.scale).to(w.dtype)


def _inverse_hessian_factor(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + damp I)^-1``, ``damp = percdamp * mean(diag H)``."""
    H = H.clone()
    H.diagonal().add_(percdamp * H.diagonal().mean())  # 1 % damping keeps H positive definite
    L = torch.linalg.cholesky(H)  # H = L L^T
    H_inv = torch.cholesky_inverse(L)  # (L L^T)^-1 from the factor, no explicit inverse of H
    return torch.linalg.cholesky(H_inv, upper=True)  # H^-1 = U^T U: row i of U = one OBQ step


def gptq_quantize(weight, x=None, *, H=None, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                  convention: str = "gptq", act_order: bool = False, block_size: int = 128,
                  percdamp: float = 0.01) -> GPTQResult:
    """Quantize a Linear weight with GPTQ, given its calibration inputs ``x`` (or their Hessian ``H``).

    The algorithm is in the module docstring. The grids are RTN grids
    (:func:`qedu.rtn.rtn_qparams` with ``bits``, ``symmetric``, ``convention``), one per row
    (``group_size=None``) or per run of ``group_size`` columns in the order of quantization.

    ``block_size`` is rounded up to a multiple of ``group_size`` so a group never spans two lazy
    blocks and its grid is always chosen from fully updated weights. (IST-DASLab's ``gptq.py``
    reads a group that starts inside a block from the weights before that block's updates; the
    two agree when ``group_size`` is a multiple of 128.)

    Args:
        weight: ``(C_out, C_in)`` float tensor (float64 input is processed in float64).
        x: calibration inputs ``(n, C_in)`` (or ``(..., C_in)``); give ``x`` or ``H``.
        H: a precomputed :func:`hessian` ``(C_in, C_in)``.
        bits: 2..8.
        group_size: a divisor of ``C_in``, or ``None`` for per-channel grids.
        symmetric, convention: the RTN rule (see :mod:`qedu.rtn`).
        act_order: quantize columns in order of decreasing ``H[i, i]``.
        block_size: columns per lazy batch (>= 1; 128 in the paper).
        percdamp: damping as a fraction of the mean diagonal of ``H`` (> 0).

    Returns:
        :class:`GPTQResult`; the caller's ``weight`` is not changed.

    Raises:
        TypeError / ValueError: naming the bad argument; ``torch.linalg.LinAlgError`` if ``H`` is
            not positive definite even after damping.

    >>> r = gptq_quantize(torch.ones(2, 4), torch.eye(4), bits=4, group_size=None)
    >>> r.weight
    tensor([[1., 1., 1., 1.],
            [1., 1., 1., 1.]])
    """
    W0 = _check_weight(weight)
    if (x is None) == (H is None):
        raise ValueError("pass exactly one of x (calibration inputs, shape (n, C_in)) and H (their hessian(x)).")
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    W = W0.to(dtype).clone()  # (C_out, C_in), updated in place as columns are quantized
    n_cols = W.shape[1]
    bits = check_int(bits, "bits", 2, 8)
    group_size = _check_group_size(group_size, n_cols)
    symmetric = check_bool(symmetric, "symmetric")
    convention = check_choice(convention, "convention", CONVENTIONS)
    act_order = check_bool(act_order, "act_order")
    block_size = check_int(block_size, "block_size", 1)
    if not (isinstance(percdamp, (int, float)) and not isinstance(percdamp, bool) and 0 < percdamp < 1e6):
        raise ValueError(f"percdamp must be a positive number (0.01 = 1 % of the mean diagonal), got {percdamp!r}.")
    if H is None:
        H = hessian(_check_inputs(x, n_cols))
    elif not isinstance(H, torch.Tensor) or H.shape != (n_cols, n_cols) or not H.is_floating_point():
        got = tuple(H.shape) if isinstance(H, torch.Tensor) else type(H).__name__
        raise ValueError(f"H must be a float tensor of shape ({n_cols}, {n_cols}) (hessian(x)), got {got}.")
    H = H.to(dtype).clone()
    _check_finite_hessian(H, "H")

    dead = H.diagonal() == 0  # inputs that are always 0: their weights cannot change the output
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = None
    if act_order:
        perm = torch.argsort(H.diagonal(), descending=True)  # largest input energy first
        W, H = W[:, perm], H[perm][:, perm]
    U = _inverse_hessian_factor(H, float(percdamp))  # (C_in, C_in) upper triangular

    if group_size is None:  # one grid per row, from the weights before any update
        grid = _grid(W, bits, symmetric, convention)
    else:
        block_size = group_size * -(-block_size // group_size)  # a multiple of group_size
    Q = torch.zeros_like(W)
    scales = torch.zeros(W.shape, dtype=torch.float32)
    zero_points = torch.zeros(W.shape, dtype=torch.int32)
    loss = torch.zeros((), dtype=dtype)
    for b1 in range(0, n_cols, block_size):  # lazy batches of columns
        b2 = min(b1 + block_size, n_cols)
        W_blk = W[:, b1:b2].clone()  # this block's columns, kept fully up to date
        Err = torch.zeros_like(W_blk)  # scaled errors, to send to the later columns at the end
        U_blk = U[b1:b2, b1:b2]
        for i in range(b2 - b1):
            if group_size is not None and (b1 + i) % group_size == 0:  # a new group starts here
                grid = _grid(W_blk[:, i:i + group_size], bits, symmetric, convention)
            w = W_blk[:, i:i + 1]  # (C_out, 1) the column to quantize
            q = _round_column(w, grid)  # round to its grid
            Q[:, b1 + i:b1 + i + 1] = q
            scales[:, b1 + i], zero_points[:, b1 + i] = grid.scale[:, 0], grid.zero_point[:, 0]
            err = (w - q) / U_blk[i, i]  # (C_out, 1)
            loss += (err ** 2).sum() / 2
            W_blk[:, i:] -= err @ U_blk[i:i + 1, i:]  # OBQ update of the rest of the block
            Err[:, i:i + 1] = err
        W[:, b2:] -= Err @ U[b1:b2, b2:]  # the block's updates reach the later columns at once

    if perm is not None:  # back to the original column order
        inverse = torch.argsort(perm)
        Q, scales, zero_points = Q[:, inverse], scales[:, inverse], zero_points[:, inverse]
    return GPTQResult(Q.to(weight.dtype), scales, zero_points, perm, float(loss))


def gptq_linear(layer: nn.Linear, x, **kwargs) -> nn.Linear:
    """A copy of ``layer`` whose weight is :func:`gptq_quantize`-d with inputs ``x`` (bias kept).

    Keyword arguments go to :func:`gptq_quantize`. The caller's layer is not changed.

    >>> layer = nn.Linear(8, 2); gptq_linear(layer, torch.randn(16, 8), bits=4, group_size=None).weight.shape
    torch.Size([2, 8])
    """
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}; use gptq_quantize for a bare weight.")
    new = copy.deepcopy(layer)
    with torch.no_grad():
        new.weight.copy_(gptq_quantize(layer.weight.detach(), x, **kwargs).weight)
    return new
