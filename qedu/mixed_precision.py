"""Mixed-precision training, simulated on the CPU with qedu's own float rounding.

Mixed-precision training (Micikevicius et al. 2018) does the math in low precision: the inputs
of every matmul (weights, activations) and the gradients are fp16 / bf16 / fp8, which halves
(quarters) their memory and runs on fast units. Three ingredients make that work:

1. **fp32 master weights**: the optimizer updates an fp32 copy of the weights. Without it an
   update smaller than half a step of the low format is rounded away ("swamping", see
   :func:`swamping`), unless the weights are rounded *stochastically* (:func:`stochastic_round`)
   or carry a Kahan compensation (``weight_rounding="kahan"``, :mod:`qedu.accumulation`);
2. **loss scaling** (:mod:`qedu.loss_scaling`): gradients smaller than the format's smallest
   number underflow to zero unless the loss is scaled up first;
3. **fp32 accumulation**: the products of a matmul are summed in fp32 (the simulation below does
   so; :mod:`qedu.accumulation` shows what fp16 or bf16 sums would lose).

:func:`simulate` returns a copy of a model whose ``Linear`` and ``Conv2d`` layers compute::

    y = round_c( round_c(x) @ round_c(W).T + round_c(b) )    forward: inputs, weights, output
    every gradient leaving the layer: g = round_g(g)          backward

with ``round_c`` / ``round_g`` rounding to ``precision.compute`` / ``precision.grads``. The
products are summed in fp32, as tensor cores accumulate; the other layers (ReLU, BatchNorm, the
loss) stay fp32. Rounding uses :func:`qedu.floats.cast`, or torch's own cast with
``backend="torch"`` (the same bits, faster; the tests prove that both give the same run).
Each gradient rounding counts how many values underflowed, became subnormal or overflowed.
:func:`train_simulated` trains such a copy on the digits and records those counts per step.

>>> sim = simulate(make_mlp(seed=0), Precision(compute=FP16, grads=FP16))
>>> loss = sim(torch.zeros(4, 1, 8, 8)).sum() * 1e-9; loss.backward()
>>> sim.stats["fc3.output"]    # 1e-9 is below fp16's smallest subnormal (6e-8): all 40 vanish
GradStats(n=40, zero=0, underflow=40, subnormal=0, overflow=0)
"""
from __future__ import annotations

import copy
import numbers
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from qedu._validation import FLOAT32_MAX, FLOAT32_TINY, check_int, check_real
from qedu.accumulation import kahan_add
from qedu.data import batches
from qedu.optim import _LeanAdam
from qedu.floats import FP16, FloatFormat, cast
from qedu.loss_scaling import DelayedScaling, DynamicLossScaler, StaticLossScaler
from qedu.models import evaluate, make_mlp
from qedu.rounding import ROUNDINGS, stochastic_round, swamping

__all__ = ["Precision", "GradStats", "simulate", "SimulatedModel", "SimulatedRun", "train_simulated", "BACKENDS",
           "WEIGHT_ROUNDINGS",
           # re-exported from qedu.loss_scaling and qedu.rounding, which hold their code
           "StaticLossScaler", "DynamicLossScaler", "DelayedScaling", "stochastic_round", "swamping", "ROUNDINGS"]

BACKENDS = ("qedu", "torch")
WEIGHT_ROUNDINGS = (*ROUNDINGS, "kahan")  # how weights without an fp32 master copy are rounded


def _check_fmt(fmt, name: str = "fmt", allow_none: bool = False) -> FloatFormat | None:
    if fmt is None and allow_none:
        return None
    if not isinstance(fmt, FloatFormat):
        extra = " or None (keep fp32)" if allow_none else ""
        raise TypeError(f"{name} must be a FloatFormat such as qedu.formats.BF16{extra}, got {fmt!r}.")
    return fmt


def _check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
    return value


