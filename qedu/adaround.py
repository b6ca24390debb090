"""AdaRound (Nagel et al. 2020): learn, weight by weight, whether to round down or up.

Round-to-nearest (RTN) makes each weight as close as possible to its float value, but what
matters is the layer's *output*: errors of neighbouring weights can cancel. AdaRound keeps the
scale and learns only the rounding direction. Each weight gets a variable ``v`` and a soft
rounding ``h(v) = clamp(sigmoid(v) * (zeta - gamma) + gamma, 0, 1)`` in [0, 1]; the weight is::

    w_soft = scale * (clamp(floor(w / scale) + h(v) + zero_point, qmin, qmax) - zero_point)

and ``v`` minimises, on calibration inputs ``x`` of the layer,

    || layer(x; W) - layer(x; W_soft) ||^2  +  lambda * sum(1 - |2 h(v) - 1|^beta)

The second term pushes every ``h`` to 0 or 1 (``beta`` anneals from 20 to 2, so it bites
gradually). At the end ``h`` is rounded: each code is ``floor(w / scale)`` or one more, so it
is never more than one step from RTN's. Layers are done in model order, each fed with the
outputs of the already-rounded layers before it and fitted to the float model's output.

M. Nagel, R. A. Amjad, M. van Baalen, C. Louizos, T. Blankevoort, "Up or Down? Adaptive
Rounding for Post-Training Quantization", ICML 2020.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qedu._validation import (as_float32, as_float_tensor, check_int, check_module, check_real, check_seed, run_model,
                              to_model_dtype)
from qedu.formats import IntFormat
from qedu.granularity import PerChannel
from qedu.optim import _LeanAdam
from qedu.ptq import QUANTIZABLE, fold_batchnorm, quantizable_layers
from qedu.quantizers import choose_qparams, dequantize, quantize

__all__ = ["ZETA", "GAMMA", "rectified_sigmoid", "AdaRoundResult", "adaround_layer", "adaround_model",
           "rtn_model"]

ZETA, GAMMA = 1.1, -0.1  # the stretch of the rectified sigmoid, as in the paper


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(v) = clamp(sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)``: reaches 0 and 1 exactly.

    >>> rectified_sigmoid(torch.tensor([-10.0, 0.0, 10.0]))
    tensor([0.0000, 0.5000, 1.0000])

    Raises:
        TypeError / ValueError: ``v`` not numbers, or NaN (+-inf are fine: h is 0 or 1 there).
    """
    v = as_float_tensor(v, "v", allow_empty=True, allow_nonfinite=True)
    if bool(torch.isnan(v).any()):
        raise ValueError("v contains NaN; h(v) is defined for every number and +-inf, not for NaN.")
    return _h(v)


def _h(v: torch.Tensor) -> torch.Tensor:
    """:func:`rectified_sigmoid` without the check (inside the optimization loop)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def _layer_output(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.detach()  # no gradient reaches the caller's bias
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    return layer._conv_forward(x, weight, bias)  # Conv1d / Conv2d


def _reconstruction(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over a sample's outputs, averaged over the samples."""
    return (y - target).pow(2).flatten(1).sum(dim=1).mean()


@dataclass(frozen=True)
class AdaRoundResult:
    """Codes of one layer: learned (``q``) and round-to-nearest (``q_rtn``), with the shared
    ``scale``/``zero_point``, and the reconstruction error of each on the calibration inputs."""

    q: torch.Tensor
    q_rtn: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    error: float
    error_rtn: float


