"""Bias correction (Nagel et al. 2019): remove the mean shift that weight rounding adds to a layer's output.

Rounding the weights changes a layer's output by ``(W_hat - W) x``. That error has a mean: over
many inputs it does not average to zero, because ``W_hat - W`` is fixed and ``E[x]`` is not 0
(ReLU outputs are all positive). Subtracting the expected shift from the bias removes it::

    b' = b - E[(W_hat - W) x]            (for a conv: the mean over samples and positions)

Here the expectation is taken on calibration data ("empirical" bias correction), layer by layer
in model order, each layer seeing the inputs that the already-corrected layers before it give.

M. Nagel, M. van Baalen, T. Blankevoort, M. Welling, "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV 2019.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from qedu._validation import as_float32, as_float_tensor, check_module, run_model, to_model_dtype
from qedu.ptq import QuantLayer, fold_batchnorm

__all__ = ["layer_output", "output_shift", "correct_bias"]


def layer_output(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``layer``'s forward pass with another ``weight`` and ``bias`` (Linear, Conv1d or Conv2d).

    >>> layer_output(nn.Linear(2, 1), torch.ones(1, 2), torch.tensor([[1.0, 2.0]]), None)
    tensor([[3.]])

    Raises:
        TypeError / ValueError: ``layer`` not a Linear/Conv1d/Conv2d; ``x``, ``weight`` or ``bias``
        not finite float32-sized tensors of shapes that fit the layer; an output beyond float32.
    """
    if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        raise TypeError(f"layer must be a Linear, Conv1d or Conv2d, got {type(layer).__name__}.")
    x, weight = (as_float32(as_float_tensor(t, name), name) for t, name in ((x, "x"), (weight, "weight")))
    if weight.shape != layer.weight.shape:
        raise ValueError(f"weight must have the layer's weight shape {tuple(layer.weight.shape)}, got {tuple(weight.shape)}.")
    if bias is not None:
        bias = as_float32(as_float_tensor(bias, "bias"), "bias")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},) (one per output channel), got {tuple(bias.shape)}.")
    forward = (lambda t: F.linear(t, weight, bias)) if isinstance(layer, nn.Linear) else \
        (lambda t: layer._conv_forward(t, weight, bias))
    y = run_model(forward, x)
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"the layer's output overflows float32 (largest |x| {x.abs().max().item():.3g}); scale x down.")
    return y


def _channel_mean(y: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the channel axis 1: ``(N, C, ...) -> (C,)``."""
    return y.transpose(0, 1).reshape(y.shape[1], -1).mean(dim=1)


def _inputs(model: nn.Module, layer: nn.Module, x_calib: torch.Tensor) -> torch.Tensor:
    """What ``layer`` receives when ``model`` runs on ``x_calib`` (a forward hook, removed after)."""
    seen = []
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(x_calib)
    finally:
        handle.remove()
    return seen[0]


def output_shift(float_layer: nn.Module, quant_layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """``E[quantized layer output - float layer output]`` per output channel, both on the input ``x``
    that the quantized layer's weights see (after its own activation quantizer, if any).

    Returns:
        float tensor ``(C_out,)``; all zeros after :func:`correct_bias` (up to float rounding).

    Raises:
        TypeError / ValueError: ``quant_layer`` not a :class:`~qedu.ptq.QuantLayer`, ``float_layer``
        not the same kind and shape of layer, or a bad ``x`` (see :func:`layer_output`).
    """
    if not isinstance(quant_layer, QuantLayer):
        raise TypeError(f"quant_layer must be a QuantLayer (a layer of what quantize_model returned), got "
                        f"{type(quant_layer).__name__}.")
    layer = quant_layer.layer
    if type(float_layer) is not type(layer) or float_layer.weight.shape != layer.weight.shape:
        raise ValueError(f"float_layer must be the float version of quant_layer: a {type(layer).__name__} with weight "
                         f"shape {tuple(layer.weight.shape)}, got {type(float_layer).__name__} "
                         f"{tuple(getattr(getattr(float_layer, 'weight', None), 'shape', ()))}.")
    y_quant = layer_output(layer, x, layer.weight, layer.bias)
    y_float = layer_output(layer, x, float_layer.weight, float_layer.bias)
    shift = _channel_mean(y_quant.double() - y_float.double())  # float64: the difference of two large outputs
    return as_float32(shift, "the output shift")


def correct_bias(float_model: nn.Module, quantized: nn.Module, x_calib) -> nn.Module:
    """A copy of ``quantized`` whose biases cancel the mean output shift of its rounded weights.

    Args:
        float_model: the float model that ``quantized`` came from (BatchNorm is folded here as
            :func:`qedu.ptq.prepare` does, so the layers line up by name).
        quantized: what :func:`qedu.ptq.quantize_model` returned for ``float_model``; not changed.
        x_calib: calibration inputs (never the test set).

    Returns:
        the corrected copy: for every quantized layer ``output_shift(...)`` is 0 on ``x_calib``.

    Raises:
        TypeError: a model is not an ``nn.Module``. ValueError: ``quantized`` holds no
        ``QuantLayer`` or a layer name that ``float_model`` lacks; bad ``x_calib``.
    """
    float_model, quantized = check_module(float_model, "float_model"), check_module(quantized, "quantized")
    x_calib = to_model_dtype(as_float_tensor(x_calib, "x_calib"), float_model, "x_calib")
    fold = getattr(getattr(quantized, "qedu_config", None), "fold_bn", True)
    reference = fold_batchnorm(float_model) if fold else copy.deepcopy(float_model).eval()
    corrected = copy.deepcopy(quantized).eval()
    names = [name for name, m in corrected.named_modules() if isinstance(m, QuantLayer)]
    if not names:
        raise ValueError("quantized holds no QuantLayer; pass what qedu.ptq.quantize_model returned.")
    float_names = dict(reference.named_modules())
    missing = [name for name in names if name not in float_names]
    if missing:
        raise ValueError(f"float_model has no layer(s) {missing}; pass the float model that was quantized.")
    with torch.no_grad():
        run_model(corrected, x_calib, "x_calib")  # a shape the model cannot take: say so before any work
    for name in names:  # model order: each layer sees the corrected layers before it
        quant_layer = corrected.get_submodule(name)
        layer = quant_layer.layer
        x = _inputs(corrected, layer, x_calib)
        shift = output_shift(float_names[name], quant_layer, x)
        with torch.no_grad():
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros_like(shift), requires_grad=False)
            layer.bias.sub_(shift)
    return corrected