# --------------------------------------------------------------------------------------------
# Simulated low-precision layers
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Precision:
    """What a simulated training run rounds, and to which format.

    Args:
        compute: format of the weights, inputs and outputs of every matmul; None keeps fp32.
        grads: format of every gradient leaving a matmul layer; None keeps fp32.
        master_weights: True: the optimizer updates fp32 weights and the forward pass uses a
            rounded copy. False: after every step the weights themselves are rounded to
            ``compute`` (no fp32 copy exists, as in "pure bf16" training).
        weight_rounding: "nearest", "stochastic" or "kahan", how weights are rounded when
            ``master_weights`` is False. "kahan" rounds to nearest but keeps, per weight, a
            ``compute``-format compensation that carries what rounding dropped into the next
            step (:func:`qedu.accumulation.kahan_add`).

    >>> Precision(FP16, FP16).name
    'fp16 compute, fp16 grads, fp32 master weights'
    """

    compute: FloatFormat | None = FP16
    grads: FloatFormat | None = FP16
    master_weights: bool = True
    weight_rounding: str = "nearest"

    def __post_init__(self):
        _check_fmt(self.compute, "compute", allow_none=True)
        _check_fmt(self.grads, "grads", allow_none=True)
        if not isinstance(self.master_weights, bool):
            raise TypeError(f"master_weights must be True or False, got {self.master_weights!r}.")
        _check_choice(self.weight_rounding, "weight_rounding", WEIGHT_ROUNDINGS)

    @property
    def name(self) -> str:
        c = "fp32" if self.compute is None else self.compute.name
        g = "fp32" if self.grads is None else self.grads.name
        w = "fp32 master weights" if self.master_weights else f"{c} weights ({self.weight_rounding} rounding)"
        return f"{c} compute, {g} grads, {w}"


@dataclass
class GradStats:
    """Counts over the gradient values that one rounding (or many, added with ``+``) saw.

    ``n`` values; ``zero`` were exactly 0 already in fp32 (e.g. behind a ReLU); ``underflow``
    were nonzero in fp32 and 0 after rounding; ``subnormal`` are subnormal after rounding;
    ``overflow`` became inf/NaN or were clipped at ``±fmt.max``. Fractions are of ``n``, except
    ``lost_fraction`` (of the values nonzero in fp32). Once a layer's output gradient has
    underflowed, the layers below it receive exact zeros: those count as ``zero``, not ``underflow``.
    """

    n: int = 0
    zero: int = 0
    underflow: int = 0
    subnormal: int = 0
    overflow: int = 0

    def __add__(self, other: "GradStats") -> "GradStats":
        return GradStats(self.n + other.n, self.zero + other.zero, self.underflow + other.underflow,
                         self.subnormal + other.subnormal, self.overflow + other.overflow)

    def _frac(self, count: int) -> float:
        return count / self.n if self.n else 0.0

    @property
    def underflow_fraction(self) -> float:
        return self._frac(self.underflow)

    @property
    def lost_fraction(self) -> float:
        """Of the values that were nonzero in fp32, the fraction rounding turned into zero."""
        return self.underflow / (self.n - self.zero) if self.n > self.zero else 0.0

    @property
    def zero_fraction(self) -> float:
        """Values that are zero after rounding (zero before, or underflowed)."""
        return self._frac(self.zero + self.underflow)

    @property
    def subnormal_fraction(self) -> float:
        return self._frac(self.subnormal)

    @property
    def overflow_fraction(self) -> float:
        return self._frac(self.overflow)

    @classmethod
    def count(cls, before: torch.Tensor, after: torch.Tensor, fmt: FloatFormat) -> "GradStats":
        """Compare the fp32 values ``before`` with their rounding ``after`` to ``fmt``.

        >>> GradStats.count(torch.tensor([0.0, 1e-9, 1e-6, 1e5]), cast(torch.tensor([0.0, 1e-9, 1e-6, 1e5]), FP16), FP16)
        GradStats(n=4, zero=1, underflow=1, subnormal=1, overflow=1)
        """
        zero_after = after == 0
        return cls(
            n=before.numel(),
            zero=int((before == 0).sum()),
            underflow=int(((before != 0) & zero_after).sum()),
            subnormal=int((~zero_after & (after.abs() < fmt.min_normal)).sum()),
            # overflow: the value rounds past the format's max (a plain cast gives inf/NaN, a saturating
            # one clips it); a value a little above the max that rounds down to it is not one
            overflow=int((~torch.isfinite(after) | (~torch.isnan(before) & ~torch.isfinite(
                cast(before, fmt, saturate=False)))).sum()),
        )