def adaround_layer(layer: nn.Module, x: torch.Tensor, target: torch.Tensor, scale, zero_point, fmt: IntFormat, *,
                   iters: int = 500, lr: float = 1e-2, reg: float = 0.01, warmup: float = 0.2) -> AdaRoundResult:
    """Learn the rounding of ``layer.weight`` so that ``layer(x)`` with the codes matches ``target``.

    Args:
        layer: a Linear/Conv layer (not changed); its bias stays float.
        x: the layer's inputs on calibration data; ``target``: the outputs to reproduce.
        scale, zero_point, fmt: the weight grid (e.g. from ``choose_qparams``), kept fixed.
        iters, lr: Adam steps and step size; ``reg``: lambda; ``warmup``: fraction of the
            steps without the rounding term (then ``beta`` anneals from 20 to 2).

    Returns:
        :class:`AdaRoundResult`; ``q`` differs from ``q_rtn`` by at most one code everywhere.

    Raises:
        TypeError / ValueError: ``layer`` not a Linear/Conv1d/Conv2d; ``x``/``target`` not finite
        float32-sized tensors that fit the layer; a bad grid, ``fmt``, ``iters``, ``lr``, ``reg`` or
        ``warmup``; a reconstruction loss that overflows float32 (inputs far too large).
    """
    if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        raise TypeError(f"layer must be an nn.Linear, nn.Conv1d or nn.Conv2d, got {type(layer).__name__}.")
    if not isinstance(fmt, IntFormat):
        raise TypeError(f"fmt must be an IntFormat such as qedu.formats.INT4, got {fmt!r}.")
    iters = check_int(iters, "iters", 1)
    lr = check_real(lr, "lr", 0, lo_open=True, example="1e-2")
    reg = check_real(reg, "reg", 0, example="0.01")
    warmup = check_real(warmup, "warmup", 0, 1, example="0.2")
    x = as_float32(as_float_tensor(x, "x"), "x").detach()
    target = as_float32(as_float_tensor(target, "target"), "target").detach()
    scale = as_float32(as_float_tensor(scale, "scale"), "scale")
    if bool((scale <= 0).any()) or not bool(torch.isfinite(1.0 / scale).all()):
        raise ValueError(f"scale must be > 0 with a finite 1 / scale (a grid step), got {scale.min().item()}; "
                         "use choose_qparams(layer.weight, fmt, PerChannel(0)).")
    zero_point = torch.as_tensor(zero_point)
    with torch.no_grad():
        y = run_model(lambda t: _layer_output(layer, t, layer.weight.detach()), x)
    if y.shape != target.shape:
        raise ValueError(f"target must have the layer's output shape {tuple(y.shape)} on x, got {tuple(target.shape)}.")
    x, target, w = x.detach(), target.detach(), layer.weight.detach()  # the caller's tensors get no gradients
    w_scaled = w * (1.0 / scale)  # the same product RTN rounds
    w_floor = torch.floor(w_scaled)
    frac = (w_scaled - w_floor).clamp(0.01, 0.99)
    p = (frac - GAMMA) / (ZETA - GAMMA)  # start where h(v) = the fractional part: RTN, softly
    v = torch.log(p / (1 - p)).requires_grad_(True)
    optimizer = _LeanAdam([v], lr=lr)  # torch.optim.Adam's update
    zp = zero_point.to(torch.float32)
    warm = int(warmup * iters)
    for step in range(iters):
        h = _h(v)
        w_soft = scale * (torch.clamp(w_floor + h + zp, fmt.qmin, fmt.qmax) - zp)
        loss = _reconstruction(_layer_output(layer, x, w_soft), target)
        if step >= warm:
            beta = 20 + (2 - 20) * (step - warm) / max(iters - warm - 1, 1)
            loss = loss + reg * (1 - (2 * h - 1).abs().pow(beta)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if not bool(torch.isfinite(v).all()):  # the loss overflowed float32: its gradients were NaN
        raise ValueError(f"the reconstruction loss overflowed float32 (largest |x| {x.abs().max().item():.3g}, largest "
                         f"|target| {target.abs().max().item():.3g}); rescale x and target.")
    with torch.no_grad():
        up = (_h(v) >= 0.5).to(torch.float32)
        q = torch.clamp(w_floor + up + zp, fmt.qmin, fmt.qmax).to(torch.int32)
        q_rtn = quantize(w, scale, zero_point, fmt)
        errors = [_reconstruction(_layer_output(layer, x, dequantize(codes, scale, zero_point)).double(), target.double()).item()
                  for codes in (q, q_rtn)]  # in float64: a float32 sum of squares may overflow
    return AdaRoundResult(q, q_rtn, scale, zero_point, errors[0], errors[1])


def _captured(model: nn.Module, layer: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    seen = []

    def hook(module, args, output):
        seen.append((args[0] if what == "input" else output).detach())

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def _check(model, bits, x_calib):
    model = check_module(model)
    bits = check_int(bits, "bits", 2, 8)
    x_calib = to_model_dtype(as_float_tensor(x_calib, "x_calib"), model, "x_calib")
    return model, IntFormat(bits), x_calib


def _weight_grid(w: torch.Tensor, fmt: IntFormat, name: str):
    as_float32(as_float_tensor(w, f"{name}.weight"), f"{name}.weight")  # NaN/inf weights: say which layer
    try:
        return choose_qparams(w, fmt, PerChannel(0))
    except ValueError as err:  # e.g. a weight so close to float32's limit that the grid would overflow
        raise ValueError(f"{name}.weight: {err}") from None  # symmetric, per output channel, min/max: the lesson's default


def rtn_model(model: nn.Module, bits: int) -> nn.Module:
    """A copy of ``model`` (BatchNorm folded) with every weight rounded to nearest on the grid
    that :func:`adaround_model` uses (symmetric, per output channel, min/max): the baseline.

    >>> from qedu.models import make_mlp
    >>> rtn_model(make_mlp(seed=0), 4).fc1.weight.unique().numel() <= 128 * 16
    True
    """
    model, fmt, _ = _check(model, bits, torch.zeros(1))
    rounded = fold_batchnorm(model)
    for name in quantizable_layers(rounded):
        layer = rounded.get_submodule(name)
        scale, zero_point = _weight_grid(layer.weight.detach(), fmt, name)
        with torch.no_grad():
            layer.weight.copy_(dequantize(quantize(layer.weight, scale, zero_point, fmt), scale, zero_point))
    return rounded


def adaround_model(model: nn.Module, bits: int, x_calib, *, iters: int = 500, seed: int = 0,
                   **options) -> tuple[nn.Module, dict[str, AdaRoundResult]]:
    """AdaRound every Linear/Conv weight of a copy of ``model`` (BatchNorm folded first).

    Layer by layer in model order: the layer's input comes from the copy (earlier layers already
    rounded), its target from the float model (so a layer can undo some of the error before it).

    Args:
        model: the float model; not changed.
        bits: weight bits, 2..8 (symmetric, per output channel, min/max range: as :func:`rtn_model`).
        x_calib: calibration inputs (never the test set).
        iters, options: passed to :func:`adaround_layer`; ``seed`` seeds torch for the run and is restored.

    Returns:
        ``(rounded model, {layer name: AdaRoundResult})``.

    Raises:
        TypeError / ValueError: bad ``model``, ``bits``, ``x_calib`` (NaN/inf, a shape the model
        cannot run, values beyond float32), ``iters``, ``seed`` or options.
    """
    model, fmt, x_calib = _check(model, bits, x_calib)
    iters = check_int(iters, "iters", 1)
    seed = check_seed(seed)
    reference = fold_batchnorm(model)
    with torch.no_grad():
        run_model(reference, x_calib, "x_calib")  # a shape the model cannot take: say so before any work
    rounded = copy.deepcopy(reference)
    results = {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for name in quantizable_layers(rounded):
            layer = rounded.get_submodule(name)
            x = _captured(rounded, layer, x_calib, "input")
            target = _captured(reference, reference.get_submodule(name), x_calib, "output")
            scale, zero_point = _weight_grid(layer.weight.detach(), fmt, name)
            result = adaround_layer(layer, x, target, scale, zero_point, fmt, iters=iters, **options)
            with torch.no_grad():
                layer.weight.copy_(dequantize(result.q, scale, zero_point))
            results[name] = result
    assert all(isinstance(rounded.get_submodule(n), QUANTIZABLE) for n in results)
    return rounded, results
