"""Granularity: which values of a tensor share one scale and zero point.

A granularity cuts a tensor ``x`` into *slices*; every slice gets its own ``scale`` and
``zero_point``. The three granularities here are the ones weight quantizers use::

    PerTensor()                 one slice: the whole tensor              -> 1 scale
    PerChannel(axis=0)          one slice per index along ``axis``       -> x.shape[axis] scales
    PerGroup(group_size, -1)    runs of ``group_size`` consecutive values
                                along ``axis`` (per row, per group)      -> x.numel() / group_size scales

For a Linear weight of shape ``(C_out, C_in)``: per-tensor gives 1 scale, per-channel (axis 0)
gives ``C_out`` scales (one per output neuron), per-group with ``group_size=32`` along ``C_in``
gives ``C_out * C_in / 32`` scales.

Every granularity offers the same three steps (the pattern pytorch/ao's ``block_size`` encodes):

1. :meth:`to_rows` reshapes ``x`` to a 2-D table, one row per slice;
2. any reduction along ``dim=1`` gives one statistic per slice (``amax``, ``amin``, a quantile);
3. :meth:`from_rows` puts those statistics back in a shape that **broadcasts against x**.

:meth:`reduce` does all three. Because the result always broadcasts against ``x``,
``quantize(x, scale, zero_point, fmt)`` is the same elementwise formula for every granularity:

* ``PerTensor``: a 0-d tensor (one number);
* ``PerChannel(axis)``: x's rank, size 1 everywhere except ``axis`` (keepdim style);
* ``PerGroup``: **x's full shape**, each group's value repeated ``group_size`` times. A
  per-group scale cannot broadcast from a smaller shape (group j of row i covers columns
  ``j*g .. j*g+g-1``, which no stride pattern expresses), so qedu repeats it. Only
  ``num_params(x.shape)`` distinct values are stored in a real format;
  :func:`qedu.packing.storage_bytes` counts those, and :meth:`PerGroup.compact` recovers them.

>>> x = torch.tensor([[1., -4., 2., 0.], [3., 5., -1., 8.]])
>>> PerTensor().reduce(x, lambda rows: rows.abs().amax(dim=1))
tensor(8.)
>>> PerChannel(axis=0).reduce(x, lambda rows: rows.abs().amax(dim=1))
tensor([[4.],
        [8.]])
>>> PerGroup(group_size=2).reduce(x, lambda rows: rows.abs().amax(dim=1))
tensor([[4., 4., 2., 2.],
        [5., 5., 8., 8.]])
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import torch

from qedu._validation import check_axis, check_int, check_shape

__all__ = ["PerTensor", "PerChannel", "PerGroup", "Granularity"]


def _check_tensor(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor(x).")
    if x.numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}); a granularity needs at least one value.")
    return x


def _check_stat(stat: torch.Tensor, n_rows: int) -> None:
    if not isinstance(stat, torch.Tensor) or stat.shape != (n_rows,):
        got = tuple(stat.shape) if isinstance(stat, torch.Tensor) else type(stat).__name__
        raise ValueError(
            f"the reduction must map the (n_slices, slice_len) table to one value per row, shape ({n_rows},), "
            f"got {got}; reduce along dim=1, e.g. lambda rows: rows.amax(dim=1)."
        )


class _Base:
    """What every granularity shares: ``reduce = from_rows(fn(to_rows(x)), x.shape)``."""

    def to_rows(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def from_rows(self, stat: torch.Tensor, shape) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def num_params(self, shape) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def reduce(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """One statistic per slice, shaped to broadcast against ``x``.

        Args:
            x: the tensor to cut into slices.
            fn: maps the ``(n_slices, slice_len)`` table to ``(n_slices,)``, e.g.
                ``lambda rows: rows.amax(dim=1)``.

        Returns:
            the statistics, shaped as described in the module docstring.

        >>> PerChannel(axis=1).reduce(torch.tensor([[1., 2.], [3., 4.]]), lambda r: r.sum(dim=1))
        tensor([[4., 6.]])
        """
        rows = self.to_rows(x)
        stat = fn(rows)
        _check_stat(stat, rows.shape[0])
        return self.from_rows(stat, x.shape)


@dataclass(frozen=True)
class PerTensor(_Base):
    """One scale and zero point for the whole tensor.

    >>> PerTensor().num_params((64, 128))
    1
    """

    def to_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as a single row: ``(...) -> (1, numel)``."""
        x = _check_tensor(x)
        return x.reshape(1, -1)  # (...) -> (1, numel)

    def from_rows(self, stat: torch.Tensor, shape) -> torch.Tensor:
        """The one statistic as a 0-d tensor, which broadcasts against any shape."""
        _check_stat(stat, 1)
        return stat.reshape(())  # (1,) -> ()

    def num_params(self, shape) -> int:
        """Number of scales for a tensor of ``shape``: always 1 (``shape`` must be sizes >= 0)."""
        check_shape(shape)
        return 1


