"""AWQ (Lin et al. 2023): activation-aware weight quantization -- scale the salient input channels up
before rounding, so their weights lose less.

A weight multiplies an input channel; if that channel's activations are large, its weights'
rounding errors are amplified in the output. AWQ multiplies each input column of ``W`` by a
scale ``s_k`` and divides the input by the same ``s_k``. In float nothing changes::

    y = x W^T = (x / s) (W diag(s))^T                        (exactly, for any s > 0)

but quantizing ``W diag(s)`` instead of ``W`` shrinks the *relative* rounding error of the
columns with ``s_k > 1``. The layer computes with the effective weight
``W_hat = Q(W diag(s)) diag(s)^-1`` (in a deployed model ``1/s`` is folded into the previous
operation: a LayerNorm or Linear). The scales come from the activations alone::

    s_k = mean_t |x[t, k]| ^ alpha                           (clamped to >= 1e-4)
    s   = s / sqrt(max(s) * min(s))                          (normalised: centred on 1 in log scale)

and ``alpha`` is chosen on a grid (``0, 1/20, ..., 19/20``, as llm-awq) to minimise the
layer's output error on calibration inputs ``X`` (``alpha = 0`` is plain RTN, so AWQ is never
worse than RTN on the calibration data)::

    err(alpha) = mean_t || x_t W^T - x_t W_hat^T ||^2 = sum((W - W_hat) G * (W - W_hat)) / C_out,
    G = X^T X / n                                            (the same number, computed without X)

Optional **clipping search** (llm-awq ``auto_clip``): for every output row and group, shrink
the group's range to ``max|w| * (1 - i/20)`` (``i < 10``) and keep the shrink whose group output
error is smallest. Grids are :mod:`qedu.rtn`'s (default: AWQ's own ``pseudo_quantize_tensor``).

Difference from llm-awq, by design: it measures the error at the output of a whole attention
or MLP block (for the layers that share an input, e.g. q, k and v together); qedu measures it
at the output of the one layer it quantizes, so each Linear is handled alone.

>>> awq_scales(torch.tensor([1.0, 4.0, 16.0]), alpha=0.5)
tensor([0.5000, 1.0000, 2.0000])
"""
from __future__ import annotations

import copy
import numbers
from typing import NamedTuple

import torch
from torch import nn

from qedu._validation import as_float_tensor, check_bool, check_int
from qedu.rtn import _check_group_size, _check_weight, rtn_quantize

__all__ = ["activation_scale", "awq_scales", "awq_quantize", "AWQResult", "scaled_linear", "awq_linear", "clip_search"]

MIN_SCALE = 1e-4  # llm-awq clamps mean|x|^alpha from below


