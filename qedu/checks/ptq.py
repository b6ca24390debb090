"""Checks for the exercises of lessons 03 (calibration) and 04 (post-training quantization).

* :func:`check_minmax_observer`: ``fn(batches, bits) -> (scale: float, zero_point: int)``,
  unsigned affine codes ``0 .. 2**bits - 1`` from the running min/max of a list of batches;
* :func:`check_percentile_range`: ``fn(x, percentile, symmetric) -> (lo: float, hi: float)``;
* :func:`check_mse_clip`: ``fn(x, bits, n_grid) -> alpha: float``, the clipping ratio with the
  smallest MSE on a symmetric grid ``scale = alpha * max|x| / (2**(bits-1) - 1)``;
* :func:`check_fold_bn`: ``fn(w, b, mean, var, gamma, beta, eps) -> (w_fold, b_fold)``;
* :func:`check_sensitivity`: ``fn(model, data, bits) -> {layer: accuracy drop}``, one layer's
  weights quantized at a time, measured on the calibration images.

The references are qedu's :mod:`qedu.calibration` and :mod:`qedu.ptq`; each check names the
classic mistakes.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from qedu.calibration import MinMaxObserver, percentile_range
from qedu.checks.framework import Case, CheckFailed, CheckSpec, Mistake, compare, run_check
from qedu.formats import IntFormat
from qedu.granularity import PerTensor
from qedu.ptq import PTQConfig, fold_bn_params, quantizable_layers, quantize_model
from qedu.quantizers import FLOAT32_EPS, choose_qparams_from_minmax, fake_quantize

__all__ = ["check_minmax_observer", "check_percentile_range", "check_mse_clip", "check_fold_bn", "check_sensitivity",
           "MINMAX_OBSERVER", "PERCENTILE_RANGE", "MSE_CLIP", "FOLD_BN", "sensitivity_spec"]


def _numbers(actual):
    """Accept 0-d tensors where numbers are asked for."""
    if isinstance(actual, (tuple, list)):
        return tuple(a.item() if isinstance(a, torch.Tensor) and a.numel() == 1 else a for a in actual)
    return actual.item() if isinstance(actual, torch.Tensor) and actual.numel() == 1 else actual


# --- 1. the min/max observer -------------------------------------------------------------------

def _minmax_observer(batches, bits):
    obs = MinMaxObserver(IntFormat(bits, signed=False), symmetric=False)
    for x in batches:
        obs(x)
    scale, zero_point = obs.calculate_qparams()
    return float(scale), int(zero_point)


def _qparams_from(lo, hi, bits, *, widen=True, steps=None, round_zp=True):
    qmin, qmax = 0, 2**bits - 1
    if widen:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (steps or (qmax - qmin)), FLOAT32_EPS)
    zero_point = qmin - lo / scale
    if round_zp:
        return scale, int(min(max(round(zero_point), qmin), qmax))
    return scale, zero_point


def _no_widening(batches, bits):
    return _qparams_from(min(float(x.min()) for x in batches), max(float(x.max()) for x in batches), bits, widen=False)


def _last_batch(batches, bits):
    return _qparams_from(float(batches[-1].min()), float(batches[-1].max()), bits)


def _mean_of_batches(batches, bits):
    return _qparams_from(float(np.mean([float(x.min()) for x in batches])), float(np.mean([float(x.max()) for x in batches])), bits)


def _levels_not_steps(batches, bits):
    return _qparams_from(min(float(x.min()) for x in batches), max(float(x.max()) for x in batches), bits, steps=2**bits)


def _float_zero_point(batches, bits):
    return _qparams_from(min(float(x.min()) for x in batches), max(float(x.max()) for x in batches), bits, round_zp=False)


def _same_qparams(expected, actual) -> str | None:
    return compare(expected, _numbers(actual), rtol=1e-5)


def _random_batches(rng: np.random.Generator) -> Case:
    shift = float(rng.choice([0.0, 0.0, 3.0, -3.0]))
    batches = [torch.tensor(rng.normal(shift, rng.uniform(0.1, 4), size=int(rng.integers(1, 40))), dtype=torch.float32)
               for _ in range(int(rng.integers(1, 5)))]
    return Case((batches, int(rng.choice([2, 3, 4, 8]))))


MINMAX_OBSERVER = CheckSpec(
    name="minmax_observer",
    reference=_minmax_observer,
    golden=[
        Case(([torch.tensor([-1.0, 2.0]), torch.tensor([-3.0, 0.5])], 8), label="two batches"),
        Case(([torch.tensor([0.5, 2.0]), torch.tensor([1.0, 3.0])], 8), label="all positive: widen to 0"),
        Case(([torch.tensor([-4.0, 6.0]), torch.tensor([-1.0, 1.0])], 4), label="a narrow last batch"),
        Case(([torch.zeros(3)], 8), label="all zeros: eps floor"),
    ],
    random_case=_random_batches,
    mistakes=[
        Mistake("did not widen the range to include 0", _no_widening,
                "lo = min(min over batches, 0), hi = max(max over batches, 0): a real 0 (ReLU, padding) must get an exact code."),
        Mistake("kept only the last batch's range", _last_batch,
                "an observer keeps a *running* min and max: lo = min(lo, x.min()) for every batch."),
        Mistake("averaged the batches' minima and maxima", _mean_of_batches,
                "that is a moving average of sorts; min/max keeps the extremes over all batches."),
        Mistake("divided by 2**bits (the number of levels) instead of 2**bits - 1 (the number of steps)", _levels_not_steps,
                "qmax - qmin = 2**bits - 1 steps separate the 2**bits levels."),
        Mistake("did not round the zero point to an integer", _float_zero_point,
                "zero_point = qmin - round(lo / scale), clamped to [qmin, qmax], as an int."),
    ],
    hints=("running lo/hi over all batches, widened to include 0; scale = max((hi - lo) / (2**bits - 1), eps)",),
    compare=_same_qparams,
)


def check_minmax_observer(fn):
    """Check ``fn(batches, bits) -> (scale, zero_point)``: a min/max observer over a list of batches."""
    return run_check(MINMAX_OBSERVER, fn)


# --- 2. the percentile range -------------------------------------------------------------------

def _percentile(x, percentile, symmetric):
    lo, hi = percentile_range(x, percentile, PerTensor(), symmetric)
    return float(lo), float(hi)


def _abs_for_affine(x, percentile, symmetric):
    a = float(np.percentile(x.abs().double().numpy(), percentile))
    return -a, a


def _signed_for_symmetric(x, percentile, symmetric):
    v = x.double().numpy()
    lo, hi = np.percentile(v, 100 - percentile), np.percentile(v, percentile)
    if symmetric:
        a = max(abs(lo), abs(hi))
        return -float(a), float(a)
    return float(lo), float(hi)


def _mirrored(x, percentile, symmetric):
    hi = float(np.percentile(x.double().numpy(), percentile))
    return -hi, hi


def _fraction(x, percentile, symmetric):
    v = x.double().numpy()
    if symmetric:
        a = float(np.percentile(np.abs(v), percentile / 100))
        return -a, a
    return float(np.percentile(v, 1 - percentile / 100)), float(np.percentile(v, percentile / 100))


def _nearest_rank(x, percentile, symmetric):
    v = x.double().numpy()
    if symmetric:
        a = float(np.percentile(np.abs(v), percentile, method="nearest"))
        return -a, a
    return float(np.percentile(v, 100 - percentile, method="nearest")), float(np.percentile(v, percentile, method="nearest"))


def _same_range(expected, actual) -> str | None:
    return compare(expected, _numbers(actual), atol=1e-6, rtol=1e-5)


def _random_values(rng: np.random.Generator) -> Case:
    x = torch.tensor(rng.standard_t(3, size=int(rng.integers(20, 400))) + rng.choice([0.0, 2.0]), dtype=torch.float32)
    return Case((x, float(rng.choice([90.0, 99.0, 99.9])), bool(rng.integers(0, 2))))


PERCENTILE_RANGE = CheckSpec(
    name="percentile_range",
    reference=_percentile,
    golden=[
        Case((torch.tensor([-8.0, -1.0, 0.0, 1.0, 2.0, 3.0]), 80.0, False), label="asymmetric with a far minimum"),
        Case((torch.arange(101.0), 90.0, False), label="0..100, 90th"),
        Case((torch.tensor([-8.0, -1.0, 0.0, 1.0, 2.0, 3.0]), 80.0, True), label="symmetric: a percentile of |x|"),
        Case((torch.tensor([-2.0, 5.0, 1.0]), 100.0, False), label="100th = min/max"),
    ],
    random_case=_random_values,
    mistakes=[
        Mistake("took the percentile of |x| for an asymmetric range", _abs_for_affine,
                "asymmetric: lo = percentile(x, 100 - p) and hi = percentile(x, p) of the signed values."),
        Mistake("built the symmetric range from the signed percentiles", _signed_for_symmetric,
                "symmetric: one magnitude, hi = percentile(|x|, p), lo = -hi; the two tails together lose 100 - p %."),
        Mistake("mirrored the upper end (lo = -hi) for an asymmetric range", _mirrored,
                "asymmetric ranges have their own lower end: percentile(x, 100 - p)."),
        Mistake("passed a fraction (p / 100) to np.percentile, which wants percent", _fraction,
                "np.percentile(x, 99.9) takes percent; torch.quantile(x, 0.999) takes a fraction."),
        Mistake("used the nearest value instead of interpolating", _nearest_rank,
                "use the default linear interpolation of np.percentile / torch.quantile."),
    ],
    hints=("np.percentile(x.numpy(), p) or torch.quantile(x, p / 100) (linear interpolation, the default)",),
    compare=_same_range,
)


def check_percentile_range(fn):
    """Check ``fn(x, percentile, symmetric) -> (lo, hi)``."""
    return run_check(PERCENTILE_RANGE, fn)


# --- 3. the MSE clipping search ----------------------------------------------------------------

def _mse_search(x, bits, n_grid, *, clamp=True, power=2, pick=np.argmin, steps=None):
    fmt = IntFormat(bits)
    m = float(x.abs().max())
    errors = []
    for k in range(1, n_grid + 1):
        a = k / n_grid
        if steps is None and clamp:
            scale, zp = choose_qparams_from_minmax(torch.tensor(-a * m), torch.tensor(a * m), fmt, True, symmetric_rule="no_clip")
            x_hat = fake_quantize(x, scale, zp, fmt)
        else:
            scale = max(a * m / (steps or fmt.qmax), FLOAT32_EPS)
            q = torch.round(x / scale)
            x_hat = (torch.clamp(q, fmt.qmin, fmt.qmax) if clamp else q) * scale
        errors.append(float(((x - x_hat).abs().double() ** power).mean()))
    return (int(pick(errors)) + 1) / n_grid  # np.argmin picks the first (smallest alpha) on a tie


def _mse_reference(x, bits, n_grid):
    return _mse_search(x, bits, n_grid)


def _random_heavy(rng: np.random.Generator) -> Case:
    x = torch.tensor(rng.standard_t(3, size=int(rng.integers(50, 1500))), dtype=torch.float32)
    return Case((x, int(rng.choice([2, 3, 4])), int(rng.choice([10, 20, 50]))))


def _same_alpha(expected, actual) -> str | None:
    return compare(expected, _numbers(actual), atol=1e-9)


MSE_CLIP = CheckSpec(
    name="mse_clip",
    reference=_mse_reference,
    golden=[
        Case((torch.cat([torch.linspace(-1, 1, 201), torch.tensor([6.0])]), 2, 20), label="one outlier at 2 bits"),
        Case((torch.randn(2000, generator=torch.Generator().manual_seed(0)), 3, 50), label="Gaussian at 3 bits"),
        Case((torch.tensor([-1.0, 0.0, 1.0]), 4, 10), label="nothing to clip"),
    ],
    random_case=_random_heavy,
    mistakes=[
        Mistake("did not clamp the codes, so clipping cost nothing", lambda x, b, n: _mse_search(x, b, n, clamp=False),
                "q = clamp(round(x / scale), -2**(bits-1), 2**(bits-1) - 1): values beyond the range must saturate."),
        Mistake("returned the clipping threshold alpha * max|x|, not alpha",
                lambda x, b, n: _mse_search(x, b, n) * float(x.abs().max()),
                "return the ratio alpha = k / n_grid itself."),
        Mistake("minimised the mean absolute error", lambda x, b, n: _mse_search(x, b, n, power=1),
                "square the error: mean((x - x_hat) ** 2)."),
        Mistake("picked the largest error (argmax)", lambda x, b, n: _mse_search(x, b, n, pick=np.argmax),
                "keep the alpha with the *smallest* error (np.argmin)."),
        Mistake("used 2**(bits-1) steps instead of 2**(bits-1) - 1", lambda x, b, n: _mse_search(x, b, n, steps=2 ** (b - 1)),
                "this exercise's grid: scale = alpha * max|x| / (2**(bits-1) - 1)."),
    ],
    hints=("for k in 1..n_grid: alpha = k / n_grid, x_hat = clamp(round(x / scale), qmin, qmax) * scale, err = mean((x - x_hat)**2)",),
    compare=_same_alpha,
)


def check_mse_clip(fn):
    """Check ``fn(x, bits, n_grid) -> alpha``: the MSE-optimal clipping ratio."""
    return run_check(MSE_CLIP, fn)


# --- 4. batch-norm folding ---------------------------------------------------------------------

def _fold(w, b, mean, var, gamma, beta, eps):
    return fold_bn_params(w, b, mean, var, gamma, beta, eps)


def _fold_with(w, b, mean, var, gamma, beta, eps, *, use_eps=True, use_bias=True, scale_bias=True, sqrt=True,
               scale_w=True, axis=0):
    denom = (var + (eps if use_eps else 0.0))
    s = gamma / (torch.sqrt(denom) if sqrt else denom)
    b = torch.zeros_like(mean) if (b is None or not use_bias) else b
    shape = [1] * w.ndim
    shape[axis] = -1
    w_fold = w * s.reshape(shape) if scale_w else w.clone()
    b_fold = beta + (b - mean) * s if scale_bias else beta + b - mean * s
    return w_fold, b_fold


def _random_bn(rng: np.random.Generator) -> Case:
    c = int(rng.integers(1, 6))
    conv = bool(rng.integers(0, 2))
    shape = (c, int(rng.integers(1, 4)), 3, 3) if conv else (c, c)
    t = lambda *s: torch.tensor(rng.normal(size=s), dtype=torch.float32)  # noqa: E731
    b = None if rng.integers(0, 3) == 0 else t(c)
    var = torch.tensor(rng.uniform(0.01, 3, size=c), dtype=torch.float32)
    return Case((t(*shape), b, t(c), var, t(c), t(c), float(rng.choice([1e-5, 1e-3, 0.1]))))


def _same_fold(expected, actual) -> str | None:
    return compare(expected, actual, atol=1e-5, rtol=1e-5)


FOLD_BN = CheckSpec(
    name="fold_bn",
    reference=_fold,
    golden=[
        Case((torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0.5, -0.5]), torch.tensor([1.0, 2.0]),
              torch.tensor([4.0, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0]), 0.0), label="by hand, eps 0"),
        Case((torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0.5, -0.5]), torch.tensor([1.0, 2.0]),
              torch.tensor([0.01, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0]), 0.1), label="eps matters"),
        Case((torch.ones(2, 1, 3, 3), None, torch.tensor([1.0, -1.0]), torch.tensor([3.0, 0.5]), torch.ones(2),
              torch.zeros(2), 1e-5), label="conv without bias"),
    ],
    random_case=_random_bn,
    mistakes=[
        Mistake("forgot eps", lambda *a: _fold_with(*a, use_eps=False), "s = gamma / sqrt(var + eps): BatchNorm adds eps."),
        Mistake("forgot the layer's own bias", lambda *a: _fold_with(*a, use_bias=False),
                "b' = beta + (b - mean) * s; b is 0 only when the layer has no bias."),
        Mistake("did not scale the bias by s", lambda *a: _fold_with(*a, scale_bias=False),
                "the whole (b - mean) is scaled: b' = beta + (b - mean) * s."),
        Mistake("divided by the variance, not the standard deviation", lambda *a: _fold_with(*a, sqrt=False),
                "s = gamma / sqrt(var + eps)."),
        Mistake("did not scale the weight", lambda *a: _fold_with(*a, scale_w=False), "W' = W * s, one s per output channel."),
        Mistake("scaled the input axis of the weight", lambda *a: _fold_with(*a, axis=1),
                "output channels are axis 0: w * s.reshape(-1, 1, ...)."),
    ],
    hints=("s = gamma / sqrt(var + eps); W' = W * s along axis 0; b' = beta + (b - mean) * s",),
    compare=_same_fold,
)


def check_fold_bn(fn):
    """Check ``fn(w, b, mean, var, gamma, beta, eps) -> (w_fold, b_fold)``."""
    return run_check(FOLD_BN, fn)


# --- 5. per-layer sensitivity ------------------------------------------------------------------

def _sensitivity(model, data, bits, *, x="x_calib", y="y_calib", mode="one"):
    from qedu.models import evaluate

    xs, ys = getattr(data, x), getattr(data, y)
    base = evaluate(model, xs, ys)
    layers = quantizable_layers(model)
    out = {}
    for name in layers:
        keep = {"one": [n for n in layers if n != name], "all": [], "others": [name]}[mode]
        q = quantize_model(model, PTQConfig(weight_bits=bits, act_bits=None, keep_float=keep))
        out[name] = base - evaluate(q, xs, ys)
    return out


def _accuracy_not_drop(model, data, bits):
    from qedu.models import evaluate

    layers = quantizable_layers(model)
    return {name: evaluate(quantize_model(model, PTQConfig(weight_bits=bits, act_bits=None,
                                                           keep_float=[n for n in layers if n != name])),
                           data.x_calib, data.y_calib) for name in layers}


def _same_drops(expected, actual) -> str | None:
    if not isinstance(actual, dict):
        return f"result should be a dict {{layer name: accuracy drop}}, got {type(actual).__name__}"
    if sorted(actual) != sorted(expected):
        return f"result has keys {sorted(actual)}, expected one per quantizable layer: {sorted(expected)}"
    for k in expected:
        problem = compare(expected[k], _numbers(actual[k]), atol=1e-9, where=f"result[{k!r}]")
        if problem:
            return problem
    return None


def _golden_sensitivity() -> list[Case]:
    from qedu.data import load_digits
    from qedu.models import pretrained

    model, data = pretrained("mlp", seed=0), load_digits(seed=0)
    return [Case((model, data, bits), label=f"trained MLP, {bits}-bit weights") for bits in (2, 3, 4)]


def sensitivity_spec() -> CheckSpec:
    """The :class:`CheckSpec` of :func:`check_sensitivity` (built on demand: its golden cases load
    the trained MLP)."""
    return CheckSpec(
        name="sensitivity",
        reference=_sensitivity,
        golden=_golden_sensitivity(),
        mistakes=[
            Mistake("measured on the test set", lambda m, d, b: _sensitivity(m, d, b, x="x_test", y="y_test"),
                    "decisions made on the test set leak it into the model; measure on data.x_calib / data.y_calib."),
            Mistake("measured on the whole training set", lambda m, d, b: _sensitivity(m, d, b, x="x_train", y="y_train"),
                    "the task asks for the calibration images (data.x_calib, data.y_calib): the data a deployment "
                    "pipeline has at hand, six times faster to evaluate."),
            Mistake("quantized all layers at once", lambda m, d, b: _sensitivity(m, d, b, mode="all"),
                    "one layer at a time: keep_float = every other layer."),
            Mistake("quantized every layer except this one", lambda m, d, b: _sensitivity(m, d, b, mode="others"),
                    "keep_float lists the layers that stay float: all layers *but* the one you measure."),
            Mistake("returned the quantized accuracy, not the drop", _accuracy_not_drop,
                    "drop = float accuracy - accuracy with this layer quantized."),
        ],
        hints=("for each name in quantizable_layers(model): quantize_model(model, PTQConfig(weight_bits=bits, act_bits=None, "
               "keep_float=[the others])) and compare evaluate(...) on the calibration images",),
        compare=_same_drops,
    )


_SENSITIVITY: list = []  # the spec, built on first use


def check_sensitivity(fn):
    """Check ``fn(model, data, bits) -> {layer: drop}``. ``fn`` gets a copy of the model; changing
    the model it was given is reported as a mistake."""
    if not _SENSITIVITY:
        _SENSITIVITY.append(sensitivity_spec())
    if not callable(fn):
        raise TypeError(f"check_sensitivity needs the function itself, got {type(fn).__name__}; pass it without ().")

    def guarded(model, data, bits):
        mine = copy.deepcopy(model)
        before = {k: v.clone() for k, v in mine.state_dict().items()}
        result = fn(mine, data, bits)
        after = mine.state_dict()
        if before.keys() != after.keys() or any(not torch.equal(before[k], after[k]) for k in before):
            raise CheckFailed("sensitivity: your function changed the model it was given; quantize a copy "
                              "(quantize_model returns a new model and leaves its argument alone).")
        return result

    guarded.__name__ = getattr(fn, "__name__", "fn")
    return run_check(_SENSITIVITY[0], guarded)