def _round(x: torch.Tensor, fmt: FloatFormat | None, backend: str) -> torch.Tensor:
    if fmt is None:
        return x
    if backend == "torch":
        return x.to(fmt.torch_dtype).float()
    return cast(x, fmt)


class _Round(torch.autograd.Function):
    """Forward: round ``x`` to ``fwd``. Backward: round the incoming gradient to ``bwd``.

    Rounding is flat almost everywhere (its derivative is 0), so the gradient passes straight
    through (the straight-through estimator), only itself rounded, as a low-precision
    backward pass would store it. ``record(before, after)`` counts what the rounding did.
    """

    @staticmethod
    def forward(ctx, x, fwd, bwd, backend, record):
        ctx.bwd, ctx.backend, ctx.record = bwd, backend, record
        return _round(x, fwd, backend)

    @staticmethod
    def backward(ctx, grad):
        rounded = _round(grad, ctx.bwd, ctx.backend)
        if ctx.record is not None and ctx.bwd is not None:
            ctx.record(grad, rounded)
        return rounded, None, None, None, None


class _Rounder(nn.Module):
    """``_Round`` as a module, so it can serve as a weight parametrization or a hook."""

    def __init__(self, fwd, bwd, backend, record=None):
        super().__init__()
        self.fwd, self.bwd, self.backend, self.record = fwd, bwd, backend, record

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Round.apply(x, self.fwd, self.bwd, self.backend, self.record)


