"""LLM.int8() (Dettmers et al. 2022): int8 matrix multiplication with the outlier columns kept in float.

An int8 matmul ``Y = X W^T`` needs one scale per row of ``X`` (one token) and one per row of
``W`` (one output neuron) -- *vector-wise* quantization::

    sx_t = max_k |X[t, k]|            Xq[t, k] = round(X[t, k] * 127 / sx_t)       int8
    sw_o = max_k |W[o, k]|            Wq[o, k] = round(W[o, k] * 127 / sw_o)       int8
    Y[t, o] ~ (sum_k Xq[t, k] Wq[o, k]) * sx_t * sw_o / 127^2                      int32 accumulate

In large models a few hidden channels carry values up to 20x larger than the rest
("emergent outlier features", at >= 6.7 B parameters in the paper). One such value sets its
whole row's scale and crushes every other value of that token to a handful of levels.
LLM.int8() splits the matmul by *column* of ``X`` (= input channel):

    outlier columns  C = {k : |X[t, k]| >= threshold for some token t}     (threshold 6.0)
    Y = int8 matmul over the columns not in C  +  X[:, C] @ W_hat[:, C]^T in float

Here ``W_hat = Wq * sw / 127``: the weight is stored in int8 once, as in bitsandbytes'
``Linear8bitLt`` (``has_fp16_weights=False``), and its outlier columns are dequantized.

**Equal to bitsandbytes 0.50.2** (tests/test_llm_int8.py): :func:`vectorwise_quantize` equals
``bitsandbytes.functional.int8_vectorwise_quant`` exactly: the outlier *values* (not whole
columns) are left out of the row absmax, then the outlier columns are zeroed in the codes.
:func:`int8_mm_dequant` equals ``int8_mm_dequant`` exactly when given
``factor=BNB_CPU_FACTOR``: bitsandbytes' CPU (default) backend multiplies by the literal
``6.200124e-05``, 1.8e-5 (relative) more than ``1/127^2 = 6.2000124e-05`` that qedu uses by
default (its CUDA kernel uses ``6.200012e-05``). A row that is all zero gets codes 0 here;
bitsandbytes computes ``0 * 127 / 0`` (NaN) for it.

>>> q, row_absmax, cols = vectorwise_quantize(torch.tensor([[1.0, -0.5, 8.0], [2.0, 0.0, 1.0]]), threshold=6.0)
>>> q, row_absmax, cols
(tensor([[127, -64,   0],
        [127,   0,   0]], dtype=torch.int8), tensor([1., 2.]), tensor([2]))
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

from qedu._validation import as_float_tensor, check_module, check_real
from qedu.layerwise import replace_linears

__all__ = ["vectorwise_quantize", "int8_mm_dequant", "int8_linear", "Int8Linear", "llm_int8_model",
           "outlier_columns", "BNB_CPU_FACTOR", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 6.0
BNB_CPU_FACTOR = 6.200124e-05  # bitsandbytes' default-backend literal for 1 / 127^2 (see the module docstring)


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0 (6.0 in LLM.int8(); 0 keeps no outliers), got {threshold!r}.")
    return float(threshold)


def _check_2d(x, name: str) -> torch.Tensor:
    x = as_float_tensor(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {tuple(x.shape)}; reshape it to (-1, C) first.")
    return x


def outlier_columns(x, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Indices of the columns of ``x`` (n, C) holding any ``|value| >= threshold`` (int64, sorted).

    >>> outlier_columns(torch.tensor([[0.1, 7.0, 0.2], [-6.0, 0.0, 0.3]]))
    tensor([0, 1])
    """
    x = _check_2d(x, "x")
    threshold = _check_threshold(threshold)
    if threshold == 0:
        return torch.zeros(0, dtype=torch.int64)
    return torch.nonzero((x.abs() >= threshold).any(dim=0)).flatten()


