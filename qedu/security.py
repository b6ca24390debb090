"""Data quality and security of quantized models: calibration data, drift, adversarial inputs.

A quantized model trusts two things it was not trained on: the **calibration images** that set
its activation ranges, and the **inputs** it meets later. This module shows what goes wrong
with each, from scratch:

* **calibration quality** -- :func:`calibration_report` quantizes a model on a given calibration
  set and returns each layer's activation scale, the share of clean test activations its grid
  clips, and the accuracy; :func:`poison_calibration` multiplies a few calibration images by a
  factor (20 inflates a min/max range, and the scale, up to 20-fold; below 1 it fades them);
* **monitoring** -- :class:`RangeMonitor` watches the inputs of every quantized layer after
  deployment. Its alarm rule: *alarm when, in any layer, the share of values the grid clips
  exceeds the share on the calibration images by more than ``tolerance`` (default 0.01, one
  percentage point), or when the batch's largest value is below ``underuse`` (0.25) times the
  calibration's*. A value is clipped when the clamp changes its code::

      clipped  <=>  round(x * (1 / scale)) + zero_point  <  qmin   or   >  qmax

  (a value that lands exactly on ``qmax`` is represented, not clipped);
* **adversarial inputs** -- :func:`fgsm` (Goodfellow et al. 2015) and :func:`pgd` (Madry et al.
  2018), ``eps`` in pixel units on images in ``[0, 1]``::

      x_adv = clamp(x + eps * sign(grad_x loss(model(x), y)), 0, 1)             # FGSM, one step
      x <- clamp(proj_eps(x + step_size * sign(grad_x loss)), 0, 1), `steps` times  # PGD

  A fake-quantized model rounds, and ``round`` has zero gradient, so attacking it directly finds
  nothing (*gradient masking*, not robustness); :func:`straight_through` gives a copy whose
  activation quantizers pass gradients straight through, which is how attacks are crafted on it.

>>> poison_calibration(torch.ones(4, 1, 2, 2), 0.25, factor=20.0, seed=0).amax().item()
20.0
>>> clip_rate(torch.tensor([-0.1, 0.0, 1.5, 1.6]), 0.1, 0, IntFormat(4, signed=False))  # codes -1, 0, 15, 16
0.5
"""
from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qedu._validation import as_float_tensor, check_int, check_real, run_model, to_model_dtype
from qedu.calibration import record_activations
from qedu.formats import IntFormat
from qedu.models import evaluate
from qedu.ptq import ActQuant, PTQConfig, QuantLayer, quantize_model
from qedu.quantizers import _check_scale, _check_x, _check_zero_point

__all__ = ["fgsm", "pgd", "straight_through", "attack_table", "poison_calibration", "clip_rate", "CalibrationReport",
           "calibration_report", "MonitorReport", "RangeMonitor"]


# ----------------------------------------------------------------------------- adversarial inputs
def _check_attack(model, x, y, eps) -> tuple[torch.Tensor, torch.Tensor, float]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    x = to_model_dtype(as_float_tensor(x, "x").detach(), model, "x")
    if x.ndim == 0:
        raise ValueError("x must be a batch of images (N, C, H, W), got a single number.")
    if bool((x < 0).any() or (x > 1).any()):
        raise ValueError(f"x must hold pixels in [0, 1] (eps is a distance in those units), got values in "
                         f"[{x.min().item():.3g}, {x.max().item():.3g}]; divide by the maximum pixel value first "
                         "(digits: x = pixel / 16). Clamping to [0, 1] would move pixels by far more than eps.")
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() or len(y) != len(x):
        raise ValueError(f"y must be a 1-D integer tensor with one label per image ({len(x)}), got "
                         f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}.")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps <= 1 or math.isnan(eps):
        raise ValueError(f"eps must be a pixel distance in [0, 1] (images are in [0, 1]; 0.1 = 1.6 of 16 grey "
                         f"levels), got {eps!r}.")
    return x, y, float(eps)