@dataclass(frozen=True)
class PerChannel(_Base):
    """One scale and zero point per index along ``axis`` (a "channel").

    For a Linear weight ``(C_out, C_in)`` use ``axis=0``: one scale per output neuron, as
    torch's ``PerChannelMinMaxObserver(ch_axis=0)`` does. For a Conv2d weight
    ``(C_out, C_in, kH, kW)`` also ``axis=0``.

    Raises:
        TypeError: if ``axis`` is not an int.
        ValueError: (when used) if ``axis`` is out of range or ``x`` is 0-d.

    >>> PerChannel(axis=0).num_params((64, 128))
    64
    """

    axis: int = 0

    def __post_init__(self):
        check_int(self.axis, "axis")

    def _axis(self, ndim: int) -> int:
        if ndim == 0:
            raise ValueError("per-channel quantization needs a tensor with at least one dimension, got a 0-d tensor; "
                             "use PerTensor() for a single number.")
        return check_axis(self.axis, ndim)

    def to_rows(self, x: torch.Tensor) -> torch.Tensor:
        """One row per channel: ``(..., C at axis, ...) -> (C, numel / C)``."""
        x = _check_tensor(x)
        axis = self._axis(x.ndim)
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)  # (..., C, ...) -> (C, ..., ...) -> (C, rest)

    def from_rows(self, stat: torch.Tensor, shape) -> torch.Tensor:
        """``(C,)`` -> keepdim shape: size ``C`` at ``axis``, 1 elsewhere."""
        shape = tuple(shape)
        axis = self._axis(len(shape))
        _check_stat(stat, shape[axis])
        keep = [1] * len(shape)
        keep[axis] = shape[axis]
        return stat.reshape(keep)  # (C,) -> (1, .., C, .., 1)

    def num_params(self, shape) -> int:
        """Number of scales for a tensor of ``shape``: its size along ``axis``."""
        shape = check_shape(shape)
        return shape[self._axis(len(shape))]


@dataclass(frozen=True)
class PerGroup(_Base):
    """One scale and zero point per run of ``group_size`` consecutive values along ``axis``.

    The usual choice for 4-bit LLM weights (GPTQ, AWQ and torchao ``int4_weight_only`` default to
    ``group_size=128``; llama.cpp's Q4_0 and the OCP MX formats use blocks of 32): for a
    Linear weight ``(C_out, C_in)`` with ``axis=-1`` each row is cut into ``C_in / group_size``
    groups. ``group_size`` must divide the length of ``axis``.

    Raises:
        TypeError: if ``group_size`` or ``axis`` is not an int.
        ValueError: if ``group_size < 1``; (when used) if ``axis`` is out of range, ``x`` is
            0-d, or ``group_size`` does not divide ``x.shape[axis]``.

    >>> PerGroup(group_size=32).num_params((64, 128))
    256
    """

    group_size: int
    axis: int = -1

    def __post_init__(self):
        check_int(self.group_size, "group_size", 1)
        check_int(self.axis, "axis")

    def _axis_len(self, shape) -> tuple[int, int]:
        shape = tuple(shape)
        if len(shape) == 0:
            raise ValueError("per-group quantization needs a tensor with at least one dimension, got a 0-d tensor; "
                             "use PerTensor() for a single number.")
        axis = check_axis(self.axis, len(shape))
        length = shape[axis]
        if length % self.group_size:
            divisors = [d for d in range(1, length + 1) if length % d == 0]
            raise ValueError(
                f"group_size={self.group_size} does not divide the length {length} of axis {self.axis} "
                f"(shape {shape}); pick a divisor such as {divisors[-3:] if len(divisors) > 3 else divisors}."
            )
        return axis, length

    def to_rows(self, x: torch.Tensor) -> torch.Tensor:
        """One row per group: ``(..., L at axis, ...) -> (numel / g, g)``."""
        x = _check_tensor(x)
        axis, _ = self._axis_len(x.shape)
        moved = x.movedim(axis, -1)  # (..., L, ...) -> (..., ..., L): groups run along the last dim
        return moved.reshape(-1, self.group_size)  # (..., L) -> (n_groups_total, g)

    def from_rows(self, stat: torch.Tensor, shape) -> torch.Tensor:
        """``(n_groups_total,)`` -> ``shape``, each group's value repeated ``group_size`` times."""
        shape = tuple(shape)
        axis, length = self._axis_len(shape)
        _check_stat(stat, math.prod(shape) // self.group_size)
        moved_shape = shape[:axis] + shape[axis + 1:] + (length,)  # x's shape with axis moved last
        per_group = stat.reshape(moved_shape[:-1] + (length // self.group_size, 1))  # (n,) -> (..., L/g, 1)
        repeated = per_group.expand(*per_group.shape[:-1], self.group_size)  # (..., L/g, 1) -> (..., L/g, g)
        return repeated.reshape(moved_shape).movedim(-1, axis)  # (..., L/g, g) -> (..., L) -> x's shape

    def compact(self, stat: torch.Tensor) -> torch.Tensor:
        """The distinct per-group values of a :meth:`reduce` result (what a format stores).

        ``shape (..., L at axis, ...) -> (..., L / g at axis, ...)``.

        >>> PerGroup(2).compact(torch.tensor([[4., 4., 2., 2.]]))
        tensor([[4., 2.]])
        """
        axis, _ = self._axis_len(stat.shape)
        groups = stat.unfold(axis, self.group_size, self.group_size)  # (.., L, ..) -> (.., L/g, .., g)
        return groups[..., 0]  # first value of each group -> (.., L/g, ..)

    def num_params(self, shape) -> int:
        """Number of scales for a tensor of ``shape``: ``numel / group_size``."""
        shape = check_shape(shape)
        self._axis_len(shape)
        return math.prod(tuple(shape)) // self.group_size


Granularity = Union[PerTensor, PerChannel, PerGroup]