def vectorwise_quantize(x, threshold: float = 0.0):
    """Row-wise absmax int8 codes of ``x``, outlier columns set apart (LLM.int8()'s first step).

    ``outliers = |x| >= threshold`` (none if ``threshold == 0``);
    ``row_absmax[t] = max |x[t, k]|`` over the values that are not outliers;
    ``q = round(x * (127 / row_absmax))`` as int8, 0 in the outlier columns.

    Args:
        x: ``(n, C)`` real values (float16/bfloat16 are computed in float32, as bitsandbytes does).
        threshold: outlier magnitude (>= 0).

    Returns:
        ``(q, row_absmax, cols)``: int8 ``(n, C)``, float32 ``(n,)``, int64 outlier column indices.

    Raises:
        TypeError / ValueError: for non-2-D or non-finite ``x`` or a negative threshold.

    >>> vectorwise_quantize(torch.tensor([[0.5, -1.0]]))
    (tensor([[  64, -127]], dtype=torch.int8), tensor([1.]), tensor([], dtype=torch.int64))
    """
    x = _check_2d(x, "x")
    threshold = _check_threshold(threshold)
    outliers = x.abs() >= threshold if threshold > 0 else torch.zeros_like(x, dtype=torch.bool)
    cols = torch.nonzero(outliers.any(dim=0)).flatten()  # (n_outlier_cols,)
    inliers = torch.where(outliers, torch.zeros_like(x), x)  # outlier values leave the absmax
    row_absmax = inliers.abs().amax(dim=1).float()  # (n,)
    safe = torch.where(row_absmax > 0, row_absmax, torch.ones_like(row_absmax))  # an all-zero row -> codes 0
    q = torch.round(inliers * (127.0 / safe)[:, None]).to(torch.int8)  # |value| <= absmax -> |q| <= 127
    q[:, cols] = 0  # the outlier columns go through the float path
    return q, row_absmax, cols


def int8_mm_dequant(acc, row_absmax, col_absmax, bias=None, factor: float = 1 / 127**2) -> torch.Tensor:
    """Back to real values after an int8 matmul: ``acc * (row_absmax * col_absmax) * factor + bias``.

    Args:
        acc: int32 ``(n, m)`` accumulators ``Xq @ Wq^T``.
        row_absmax: float32 ``(n,)`` scales of the rows of ``X``; ``col_absmax``: float32 ``(m,)``
            scales of the rows of ``W`` (the output columns).
        bias: optional ``(m,)``.
        factor: ``1 / 127^2``; pass :data:`BNB_CPU_FACTOR` to reproduce bitsandbytes' CPU backend.

    Returns:
        float32 ``(n, m)``.

    >>> int8_mm_dequant(torch.tensor([[16129]], dtype=torch.int32), torch.tensor([2.0]), torch.tensor([3.0]))
    tensor([[6.]])
    """
    if not isinstance(acc, torch.Tensor) or acc.dtype != torch.int32 or acc.ndim != 2:
        raise TypeError("acc must be a 2-D int32 tensor of accumulators (Xq.int() @ Wq.int().T).")
    row_absmax = as_float_tensor(row_absmax, "row_absmax").float()
    col_absmax = as_float_tensor(col_absmax, "col_absmax").float()
    if row_absmax.shape != (acc.shape[0],) or col_absmax.shape != (acc.shape[1],):
        raise ValueError(f"row_absmax must have shape ({acc.shape[0]},) and col_absmax ({acc.shape[1]},) for acc of shape "
                         f"{tuple(acc.shape)}, got {tuple(row_absmax.shape)} and {tuple(col_absmax.shape)}.")
    if bool((row_absmax < 0).any()) or bool((col_absmax < 0).any()):
        raise ValueError("row_absmax and col_absmax are absolute maxima, so >= 0; pass the scales vectorwise_quantize returns.")
    factor = check_real(factor, "factor", 0, lo_open=True, example="1 / 127**2")
    out = acc * (row_absmax[:, None] * col_absmax[None, :]) * factor  # (n, m) float32
    if bias is not None:
        out = out + as_float_tensor(bias, "bias")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("acc * row_absmax * col_absmax * factor is beyond float32 (inf); the inputs or weights are too "
                         "large (rescale them) or factor is wrong (1 / 127**2).")
    return out