def _loss_sign(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sign(d loss / d x)`` in eval mode; the model's parameters get no gradient."""
    was_training = model.training
    model.eval()
    try:
        x = x.clone().requires_grad_(True)
        loss = F.cross_entropy(run_model(model, x, "x"), y)  # the mean over the batch: a positive factor, same signs
        (grad,) = torch.autograd.grad(loss, x)
    finally:
        model.train(was_training)
    return grad.sign()


def fgsm(model: nn.Module, x, y, eps: float) -> torch.Tensor:
    """Fast gradient sign method: one step of size ``eps`` up the loss, per pixel, kept in [0, 1].

    ``x_adv = clamp(x + eps * sign(grad_x cross_entropy(model(x), y)), 0, 1)``. Every pixel moves
    by ``eps`` (or less, at the clamp): the attack spends its whole budget in the L-infinity ball.

    Raises:
        TypeError / ValueError: ``model`` not an ``nn.Module``; ``x`` empty, non-finite or outside
            ``[0, 1]``; ``y`` not one integer label per image; ``eps`` not in ``[0, 1]``.

    ``x`` is cast to the model's dtype (float64 accepted if it fits), and so is ``x_adv``.

    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x_adv = fgsm(model, torch.full((1, 1, 2, 2), 0.5), torch.tensor([0]), 0.1)
    >>> sorted(set(round(v, 4) for v in x_adv.flatten().tolist()) - {0.4, 0.6})
    []
    """
    x, y, eps = _check_attack(model, x, y, eps)
    return (x + eps * _loss_sign(model, x, y)).clamp(0.0, 1.0)


def pgd(model: nn.Module, x, y, eps: float, *, steps: int = 10, step_size: float | None = None,
        random_start: bool = True, seed: int = 0) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018): ``steps`` FGSM steps of ``step_size``,
    each projected back into ``[x - eps, x + eps]`` and ``[0, 1]``.

    Args:
        step_size: default ``2.5 * eps / steps`` (Madry et al.'s choice). random_start: begin at a
            uniform random point of the eps-ball (seeded by ``seed``).

    Returns:
        ``x_adv`` with ``|x_adv - x| <= eps`` everywhere and values in ``[0, 1]``.

    Raises:
        TypeError / ValueError: as :func:`fgsm`, and ``steps < 1`` or a ``step_size`` that is not
            a finite number >= 0.
    """
    x, y, eps = _check_attack(model, x, y, eps)
    steps = check_int(steps, "steps", 1)
    if step_size is None:
        step_size = 2.5 * eps / steps
    else:
        step_size = check_real(step_size, "step_size", 0, example="2.5 * eps / steps")
    x_adv = x.clone()
    if random_start:
        g = torch.Generator().manual_seed(check_int(seed, "seed", 0))
        x_adv = (x + eps * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv = x_adv + step_size * _loss_sign(model, x_adv, y)
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)  # project: eps-ball, then pixels
    return x_adv


class _StraightThrough(nn.Module):
    """Forward: the quantizer's output. Backward: the identity (the straight-through estimator)."""

    def __init__(self, act: ActQuant):
        super().__init__()
        self.act = act

    def forward(self, x):
        return x + (self.act(x) - x).detach()


def straight_through(quantized: nn.Module) -> nn.Module:
    """A copy of a PTQ model whose activation quantizers let gradients through (STE), same outputs.

    >>> from qedu.models import make_mlp
    >>> q = quantize_model(make_mlp(seed=0), PTQConfig(act_bits=4), torch.rand(8, 1, 8, 8))
    >>> x = torch.rand(2, 1, 8, 8)
    >>> torch.equal(straight_through(q)(x), q(x))
    True
    """
    if not any(isinstance(m, QuantLayer) for m in quantized.modules()):
        raise TypeError("quantized must be a model from qedu.ptq.quantize_model (it holds no QuantLayer).")
    model = copy.deepcopy(quantized)
    for m in model.modules():
        if isinstance(m, QuantLayer) and m.act is not None:
            m.act = _StraightThrough(m.act)
    return model


def attack_table(sources: Mapping[str, nn.Module], targets: Mapping[str, nn.Module], x, y,
                 eps_values: Sequence[float], *, attack: str = "fgsm", steps: int = 10, seed: int = 0) -> list[dict]:
    """Craft adversarial images on each source model and test every target on them.

    A source equal to its target is a *white-box* attack; any other pair is a *transfer* attack.
    Returns rows ``attack, source, target, eps, accuracy``.
    """
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"attack={attack!r} is unknown; choose 'fgsm' or 'pgd'.")
    rows = []
    for eps in eps_values:
        for source_name, source in sources.items():
            if attack == "fgsm":
                x_adv = fgsm(source, x, y, eps)
            else:
                x_adv = pgd(source, x, y, eps, steps=steps, seed=seed)
            for target_name, target in targets.items():
                rows.append(dict(attack=attack, source=source_name, target=target_name, eps=float(eps),
                                 accuracy=evaluate(target, x_adv, y)))
    return rows


