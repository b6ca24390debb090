"""Integer arithmetic of a quantized linear layer: the zero-point cross terms and where scales go.

With ``x ~ s_x (q_x - z_x)`` and ``w ~ s_w (q_w - z_w)``, one output of ``y = x @ w.T`` is a
dot product over the ``K`` inputs::

    y[n, o] = s_x * s_w[o] * sum_k (q_x[n, k] - z_x) * (q_w[o, k] - z_w[o])
            = s_x * s_w[o] * (  sum_k q_x[n, k] q_w[o, k]      # the integer matmul
                              - z_x * sum_k q_w[o, k]          # weights only: precomputed
                              - z_w[o] * sum_k q_x[n, k]       # a row sum of the input, at run time
                              + K * z_x * z_w[o] )             # a constant

* Symmetric weights (``z_w = 0``) drop the last two terms: that is why weights are symmetric.
* ``s_w`` may differ per **output** channel ``o``: it multiplies the whole sum, so it is applied
  once to the int32 accumulator. A scale per input channel or per group of inputs sits *inside*
  the sum, so the sum is no longer one integer dot product. Per-group formats (W4A16) therefore
  dequantize the weights and run a float matmul: :func:`dequantize_linear`.

>>> q_x = torch.tensor([[3, 0, 5]]); q_w = torch.tensor([[1, -2, 2], [0, 1, -1]])
>>> accumulate(zero_point_terms(q_x, 1, q_w, 0))
tensor([[12, -5]])
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from qedu._validation import FLOAT32_MAX, as_float32, as_float_tensor
from qedu.quantizers import dequantize

CODE_MIN, CODE_MAX = -(2**15), 2**16 - 1  # codes of up to 16 bits (int16 or uint16): int64 sums stay exact

__all__ = ["ZeroPointTerms", "zero_point_terms", "accumulate", "integer_linear", "dequantize_linear"]


class ZeroPointTerms(NamedTuple):
    """The four terms of ``sum_k (q_x - z_x)(q_w - z_w)``, each int64 of shape ``(N, O)``."""

    products: torch.Tensor  # sum_k q_x[n, k] * q_w[o, k]: the integer matmul
    weight_sums: torch.Tensor  # - z_x * sum_k q_w[o, k]
    input_sums: torch.Tensor  # - z_w[o] * sum_k q_x[n, k]
    constant: torch.Tensor  # + K * z_x * z_w[o]


def _codes(q, name: str, ndim: int) -> torch.Tensor:
    if not isinstance(q, torch.Tensor) or q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        what = f"dtype {q.dtype}" if isinstance(q, torch.Tensor) else type(q).__name__
        raise TypeError(f"{name} must be a tensor of integer codes, got {what}; quantize it first with "
                        "qedu.quantizers.quantize.")
    if q.ndim != ndim:
        shape = "(N, K)" if name == "q_x" else "(O, K)"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(q.shape)}.")
    q = q.to(torch.int64)
    if q.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(q.shape)}); pass at least one code.")
    if int(q.min()) < CODE_MIN or int(q.max()) > CODE_MAX:
        raise ValueError(f"{name} must hold codes of at most 16 bits ({CODE_MIN}..{CODE_MAX}), got values from "
                         f"{int(q.min())} to {int(q.max())}.")
    return q


def _per_output(v, n_out: int, name: str, *, integer: bool) -> torch.Tensor:
    """``v`` as a 1-d tensor of length ``n_out``: one value per output channel (a scalar repeats).

    Zero points (``integer=True``) must be whole numbers of at most 16 bits; scales finite numbers > 0
    that fit float32.
    """
    t = as_float_tensor(v, name)  # refuses strings, NaN and inf
    if integer and not bool((t == t.round()).all()):
        raise ValueError(f"{name} must hold integers (zero points are codes), got {t.tolist()}.")
    if integer and bool(((t < CODE_MIN) | (t > CODE_MAX)).any()):
        raise ValueError(f"{name} must lie in {CODE_MIN}..{CODE_MAX} (a code of at most 16 bits), got {t.tolist()}.")
    if not integer:
        t = as_float32(t, name)
        if bool((t <= 0).any()):
            raise ValueError(f"{name} must be > 0 (a grid step), got {t.min().item()}.")
    if t.ndim == 2 and t.shape[1] != 1:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)}: it varies along the input axis (per input channel or per group). "
            "Such a scale sits inside the dot product and does not factor out of an integer matmul; "
            "use dequantize_linear (dequantize, then a float matmul), as per-group W4A16 kernels do.")
    t = t.reshape(-1)
    if t.numel() == 1:
        t = t.expand(n_out)
    if t.numel() != n_out:
        raise ValueError(f"{name} must be a scalar or hold one value per output channel ({n_out}), got {t.numel()}.")
    return t.to(torch.int64) if integer else t.to(torch.float32)


def zero_point_terms(q_x, zero_point_x, q_w, zero_point_w) -> ZeroPointTerms:
    """Expand ``sum_k (q_x[n,k] - z_x)(q_w[o,k] - z_w[o])`` into its four integer terms.

    Args:
        q_x: input codes, shape ``(N, K)``; ``zero_point_x``: one integer (per tensor).
        q_w: weight codes, shape ``(O, K)``; ``zero_point_w``: an integer or one per output channel.

    Returns:
        :class:`ZeroPointTerms`, each int64 ``(N, O)``; :func:`accumulate` adds them up.

    Raises:
        TypeError: codes that are not integer tensors. ValueError: bad shapes, codes or zero points
        beyond 16 bits, or a weight zero point that varies along the input axis.

    >>> t = zero_point_terms(torch.tensor([[2, 2]]), 1, torch.tensor([[1, 3]]), 0)
    >>> [int(v) for v in t]
    [8, -4, 0, 0]
    """
    q_x, q_w = _codes(q_x, "q_x", 2), _codes(q_w, "q_w", 2)
    if q_x.shape[1] != q_w.shape[1]:
        raise ValueError(f"q_x has {q_x.shape[1]} inputs per row but q_w has {q_w.shape[1]}; they must match (K).")
    z_x = _per_output(zero_point_x, 1, "zero_point_x", integer=True)[0]
    z_w = _per_output(zero_point_w, q_w.shape[0], "zero_point_w", integer=True)  # (O,)
    k = q_x.shape[1]
    products = q_x @ q_w.T  # (N, K) @ (K, O) -> (N, O), exact in int64
    weight_sums = (-z_x * q_w.sum(dim=1)).expand_as(products)  # (O,) -> (N, O)
    input_sums = -q_x.sum(dim=1, keepdim=True) * z_w  # (N, 1) * (O,) -> (N, O)
    constant = (k * z_x * z_w).expand_as(products)
    return ZeroPointTerms(products, weight_sums, input_sums, constant)


def accumulate(terms: ZeroPointTerms) -> torch.Tensor:
    """The integer accumulator ``sum_k (q_x - z_x)(q_w - z_w)``: the four terms added (int64).

    >>> accumulate(zero_point_terms(torch.tensor([[2, 2]]), 1, torch.tensor([[1, 3]]), 0))
    tensor([[4]])
    """
    if not isinstance(terms, ZeroPointTerms):
        raise TypeError(f"terms must be the ZeroPointTerms that zero_point_terms returns, got {type(terms).__name__}.")
    return terms.products + terms.weight_sums + terms.input_sums + terms.constant


def integer_linear(q_x, scale_x, zero_point_x, q_w, scale_w, zero_point_w, bias=None) -> torch.Tensor:
    """A quantized linear layer computed the integer way: ``y = s_x * s_w[o] * acc[n, o] + bias[o]``.

    ``acc`` is :func:`accumulate` of the zero-point terms (what an int8 kernel sums in int32);
    the scales are applied once, after the sum, which works only because ``s_w`` is one number
    per output channel (or per tensor).

    Args:
        q_x, zero_point_x: input codes ``(N, K)`` and their zero point; ``scale_x``: one float.
        q_w, zero_point_w: weight codes ``(O, K)`` and zero point(s); ``scale_w``: a float or one
            per output channel (shape ``(O,)`` or ``(O, 1)``).
        bias: optional float ``(O,)``.

    Returns:
        float32 ``(N, O)``, equal (to float rounding) to :func:`dequantize_linear`.

    Raises:
        ValueError: a ``scale_w`` that varies along the input axis (per group or per input
        channel): it does not factor out; use :func:`dequantize_linear`. Scales not > 0, NaN/inf,
        a bias of the wrong shape, or an output beyond float32's range.

    >>> integer_linear(torch.tensor([[2, 2]]), 0.5, 1, torch.tensor([[1, 3]]), 0.25, 0)
    tensor([[0.5000]])
    """
    n_out = q_w.shape[0] if isinstance(q_w, torch.Tensor) and q_w.ndim == 2 else 1
    s_w = _per_output(scale_w, n_out, "scale_w", integer=False)  # (O,): checked first, the usual mistake
    s_x = _per_output(scale_x, 1, "scale_x", integer=False)[0]
    acc = accumulate(zero_point_terms(q_x, zero_point_x, q_w, zero_point_w))  # (N, O) int64
    y = acc.to(torch.float64) * (s_x.double() * s_w.double())  # the requantization multiplier, per output
    if bias is not None:
        y = y + _bias(bias, n_out).double()
    if bool((y.abs() > FLOAT32_MAX).any()):
        raise ValueError(f"the output overflows float32 (largest |y| {y.abs().max().item():.4g} > {FLOAT32_MAX:.4g}): "
                         "scale_x * scale_w is too large for these codes.")
    return y.to(torch.float32)


def _bias(bias, n_out: int) -> torch.Tensor:
    """``bias`` as float32 ``(n_out,)``: finite, one value per output channel."""
    b = as_float32(as_float_tensor(bias, "bias"), "bias").reshape(-1)
    if b.numel() != n_out:
        raise ValueError(f"bias must hold one value per output channel ({n_out}), got shape {tuple(torch.as_tensor(bias).shape)}.")
    return b


def dequantize_linear(q_x, scale_x, zero_point_x, q_w, scale_w, zero_point_w, bias=None) -> torch.Tensor:
    """Dequantize input and weights, then a float matmul: ``F.linear(x_hat, w_hat, bias)``.

    Works for any scale that broadcasts against the codes (per tensor, per channel, per group);
    this is what W4A16 kernels do with per-group 4-bit weights. The reference that
    :func:`integer_linear` must match.

    >>> dequantize_linear(torch.tensor([[2, 2]]), 0.5, 1, torch.tensor([[1, 3]]), 0.25, 0)
    tensor([[0.5000]])

    Raises:
        TypeError / ValueError: codes, scales or zero points that :func:`qedu.quantizers.dequantize`
        refuses; shapes that do not multiply; a bad bias; an output beyond float32's range.
    """
    q_x, q_w = _codes(q_x, "q_x", 2), _codes(q_w, "q_w", 2)
    if q_x.shape[1] != q_w.shape[1]:
        raise ValueError(f"q_x has {q_x.shape[1]} inputs per row but q_w has {q_w.shape[1]}; they must match (K).")
    scale_x, scale_w = (as_float32(as_float_tensor(v, name), name) for v, name in ((scale_x, "scale_x"), (scale_w, "scale_w")))
    x_hat = dequantize(q_x, scale_x, zero_point_x)  # (N, K)
    w_hat = dequantize(q_w, scale_w, zero_point_w)  # (O, K)
    y = F.linear(x_hat, w_hat, None if bias is None else _bias(bias, q_w.shape[0]))
    if not bool(torch.isfinite(y).all()):
        raise ValueError("the output overflows float32 (|y| > 3.4e38 somewhere): the scales are too large for these codes.")
    return y