def _int8_matmul(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    """Exact int32 ``xq @ wq^T``: float64 holds every such sum exactly (|sum| < 2^53)."""
    return (xq.double() @ wq.double().T).to(torch.int32)  # (n, C) @ (C, m) -> (n, m)


def int8_linear(x, wq: torch.Tensor, w_absmax: torch.Tensor, bias=None, threshold: float = DEFAULT_THRESHOLD,
                factor: float = 1 / 127**2) -> torch.Tensor:
    """LLM.int8() forward of a Linear whose weight is stored as ``(wq, w_absmax)`` (see module docstring).

    Args:
        x: inputs ``(..., C_in)``.
        wq, w_absmax: ``vectorwise_quantize(weight)[:2]``: int8 ``(C_out, C_in)`` and float32 ``(C_out,)``.
        bias: optional ``(C_out,)``.
        threshold: outlier threshold; 0 makes it a plain vector-wise int8 matmul.
        factor: as in :func:`int8_mm_dequant`.

    Returns:
        float32 ``(..., C_out)``.

    >>> w = torch.tensor([[1.0, 2.0], [0.5, -1.0]]); wq, sw, _ = vectorwise_quantize(w)
    >>> int8_linear(torch.tensor([[1.0, 10.0]]), wq, sw)
    tensor([[21.0079, -9.4961]])
    """
    x = as_float_tensor(x, "x")
    if not isinstance(wq, torch.Tensor) or wq.dtype != torch.int8 or wq.ndim != 2:
        raise TypeError("wq must be the 2-D int8 weight codes from vectorwise_quantize(weight).")
    if x.shape[-1] != wq.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features but the weight expects {wq.shape[1]}.")
    x2 = x.reshape(-1, x.shape[-1])  # (..., C_in) -> (n, C_in)
    xq, x_absmax, cols = vectorwise_quantize(x2, threshold)
    out = int8_mm_dequant(_int8_matmul(xq, wq), x_absmax, w_absmax, bias, factor)  # the int8 part
    if cols.numel():
        w_hat = wq[:, cols].float() * (w_absmax[:, None] / 127.0)  # dequantized outlier columns (C_out, k)
        out = out + x2[:, cols].float() @ w_hat.T  # the float part: (n, k) @ (k, C_out)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"x (max |x| = {float(x2.abs().max()):.3g}) and the weight (max |w| = {float(w_absmax.max()):.3g}) "
                         "give outputs beyond float32; rescale the inputs.")
    return out.reshape(*x.shape[:-1], wq.shape[0])


class Int8Linear(nn.Module):
    """An ``nn.Linear`` stored in int8 (vector-wise) that runs LLM.int8() (:func:`int8_linear`).

    >>> layer = Int8Linear(nn.Linear(4, 2)); layer.wq.dtype, layer(torch.randn(3, 4)).shape
    (torch.int8, torch.Size([3, 2]))
    """

    def __init__(self, linear: nn.Linear, threshold: float = DEFAULT_THRESHOLD):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}.")
        self.threshold = _check_threshold(threshold)
        wq, w_absmax, _ = vectorwise_quantize(linear.weight.detach())
        self.register_buffer("wq", wq)
        self.register_buffer("w_absmax", w_absmax)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.wq, self.w_absmax, self.bias, self.threshold).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}"


def llm_int8_model(model: nn.Module, threshold: float = DEFAULT_THRESHOLD, names=None) -> nn.Module:
    """A copy of ``model`` with every (or each named) ``nn.Linear`` replaced by an :class:`Int8Linear`.

    >>> llm_int8_model(nn.Sequential(nn.Linear(4, 2)))[0]
    Int8Linear(in_features=4, out_features=2, threshold=6.0)
    """
    check_module(model)
    threshold = _check_threshold(threshold)
    return replace_linears(model, lambda linear: Int8Linear(linear, threshold), names)
