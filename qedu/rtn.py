"""Round-to-nearest (RTN) weight quantization of LLM layers: the baseline every method is measured against.

Each output row of a Linear weight ``W`` (shape ``(C_out, C_in)``) is cut into groups of
``group_size`` consecutive input columns (or kept whole: *per-channel*), every group gets its
own grid, and every weight is rounded to the nearest point of its group's grid::

    x_hat = scale * (clamp(round(w / scale) + zero_point, qmin, qmax) - zero_point)

This is :func:`qedu.quantizers.fake_quantize` with a ``PerGroup(group_size, axis=-1)`` (or
``PerChannel(0)``) scale. What differs between libraries is how ``scale`` and ``zero_point``
are chosen from a group's values. Two conventions are implemented, both as used in practice:

``"gptq"`` (IST-DASLab/gptq ``quant.py``; also torch.ao, and qedu's own :func:`choose_qparams`)
    The range is **widened to include 0**: ``lo = min(w.min(), 0)``, ``hi = max(w.max(), 0)``.

    * asymmetric: codes ``0 .. 2^b - 1``, ``scale = (hi - lo) / (2^b - 1)``,
      ``zero_point = round(-lo / scale)``;
    * symmetric: codes ``-2^(b-1) .. 2^(b-1) - 1``, ``scale = max|w| / ((2^b - 1) / 2)``, so the
      largest positive weight lands half a step past ``qmax`` and is clipped by half a step.

``"awq"`` (mit-han-lab/llm-awq ``pseudo_quantize_tensor``)
    The range is **not widened**: ``lo = w.min()``, ``hi = w.max()``.

    * asymmetric: ``scale = max(hi - lo, 1e-5) / (2^b - 1)``,
      ``zero_point = clamp(-round(lo / scale), 0, 2^b - 1)``;
    * symmetric: ``scale = max(max|w|, 1e-5) / (2^(b-1) - 1)`` (nothing clips; codes
      ``-2^(b-1)`` is never used).

For a group that straddles 0 (almost every weight group) the two asymmetric rules give the
same grid. For a group whose values are all positive (or all negative) they differ: the
widened range wastes levels on ``[0, min]``, and AWQ's clamped zero point keeps the finer
step but can no longer reach the top of the range -- values above ``hi - lo`` are clipped.
``tests/test_rtn.py`` shows both on a hand case.

qedu multiplies by ``1 / scale`` where both reference codes divide by ``scale``; the two differ
only when ``w / scale`` is within a rounding error of a tie (tested).

IST-DASLab's ``quant.py`` has one more quirk qedu does not copy: in symmetric mode a group
whose values are all >= 0 keeps ``lo = 0`` and gets ``scale = max / (2^b - 1)`` with the zero
point at mid-range, so its top half is clipped. Random weight groups never hit it.

>>> w = torch.tensor([[-1.0, 0.5, 2.0, 0.25]])
>>> rtn_quantize(w, bits=2, group_size=None, symmetric=False)
tensor([[-1.,  0.,  2.,  0.]])
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from qedu._validation import check_bool, check_choice, check_int
from qedu.formats import IntFormat
from qedu.granularity import PerChannel, PerGroup
from qedu.quantizers import _check_x, choose_qparams, fake_quantize

__all__ = ["CONVENTIONS", "RTNParams", "rtn_qparams", "rtn_quantize", "rtn_linear", "bits_per_weight"]

CONVENTIONS = ("gptq", "awq")
AWQ_MIN_RANGE = 1e-5  # llm-awq's clamp on the range (asymmetric) or max|w| (symmetric)


class RTNParams(NamedTuple):
    """A grid for every weight: ``scale`` (float32) and ``zero_point`` (int32) broadcast
    against the weight (``(C_out, 1)`` per channel, the weight's shape per group), and the
    integer format ``fmt`` of the codes."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    fmt: IntFormat


def _check_weight(weight, name: str = "weight") -> torch.Tensor:
    if isinstance(weight, nn.Module):
        raise TypeError(f"{name} must be a weight tensor of shape (C_out, C_in), got a {type(weight).__name__}; "
                        f"pass layer.weight (or use rtn_linear for a whole layer).")
    w = _check_x(weight, name)
    if w.ndim != 2:
        raise ValueError(f"{name} must be 2-D (C_out, C_in) like an nn.Linear weight, got shape {tuple(w.shape)}; "
                         "flatten a conv weight with w.flatten(1).")
    return w


def _check_group_size(group_size, in_features: int):
    if group_size is None:
        return None
    group_size = check_int(group_size, "group_size", 1)
    if in_features % group_size:
        raise ValueError(f"group_size={group_size} must divide the number of input columns {in_features}; "
                         f"pick a divisor (32, 64 and 128 are usual) or group_size=None for per-channel.")
    return group_size


def rtn_qparams(weight, bits: int, group_size: int | None = None, symmetric: bool = False,
                convention: str = "gptq") -> RTNParams:
    """Scale and zero point of every group of a weight, by the ``"gptq"`` or ``"awq"`` rule.

    See the module docstring for both rules. ``group_size=None`` means per-channel: one grid
    per output row (``(C_out, 1)`` parameters). Otherwise the parameters are returned in the
    weight's full shape, each group's value repeated ``group_size`` times (qedu's per-group
    convention, see :mod:`qedu.granularity`).

    Args:
        weight: ``(C_out, C_in)`` float tensor, finite.
        bits: 2..8.
        group_size: input columns per group, a divisor of ``C_in``; ``None`` for per-channel.
        symmetric: zero point fixed (signed codes) instead of fitted to the range.
        convention: ``"gptq"`` (range widened to include 0) or ``"awq"`` (not widened).

    Returns:
        :class:`RTNParams` ``(scale, zero_point, fmt)``.

    Raises:
        TypeError / ValueError: naming the bad argument.

    >>> rtn_qparams(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), bits=2, convention="awq").scale
    tensor([[1.]])
    """
    w = _check_weight(weight)
    bits = check_int(bits, "bits", 2, 8)
    group_size = _check_group_size(group_size, w.shape[1])
    symmetric = check_bool(symmetric, "symmetric")
    convention = check_choice(convention, "convention", CONVENTIONS)
    granularity = PerChannel(axis=0) if group_size is None else PerGroup(group_size, axis=-1)
    fmt = IntFormat(bits, signed=symmetric)  # symmetric: -2^(b-1)..2^(b-1)-1, else 0..2^b-1
    if convention == "gptq":
        scale, zero_point = choose_qparams(w, fmt, granularity, symmetric)  # widened to include 0
        return RTNParams(scale, zero_point, fmt)
    # "awq": the group's own min and max, not widened
    if symmetric:
        max_abs = granularity.reduce(w, lambda rows: rows.abs().amax(dim=1))
        scale = max_abs.clamp(min=AWQ_MIN_RANGE) / float(fmt.qmax)
        return RTNParams(scale, torch.zeros_like(scale, dtype=torch.int32), fmt)
    lo = granularity.reduce(w, lambda rows: rows.amin(dim=1))
    hi = granularity.reduce(w, lambda rows: rows.amax(dim=1))
    scale = (hi - lo).clamp(min=AWQ_MIN_RANGE) / float(fmt.qmax)
    zero_point = torch.clamp(-torch.round(lo / scale), fmt.qmin, fmt.qmax).to(torch.int32)  # clamped, not widened
    return RTNParams(scale, zero_point, fmt)


def rtn_quantize(weight, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                 convention: str = "gptq") -> torch.Tensor:
    """Round every weight to the nearest point of its group's grid (fake quantization).

    ``x_hat = fake_quantize(weight, *rtn_qparams(weight, bits, group_size, symmetric, convention))``.

    Args:
        weight, bits, group_size, symmetric, convention: as in :func:`rtn_qparams`.

    Returns:
        float32 tensor of the weight's shape; every row's groups lie on their grids.

    Raises:
        TypeError / ValueError: naming the bad argument.

    >>> rtn_quantize(torch.tensor([[0.1, -0.4, 0.26, 0.7]]), bits=3, group_size=2, symmetric=True)
    tensor([[ 0.1143, -0.4571,  0.2000,  0.6000]])
    """
    w = _check_weight(weight)
    scale, zero_point, fmt = rtn_qparams(w, bits, group_size, symmetric, convention)
    return fake_quantize(w, scale, zero_point, fmt)


def rtn_linear(layer: nn.Linear, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
               convention: str = "gptq") -> nn.Linear:
    """A copy of ``layer`` whose weight is :func:`rtn_quantize`-d (bias kept in float).

    The caller's layer is not changed; the copy keeps the layer's dtype.

    >>> layer = nn.Linear(4, 2); rtn_linear(layer, bits=8, group_size=None).weight.shape
    torch.Size([2, 4])
    """
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}; use rtn_quantize for a bare weight.")
    new = copy.deepcopy(layer)
    with torch.no_grad():
        new.weight.copy_(rtn_quantize(layer.weight.detach(), bits, group_size, symmetric, convention))
    return new


def bits_per_weight(bits: int, group_size: int | None, in_features: int, symmetric: bool = False,
                    scale_bits: int = 16) -> float:
    """Storage per weight of a group-wise format: codes plus each group's scale (and zero point).

    ``bits + scale_bits / g + (0 if symmetric else bits / g)`` with ``g = group_size`` (or
    ``in_features`` per channel): the usual fp16 scale and a ``bits``-bit zero point per group,
    as GPTQ and AWQ checkpoints store them. 4-bit, groups of 128, asymmetric: 4.156.

    >>> round(bits_per_weight(4, 128, 4096), 4), round(bits_per_weight(4, None, 4096, symmetric=True), 4)
    (4.1562, 4.0039)
    """
    bits = check_int(bits, "bits", 1, 16)
    in_features = check_int(in_features, "in_features", 1)
    g = in_features if group_size is None else _check_group_size(group_size, in_features)
    symmetric = check_bool(symmetric, "symmetric")
    scale_bits = check_int(scale_bits, "scale_bits", 1, 64)
    return bits + scale_bits / g + (0.0 if symmetric else bits / g)