# ----------------------------------------------------------------------------- calibration data
def poison_calibration(x_calib, fraction: float | None = None, *, n: int | None = None, factor: float = 20.0,
                       seed: int = 0) -> torch.Tensor:
    """A copy of ``x_calib`` with some images, chosen by ``seed``, multiplied by ``factor``: a
    saturated sensor, a missing ``/ 16``, or an attacker.

    Give either ``fraction`` (``round(fraction * N)`` images, at least one if ``fraction > 0``) or
    ``n`` (that many images). With min/max calibration one image at ``factor`` 20 multiplies the
    first layer's range, and so its scale, by 20 times that image's maximum over the clean
    maximum: the grid gets about 20x coarser.

    Raises:
        ValueError: neither or both of ``fraction`` and ``n``, values out of range, a ``factor`` that
            is not a finite number >= 0 or that makes the images overflow their dtype.

    >>> poison_calibration(torch.ones(4, 1, 2, 2), n=1, factor=20.0).flatten(1).amax(1).tolist()
    [20.0, 1.0, 1.0, 1.0]
    """
    x = as_float_tensor(x_calib, "x_calib").clone()
    if (fraction is None) == (n is None):
        raise ValueError("give exactly one of fraction (e.g. 0.01) or n (e.g. n=1), the share or the number of "
                         "images to poison.")
    if n is not None:
        n = check_int(n, "n", 0, len(x))
    elif isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1] (0.01 poisons 1 % of the images), got {fraction!r}.")
    else:
        n = 0 if fraction == 0 else max(1, round(fraction * len(x)))
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 0 <= factor < math.inf:
        raise ValueError(f"factor must be a finite number >= 0 (20 inflates, 0.1 fades), got {factor!r}.")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(check_int(seed, "seed", 0)))[:n]
    x[idx] = x[idx] * factor
    if not bool(torch.isfinite(x[idx]).all()):
        raise ValueError(f"factor={factor!r} times these images overflows {x.dtype} (largest |x_calib| "
                         f"{float(as_float_tensor(x_calib, 'x_calib').abs().max()):.4g}); use a smaller factor such as 20.")
    return x


def clip_rate(x, scale, zero_point, fmt: IntFormat) -> float:
    """Share of ``x`` whose code the clamp changes: ``round(x / scale) + zero_point`` outside ``[qmin, qmax]``.

    (Computed as torch does, ``x * (1 / scale)``.) Both ends count; a value rounding exactly to
    ``qmin`` or ``qmax`` is on the grid and is not clipped. For post-ReLU activations the lower end
    is real 0, which never clips. Agrees with :func:`qedu.calibration.clipping_error`'s
    ``clipped_fraction`` (which works from the range instead of the codes) except at exact ties.

    Raises:
        TypeError: ``fmt`` is not an ``IntFormat``; ``zero_point`` is not an integer (NaN and 1.5
            are not codes). ValueError: ``scale <= 0`` (or too small for float32), a zero point
            outside ``[qmin, qmax]``, shapes that do not broadcast, empty or NaN ``x``.

    >>> clip_rate(torch.tensor([1.549, 1.551]), 0.1, 0, IntFormat(4, signed=False))  # codes 15 (qmax), 16
    0.5
    """
    if not isinstance(fmt, IntFormat):
        raise TypeError(f"fmt must be an IntFormat, e.g. IntFormat(8, signed=False), got {fmt!r}.")
    x = _check_x(x)  # float32, finite, not empty (float64 beyond float32 refused)
    scale = _check_scale(scale, x.shape)  # positive, finite, 1 / scale finite, broadcasts against x
    zero_point = _check_zero_point(zero_point, x.shape, fmt)  # an integer in [qmin, qmax], broadcasts
    codes = torch.round(x * (1.0 / scale)) + zero_point.to(torch.float32)
    return float(((codes < fmt.qmin) | (codes > fmt.qmax)).double().mean())


def _act_grids(quantized: nn.Module) -> dict:
    grids = {name: m.act for name, m in quantized.named_modules() if isinstance(m, QuantLayer) and m.act is not None}
    if not grids:
        raise TypeError("the model has no quantized activations: build it with qedu.ptq.quantize_model and act_bits set.")
    return grids


def _rates(quantized: nn.Module, grids: dict, x) -> tuple[dict, dict]:
    acts = record_activations(quantized, x, names=list(grids))  # each QuantLayer's input, before its quantizer
    rates = {n: clip_rate(acts[n], g.scale, g.zero_point, g.fmt) for n, g in grids.items()}
    return rates, {n: float(acts[n].max()) for n in grids}


