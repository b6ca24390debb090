"""Post-training quantization (PTQ): quantize a trained model without training it again.

Three steps, each returning or filling a *copy* (the caller's model is never touched)::

    prepared = prepare(model, config)   # weights fake-quantized; an observer on each layer's input
    calibrate(prepared, x_calib)        # run calibration images through; fix the activation ranges
    quantized = convert(prepared)       # frozen: integer codes + scales stored, observers gone

Which layers? Every ``Linear``/``Conv1d``/``Conv2d`` (a :class:`QuantLayer` replaces it under
the same name). Its **weight** becomes ``x_hat = scale * (q - zero_point)`` with ``q`` the
integer codes (kept in ``weight_q``); its **input** (the activation an integer matrix multiply
would read) is fake-quantized with the range calibration chose. BatchNorm is folded into the
layer before it first (:func:`fold_batchnorm`), as every deployment does.

A :class:`PTQConfig` says how: bits, granularity, symmetric or affine and clipping method for
weights and activations (``act_bits=None`` quantizes weights only), per-layer ``overrides``
and layers kept in float (``keep_float``). :func:`model_size` counts the bytes a config needs.

>>> import torch
>>> from qedu.models import make_mlp
>>> q = quantize_model(make_mlp(seed=0), PTQConfig(weight_bits=4), torch.rand(64, 1, 8, 8))
>>> q.fc1.weight_q.unique().numel() <= 16, model_size(make_mlp(seed=0), PTQConfig(weight_bits=4)).total_bytes
(True, 10152)
"""
from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from qedu._validation import (
    as_float_tensor, check_bool, check_choice, check_int, check_module, check_not_meta, run_model, to_model_dtype,
)
from qedu.calibration import OBSERVERS, make_observer, minmax_range, mse_range, percentile_range
from qedu.formats import IntFormat
from qedu.granularity import PerChannel, PerGroup, PerTensor
from qedu.quantizers import choose_qparams_from_minmax, dequantize, fake_quantize, quantize

__all__ = [
    "WEIGHT_METHODS", "ACT_METHODS", "PTQConfig", "QuantLayer", "ActQuant", "quantizable_layers", "fold_bn_params",
    "fold_batchnorm", "prepare", "calibrate", "convert", "quantize_model", "SizeReport", "model_size",
]

WEIGHT_METHODS = ("minmax", "mse", "percentile")
ACT_METHODS = tuple(OBSERVERS)  # minmax, moving_average, percentile, mse, kl
QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_LAYER_FIELDS = ("weight_bits", "weight_granularity", "weight_symmetric", "weight_method",
                 "act_bits", "act_method", "act_symmetric", "percentile")


