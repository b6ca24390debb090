"""Input checks shared by every qedu module.

Each helper raises a ``ValueError`` or ``TypeError`` whose message names the argument, the
value it got and how to fix the call, so a learner never has to read a stack trace to find out
what went wrong.
"""
from __future__ import annotations

import math
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
    check_not_meta(t, name)
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


def check_labels(y, name: str = "y", n: int | None = None, n_classes: int | None = None) -> torch.Tensor:
    """Return ``y`` as a 1-D int64 tensor of class labels: ``n`` of them (if given), each in ``0..n_classes - 1``."""
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        what = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
        raise TypeError(f"{name} must be a 1-D integer tensor of class labels, got {what}; e.g. torch.tensor([3, 1, 4]).")
    check_not_meta(y, name)
    if y.ndim != 1 or y.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor (one label per input), got shape {tuple(y.shape)}.")
    if n is not None and len(y) != n:
        raise ValueError(f"{name} has {len(y)} labels but there are {n} inputs; pass one label per input.")
    if n_classes is not None and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"{name} holds labels {int(y.min())}..{int(y.max())}, outside the {n_classes} classes "
                         f"0..{n_classes - 1}; check the labels (or the model's number of outputs).")
    return y.long()


def check_token_ids(t, name: str = "tokens", model=None) -> torch.Tensor:
    """Return ``t`` if it is a non-empty 2-D integer tensor ``(rows, seq_len)`` of token ids >= 0; with ``model``
    (a :class:`qedu.models.TinyGPT`, or anything with ``tok``/``pos`` embeddings) also ids below its
    vocabulary size and rows no longer than the positions it has."""
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be a 2-D integer tensor of token ids (rows, seq_len), e.g. from "
                        f"qedu.text.windows(...), got {type(t).__name__} {getattr(t, 'dtype', '')} {tuple(getattr(t, 'shape', ()))}.")
    check_not_meta(t, name)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); pass at least one token.")
    if int(t.min()) < 0:
        raise ValueError(f"{name} holds the negative token id {int(t.min())}; token ids are 0..vocab_size - 1.")
    tok, pos = getattr(model, "tok", None), getattr(model, "pos", None)
    if isinstance(tok, torch.nn.Embedding) and int(t.max()) >= tok.num_embeddings:
        raise ValueError(f"{name} holds the token id {int(t.max())}, but the model's vocabulary is 0..{tok.num_embeddings - 1}; "
                         "encode the text with the model's own tokenizer (qedu.text.encode for byte models).")
    if isinstance(pos, torch.nn.Embedding) and t.shape[-1] > pos.num_embeddings:
        raise ValueError(f"{name} has rows of {t.shape[-1]} tokens, but the model reads at most {pos.num_embeddings}; "
                         f"cut them into windows (qedu.text.windows(tokens, {pos.num_embeddings})).")
    return t


# ----------------------------------------------------------------------------- float32 limits, numbers, models
# (Added for "nothing silently wrong": every check runs on the float32 values that are really used.)
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # 3.4028235e+38
FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)  # 1.1754944e-38, the smallest normal float32


def check_real(value, name: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
               hi_open: bool = False, allow_inf: bool = False, example: str | None = None) -> float:
    """Return ``value`` as a Python float if it is a real number (not bool, not str) in the interval.

    Accepts ints, floats, numpy scalars (``np.int64(5)``, ``np.float32(0.5)``) and one-element real
    tensors. NaN is always refused; inf only with ``allow_inf``. ``lo_open``/``hi_open`` exclude the
    bound itself (``lo=0, lo_open=True`` means "> 0").
    """
    eg = f" (e.g. {example})" if example else ""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number{eg}, got {type(value).__name__} {value!r}.")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a finite number{eg}, got {value!r}.")
    below = lo is not None and (v < lo or (lo_open and v == lo))
    above = hi is not None and (v > hi or (hi_open and v == hi))
    if below or above:
        left = "-inf" if lo is None else f"{lo:g}"
        right = "inf" if hi is None else f"{hi:g}"
        interval = f"{'(' if lo_open or lo is None else '['}{left}, {right}{')' if hi_open or hi is None else ']'}"
        raise ValueError(f"{name} must be in {interval}{eg}, got {value!r}.")
    return v