@dataclass(frozen=True)
class CalibrationReport:
    """One calibration set's outcome: ``accuracy`` on the test set, per layer the activation
    ``scales`` and the ``clip_rates`` of the test activations, and the ``quantized`` model."""

    accuracy: float
    scales: dict
    clip_rates: dict
    quantized: nn.Module = field(default=None, repr=False)


def calibration_report(model: nn.Module, config: PTQConfig, x_calib, x_test, y_test) -> CalibrationReport:
    """Quantize ``model`` with ``config`` calibrated on ``x_calib``; measure it on ``(x_test, y_test)``."""
    quantized = quantize_model(model, config, x_calib)
    grids = _act_grids(quantized)
    rates, _ = _rates(quantized, grids, x_test)
    return CalibrationReport(evaluate(quantized, x_test, y_test), {n: float(g.scale) for n, g in grids.items()}, rates,
                             quantized)


# ----------------------------------------------------------------------------- monitoring
@dataclass(frozen=True)
class MonitorReport:
    """What :meth:`RangeMonitor.check` saw, per layer: the clip ``rates`` of the batch, the
    ``baseline`` rates on the calibration images, ``range_ratio`` = batch max / calibration max;
    and the layers that raised each alarm."""

    rates: dict
    baseline: dict
    range_ratio: dict
    clipping_alarms: tuple
    underuse_alarms: tuple
    tolerance: float
    underuse: float

    @property
    def alarm(self) -> bool:
        return bool(self.clipping_alarms or self.underuse_alarms)

    def summary(self) -> str:
        parts = [f"{n} clips {100 * self.rates[n]:.2f} % (calibration {100 * self.baseline[n]:.2f} %)"
                 for n in self.clipping_alarms]
        parts += [f"{n} max at {self.range_ratio[n]:.2f}x the calibration max" for n in self.underuse_alarms]
        if parts:
            return "ALARM: " + "; ".join(parts)
        worst = max(self.rates, key=lambda n: self.rates[n] - self.baseline[n])
        return (f"ok: most clipping in {worst}, {100 * self.rates[worst]:.2f} % (calibration "
                f"{100 * self.baseline[worst]:.2f} %, tolerance +{100 * self.tolerance:.1f} points); "
                f"smallest range ratio {min(self.range_ratio.values()):.2f}")


class RangeMonitor:
    """Watch a deployed PTQ model's activations against what calibration saw.

    The rule, per layer, on each incoming batch:

    * **clipping alarm**: the share of values the grid clips exceeds its share on the calibration
      images by more than ``tolerance`` (0 for min/max calibration, about ``100 - p`` % for a p-th
      percentile) -- the inputs outgrew the grid;
    * **under-use alarm**: the batch's largest value is below ``underuse`` times the calibration's
      -- the data uses less than that fraction of the levels (0.25: two bits wasted), because the
      inputs faded or the calibration set held outliers.

    Args:
        quantized: a model from :func:`qedu.ptq.quantize_model` with quantized activations.
        x_calib: the images it was calibrated on.
        tolerance: in [0, 1), default 0.01 (one percentage point). underuse: in [0, 1), default 0.25.
    """

    def __init__(self, quantized: nn.Module, x_calib, *, tolerance: float = 0.01, underuse: float = 0.25):
        for name, value in (("tolerance", tolerance), ("underuse", underuse)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a fraction in [0, 1), e.g. {0.01 if name == 'tolerance' else 0.25}, "
                                 f"got {value!r}.")
        self.quantized, self.tolerance, self.underuse = quantized, float(tolerance), float(underuse)
        self.grids = _act_grids(quantized)
        self.baseline, self.calib_max = _rates(quantized, self.grids, x_calib)

    def check(self, x) -> MonitorReport:
        """Clip rates and range of one incoming batch ``x``, and which alarms the rule raises."""
        rates, maxima = _rates(self.quantized, self.grids, x)
        ratio = {n: maxima[n] / self.calib_max[n] if self.calib_max[n] > 0 else math.inf for n in rates}
        clipping = tuple(n for n in rates if rates[n] > self.baseline[n] + self.tolerance)
        underuse = tuple(n for n in rates if ratio[n] < self.underuse)
        return MonitorReport(rates, dict(self.baseline), ratio, clipping, underuse, self.tolerance, self.underuse)