# ----------------------------------------------------------------------------- the configuration
@dataclass(frozen=True)
class PTQConfig:
    """How to quantize a model after training. A frozen value: hashable, safe to cache on.

    Args:
        weight_bits: bits of the weight codes, 2..16 (signed codes).
        weight_granularity: ``PerChannel(0)`` (one scale per output channel, default),
            ``PerTensor()`` or ``PerGroup(group_size)``.
        weight_symmetric: symmetric weight grid (zero point 0), the usual choice.
        weight_method: how to pick each weight range: ``"minmax"``, ``"mse"`` or ``"percentile"``.
        act_bits: bits of the activation codes, 2..16, or ``None`` to quantize weights only.
        act_method: calibration method: ``"minmax"``, ``"moving_average"``, ``"percentile"``,
            ``"mse"`` or ``"kl"`` (see :mod:`qedu.calibration`).
        act_symmetric: symmetric signed activation grid; default affine unsigned (torch's quint8).
        percentile: the percentile the ``"percentile"`` methods keep (weights and activations).
        overrides: per-layer changes by module name, e.g. ``{"fc1": {"weight_bits": 8}}``; keys
            are the fields above.
        keep_float: names of layers left in float32.
        fold_bn: fold BatchNorm into the preceding layer before quantizing (default True).

    >>> PTQConfig(weight_bits=4, overrides={"fc3": {"weight_bits": 8}}).for_layer("fc3").weight_bits
    8
    >>> PTQConfig(act_bits=None).name
    'W8 per-channel minmax'
    """

    weight_bits: int = 8
    weight_granularity: Any = PerChannel(0)
    weight_symmetric: bool = True
    weight_method: str = "minmax"
    act_bits: int | None = 8
    act_method: str = "minmax"
    act_symmetric: bool = False
    percentile: float = 99.99
    overrides: Any = ()
    keep_float: Any = ()
    fold_bn: bool = True

    def __post_init__(self):
        check_int(self.weight_bits, "weight_bits", 2, 16)
        if not isinstance(self.weight_granularity, (PerTensor, PerChannel, PerGroup)):
            raise TypeError(f"weight_granularity must be PerTensor(), PerChannel(0) or PerGroup(group_size), "
                            f"got {self.weight_granularity!r}.")
        check_bool(self.weight_symmetric, "weight_symmetric")
        check_choice(self.weight_method, "weight_method", WEIGHT_METHODS)
        if self.act_bits is not None:
            check_int(self.act_bits, "act_bits", 2, 16)
        check_choice(self.act_method, "act_method", ACT_METHODS)
        check_bool(self.act_symmetric, "act_symmetric")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 50 < p <= 100:
            raise ValueError(f"percentile must be a number in (50, 100], e.g. 99.99, got {p!r}.")
        check_bool(self.fold_bn, "fold_bn")
        object.__setattr__(self, "keep_float", self._normalise_names(self.keep_float))
        object.__setattr__(self, "overrides", self._normalise_overrides(self.overrides))
        for name, _ in self.overrides:
            self.for_layer(name)  # builds the layer's config now, so a bad value fails here, not later

    @staticmethod
    def _normalise_names(names) -> tuple[str, ...]:
        if isinstance(names, str):
            names = (names,)
        try:
            names = tuple(names)
        except TypeError:
            raise TypeError(f"keep_float must be a list of layer names such as ['fc1'], got {type(names).__name__} "
                            f"{names!r}.") from None
        if not all(isinstance(n, str) for n in names):
            raise TypeError(f"keep_float must be a list of layer names such as ['fc1'], got {names!r}.")
        return tuple(sorted(set(names)))

    @staticmethod
    def _normalise_overrides(overrides) -> tuple:
        try:
            items = overrides.items() if isinstance(overrides, Mapping) else tuple(overrides)
        except TypeError:
            raise TypeError(f"overrides must map layer names to dicts, e.g. {{'fc1': {{'weight_bits': 8}}}}, got "
                            f"{type(overrides).__name__} {overrides!r}.") from None
        normal = []
        for entry in items:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
                raise TypeError(f"overrides must map layer names to dicts, e.g. {{'fc1': {{'weight_bits': 8}}}}, "
                                f"got the entry {entry!r}.")
            name, changes = entry
            try:
                changes = dict(changes.items() if isinstance(changes, Mapping) else changes)
            except (TypeError, ValueError):
                raise TypeError(f"overrides[{name!r}] must be a dict of settings such as {{'weight_bits': 8}}, got "
                                f"{changes!r}.") from None
            unknown = sorted(set(changes) - set(_LAYER_FIELDS))
            if unknown:
                raise ValueError(f"overrides[{name!r}] sets {unknown}, which a layer cannot override; "
                                 f"use any of {list(_LAYER_FIELDS)}.")
            normal.append((name, tuple(sorted(changes.items()))))
        return tuple(sorted(normal))

    def for_layer(self, name: str) -> PTQConfig | None:
        """This layer's settings (overrides applied), or ``None`` if it stays in float."""
        if name in self.keep_float:
            return None
        changes = dict(dict(self.overrides).get(name, ()))
        return dataclasses.replace(self, overrides=(), keep_float=(), **changes)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Every layer name this config mentions (in overrides or keep_float)."""
        return tuple(sorted({n for n, _ in self.overrides} | set(self.keep_float)))

    @property
    def name(self) -> str:
        """A short label such as ``'W4A8 per-channel mse/minmax'``."""
        gran = {PerTensor: "per-tensor", PerChannel: "per-channel"}.get(type(self.weight_granularity), "per-group")
        if self.act_bits is None:
            label = f"W{self.weight_bits} {gran} {self.weight_method}"
        else:
            method = self.weight_method if self.weight_method == self.act_method else f"{self.weight_method}/{self.act_method}"
            label = f"W{self.weight_bits}A{self.act_bits} {gran} {method}"
        extra = (["overrides"] if self.overrides else []) + ([f"float: {','.join(self.keep_float)}"] if self.keep_float else [])
        return label + (f" ({'; '.join(extra)})" if extra else "")

    def weight_format(self) -> IntFormat:
        return IntFormat(self.weight_bits)

    def act_format(self) -> IntFormat | None:
        if self.act_bits is None:
            return None
        return IntFormat(self.act_bits, signed=self.act_symmetric)


# ----------------------------------------------------------------------------- batch-norm folding
def fold_bn_params(weight, bias, running_mean, running_var, gamma, beta, eps: float):
    """Fold an eval-mode BatchNorm into the layer before it.

    ``BN(W x + b) = gamma * (W x + b - mean) / sqrt(var + eps) + beta = W' x + b'`` with::

        s  = gamma / sqrt(var + eps)          # one factor per output channel
        W' = W * s                            # scales output channel c of W (axis 0) by s[c]
        b' = beta + (b - mean) * s            # b = 0 if the layer has no bias

    Computed in float64, returned in ``weight``'s dtype.

    Raises:
        TypeError / ValueError: a non-tensor or non-finite argument, a vector that is not one value
            per output channel (``weight.shape[0]``), a negative ``running_var`` or an ``eps`` that
            is not a finite number >= 0 with ``var + eps > 0`` everywhere (``1 / sqrt(0)`` is inf), or a
            folded weight/bias that overflows ``weight``'s dtype.

    >>> w, b = fold_bn_params(torch.ones(2, 3), None, torch.zeros(2), torch.full((2,), 3.0), torch.ones(2), torch.ones(2), 1.0)
    >>> w[:, 0].tolist(), b.tolist()
    ([0.5, 0.5], [1.0, 1.0])
    """
    _check_bn_args(weight, bias, running_mean, running_var, gamma, beta, eps)
    s = gamma.double() / torch.sqrt(running_var.double() + eps)  # (C_out,)
    b = torch.zeros_like(running_mean, dtype=torch.float64) if bias is None else bias.double()
    shape = (-1,) + (1,) * (weight.ndim - 1)  # (C_out,) -> (C_out, 1, ...) to scale W along axis 0
    w_fold = weight.double() * s.reshape(shape)
    b_fold = beta.double() + (b - running_mean.double()) * s
    w_out, b_out = w_fold.to(weight.dtype), b_fold.to(weight.dtype)
    if not bool(torch.isfinite(w_out).all() and torch.isfinite(b_out).all()):
        raise ValueError(f"the folded weight or bias overflows {weight.dtype} (largest |W'| {float(w_fold.abs().max()):.4g}, "
                         f"|b'| {float(b_fold.abs().max()):.4g}): gamma / sqrt(running_var + eps) is too large for these "
                         "weights. Check the BatchNorm's statistics (a variance near 0 with a tiny eps?).")
    return w_out, b_out


def _check_bn_args(weight, bias, running_mean, running_var, gamma, beta, eps) -> None:
    """fold_bn_params' input checks: finite tensors, one value per output channel, var + eps > 0."""
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.ndim < 1:
        raise TypeError(f"weight must be a floating-point tensor of shape (C_out, ...), got "
                        f"{getattr(weight, 'shape', type(weight).__name__)}.")
    c_out = weight.shape[0]
    vectors = {"running_mean": running_mean, "running_var": running_var, "gamma": gamma, "beta": beta}
    if bias is not None:
        vectors["bias"] = bias
    for name, t in {"weight": weight, **vectors}.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}.")
        check_not_meta(t, name)
        if name != "weight" and tuple(t.shape) != (c_out,):
            raise ValueError(f"{name} must hold one value per output channel, shape ({c_out},) for a weight of shape "
                             f"{tuple(weight.shape)}, got {tuple(t.shape)}; pass the BatchNorm that follows this layer.")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or inf; the folded layer would too. Check the BatchNorm's statistics "
                             "(a diverged run?) before folding.")
    if bool((running_var < 0).any()):
        raise ValueError(f"running_var must be >= 0 (it is a variance), got min {float(running_var.min()):.4g}.")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0 (BatchNorm's default is 1e-5), got {eps!r}.")
    if not bool((running_var.double() + eps > 0).all()):
        raise ValueError("running_var + eps is 0 for some channel, so 1 / sqrt(var + eps) is inf; use eps > 0 "
                         "(BatchNorm's default is 1e-5).")


def _out_features(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with each BatchNorm folded into the layer before it.

    Folds every ``Linear``/``Conv`` directly followed by a ``BatchNorm`` (tracking running
    statistics, same number of channels) inside an ``nn.Sequential`` -- where order is data
    flow. The layer gets the folded weight and bias (:func:`fold_bn_params`); the BatchNorm
    becomes ``nn.Identity`` under the same name. Other BatchNorms are left as they are.

    >>> from qedu.models import make_cnn
    >>> folded = fold_batchnorm(make_cnn(seed=0))
    >>> type(folded.bn1).__name__, folded.conv1.bias is not None
    ('Identity', True)
    """
    model = check_module(model)
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for prev, name in zip(names, names[1:]):
            layer, bn = parent._modules[prev], parent._modules[name]
            if not (isinstance(layer, QUANTIZABLE) and isinstance(bn, _BATCHNORMS)):
                continue
            if not bn.track_running_stats or bn.num_features != _out_features(layer):
                continue
            ones, zeros = torch.ones(bn.num_features), torch.zeros(bn.num_features)
            gamma = bn.weight.detach() if bn.affine else ones
            beta = bn.bias.detach() if bn.affine else zeros
            bias = None if layer.bias is None else layer.bias.detach()
            w, b = fold_bn_params(layer.weight.detach(), bias, bn.running_mean, bn.running_var, gamma, beta, bn.eps)
            layer.weight = nn.Parameter(w)
            layer.bias = nn.Parameter(b)
            parent._modules[name] = nn.Identity()
    return model


# ----------------------------------------------------------------------------- the quantized layers
class ActQuant(nn.Module):
    """An activation quantizer: observes until :meth:`freeze`, then fake-quantizes with fixed qparams."""

    def __init__(self, method: str, fmt: IntFormat, symmetric: bool, percentile: float):
        super().__init__()
        self.method, self.fmt, self.symmetric, self.percentile = method, fmt, symmetric, percentile
        self.reset()

    def reset(self) -> None:
        """A fresh observer; forget any qparams."""
        options = {"percentile": self.percentile} if self.method == "percentile" else {}
        self.observer = make_observer(self.method, self.fmt, self.symmetric, PerTensor(), **options)
        self.scale = None
        self.zero_point = None

    @property
    def calibrated(self) -> bool:
        return self.scale is not None

    def freeze(self) -> None:
        """Turn what the observer saw into fixed ``scale`` and ``zero_point``."""
        self.scale, self.zero_point = self.observer.calculate_qparams()

    def forward(self, x):
        if self.scale is None:
            return self.observer(x)  # calibration: record, pass through unchanged
        return fake_quantize(x, self.scale, self.zero_point, self.fmt)

    def extra_repr(self) -> str:
        state = f"scale={self.scale.item():.4g}, zero_point={self.zero_point.item()}" if self.calibrated else "observing"
        return f"{self.fmt}, {self.method}, {state}"


def _weight_range(w: torch.Tensor, config: PTQConfig):
    g, sym = config.weight_granularity, config.weight_symmetric
    if config.weight_method == "mse":
        return mse_range(w, config.weight_format(), g, sym)
    if config.weight_method == "percentile":
        return percentile_range(w, config.percentile, g, sym)
    return minmax_range(w, g)


class QuantLayer(nn.Module):
    """A ``Linear``/``Conv`` layer with a fake-quantized weight and (optionally) a quantized input.

    Buffers ``weight_q`` (int32 codes), ``weight_scale`` and ``weight_zero_point`` hold the
    integer weight; ``layer.weight`` holds ``dequantize(weight_q, weight_scale, weight_zero_point)``
    exactly. ``act`` is an :class:`ActQuant` or ``None`` (weight-only). ``layer`` is copied: the
    caller's layer keeps its float weight.

    Raises:
        TypeError: ``layer`` is not a Linear/Conv1d/Conv2d, ``config`` not a :class:`PTQConfig`.
    """

    def __init__(self, layer: nn.Module, config: PTQConfig):
        super().__init__()
        if not isinstance(layer, QUANTIZABLE):
            raise TypeError(f"layer must be an nn.Linear, nn.Conv1d or nn.Conv2d, got {type(layer).__name__}.")
        config = _check_config(config)
        layer = copy.deepcopy(layer)  # never touch the caller's layer
        self.layer, self.config = layer, config
        fmt = config.weight_format()
        w = layer.weight.detach()
        lo, hi = _weight_range(w, config)
        scale, zero_point = choose_qparams_from_minmax(lo, hi, fmt, config.weight_symmetric)
        self.register_buffer("weight_q", quantize(w, scale, zero_point, fmt))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", zero_point)
        with torch.no_grad():
            layer.weight.copy_(dequantize(self.weight_q, scale, zero_point))
        act_fmt = config.act_format()
        self.act = None if act_fmt is None else ActQuant(config.act_method, act_fmt, config.act_symmetric, config.percentile)

    def forward(self, x):
        if self.act is not None:
            x = self.act(x)
        return self.layer(x)

    def extra_repr(self) -> str:
        return self.config.name


# ----------------------------------------------------------------------------- prepare / calibrate / convert
def _check_config(config) -> PTQConfig:
    if not isinstance(config, PTQConfig):
        raise TypeError(f"config must be a PTQConfig, e.g. PTQConfig(weight_bits=4), got {type(config).__name__}.")
    return config


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the layers PTQ quantizes (every Linear, Conv1d, Conv2d), in model order.

    >>> from qedu.models import make_cnn
    >>> quantizable_layers(make_cnn(seed=0))
    ['conv1', 'conv2', 'fc']
    """
    model = check_module(model)
    names, wrapped = [], []
    for name, m in model.named_modules():
        if any(name.startswith(w + ".") for w in wrapped):
            continue  # the float layer inside a QuantLayer
        if isinstance(m, QuantLayer):
            wrapped.append(name)
        if isinstance(m, QUANTIZABLE) or isinstance(m, QuantLayer):
            names.append(name)
    return names


def prepare(model: nn.Module, config: PTQConfig = PTQConfig()) -> nn.Module:
    """A copy of ``model`` ready to calibrate: BatchNorm folded, weights fake-quantized, observers on inputs.

    The copy gets an attribute ``qedu_config``: the config it was prepared with.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``config`` not a :class:`PTQConfig`.
        ValueError: ``config`` names layers the model does not have (the message lists them),
            ``model`` was prepared already, is itself a bare Linear/Conv (wrap it in
            ``nn.Sequential``), or holds torch's ``nn.MultiheadAttention``/``nn.Transformer*`` modules,
            which read their sub-layers' weights directly (refused up front, naming the layer).
    """
    model, config = check_module(model), _check_config(config)
    if hasattr(model, "qedu_config") or any(isinstance(m, QuantLayer) for m in model.modules()):
        raise ValueError("model is already prepared (it holds QuantLayers); pass the original float model.")
    _check_supported(model)
    model = fold_batchnorm(model) if config.fold_bn else copy.deepcopy(model).eval()
    names = quantizable_layers(model)
    unknown = [n for n in config.layer_names if n not in names]
    if unknown:
        raise ValueError(f"config names layer(s) {unknown} in overrides/keep_float, but the model's quantizable "
                         f"layers are {names}; fix the name(s).")
    for name in names:
        layer_config = config.for_layer(name)
        if layer_config is not None:
            model.set_submodule(name, QuantLayer(model.get_submodule(name), layer_config))
    model.qedu_config = config  # marks the copy as prepared, and says how
    return model


# torch modules that read their sub-layers' weights directly instead of calling them (their fast
# paths and F.multi_head_attention_forward use `out_proj.weight`, `linear1.weight`...), so a
# QuantLayer put in place of one of those sub-layers would break them.
_READS_WEIGHTS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
                  nn.TransformerEncoder, nn.TransformerDecoder, nn.Transformer)


def _check_supported(model: nn.Module) -> None:
    """Refuse, before any work, the models whose layers PTQ cannot replace."""
    if isinstance(model, QUANTIZABLE):
        raise ValueError(f"model is itself a bare {type(model).__name__}; PTQ replaces the layers inside a model, "
                         "so wrap it: nn.Sequential(model). Supported: models holding Linear/Conv1d/Conv2d layers "
                         "that they call (qedu.models.make_mlp, make_cnn, TinyGPT, your own nn.Sequential...).")
    for name, m in model.named_modules():
        if isinstance(m, _READS_WEIGHTS):
            raise ValueError(f"layer {name or '(the model)'!r} is a torch {type(m).__name__}, which reads its "
                             "sub-layers' weights directly (e.g. out_proj.weight), so qedu.ptq cannot put quantized "
                             "layers in their place. Supported: models whose Linear/Conv1d/Conv2d layers are called "
                             "as modules, e.g. qedu.models.TinyGPT (attention written with nn.Linear layers).")


def _quant_layers(prepared) -> list[QuantLayer]:
    prepared = check_module(prepared)
    if not hasattr(prepared, "qedu_config"):
        raise TypeError("prepared must be the model that prepare(model, config) returned; this one was not "
                        "prepared. Call prepared = prepare(model, config) first.")
    return [m for m in prepared.modules() if isinstance(m, QuantLayer)]


def calibrate(prepared: nn.Module, x_calib, batch_size: int = 256) -> nn.Module:
    """Run ``x_calib`` through ``prepared`` and fix every activation's ``scale`` and ``zero_point``.

    Works in place on the prepared copy (it is yours, not the caller's float model) and returns
    it. Calibrating again starts from fresh observers. Weight-only configs need no calibration
    (nothing to do). Runs in eval mode without gradients.

    Raises:
        TypeError: ``prepared`` did not come from :func:`prepare`.
        ValueError: ``x_calib`` is empty or holds NaN/inf (one NaN would poison every range), holds
            float64 values beyond the model's dtype, or has a shape the model cannot run on.

    ``x_calib`` follows qedu's float64 policy: floating-point inputs are cast to the model's dtype
    (float64 accepted, checked to fit); integer inputs (token ids for ``TinyGPT``) pass unchanged.
    """
    layers = _quant_layers(prepared)
    if isinstance(x_calib, torch.Tensor) and not x_calib.is_floating_point() and not x_calib.is_complex() \
            and x_calib.dtype != torch.bool:
        check_not_meta(x_calib, "x_calib")  # integer inputs (token ids) go to the model as they are
        if x_calib.numel() == 0:
            raise ValueError(f"x_calib is empty (shape {tuple(x_calib.shape)}); pass at least one input.")
    else:
        x_calib = to_model_dtype(as_float_tensor(x_calib, "x_calib"), prepared, "x_calib")
    if x_calib.ndim == 0:
        raise ValueError("x_calib must be a batch of inputs (first dimension = samples), got a single number.")
    batch_size = check_int(batch_size, "batch_size", 1)
    acts = [layer.act for layer in layers if layer.act is not None]
    for act in acts:
        act.reset()
    was_training = prepared.training
    prepared.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(x_calib), batch_size):
                run_model(prepared, x_calib[i:i + batch_size], "x_calib")
    finally:
        prepared.train(was_training)
    for act in acts:
        act.freeze()
    return prepared


