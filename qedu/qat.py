"""Quantization-aware training (QAT): train a model *through* its quantizer.

Post-training quantization rounds a trained model once and hopes. QAT puts the rounding into
the forward pass while the model trains, so the weights learn to sit well on the grid::

    w_hat = fake_quantize(w)                 # forward: the weight the deployed model will use
    loss  = cross_entropy(layer(x; w_hat), y)
    loss.backward()                          # backward: d w_hat / d w = ?

``round`` is flat between its jumps, so its true derivative is 0 almost everywhere: no signal
would reach ``w``. The **straight-through estimator** (STE; Bengio et al. 2013, the QAT of Jacob
et al. 2018 and Krishnamoorthi 2018) keeps ``round`` in the forward pass and pretends it was the
identity in the backward pass. Clipping is kept honest: values outside ``[qmin, qmax]`` do get
gradient 0 (the clamp really is flat there)::

    forward:   q = round(clamp(x * (1/scale), qmin - zero_point, qmax - zero_point))
               x_hat = q * scale                       # == qedu.quantizers.fake_quantize, bit for bit
    backward:  d x_hat / d x = 1 inside the range, 0 outside   (round_ste: round's gradient is 1)

Clamping before rounding gives the same numbers as torch's round-then-clamp (rounding is monotone
and the bounds are integers); it decides the gradient the way the LSQ paper writes it: by the
unrounded code. The steps of a QAT run, each returning a copy or working on one::

    prepared = prepare_qat(model, QATConfig(weight_bits=2, method="lsq"))   # a copy: QATLayers
    history = train_qat(prepared, data, epochs=3)                            # trains the copy
    deployed = convert(prepared)                 # integer codes + scales; float forward unchanged

``method="minmax"`` recomputes each weight's scale from its current min/max at every step (the
classic QAT); ``method="lsq"`` learns the scale (:mod:`qedu.lsq`). Activations can be quantized
too, with a learned LSQ step or a PACT clipping level, both started from calibration images.

>>> v = torch.tensor([0.4, 1.6], requires_grad=True)
>>> round_ste(v).sum().backward()
>>> v.grad
tensor([1., 1.])
"""
from __future__ import annotations

import copy
import numbers
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from qedu._validation import check_int, check_module
from qedu.calibration import record_activations
from qedu.data import Digits
from qedu.formats import IntFormat
from qedu.granularity import PerChannel, PerTensor
from qedu.models import History, train
from qedu.ptq import fold_batchnorm, quantizable_layers
from qedu.quantizers import (
    _broadcasts_to, _check_fmt, _check_zero_point, choose_qparams, dequantize, fake_quantize, quantize,
)

__all__ = [
    "RoundSTE", "round_ste", "round_clip_ste", "fake_quantize_ste", "METHODS", "ACT_METHODS", "SCALE_INITS", "QATConfig",
    "MinMaxWeightQuant", "QATLayer", "QuantizedLayer", "FixedActQuant", "prepare_qat", "convert", "TrainingProgress",
    "train_qat",
]

METHODS = ("minmax", "lsq")
ACT_METHODS = ("lsq", "pact")
SCALE_INITS = ("mse", "minmax", "lsq")  # how a learned step starts: see qedu.lsq.init_step


# ----------------------------------------------------------------------------- the straight-through estimator
class RoundSTE(torch.autograd.Function):
    """``round`` forward (half to even, as ``torch.round``), identity backward."""

    @staticmethod
    def forward(ctx, v):
        return torch.round(v)

    @staticmethod
    def backward(ctx, grad):
        return grad  # pretend round(v) == v: the gradient passes straight through


def _check_float(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {what}; use torch.as_tensor({name}).float().")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one value.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or inf; quantization needs finite numbers. Find where they come from "
                         f"(a diverged training run?) or clean them with torch.nan_to_num({name}).")
    return x


