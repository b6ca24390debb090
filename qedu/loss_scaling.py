"""Loss scaling from scratch: keep small gradients above a low-precision format's underflow.

fp16 holds magnitudes from 2**-24 (6e-8) to 65504. Gradients are often smaller than 2**-24 and
would round to zero, so mixed-precision training multiplies the loss by a *scale* ``S`` before
the backward pass (every gradient is then ``S`` times larger, by the chain rule) and divides the
fp32 gradients by ``S`` before the optimizer step (Micikevicius et al. 2018, "Mixed Precision
Training")::

    scaled_loss = loss * S            scaler.scale(loss).backward()
    grad        = grad * (1 / S)      scaler.step(optimizer)   (unscale, then step or skip)
    if any grad is inf or NaN: skip the step (the scale was too large)
    S = next scale                    scaler.update()

* :class:`StaticLossScaler` keeps ``S`` fixed.
* :class:`DynamicLossScaler` finds ``S`` by itself, exactly like ``torch.amp.GradScaler``
  (``tests/test_loss_scaling.py`` proves equal scales and skipped steps): after an overflow
  ``S *= backoff_factor``; after ``growth_interval`` clean steps in a row ``S *= growth_factor``.
* :class:`DelayedScaling` is the FP8 recipe (Transformer Engine's "delayed scaling"): one scale
  per tensor, chosen from the largest ``|x|`` ("amax") seen in the last ``history_len`` steps, so
  the tensor fills the fp8 range: ``scale = fmt.max / max(amax_history) / 2**margin``.

>>> scaler = DynamicLossScaler(init_scale=4.0, growth_interval=2)
>>> p = torch.nn.Parameter(torch.ones(2)); opt = torch.optim.SGD([p], lr=0.1)
>>> scaler.scale((3 * p).sum()).backward(); scaler.step(opt), scaler.update(), scaler.get_scale()
(True, None, 4.0)
"""
from __future__ import annotations

import math
import numbers
from collections import deque

import torch

from qedu._validation import FLOAT32_MAX, as_float32, as_float_tensor, check_int, check_real
from qedu.floats import FP8_E4M3, FloatFormat, cast

__all__ = ["StaticLossScaler", "DynamicLossScaler", "DelayedScaling", "scale_from_amax", "AMAX_FLOOR"]


def _positive(value, name: str, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number (e.g. {example}), got {type(value).__name__} {value!r}.")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 (e.g. {example}), got {value!r}.")
    return float(value)


# The usable loss scales: S itself and 1 / S must be finite normal float32 numbers (the scaler
# multiplies the loss by S and the gradients by 1 / S, both in float32).
_MIN_SCALE, _MAX_SCALE = 1 / FLOAT32_MAX, FLOAT32_MAX


def _usable_scale(scale: torch.Tensor) -> bool:
    s = float(scale)
    return _MIN_SCALE <= s <= _MAX_SCALE and math.isfinite(float(torch.tensor(1.0 / s, dtype=torch.float32)))