class SimulatedModel(nn.Module):
    """A copy of ``model`` whose Linear/Conv2d layers compute in ``precision`` (see :func:`simulate`).

    ``stats`` maps ``"<layer>.weight"``, ``"<layer>.bias"`` (weight gradients) and
    ``"<layer>.output"`` (the gradient arriving at the layer's output) to the
    :class:`GradStats` counted since the last :meth:`reset_stats`. The optimizer should update
    ``parameters()``: for a rounded layer these are the fp32 masters
    (``layer.parametrizations.weight.original``); ``layer.weight`` is their rounded copy.
    """

    def __init__(self, model: nn.Module, precision: Precision, backend: str = "qedu"):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (e.g. qedu.models.make_mlp()), got {type(model).__name__}.")
        if not isinstance(precision, Precision):
            raise TypeError(f"precision must be a qedu.mixed_precision.Precision, got {precision!r}.")
        _check_choice(backend, "backend", BACKENDS)
        if backend == "torch":
            for fmt in (precision.compute, precision.grads):
                if fmt is not None and fmt.torch_dtype is None:
                    raise ValueError(f"backend='torch' needs formats torch can cast to; {fmt.name} has none. Use backend='qedu'.")
        self.net = copy.deepcopy(model)  # never touch the caller's model
        self.precision, self.backend = precision, backend
        self.stats: dict[str, GradStats] = {}
        self.rounded_layers = [(n, m) for n, m in self.net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        c, g = precision.compute, precision.grads
        for name, layer in self.rounded_layers:
            for pname in ("weight", "bias"):
                if getattr(layer, pname) is not None:
                    parametrize.register_parametrization(layer, pname, _Rounder(c, g, backend, self._recorder(f"{name}.{pname}")))
            into = _Rounder(c, g, backend)  # gradients here are the previous layer's outputs' again
            out = _Rounder(c, g, backend, self._recorder(f"{name}.output"))
            layer.register_forward_pre_hook(lambda _mod, args, r=into: (r(args[0]), *args[1:]))
            layer.register_forward_hook(lambda _mod, _args, y, r=out: r(y))
        self._kahan: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (stored weights, compensation)
        if not precision.master_weights:
            self.round_weights_()

    def _recorder(self, key: str):
        def record(before, after):
            self.stats[key] = self.stats.get(key, GradStats()) + GradStats.count(before, after, self.precision.grads)
        return record

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def reset_stats(self) -> None:
        self.stats = {}

    @torch.no_grad()
    def round_weights_(self, generator: torch.Generator | None = None) -> None:
        """Store every rounded layer's weights in ``precision.compute`` (nearest, stochastic or Kahan).

        With "kahan" the update since the last call is ``w - stored`` (what the optimizer added
        in fp32) and the stored weights move by :func:`~qedu.accumulation.kahan_add`.
        """
        fmt = self.precision.compute
        if fmt is None:
            return
        for name, layer in self.rounded_layers:
            for pname, param in layer.parametrizations.items():
                w = param.original
                if self.precision.weight_rounding == "kahan":
                    key = f"{name}.{pname}"
                    if key not in self._kahan:  # first call: round to nearest, no compensation yet
                        stored, comp = _round(w, fmt, self.backend), torch.zeros_like(w)
                    else:
                        stored, comp = kahan_add(*self._kahan[key], w - self._kahan[key][0], fmt)
                    self._kahan[key] = (stored, comp)
                    w.copy_(stored)
                elif self.precision.weight_rounding == "stochastic":
                    w.copy_(stochastic_round(w, fmt, generator))
                else:
                    w.copy_(_round(w, fmt, self.backend))


def simulate(model: nn.Module, precision: Precision, backend: str = "qedu") -> SimulatedModel:
    """A copy of ``model`` that computes its Linear/Conv2d layers in ``precision``.

    >>> sim = simulate(nn.Linear(2, 1), Precision(FP16, FP16))
    >>> sim(torch.tensor([[1.0, 0.1]])).dtype, sim.net.weight.dtype
    (torch.float32, torch.float32)
    """
    return SimulatedModel(model, precision, backend)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

@dataclass
class SimulatedRun:
    """What :func:`train_simulated` measured: per epoch ``test_acc``; per step ``losses`` (the
    unscaled fp32 loss), ``scales`` (loss scale used), ``skipped`` (step skipped for inf/NaN)
    and ``grad_stats`` (per tensor :class:`GradStats`)."""

    precision: Precision
    model: SimulatedModel
    test_acc: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    skipped: list[bool] = field(default_factory=list)
    grad_stats: list[dict[str, GradStats]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_test_acc(self) -> float:
        return self.test_acc[-1] if self.test_acc else float("nan")

    @property
    def skipped_fraction(self) -> float:
        return sum(self.skipped) / len(self.skipped) if self.skipped else 0.0

    def total_stats(self, kind: str = "") -> GradStats:
        """All counts added up over steps and tensors whose name ends with ``kind`` ("weight", "output"...)."""
        total = GradStats()
        for step in self.grad_stats:
            for key, s in step.items():
                if key.endswith(kind):
                    total = total + s
        return total

    def __repr__(self) -> str:
        return (f"SimulatedRun({self.precision.name}: final_test_acc={self.final_test_acc:.4f}, "
                f"skipped={sum(self.skipped)}/{len(self.skipped)}, seconds={self.seconds:.2f})")


def _make_scaler(loss_scale):
    if loss_scale is None or isinstance(loss_scale, StaticLossScaler):
        return loss_scale
    if loss_scale == "dynamic":
        return DynamicLossScaler()
    if isinstance(loss_scale, numbers.Real) and not isinstance(loss_scale, bool):  # numpy numbers too
        return StaticLossScaler(float(loss_scale))
    raise TypeError(f"loss_scale must be None, a number such as 2.**16, 'dynamic' or a qedu loss scaler, got {loss_scale!r}.")


_ADAM_EPS = 1e-8  # torch.optim.Adam's default; train_simulated divides it by loss_divisor


def train_simulated(model: nn.Module, data, precision: Precision, *, epochs: int = 5, lr: float = 1e-3,
                    batch_size: int = 32, seed: int = 0, loss_scale=None, loss_divisor: float = 1.0,
                    backend: str = "qedu") -> SimulatedRun:
    """Train a simulated copy of ``model`` on ``data`` (a :class:`~qedu.data.Digits`) with Adam.

    Each step: ``loss = cross_entropy / loss_divisor``; backward through the rounded layers
    (scaled by the loss scaler, if any); the scaler unscales and skips steps with inf/NaN; Adam
    updates the fp32 parameters; without master weights they are rounded back to
    ``precision.compute``. The batch order matches :func:`qedu.models.train` for the same seed.

    Args:
        loss_scale: None (no scaling), a number (:class:`~qedu.loss_scaling.StaticLossScaler`),
            "dynamic" (:class:`~qedu.loss_scaling.DynamicLossScaler` with GradScaler's defaults)
            or a scaler object.
        loss_divisor: divide the loss by this (e.g. ``2**16``), as averaging over a large
            batch or many accumulation steps shrinks it. Adam's ``eps`` is divided too, so in
            fp32 the run is exactly unchanged: only the gradients' magnitude moves.
        backend: "qedu" (:func:`~qedu.floats.cast`) or "torch" (torch's casts, same bits, faster).

    Raises:
        TypeError / ValueError: bad ``epochs``, ``batch_size``, ``seed``, ``loss_scale``, or a
            ``loss_divisor`` that is not a finite number > 0 keeping ``1e-8 / loss_divisor`` a
            normal float32 (``inf`` would make every weight NaN).
    """
    epochs, batch_size = check_int(epochs, "epochs", 1), check_int(batch_size, "batch_size", 1)
    loss_divisor = check_real(loss_divisor, "loss_divisor", 0, lo_open=True, example="2.**16")
    if not _ADAM_EPS / FLOAT32_MAX <= loss_divisor <= _ADAM_EPS / FLOAT32_TINY:
        raise ValueError(f"loss_divisor={loss_divisor:.4g} is outside [{_ADAM_EPS / FLOAT32_MAX:.3g}, "
                         f"{_ADAM_EPS / FLOAT32_TINY:.3g}]: Adam's eps = {_ADAM_EPS:g} / loss_divisor must stay a normal "
                         "float32 number (0 would turn a zero gradient into 0 / 0 = NaN). Use e.g. 2.**16.")
    scaler = _make_scaler(loss_scale)
    sim = simulate(model, precision, backend)
    order = torch.Generator().manual_seed(check_int(seed, "seed", 0, 2**32 - 1))  # batch order
    rounding = torch.Generator().manual_seed(seed + 1)  # stochastic rounding of the weights
    optimizer = _LeanAdam(sim.parameters(), lr=lr, eps=_ADAM_EPS / loss_divisor)  # torch.optim.Adam's update
    run = SimulatedRun(precision, sim)
    start = time.perf_counter()
    for _epoch in range(epochs):
        sim.train()
        for xb, yb in batches(data.x_train, data.y_train, batch_size, shuffle=True, generator=order):
            sim.reset_stats()
            loss = F.cross_entropy(sim(xb), yb) / loss_divisor
            optimizer.zero_grad(set_to_none=True)
            run.scales.append(scaler.get_scale() if scaler else 1.0)
            if scaler is None:
                loss.backward()
                optimizer.step()
                stepped = True
            else:
                scaler.scale(loss).backward()
                stepped = scaler.step(optimizer)
                scaler.update()
            if stepped and not precision.master_weights:
                sim.round_weights_(rounding)
            run.losses.append(float(loss.detach()) * loss_divisor)
            run.skipped.append(not stepped)
            run.grad_stats.append(sim.stats)
        run.test_acc.append(evaluate(sim, data.x_test, data.y_test))
    run.seconds = time.perf_counter() - start
    sim.eval()
    return run
