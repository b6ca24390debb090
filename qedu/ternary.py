"""Ternary weights after training: Ternary Weight Networks' threshold (Li et al. 2016).

A ternary weight is ``-scale``, ``0`` or ``+scale``. Min/max scaling (lesson 05's first PTQ)
sets ``scale = max|w|`` per output channel and rounds to nearest, so every weight below
``max|w| / 2`` becomes 0: with one large weight in a row, nearly the whole row vanishes.
TWN chooses the threshold and the level from the *typical* weight instead, per output channel::

    delta = 0.7 * mean |w|                    the threshold (TWN's rule for roughly normal weights)
    q     = sign(w) * (|w| > delta)            codes in {-1, 0, 1}
    scale = mean |w| over the weights with q != 0    the least-squares level for these codes
    w_hat = scale * q

For fixed codes ``q``, ``scale = mean |w|`` over the nonzero codes minimises ``||w - scale * q||^2``
(set the derivative to zero); the 0.7 is TWN's approximation of the best threshold when the
weights are normal or uniform. It is the fair post-training baseline to compare ternary QAT with.

>>> q, scale = twn_quantize(torch.tensor([[0.1, -0.5, 0.6, 0.0]]))
>>> q.tolist(), round(scale.item(), 2)     # delta = 0.7 * 0.3 = 0.21
([[0, -1, 1, 0]], 0.55)
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from qedu._validation import as_float32, as_float_tensor, check_int, check_real

__all__ = ["twn_quantize", "twn_ptq"]


def twn_quantize(w, axis: int = 0, delta_factor: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary codes and one scale per slice along ``axis`` by TWN's rule (module docstring).

    Args:
        w: weights, e.g. a Linear weight (C_out, C_in). axis: the dimension that keeps its own
            scale (0: per output channel). delta_factor: threshold as a multiple of mean |w| (0.7).

    Returns:
        ``(q, scale)``: int8 codes in {-1, 0, 1} shaped like ``w``, and float32 scales shaped to
        broadcast against ``w`` (size 1 except along ``axis``); ``w_hat = scale * q``. A slice
        whose weights are all 0 gets scale 0.

    Raises:
        TypeError / ValueError: ``w`` not finite float32-sized numbers of at least one dimension;
        a bad ``axis``; ``delta_factor`` not a finite number >= 0.

    >>> q, scale = twn_quantize(torch.tensor([[1.0, 0.1], [0.0, 0.0]]))
    >>> (scale * q).tolist()
    [[1.0, 0.0], [0.0, 0.0]]
    """
    w = as_float32(as_float_tensor(w, "w"), "w")
    if w.dim() == 0:
        raise ValueError("w must have at least one dimension (e.g. a Linear weight of shape (C_out, C_in)).")
    axis = check_int(axis, "axis", -w.dim(), w.dim() - 1) % w.dim()
    delta_factor = check_real(delta_factor, "delta_factor", 0, example="0.7, TWN's choice")
    others = [d for d in range(w.dim()) if d != axis]  # reduce over every dimension but axis
    a = w.abs().double()  # means and sums of float32 values near 3.4e38 would overflow in float32
    delta = delta_factor * a.mean(dim=others, keepdim=True) if others else delta_factor * a
    keep = a > delta
    q = (torch.sign(w) * keep).to(torch.int8)
    kept = keep.sum(dim=others, keepdim=True) if others else keep.float()
    total = (a * keep).sum(dim=others, keepdim=True) if others else a * keep
    scale = torch.where(kept > 0, total / kept.clamp(min=1), 0.0)
    return q, scale.float()


def twn_ptq(model: nn.Module, delta_factor: float = 0.7) -> nn.Module:
    """A copy of ``model`` whose Linear weights are replaced by their TWN ternary version.

    Per output channel (``axis=0``); biases and every other layer stay float. The caller's model
    is untouched.

    >>> layer = twn_ptq(nn.Linear(4, 2)); len(layer.weight.abs().unique()) <= 3
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (e.g. qedu.models.pretrained('mlp')), got {type(model).__name__}.")
    model = copy.deepcopy(model)
    layers = [model] if isinstance(model, nn.Linear) else [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for layer in layers:
            q, scale = twn_quantize(layer.weight, axis=0, delta_factor=delta_factor)
            layer.weight.copy_(scale * q)
    return model