class StaticLossScaler:
    """Multiply the loss by a fixed ``scale``; unscale the gradients; skip steps with inf/NaN.

    The methods follow ``torch.amp.GradScaler`` so the two are interchangeable in a loop::

        scaler.scale(loss).backward(); scaler.step(optimizer); scaler.update()

    Args:
        scale: the loss scale ``S`` (> 0); powers of two keep the scaling exact.

    After :meth:`step`, ``found_inf`` says whether the step was skipped.

    Raises:
        TypeError / ValueError: a ``scale`` that is not a number, or that is not usable in
            float32 (``S`` and ``1 / S`` must both be finite: about 2.9e-39 .. 3.4e38).
    """

    def __init__(self, scale: float = 2.0**16):
        # float32, like GradScaler's scale tensor, so multiplying by it rounds the same way
        self._scale = torch.tensor(_positive(scale, "scale", "2.**16"), dtype=torch.float32)
        if not _usable_scale(self._scale):
            raise ValueError(f"scale={scale!r} is {float(self._scale):.4g} in float32; the loss scale and its inverse "
                             f"must both be finite float32 numbers, so S must lie in [{_MIN_SCALE:.3g}, {_MAX_SCALE:.3g}]. "
                             "Use a power of two such as 2.**16.")
        self.found_inf = False
        self._unscaled = False

    def get_scale(self) -> float:
        """The current loss scale ``S``."""
        return float(self._scale)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss * S``: backpropagate this instead of ``loss``."""
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"loss must be a torch.Tensor (the output of the loss function), got {type(loss).__name__}.")
        return loss * self._scale

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide every gradient of ``optimizer`` by ``S`` in place; note any inf or NaN.

        Like GradScaler, multiplies by ``1 / S`` computed in float64 and rounded to float32.
        Call it yourself only to inspect or clip the true gradients before :meth:`step`.
        """
        if self._unscaled:
            raise RuntimeError("unscale_() was already called since the last update(); call it once per step.")
        inv_scale = torch.tensor(1.0 / float(self._scale), dtype=torch.float32)
        found_inf = False
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    p.grad.mul_(inv_scale)
                    found_inf |= not bool(torch.isfinite(p.grad).all())
        self.found_inf = found_inf
        self._unscaled = True

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale (unless done already), then ``optimizer.step()`` only if every gradient is finite.

        Returns True when the optimizer stepped, False when the step was skipped.
        """
        if not self._unscaled:
            self.unscale_(optimizer)
        if self.found_inf:
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """End of the iteration: a static scaler keeps ``S``."""
        self._unscaled = False


class DynamicLossScaler(StaticLossScaler):
    """A loss scaler that finds its scale by trial and error (``torch.amp.GradScaler``'s algorithm).

    After each step, in :meth:`update`::

        if the step found inf/NaN:  S = S * backoff_factor;   clean_steps = 0
        else:                       clean_steps += 1
                                    if clean_steps == growth_interval:
                                        S = S * growth_factor  (unless that overflows float32)
                                        clean_steps = 0

    So ``S`` sits just below the largest value that does not overflow: it halves on every
    overflow and doubles again after ``growth_interval`` good steps.

    Args:
        init_scale: starting ``S`` (GradScaler's default ``2**16``).
        growth_factor: > 1, multiplies ``S`` after ``growth_interval`` clean steps.
        backoff_factor: in (0, 1), multiplies ``S`` after an overflow.
        growth_interval: clean steps in a row before growing.

    Raises:
        TypeError / ValueError: bad arguments (as :class:`StaticLossScaler`; ``growth_factor > 1``,
            ``0 < backoff_factor < 1``); in :meth:`update`, a back-off that would take ``S`` below
            the smallest usable float32 scale (the gradients overflow at every scale: something
            upstream is NaN/inf).
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        super().__init__(init_scale)
        self.growth_factor = _positive(growth_factor, "growth_factor", "2.0")
        self.backoff_factor = _positive(backoff_factor, "backoff_factor", "0.5")
        if self.growth_factor <= 1.0:
            raise ValueError(f"growth_factor must be > 1 (e.g. 2.0), got {growth_factor}.")
        if self.backoff_factor >= 1.0:
            raise ValueError(f"backoff_factor must be < 1 (e.g. 0.5), got {backoff_factor}.")
        self.growth_interval = check_int(growth_interval, "growth_interval", 1)
        self.clean_steps = 0  # GradScaler calls it the growth tracker

    def _times(self, factor: float) -> torch.Tensor:
        """``S * factor`` computed in float64 and rounded to float32, as GradScaler's kernel does."""
        return torch.tensor(float(self._scale) * factor, dtype=torch.float32)

    def update(self) -> None:
        """Back off after an overflow, grow after ``growth_interval`` clean steps (see the class)."""
        if not self._unscaled:
            raise RuntimeError("update() needs a step() (or unscale_()) first in this iteration.")
        if self.found_inf:
            backed_off = self._times(self.backoff_factor)
            if not _usable_scale(backed_off):
                self._unscaled = False
                raise ValueError(
                    f"the loss scale fell to {float(backed_off):.4g} (S = {float(self._scale):.4g} times "
                    f"backoff_factor={self.backoff_factor}), below the smallest usable float32 scale {_MIN_SCALE:.3g}: "
                    "the gradients are inf/NaN at every scale. Find where the NaN/inf come from (the loss, the "
                    "model's weights), or use a backoff_factor closer to 1 such as 0.5."
                )
            self._scale = backed_off
            self.clean_steps = 0
        else:
            self.clean_steps += 1
            if self.clean_steps == self.growth_interval:
                grown = self._times(self.growth_factor)
                if torch.isfinite(grown):
                    self._scale = grown
                self.clean_steps = 0
        self._unscaled = False


# torchao's EPS in float8 ``amax_to_scale``: an amax below it is treated as 1e-12 when a scale is chosen
AMAX_FLOOR = 1e-12


def scale_from_amax(amax: float, fmt: FloatFormat, margin: int = 0, previous: float = 1.0) -> float:
    """The per-tensor FP8 scale that maps ``amax`` onto the top of ``fmt``: ``fmt.max / amax / 2**margin``.

    ``x * scale`` then fits in ``fmt`` without overflow; ``margin`` leaves ``2**margin`` of
    headroom. When ``amax`` is 0 or not finite there is nothing to learn from, so ``previous``
    is kept (as Transformer Engine does).

    Raises:
        TypeError / ValueError: ``amax`` or ``previous`` not a number (``previous`` must be
            finite and > 0), ``fmt`` not a FloatFormat, or a scale beyond float32.

    >>> scale_from_amax(2.0, FP8_E4M3), scale_from_amax(0.0, FP8_E4M3, previous=3.0)
    (224.0, 3.0)
    """
    margin = check_int(margin, "margin", 0)
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a FloatFormat such as qedu.formats.FP8_E4M3, got {fmt!r}.")
    amax = check_real(amax, "amax", allow_inf=True, example="2.0") if not _is_nan(amax) else math.nan
    previous = check_real(previous, "previous", 0, lo_open=True, example="1.0")
    if not (math.isfinite(amax) and amax > 0):
        return previous
    scale = fmt.max / amax / 2.0**margin
    if not FLOAT32_MAX >= scale >= 1 / FLOAT32_MAX:
        raise ValueError(f"amax={amax:.4g} gives the scale {scale:.4g}, outside float32's usable range; amax must be a "
                         f"magnitude that x * scale can reach (between {fmt.max / FLOAT32_MAX:.3g} and "
                         f"{fmt.max * FLOAT32_MAX:.3g} for {fmt.name}).")
    return scale


def _is_nan(value) -> bool:
    """NaN amax (a float NaN, or a one-element tensor holding NaN) means "nothing to learn from"."""
    try:
        return math.isnan(float(value)) and not isinstance(value, (str, bytes, bool))
    except (TypeError, ValueError):
        return False


class DelayedScaling:
    """FP8 per-tensor scaling with an amax history ("delayed scaling", Micikevicius et al. 2022).

    Each call to :meth:`quantize` uses the scale computed from *earlier* steps (the current
    tensor's amax is not known until it has been produced, hence "delayed")::

        x_hat = cast(x * scale, fmt, saturate=True) / scale     # what the fp8 matmul sees
        history.append(max |x|)                                 # keep the last history_len
        scale = fmt.max / max(history) / 2**margin              # for the next step

    The first step uses ``scale = 1``. A tensor that suddenly grows beyond the history's amax
    saturates at ``fmt.max`` for one step; ``last_overflow`` and ``last_underflow`` report the
    fraction of values that saturated (rounded past ``fmt.max``: above 464 for e4m3) or rounded to
    zero (nonzero before) in the latest call.

    Args:
        fmt: the fp8 (or any) :class:`~qedu.floats.FloatFormat`, default ``FP8_E4M3``.
        history_len: how many past amaxes to remember (Transformer Engine's ``amax_history_len``).
        margin: extra headroom in powers of two.

    >>> ds = DelayedScaling(FP8_E4M3, history_len=2)
    >>> [ds.quantize(torch.tensor([a])).item() for a in (1.0, 0.5, 4.0)], ds.scale  # 4.0 saturates
    ([1.0, 0.5, 1.0], 112.0)
    """

    def __init__(self, fmt: FloatFormat = FP8_E4M3, history_len: int = 16, margin: int = 0):
        if not isinstance(fmt, FloatFormat):
            raise TypeError(f"fmt must be a FloatFormat such as qedu.formats.FP8_E4M3, got {fmt!r}.")
        self.fmt = fmt
        self.margin = check_int(margin, "margin", 0)
        self.amax_history: deque[float] = deque(maxlen=check_int(history_len, "history_len", 1))
        self.scale = 1.0
        self.last_overflow = 0.0
        self.last_underflow = 0.0

    def quantize(self, x) -> torch.Tensor:
        """Round ``x`` through ``fmt`` with the current scale, then update the history and scale."""
        x = as_float32(as_float_tensor(x, "x"), "x")  # float64 beyond float32: a clear error, not a silent inf
        scale = self.scale  # decided by earlier steps
        scaled = x * scale
        x_fp8 = cast(scaled, self.fmt, saturate=True)  # fp8 training saturates instead of making inf
        # overflow: rounds past fmt.max (what a plain cast makes inf/NaN), not merely above it (e4m3: > 464)
        self.last_overflow = float((~torch.isnan(scaled) & ~torch.isfinite(cast(scaled, self.fmt, saturate=False))).double().mean())
        self.last_underflow = float(((x_fp8 == 0) & (x != 0)).double().mean())
        self.amax_history.append(float(x.abs().max()))
        amax = max(self.amax_history)
        if amax > 0:  # like torchao, floor a tiny amax: 448 / 1e-40 is no float32 scale
            amax = max(amax, AMAX_FLOOR)
        self.scale = scale_from_amax(amax, self.fmt, self.margin, previous=scale)
        return x_fp8 / scale
