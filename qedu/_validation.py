"""Input checks shared by every qedu module.

Each helper raises a ``ValueError`` or ``TypeError`` whose message names the argument, the
value it got and how to fix the call, so a learner never has to read a stack trace to find out
what went wrong.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch


def check_int(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``value`` as an int, or raise if it is not an integer in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            raise TypeError(f"{name} must be an int, got the float {value!r}; pass {int(value)} instead.")
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
    value = int(value)
    if lo is not None and value < lo or hi is not None and value > hi:
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ValueError(f"{name} must be between {lo_s} and {hi_s}, got {value}.")
    return value


def as_float_tensor(x, name: str = "x", *, allow_empty: bool = False, allow_nonfinite: bool = False) -> torch.Tensor:
    """Turn ``x`` (tensor, numpy array, list or number) into a floating-point torch tensor.

    Integer input is converted to float32; float64/float16/bfloat16 tensors keep their dtype.
    Raises ``TypeError`` for non-numeric input, ``ValueError`` for empty or non-finite input
    unless explicitly allowed.
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, (np.ndarray, np.generic, numbers.Number, list, tuple)):
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be numeric (a tensor, array or number), got {type(x).__name__}: {err}") from None
    else:
        raise TypeError(f"{name} must be a torch.Tensor, numpy array or number, got {type(x).__name__}.")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}; convert it with .float().")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); pass at least one value.")
    if not allow_nonfinite and t.numel() and not bool(torch.isfinite(t).all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} inf values; quantization needs finite numbers. "
            f"Find where they come from, or clean them with torch.nan_to_num({name})."
        )
    return t


def check_axis(axis, ndim: int, name: str = "axis") -> int:
    """Return ``axis`` normalised to ``0..ndim-1`` or raise a clear error."""
    axis = check_int(axis, name)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name}={axis} is out of range for a tensor with {ndim} dimension(s); "
            f"use a value in [{-ndim}, {ndim - 1}]."
        )
    return axis % ndim


def check_bool(value, name: str) -> bool:
    """Return ``value`` if it is exactly True or False (not 1, not "yes")."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return value


def check_choice(value, name: str, choices):
    """Return ``value`` if it is one of ``choices``; the error lists them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(repr(c) for c in choices)}; pick one of those.")
    return value


def check_seed(seed, name: str = "seed") -> int:
    """A seed: an int in 0 .. 2**32 - 1 (what numpy and torch accept)."""
    return check_int(seed, name, 0, 2**32 - 1)


def check_module(model, name: str = "model"):
    """Return ``model`` if it is a ``torch.nn.Module``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"{name} must be a torch.nn.Module (e.g. qedu.models.pretrained('mlp')), got {type(model).__name__}."
        )
    return model