def check_count(value, name: str, lo: float = 0, *, example: str = "1e9") -> float:
    """A size or count (parameters, values, bytes): a finite real number >= ``lo``; numpy ints welcome."""
    return check_real(value, name, lo, example=example)


def check_shape(shape, name: str = "shape") -> tuple[int, ...]:
    """Return ``shape`` as a tuple of ints >= 0 (a ``torch.Size``, tuple or list)."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"{name} must be a tuple of sizes such as (64, 128), got {type(shape).__name__} {shape!r}.")
    dims = tuple(check_int(d, f"{name}[{i}]", 0) for i, d in enumerate(shape))
    return dims


def as_float32(t: torch.Tensor, name: str = "x") -> torch.Tensor:
    """``t`` (a floating-point tensor) in float32, refusing finite values that float32 cannot hold.

    qedu computes in float32; a float64 value beyond float32's largest (3.4e38) would silently
    become inf. Non-finite values pass through unchanged (callers check those separately).
    """
    t32 = t.to(torch.float32)
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16) and t.numel():
        over = torch.isfinite(t) & ~torch.isfinite(t32)
        if bool(over.any()):
            biggest = float(t[over].abs().max())
            raise ValueError(
                f"{name} holds {int(over.sum())} finite value(s) beyond float32's range (largest |value| {biggest:.4g} "
                f"> {FLOAT32_MAX:.4g}); qedu computes in float32, where they would become inf. Rescale {name} "
                "(check its units) so it fits in float32."
            )
    return t32


def check_not_meta(t: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Refuse meta tensors (shape only, no values)."""
    if isinstance(t, torch.Tensor) and t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (a shape without values); pass a tensor that holds data, "
                         f"e.g. torch.empty_like({name}, device='cpu') filled with real values.")
    return t


def model_dtype(model) -> torch.dtype | None:
    """The dtype of ``model``'s first floating-point parameter or buffer (None if it has none)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def to_model_dtype(x: torch.Tensor, model, name: str = "x") -> torch.Tensor:
    """Floating-point ``x`` cast to ``model``'s floating dtype (as :func:`qedu.models.predict` does).

    The float64 policy of qedu: float64 inputs are accepted, checked to fit the model's dtype and
    converted; values the model's dtype cannot hold raise a ``ValueError`` naming ``name``. Integer
    inputs (token ids, symbol indices) are left alone.
    """
    dtype = model_dtype(model)
    if dtype is None or not x.is_floating_point() or x.dtype == dtype:
        return x
    y = x.to(dtype)
    if x.numel() and x.element_size() > y.element_size():
        over = torch.isfinite(x) & ~torch.isfinite(y)
        if bool(over.any()):
            raise ValueError(
                f"{name} holds {int(over.sum())} finite value(s) (largest |value| {float(x[over].abs().max()):.4g}) "
                f"that the model's dtype {dtype} cannot hold; they would become inf. Rescale {name}."
            )
    return y


def run_model(model, x: torch.Tensor, name: str = "x"):
    """``model(x)``, turning torch's shape and dtype errors into a ``ValueError`` that names ``name``."""
    try:
        return model(x)
    except (RuntimeError, IndexError) as err:
        raise ValueError(f"the model cannot run on {name} of shape {tuple(x.shape)} and dtype {x.dtype}: "
                         f"{str(err).splitlines()[0]}. Pass inputs shaped like the model's training data.") from err


def check_fits_format(value: float, name: str, fmt) -> float:
    """Refuse a number that a float format (a :class:`qedu.floats.FloatFormat`) cannot hold: beyond its
    largest finite value it would start as inf (or NaN), and every later sum with it too."""
    if abs(value) > fmt.max:
        raise ValueError(f"{name}={value!r} is beyond {fmt.name}'s largest value {fmt.max:g}, so it would start as "
                         f"inf or NaN; pick a {name} with |{name}| <= {fmt.max:g}.")
    return value