def _check_inputs(x, in_features: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
        raise TypeError(f"x must be a non-empty float tensor of layer inputs (n, C_in), got {type(x).__name__}.")
    x = x.reshape(-1, x.shape[-1])  # (..., C_in) -> (n, C_in)
    if x.shape[1] != in_features:
        raise ValueError(f"x has {x.shape[1]} features per row, but the weight has {in_features} input columns.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf; calibration inputs must be finite.")
    return x.float()  # float32 products: ample precision to compare errors, 2-4x faster than float64


def _gram(x: torch.Tensor) -> torch.Tensor:
    """``G = X^T X / n``, refusing inputs so large that it overflows float32."""
    gram = x.T @ x / x.shape[0]  # (C_in, n) @ (n, C_in) -> (C_in, C_in)
    if not bool(torch.isfinite(gram).all()):
        raise ValueError("x is too large: X^T X / n overflows float32 (|x| up to ~1e19 fits); rescale the inputs.")
    return gram


def activation_scale(x) -> torch.Tensor:
    """Mean magnitude of every input channel: ``mean_t |x[t, k]|`` (float32, ``(C_in,)``).

    >>> activation_scale(torch.tensor([[1.0, -2.0], [-3.0, 0.0]]))
    tensor([2., 1.])
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1 or x.numel() == 0:
        raise TypeError("x must be a non-empty float tensor of layer inputs (n, C_in).")
    x = as_float_tensor(x, "x")  # NaN/inf refused
    scale = x.reshape(-1, x.shape[-1]).abs().mean(dim=0).float()  # (n, C_in) -> (C_in,), in x's precision (as llm-awq)
    if not bool(torch.isfinite(scale).all()):
        raise ValueError("x is too large: mean |x| per channel is beyond float32 (or its sum overflowed); rescale the inputs.")
    return scale


def awq_scales(act_scale, alpha: float) -> torch.Tensor:
    """AWQ's per-input-channel scales: ``s = clamp(act_scale^alpha, 1e-4)``, ``s / sqrt(max(s) min(s))``.

    Args:
        act_scale: ``(C_in,)`` mean magnitudes (:func:`activation_scale`), >= 0.
        alpha: in [0, 1]; 0 gives all ones (plain RTN), 1 scales in proportion to the activations.

    Returns:
        float32 ``(C_in,)``, all > 0.

    >>> awq_scales(torch.tensor([0.5, 2.0]), alpha=0.0)
    tensor([1., 1.])
    """
    if not isinstance(act_scale, torch.Tensor) or act_scale.ndim != 1 or act_scale.numel() == 0:
        raise TypeError("act_scale must be a 1-D tensor with one mean magnitude per input channel (activation_scale(x)).")
    if not bool((act_scale >= 0).all()) or not bool(torch.isfinite(act_scale.float()).all()):
        raise ValueError("act_scale must be >= 0 and fit float32 (mean absolute activations).")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    s = act_scale.float().pow(float(alpha)).clamp(min=MIN_SCALE)
    return s / (s.max() * s.min()).sqrt()


def _output_error(diff: torch.Tensor, gram: torch.Tensor) -> float:
    """``mean_t ||x_t diff^T||^2`` summed over outputs / C_out, from ``G = X^T X / n``."""
    return float(((diff @ gram) * diff).sum() / diff.shape[0])


def clip_search(weight, x, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                convention: str = "awq", n_grid: int = 20, max_shrink: float = 0.5) -> torch.Tensor:
    """Per output row and group, the clipping range ``max|w| * (1 - i/n_grid)`` with the smallest
    group output error ``d G_gg d^T`` (``d`` = the group's rounding change, ``G_gg`` its block of
    ``X^T X / n``), ``i = 0 .. int(max_shrink * n_grid) - 1``.

    Returns:
        float32 ``(C_out, n_groups)``: the best ``max_val`` of every group; clamp the weight to
        ``[-max_val, max_val]`` before quantizing.

    >>> w = torch.tensor([[0.1, 0.2, -0.15, 0.3, 0.25, 1.0]])   # 1.0 sits on a quiet input
    >>> x = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.1]))
    >>> clip_search(w, x, bits=2, group_size=None)                # clip it, keep the others fine
    tensor([[0.5500]])
    """
    w = _check_weight(weight)
    c_out, c_in = w.shape
    g = _check_group_size(group_size, c_in) or c_in
    x = _check_inputs(x, c_in)
    n_grid = check_int(n_grid, "n_grid", 1)
    if isinstance(max_shrink, bool) or not isinstance(max_shrink, numbers.Real) or not 0 < max_shrink <= 1:
        raise ValueError(f"max_shrink must be in (0, 1], got {max_shrink!r}.")
    gram = _gram(x)  # (C_in, C_in)
    n_groups = c_in // g
    gram_blocks = torch.stack([gram[j * g:(j + 1) * g, j * g:(j + 1) * g] for j in range(n_groups)])  # (n_groups, g, g)
    groups = w.reshape(c_out, n_groups, g)  # (C_out, C_in) -> (C_out, n_groups, g)
    org_max = groups.abs().amax(dim=2, keepdim=True)  # (C_out, n_groups, 1)
    best_err = torch.full((c_out, n_groups), float("inf"))
    best_max = org_max[..., 0].clone()
    for i in range(max(1, int(max_shrink * n_grid))):
        max_val = org_max * (1 - i / n_grid)
        clipped = torch.clamp(groups, -max_val, max_val).reshape(c_out, c_in)
        d = (rtn_quantize(clipped, bits, group_size, symmetric, convention) - w).reshape(c_out, n_groups, g)
        err = torch.einsum("ogi,gij,ogj->og", d, gram_blocks, d)  # (C_out, n_groups)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better, max_val[..., 0], best_max)
    return best_max.float()


class AWQResult(NamedTuple):
    """``weight``: the effective weight ``Q(clip(W diag(s))) diag(s)^-1`` the layer computes with;
    ``scales``: ``s`` ``(C_in,)``; ``alpha``: the chosen exponent; ``errors``: output error for
    each alpha of the grid (float list); ``clip_max``: per-group clipping ranges or ``None``."""

    weight: torch.Tensor
    scales: torch.Tensor
    alpha: float
    errors: list
    clip_max: torch.Tensor | None


def awq_quantize(weight, x, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                 convention: str = "awq", n_grid: int = 20, clip: bool = False) -> AWQResult:
    """AWQ for one Linear weight and its calibration inputs ``x`` (formulas in the module docstring).

    Args:
        weight: ``(C_out, C_in)``; x: ``(n, C_in)`` (or ``(..., C_in)``) inputs of this layer.
        bits, group_size, symmetric, convention: the RTN grid (:mod:`qedu.rtn`).
        n_grid: number of alphas, ``alpha = i / n_grid`` for ``i = 0 .. n_grid - 1``.
        clip: also run :func:`clip_search` on the scaled weight.

    Returns:
        :class:`AWQResult`; the caller's tensors are not changed.

    >>> g = torch.Generator().manual_seed(0); w = torch.randn(8, 32, generator=g)
    >>> x = torch.randn(64, 32, generator=g) * torch.linspace(0.1, 5, 32)
    >>> r = awq_quantize(w, x, bits=3, group_size=None); r.errors[0] >= min(r.errors)
    True
    """
    w = _check_weight(weight)
    c_out, c_in = w.shape
    bits = check_int(bits, "bits", 2, 8)
    _check_group_size(group_size, c_in)
    n_grid = check_int(n_grid, "n_grid", 1)
    clip = check_bool(clip, "clip")
    x32 = _check_inputs(x, c_in)
    gram = _gram(x32)  # (C_in, C_in)
    act = activation_scale(x)  # (C_in,) mean |x| per channel, in x's own precision (as llm-awq)
    errors, best = [], None
    for i in range(n_grid):
        alpha = i / n_grid
        s = awq_scales(act, alpha)  # (C_in,)
        w_hat = rtn_quantize(w * s, bits, group_size, symmetric, convention) / s  # Q(W diag(s)) diag(s)^-1
        errors.append(_output_error(w - w_hat, gram))
        if best is None or errors[-1] < best[0]:
            best = (errors[-1], alpha, s, w_hat)
    _, alpha, s, w_hat = best
    clip_max = None
    if clip:  # search the ranges of the scaled weight, seen through the scaled inputs x / s
        ws = w * s
        clip_max = clip_search(ws, x32 / s, bits, group_size, symmetric, convention)
        g = group_size or c_in
        bound = clip_max.repeat_interleave(g, dim=1)  # (C_out, n_groups) -> (C_out, C_in)
        w_hat = rtn_quantize(torch.clamp(ws, -bound, bound), bits, group_size, symmetric, convention) / s
    return AWQResult(w_hat.to(w.dtype), s, alpha, errors, clip_max)


def scaled_linear(layer: nn.Linear, scales) -> nn.Module:
    """The layer rewritten as ``x -> Linear(W diag(s))(x / s)``: equal to ``layer`` in exact arithmetic.

    This is AWQ's transformation before any rounding (in a real model ``1/s`` moves into the
    previous operation). Returns a new module; ``layer`` is not changed.

    >>> layer = nn.Linear(2, 1); new = scaled_linear(layer, torch.tensor([2.0, 0.5]))
    >>> torch.allclose(new(torch.ones(1, 2)), layer(torch.ones(1, 2)))
    True
    """
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}.")
    if not isinstance(scales, torch.Tensor) or scales.shape != (layer.in_features,) or not bool((scales > 0).all()):
        raise ValueError(f"scales must be a positive tensor of shape ({layer.in_features},), one per input channel.")
    new = copy.deepcopy(layer)
    with torch.no_grad():
        new.weight.mul_(scales.to(new.weight.dtype))  # W diag(s): column k times s_k
    return nn.Sequential(_DivideInput(scales.to(layer.weight.dtype)), new)


class _DivideInput(nn.Module):
    """``x -> x / s`` along the last dimension (what the previous layer absorbs in a real model)."""

    def __init__(self, scales: torch.Tensor):
        super().__init__()
        self.register_buffer("scales", scales.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.scales


def awq_linear(layer: nn.Linear, x, **kwargs) -> nn.Linear:
    """A copy of ``layer`` whose weight is :func:`awq_quantize`'s effective weight (bias kept).

    >>> awq_linear(nn.Linear(8, 2), torch.randn(16, 8), bits=4, group_size=None).weight.shape
    torch.Size([2, 8])
    """
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}; use awq_quantize for a bare weight.")
    new = copy.deepcopy(layer)
    with torch.no_grad():
        new.weight.copy_(awq_quantize(layer.weight.detach(), x, **kwargs).weight)
    return new
