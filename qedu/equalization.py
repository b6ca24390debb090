"""Cross-layer equalization (Nagel et al. 2019): even out channel ranges before per-tensor quantization.

ReLU is positively homogeneous: ``relu(x / s) = relu(x) / s`` for ``s > 0`` (so are max-pooling
and flattening). So for two layers with a ReLU between them, dividing output channel ``i`` of
the first layer (its weight row and its bias) by ``s_i`` and multiplying input channel ``i`` of
the second layer by ``s_i`` leaves the network's function unchanged::

    W1' = diag(1/s) W1     b1' = b1 / s     W2' = W2 diag(s)

Nagel et al. choose ``s_i = sqrt(r1_i / r2_i)``, where ``r1_i`` is the range (max |w|) of output
channel ``i`` of ``W1`` and ``r2_i`` that of input channel ``i`` of ``W2``: afterwards both are
``sqrt(r1_i * r2_i)``, so no channel is tiny next to the largest one, and a single per-tensor
scale fits every channel. With more than two layers the pairs are equalized in turn, a few sweeps.

M. Nagel, M. van Baalen, T. Blankevoort, M. Welling, "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV 2019.

>>> from qedu.models import make_mlp
>>> equalizable_pairs(make_mlp(seed=0))
[('fc1', 'fc2'), ('fc2', 'fc3')]
"""
from __future__ import annotations

import torch
from torch import nn

from qedu._validation import as_float32, as_float_tensor, check_int, check_module
from qedu.ptq import QUANTIZABLE, fold_batchnorm

__all__ = ["equalizable_pairs", "equalization_scales", "equalize"]

# Layers that commute with a positive per-channel scale, so they may sit between a pair.
_PASS_THROUGH = (nn.ReLU, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout)


def equalizable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Consecutive quantizable layers of a top-level ``nn.Sequential`` with only ReLU, max-pool,
    flatten, dropout or identity (a folded BatchNorm) between them.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    model = check_module(model)
    pairs, previous = [], None
    for name, module in model.named_children():
        if isinstance(module, QUANTIZABLE):
            if previous is not None:
                pairs.append((previous, name))
            previous = name
        elif not isinstance(module, _PASS_THROUGH):
            previous = None  # e.g. an unfolded BatchNorm or a sigmoid: not scale-equivariant
    return pairs


def _input_channel_ranges(w2: torch.Tensor, channels: int) -> torch.Tensor:
    """max |w2| per input channel; a Linear after a Flatten sees each channel ``k`` times in a row."""
    # (O, C, ...) for a conv, (O, C) or (O, C * k) for a Linear -> (O, C, k)
    return w2.abs().reshape(w2.shape[0], channels, -1).amax(dim=(0, 2))


def equalization_scales(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``s_i = sqrt(r1_i / r2_i)`` for each channel ``i`` between two layers (1 where a range is 0).

    Args:
        w1: weight of the first layer, output channels on axis 0.
        w2: weight of the second layer, input channels on axis 1 (a Linear after a Flatten:
            ``w2.shape[1]`` a multiple of the channels).

    Returns:
        float tensor ``(C,)``, ``C = w1.shape[0]``.

    Raises:
        TypeError / ValueError: ``w1``/``w2`` not finite float32-sized weights of at least two
        dimensions; ``w2``'s inputs are not a multiple of ``w1``'s output channels; ranges so far
        apart that ``s`` does not fit float32 (beyond ~1e38 or below ~1e-38).

    >>> equalization_scales(torch.tensor([[4.0], [1.0]]), torch.tensor([[1.0, 4.0]]))
    tensor([2.0000, 0.5000])
    """
    w1, w2 = (as_float32(as_float_tensor(w.detach() if isinstance(w, torch.Tensor) else w, name), name)
              for w, name in ((w1, "w1"), (w2, "w2")))
    if w1.ndim < 2:
        raise ValueError(f"w1 must be a layer weight with output channels on axis 0 (2-d or more), got shape {tuple(w1.shape)}.")
    channels = w1.shape[0]
    if w2.ndim < 2 or w2.shape[1] % channels:
        raise ValueError(f"w2 must have a multiple of {channels} inputs on axis 1 (w1 has {channels} output channels), "
                         f"got shape {tuple(w2.shape)}.")
    r1 = w1.abs().flatten(1).amax(dim=1).double()  # (C,), float64: r1 / r2 may exceed float32's range
    r2 = _input_channel_ranges(w2, channels).double()  # (C,)
    ok = (r1 > 0) & (r2 > 0)
    s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, torch.ones_like(r2))), torch.ones_like(r1)).float()
    if not bool((torch.isfinite(s) & (s > 0) & torch.isfinite(1 / s)).all()):
        raise ValueError("w1's and w2's channel ranges are so far apart (e.g. 1e38 next to 1e-38) that the scale "
                         "sqrt(r1 / r2) does not fit float32; such weights cannot be equalized.")
    return s


def _apply(first: nn.Module, second: nn.Module, s: torch.Tensor) -> None:
    shape_1 = (-1,) + (1,) * (first.weight.ndim - 1)  # s along axis 0 of w1
    w2 = second.weight.detach()
    w2_scaled = (w2.reshape(w2.shape[0], s.numel(), -1) * s.reshape(1, -1, 1)).reshape(w2.shape)  # (O, C, k)
    with torch.no_grad():
        first.weight.div_(s.reshape(shape_1))
        if first.bias is not None:
            first.bias.div_(s)
        second.weight.copy_(w2_scaled)


def equalize(model: nn.Module, sweeps: int = 20) -> nn.Module:
    """A copy of ``model`` (BatchNorm folded) with every :func:`equalizable_pairs` pair equalized.

    The copy computes the same function as the folded float model (up to float rounding); only
    how the ranges are spread over the channels changes. Quantize it as usual afterwards, e.g.
    ``quantize_model(equalize(model), PTQConfig(weight_granularity=PerTensor()))``.

    Args:
        model: a float model; not changed.
        sweeps: passes over all pairs (a layer in two pairs is pulled both ways; a few sweeps settle it).

    Returns:
        the equalized copy, in eval mode.

    Raises:
        TypeError / ValueError: ``model`` is not a module, ``sweeps`` not an int >= 1, a layer's
        weight holds NaN/inf, or two ranges too far apart to scale in float32.
    """
    model = fold_batchnorm(check_module(model))
    sweeps = check_int(sweeps, "sweeps", 1)
    pairs = equalizable_pairs(model)
    for _ in range(sweeps):
        for first_name, second_name in pairs:
            first, second = model.get_submodule(first_name), model.get_submodule(second_name)
            for name, layer in ((first_name, first), (second_name, second)):
                as_float_tensor(layer.weight.detach(), f"{name}.weight")  # NaN/inf: say which layer
            _apply(first, second, equalization_scales(first.weight, second.weight))
    return model