def round_ste(v: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer (ties to even) with the straight-through estimator.

    Forward ``torch.round(v)``; backward ``d round_ste(v) / d v = 1``. ``torch.round``'s own
    gradient is 0 everywhere, which would stop training dead.

    Raises:
        TypeError: ``v`` is not a floating-point tensor.

    >>> round_ste(torch.tensor([0.5, 1.5, -0.7]))
    tensor([ 0.,  2., -1.])
    """
    if not isinstance(v, torch.Tensor) or not v.is_floating_point():
        raise TypeError(f"v must be a floating-point torch.Tensor, got {getattr(v, 'dtype', type(v).__name__)}; "
                        "use torch.as_tensor(v).float().")
    return RoundSTE.apply(v)


def round_clip_ste(v: torch.Tensor, lo, hi) -> torch.Tensor:
    """The clipped STE: ``round(clamp(v, lo, hi))`` with gradient 1 for ``lo <= v <= hi``, else 0.

    ``lo`` and ``hi`` are integers (numbers or tensors broadcasting against ``v``): the code
    range. Autograd's clamp supplies the mask, :func:`round_ste` the straight-through round.

    >>> v = torch.tensor([-3.0, 0.4, 2.6], requires_grad=True)
    >>> round_clip_ste(v, -2, 1).sum().backward()
    >>> v.grad
    tensor([0., 1., 0.])
    """
    return round_ste(torch.clamp(v, lo, hi))


def _check_scale(scale, x: torch.Tensor) -> torch.Tensor:
    """``scale`` as a tensor of x's dtype (gradient kept), positive and finite, broadcasting against x."""
    if isinstance(scale, numbers.Real) and not isinstance(scale, bool):  # numpy numbers too
        scale = torch.tensor(float(scale), dtype=x.dtype)
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
        raise TypeError(f"scale must be a float or a float tensor, got {getattr(scale, 'dtype', type(scale).__name__)}.")
    if not bool((torch.isfinite(scale) & (scale > 0)).all()):
        raise ValueError(f"scale must be positive and finite everywhere, got min {scale.min().item()}; a learned scale "
                         "that went to 0 or below needs a clamp (LSQQuantizer clamps at float32 eps).")
    _broadcasts_to(scale, x.shape, "scale")
    scale = scale.to(x.dtype)
    if not bool(torch.isfinite(1.0 / scale.detach()).all()):
        raise ValueError(f"scale={float(scale.detach().min()):.4g} is so small that 1 / scale overflows {x.dtype}; "
                         "use a larger scale (LSQQuantizer clamps at float32 eps).")
    return scale


def fake_quantize_ste(x: torch.Tensor, scale, zero_point, fmt: IntFormat) -> torch.Tensor:
    """Fake-quantize with gradients: the forward of :func:`qedu.quantizers.fake_quantize`, STE backward.

    ``q = round(clamp(x * (1/scale), qmin - zero_point, qmax - zero_point))``, ``x_hat = q * scale``.

    * float32 ``x``: ``x_hat`` equals ``fake_quantize(x, scale, zero_point, fmt)`` exactly (same
      float32 operations; clamping before rounding changes no value). float64 stays float64.
    * ``d x_hat / d x`` = 1 where ``qmin <= x/scale + zero_point <= qmax``, else 0.
    * ``d x_hat / d scale`` = ``round(x/scale) - x/scale`` inside, ``qmin - zero_point`` or
      ``qmax - zero_point`` outside: LSQ's step gradient (Esser et al. 2020), straight from autograd.

    Args:
        x: float tensor. scale: float or float tensor broadcasting against ``x`` (may require grad).
        zero_point: int or integer tensor in ``[qmin, qmax]``. fmt: the :class:`IntFormat`.

    Raises:
        TypeError / ValueError: naming the bad argument (non-float x, scale <= 0, NaN, bad shapes, a
            scale whose reciprocal or outermost grid level overflows x's dtype).

    >>> fake_quantize_ste(torch.tensor([0.26, -3.0]), 0.1, 0, IntFormat(4))
    tensor([ 0.3000, -0.8000])
    """
    fmt = _check_fmt(fmt)
    x = _check_float(x, "x")
    scale = _check_scale(scale, x)
    zero_point = _check_zero_point(zero_point, x.shape, fmt)
    reach = torch.maximum((fmt.qmax - zero_point).abs(), (fmt.qmin - zero_point).abs()).to(x.dtype)
    if not bool(torch.isfinite(scale.detach() * reach).all()):
        raise ValueError(f"scale={float(scale.detach().max()):.4g} is too large for {fmt}: the grid's outermost level "
                         f"scale * (q - zero_point) overflows {x.dtype}. Use a smaller scale.")
    return _fake_quantize_ste(x, scale, zero_point.to(x.dtype), fmt)


def _fake_quantize_ste(x, scale, zero_point, fmt: IntFormat) -> torch.Tensor:
    """:func:`fake_quantize_ste` without the input checks (the training loop's fast path)."""
    v = x * (1.0 / scale)  # multiply by the reciprocal, as torch's kernels and qedu.quantizers do
    q = round_clip_ste(v, fmt.qmin - zero_point, fmt.qmax - zero_point)  # codes minus zero point
    return q * scale


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class QATConfig:
    """How to train a model through its quantizers. A frozen value, like :class:`qedu.ptq.PTQConfig`.

    Args:
        weight_bits: bits of the signed, symmetric weight codes (2..16).
        method: ``"minmax"`` (scale = max|w| / ((qmax - qmin) / 2) of the current weights at
            every step, no gradient to it) or ``"lsq"`` (a learned scale, :mod:`qedu.lsq`).
        weight_granularity: ``PerChannel(0)`` (default) or ``PerTensor()``.
        scale_init: where learned steps start (LSQ weights; LSQ steps and PACT levels of
            activations): ``"mse"`` (the min-MSE clipping of :func:`qedu.calibration.mse_range`),
            ``"minmax"`` or ``"lsq"`` (the paper's ``2 mean|w| / sqrt(Qp)``); see
            :func:`qedu.lsq.init_step`.
        act_bits: bits of the activation codes (2..16), or ``None`` for weights only.
        act_method: ``"lsq"`` (learned step) or ``"pact"`` (learned clipping level).
        keep_float: names of layers left in float32.
        fold_bn: fold BatchNorm into the layer before it first (default True).
        weight_narrow_range: drop the lowest code: ``weight_bits=2`` then gives the
            **ternary** codes -1, 0, 1 (1.58 bits of information per weight).

    >>> QATConfig(weight_bits=2, method="lsq").name
    'W2 lsq per-channel'
    >>> QATConfig(weight_bits=2, weight_narrow_range=True).weight_format()
    IntFormat(bits=2, signed=True, narrow_range=True)
    """

    weight_bits: int = 4
    method: str = "lsq"
    weight_granularity: object = PerChannel(0)
    scale_init: str = "mse"
    act_bits: int | None = None
    act_method: str = "lsq"
    keep_float: tuple = ()
    fold_bn: bool = True
    weight_narrow_range: bool = False

    def __post_init__(self):
        check_int(self.weight_bits, "weight_bits", 2, 16)
        for value, name, choices in ((self.method, "method", METHODS), (self.scale_init, "scale_init", SCALE_INITS),
                                     (self.act_method, "act_method", ACT_METHODS)):
            if value not in choices:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}; pick one of those.")
        if not isinstance(self.weight_granularity, (PerTensor, PerChannel)):
            raise TypeError(f"weight_granularity must be PerChannel(0) or PerTensor(), got {self.weight_granularity!r} "
                            "(a learned per-group step is not supported here).")
        if self.act_bits is not None:
            check_int(self.act_bits, "act_bits", 2, 16)
        for flag in ("fold_bn", "weight_narrow_range"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False, got {getattr(self, flag)!r}.")
        names = (self.keep_float,) if isinstance(self.keep_float, str) else tuple(self.keep_float)
        if not all(isinstance(n, str) for n in names):
            raise TypeError(f"keep_float must be a list of layer names such as ['fc1'], got {self.keep_float!r}.")
        object.__setattr__(self, "keep_float", tuple(sorted(set(names))))

    def weight_format(self) -> IntFormat:
        """The signed code format of the weights."""
        return IntFormat(self.weight_bits, narrow_range=self.weight_narrow_range)

    @property
    def name(self) -> str:
        """A short label such as ``'W2 lsq per-channel'`` or ``'W2A4 lsq/pact per-tensor'``."""
        gran = "per-channel" if isinstance(self.weight_granularity, PerChannel) else "per-tensor"
        bits = f"W{self.weight_bits}{'n' if self.weight_narrow_range else ''}"
        if self.act_bits is None:
            return f"{bits} {self.method} {gran}"
        return f"{bits}A{self.act_bits} {self.method}/{self.act_method} {gran}"


# ----------------------------------------------------------------------------- layers
class MinMaxWeightQuant(nn.Module):
    """Classic QAT weight quantizer: scale from the current weights' min/max, STE for the weights.

    ``scale, zero_point = choose_qparams(w.detach(), fmt, granularity)`` (symmetric) at every
    call, so the grid follows the weights; the scale itself gets no gradient.
    """

    def __init__(self, fmt: IntFormat, granularity):
        super().__init__()
        self.fmt, self.granularity = fmt, granularity

    def qparams(self, w: torch.Tensor):
        """``(scale, zero_point)`` for the weight ``w`` as it is now."""
        return choose_qparams(w.detach(), self.fmt, self.granularity)

    def forward(self, w):
        scale, zero_point = self.qparams(w)
        return _fake_quantize_ste(w, scale, zero_point.to(w.dtype), self.fmt)

    def extra_repr(self) -> str:
        return f"{self.fmt}, {self.granularity!r}"


class QATLayer(nn.Module):
    """A ``Linear``/``Conv`` layer that trains through fake-quantized weights (and inputs).

    ``forward(x) = layer(act(x); weight_quant(layer.weight))``: the float weight is the trained
    parameter, ``weight_quant`` snaps it to the grid on the way in (STE backward).
    """

    def __init__(self, layer: nn.Module, weight_quant: nn.Module, act: nn.Module | None = None):
        super().__init__()
        self.layer, self.weight_quant, self.act = layer, weight_quant, act

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight the forward pass uses (no gradient)."""
        with torch.no_grad():
            return self.weight_quant(self.layer.weight)

    def forward(self, x):
        if self.act is not None:
            x = self.act(x)
        w_hat = self.weight_quant(self.layer.weight)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w_hat, self.layer.bias)
        return self.layer._conv_forward(x, w_hat, self.layer.bias)  # Conv1d/Conv2d with another weight


class FixedActQuant(nn.Module):
    """A frozen activation quantizer: ``fake_quantize(x, scale, zero_point, fmt)``."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, fmt: IntFormat):
        super().__init__()
        self.fmt = fmt
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("zero_point", zero_point.detach().clone())

    def forward(self, x):
        return fake_quantize(x, self.scale, self.zero_point, self.fmt)

    def extra_repr(self) -> str:
        return f"{self.fmt}, scale={self.scale.item():.4g}, zero_point={self.zero_point.item()}"


class QuantizedLayer(nn.Module):
    """What :func:`convert` makes of a :class:`QATLayer`: integer weight codes and their scales.

    Buffers ``weight_q`` (int32), ``weight_scale``, ``weight_zero_point`` (the names
    :class:`qedu.ptq.QuantLayer` uses); ``layer.weight`` holds their dequantized values. ``layer``
    is copied: the caller's layer keeps its own weight.
    """

    def __init__(self, layer: nn.Module, weight_q, weight_scale, weight_zero_point, act: nn.Module | None):
        super().__init__()
        check_module(layer, "layer")
        layer = copy.deepcopy(layer)  # never touch the caller's layer
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("weight_zero_point", weight_zero_point)
        layer.weight = nn.Parameter(dequantize(weight_q, weight_scale, weight_zero_point), requires_grad=False)
        self.layer, self.act = layer, act

    def forward(self, x):
        if self.act is not None:
            x = self.act(x)
        return self.layer(x)


# ----------------------------------------------------------------------------- prepare / convert
def prepare_qat(model: nn.Module, config: QATConfig = QATConfig(), x_calib=None) -> nn.Module:
    """A copy of ``model`` whose Linear/Conv layers train through quantizers (:class:`QATLayer`).

    BatchNorm is folded first (``config.fold_bn``). Weight quantizers start from the trained
    weights (LSQ: ``config.scale_init``); activation quantizers (``config.act_bits``) start from
    the layers' inputs on ``x_calib``: unsigned codes if those inputs are never negative (pixels,
    ReLU outputs), signed otherwise. The copy is in train mode; ``model`` is never touched.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``config`` not a :class:`QATConfig`.
        ValueError: ``keep_float`` names an unknown layer; activations asked for without ``x_calib``;
            the model is already prepared.

    >>> from qedu.models import make_mlp
    >>> prepared = prepare_qat(make_mlp(seed=0), QATConfig(weight_bits=2))
    >>> type(prepared.fc1).__name__, prepared.fc1.quantized_weight()[0].unique().numel() <= 4  # 4 levels per row
    ('QATLayer', True)
    """
    from qedu.lsq import LSQQuantizer, PACTQuantizer

    model = check_module(model)
    if not isinstance(config, QATConfig):
        raise TypeError(f"config must be a QATConfig, e.g. QATConfig(weight_bits=2), got {type(config).__name__}.")
    if any(isinstance(m, (QATLayer, QuantizedLayer)) for m in model.modules()):
        raise ValueError("model is already prepared or converted; pass the original float model.")
    model = fold_batchnorm(model) if config.fold_bn else copy.deepcopy(model)
    names = [n for n in quantizable_layers(model) if n not in config.keep_float]
    unknown = [n for n in config.keep_float if n not in quantizable_layers(model)]
    if unknown:
        raise ValueError(f"keep_float names {unknown}, but the model's quantizable layers are "
                         f"{quantizable_layers(model)}; fix the name(s).")
    fmt = config.weight_format()
    for name in names:
        layer = model.get_submodule(name)
        if config.method == "lsq":
            wq = LSQQuantizer(layer.weight.detach(), fmt, config.weight_granularity, init=config.scale_init)
        else:
            wq = MinMaxWeightQuant(fmt, config.weight_granularity)
        model.set_submodule(name, QATLayer(layer, wq))
    if config.act_bits is not None:
        if x_calib is None:
            raise ValueError(f"x_calib is needed to start the {config.act_bits}-bit activation quantizers; pass "
                             "calibration inputs (e.g. data.x_calib), or act_bits=None for weights only.")
        # each layer's inputs with the weights already on their grid: what the activation quantizer will see
        inputs = record_activations(model, _check_float(x_calib, "x_calib"), names=names)
        kind = LSQQuantizer if config.act_method == "lsq" else PACTQuantizer
        for name in names:
            x_in = inputs[name]
            signed = bool((x_in < 0).any())  # unsigned codes after a ReLU and for pixels, signed otherwise
            if signed and config.act_method == "pact":
                raise ValueError(f"layer {name!r} gets negative inputs, but PACT clips at 0; use act_method='lsq' "
                                 f"(signed codes), or keep_float=[{name!r}].")
            act_fmt = IntFormat(config.act_bits, signed=signed)
            n_features = x_in[0].numel()  # LSQ's N for activations: values per sample
            model.get_submodule(name).act = kind(x_in, act_fmt, init=config.scale_init, n=n_features)
    return model.train()


def _frozen_act(act: nn.Module | None) -> FixedActQuant | None:
    if act is None:
        return None
    scale, zero_point = act.qparams()
    return FixedActQuant(scale, zero_point, act.fmt)


def convert(qat_model: nn.Module) -> nn.Module:
    """A frozen copy of a QAT model: each :class:`QATLayer` becomes a :class:`QuantizedLayer`.

    The weight codes are ``quantize(w, scale, zero_point, fmt)`` with the QAT layer's final
    scale, so ``dequantize(weight_q, weight_scale, weight_zero_point)`` equals the fake-quantized
    weight the QAT model used, exactly, and the converted model computes what the QAT model
    computed in eval mode. Eval mode, no gradients; ``qat_model`` is not touched.

    Raises:
        TypeError: ``qat_model`` holds no QATLayer (call :func:`prepare_qat` first).
    """
    qat_model = check_module(qat_model)
    if not any(isinstance(m, QATLayer) for m in qat_model.modules()):
        raise TypeError("qat_model must be the model prepare_qat(model, config) returned (it holds no QATLayer); "
                        "call prepared = prepare_qat(model, config) first.")
    model = copy.deepcopy(qat_model).eval()
    for name, m in list(model.named_modules()):
        if isinstance(m, QATLayer):
            w = m.layer.weight.detach()
            scale, zero_point = m.weight_quant.qparams(w)  # min/max: from w; LSQ: the learned step
            q = quantize(w, scale, zero_point, m.weight_quant.fmt)
            model.set_submodule(name, QuantizedLayer(m.layer, q, scale.detach().clone(), zero_point, _frozen_act(m.act)))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- training
def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class TrainingProgress:
    """A per-epoch progress bar: an ipywidgets bar in a notebook, one text line elsewhere.

    ``mode``: ``"auto"`` (widget in a Jupyter kernel, text otherwise), ``"widget"`` or ``"text"``.
    """

    def __init__(self, total: int, description: str = "QAT", mode: str = "auto"):
        self.total, self.description = check_int(total, "total", 1), description
        if mode not in ("auto", "widget", "text"):
            raise ValueError(f"mode={mode!r} is not one of 'auto', 'widget', 'text'.")
        self.mode = ("widget" if _in_notebook() else "text") if mode == "auto" else mode
        if self.mode == "widget":
            import ipywidgets as W
            from IPython.display import display

            self.bar = W.IntProgress(value=0, min=0, max=self.total, description=description)
            self.label = W.HTML()
            self.box = W.HBox([self.bar, self.label])
            display(self.box)

    def update(self, epoch: int, metrics: dict) -> None:
        text = (f"epoch {epoch}/{self.total}: loss {metrics['train_loss']:.3f}, test accuracy "
                f"{100 * metrics['test_acc']:.1f} %, {metrics['seconds']:.2f} s")
        if self.mode == "widget":
            self.bar.value, self.label.value = epoch, text
        else:
            done = round(20 * epoch / self.total)
            print(f"\r{self.description} [{'#' * done}{'.' * (20 - done)}] {text}", end="", file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.mode == "text":
            print(file=sys.stdout, flush=True)


def train_qat(model: nn.Module, data: Digits, epochs: int = 3, lr: float = 1e-3, seed: int = 0,
              callback: Callable[[int, dict], None] | None = None, progress: bool = True,
              batch_size: int = 32) -> History:
    """Train a :func:`prepare_qat` model in place: :func:`qedu.models.train` (Adam, cross-entropy,
    seeded shuffling) with a progress bar.

    After each epoch ``callback(epoch, metrics)`` runs (``train_loss``, ``test_acc``, ``seconds``:
    training time of the epoch), e.g. to redraw a plot while training goes on.

    Returns:
        The :class:`qedu.models.History` (loss, test accuracy and seconds per epoch).

    Raises:
        TypeError: ``model`` holds no QATLayer, ``callback`` is not callable, ``progress`` not a bool.
        ValueError: as :func:`qedu.models.train` (epochs < 1, lr <= 0, ...).
    """
    model = check_module(model)
    if not any(isinstance(m, QATLayer) for m in model.modules()):
        raise TypeError("model must come from prepare_qat(model, config): it holds no QATLayer, so training it would "
                        "be ordinary float training. Call prepared = prepare_qat(model, config) first.")
    epochs = check_int(epochs, "epochs", 1)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function callback(epoch, metrics), got {type(callback).__name__}.")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}.")
    bar = TrainingProgress(epochs) if progress else None

    def each_epoch(epoch, metrics):
        if bar is not None:
            bar.update(epoch, metrics)
        if callback is not None:
            callback(epoch, metrics)

    try:
        return train(model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, callback=each_epoch)
    finally:
        if bar is not None:
            bar.close()