def convert(prepared: nn.Module) -> nn.Module:
    """A frozen copy of a calibrated model: fixed qparams, no observers, no gradients, eval mode.

    Raises:
        RuntimeError: some activation was never calibrated (call :func:`calibrate` first).
    """
    layers = _quant_layers(prepared)
    if any(layer.act is not None and not layer.act.calibrated for layer in layers):
        raise RuntimeError("this model quantizes activations but was not calibrated: call "
                           "calibrate(prepared, x_calib) before convert(prepared).")
    model = copy.deepcopy(prepared).eval()
    for m in model.modules():
        if isinstance(m, ActQuant):
            m.observer = None  # the range is fixed now; drop the recorded statistics
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def quantize_model(model: nn.Module, config: PTQConfig = PTQConfig(), x_calib=None) -> nn.Module:
    """``convert(calibrate(prepare(model, config), x_calib))`` in one call (no ``x_calib`` for weight-only).

    Raises:
        ValueError: activations are quantized but ``x_calib`` is missing.
    """
    prepared = prepare(model, config)
    if any(layer.act is not None for layer in _quant_layers(prepared)):
        if x_calib is None:
            raise ValueError(f"x_calib is needed to calibrate the {config.act_bits}-bit activations; pass "
                             "calibration inputs (e.g. data.x_calib), or act_bits=None to quantize weights only.")
        calibrate(prepared, x_calib)
    return convert(prepared)


# ----------------------------------------------------------------------------- size
@dataclass(frozen=True)
class SizeReport:
    """Bytes a model needs under a config: ``total_bytes``, the float32 ``float_bytes`` of the same
    (folded) model, and one row per module holding tensors."""

    total_bytes: int
    float_bytes: int
    rows: tuple = field(default=(), repr=False)

    @property
    def compression(self) -> float:
        """``float_bytes / total_bytes``."""
        return self.float_bytes / self.total_bytes

    def to_markdown(self) -> str:
        lines = ["| module | weight bits | weight bytes | qparam bytes | other bytes | total bytes |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r['module']} | {r['weight_bits']} | {r['weight_bytes']:,} | {r['qparam_bytes']:,} | "
                         f"{r['other_bytes']:,} | {r['total_bytes']:,} |")
        lines.append(f"| **total** | | | | | **{self.total_bytes:,}** (float32: {self.float_bytes:,}) |")
        return "\n".join(lines)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None and t.is_floating_point())


def model_size(model: nn.Module, config: PTQConfig | None = None) -> SizeReport:
    """Bytes to store ``model`` quantized with ``config`` (``None``: as float32), by arithmetic.

    A quantized layer stores ``ceil(numel * bits / 8)`` bytes of weight codes, one float32
    scale per slice of its granularity, one int32 zero point per slice if the grid is affine,
    its bias in float32, and for a quantized input a float32 scale (+ int32 zero point if
    affine). Everything else (float layers, unfolded BatchNorm statistics) counts its float
    bytes. BatchNorm is folded first if ``config.fold_bn``.

    >>> from qedu.models import make_mlp
    >>> model_size(make_mlp(seed=0)).total_bytes, model_size(make_mlp(seed=0), PTQConfig(act_bits=None)).total_bytes
    (68904, 18640)
    """
    model = check_module(model)
    quantizable: set[str] = set()
    if config is not None:
        config = _check_config(config)
        model = fold_batchnorm(model) if config.fold_bn else model
        quantizable = set(quantizable_layers(model))
        unknown = [n for n in config.layer_names if n not in quantizable]
        if unknown:
            raise ValueError(f"config names layer(s) {unknown}, but the model's quantizable layers are "
                             f"{sorted(quantizable)}; fix the name(s).")
    rows, total, float_total = [], 0, 0
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False)]
        buffers = [b for n, b in module.named_buffers(recurse=False) if n != "num_batches_tracked"]
        floats = _tensor_bytes(params + buffers)
        if not floats:
            continue
        layer_config = config.for_layer(name) if config is not None and name in quantizable else None
        if layer_config is None:
            row = dict(module=name, weight_bits=32, weight_bytes=0, qparam_bytes=0, other_bytes=floats)
        else:
            w = module.weight
            slices = layer_config.weight_granularity.num_params(w.shape)
            qparams = slices * (4 if layer_config.weight_symmetric else 8)
            if layer_config.act_bits is not None:
                qparams += 4 if layer_config.act_symmetric else 8
            row = dict(module=name, weight_bits=layer_config.weight_bits,
                       weight_bytes=math.ceil(w.numel() * layer_config.weight_bits / 8), qparam_bytes=qparams,
                       other_bytes=_tensor_bytes([module.bias]))
        row["total_bytes"] = row["weight_bytes"] + row["qparam_bytes"] + row["other_bytes"]
        rows.append(row)
        total += row["total_bytes"]
        float_total += floats
    return SizeReport(total, float_total, tuple(rows))
