"""Checks for the exercises of lessons 03 (calibration) and 04 (post-training quantization).

* :func:`check_minmax_observer`: ``fn(batches, bits) -> (scale: float, zero_point: int)``,
  unsigned affine codes ``0 .. 2**bits - 1`` from the running min/max of a list of batches;
* :func:`check_percentile_range`: ``fn(x, percentile, symmetric) -> (lo: float, hi: float)``;
* :func:`check_mse_clip`: ``fn(x, bits, n_grid) -> alpha: float``, the clipping ratio with the
  smallest MSE on a symmetric grid ``scale = alpha * max|x| / (2**(bits-1) - 1)``;
* :func:`check_fold_bn`: ``fn(w, b, mean, var, gamma, beta, eps) -> (w_fold, b_fold)``;
* :func:`check_sensitivity`: ``fn(model, data, bits) -> {layer: accuracy drop}``, one layer's
  weights quantized at a time, measured on the calibration images.

The references are qedu's :mod:`qedu.calibration` and :mod:`qedu.ptq`; after a mismatch a
classic mistake is named only when a second probe confirms it, else probes describe what differs.
"""
from __future__ import annotations

import numpy as np
import torch

from qedu.calibration import MinMaxObserver, percentile_range
from qedu.checks.formats import _pair_notes, _ratio_note
from qedu.checks.framework import Case, CheckSpec, Failure, Mistake, compare, run_check
from qedu.checks.quantizers import factor
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
    scale = float(np.float32(max((hi - lo) / (steps or (qmax - qmin)), FLOAT32_EPS)))  # float32, as the reference
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
        Case(([torch.tensor([-0.375, 1.0]), torch.tensor([63.375])], 8), label="lo / scale = -1.5, a tie: zero point 2"),
        Case(([torch.tensor([-0.625, 1.0]), torch.tensor([63.125])], 8), label="lo / scale = -2.5, a tie: zero point 2"),
        Case(([torch.tensor([[1.0, -2.0], [0.5, 3.0]]), torch.tensor([[-1.0, 0.0], [2.0, 2.0]])], 3),
             label="2-D batches, 3 bits"),
        Case(([torch.full((4,), 2.0), torch.full((2,), 2.0)], 2), label="a constant input, 2 bits"),
        Case(([torch.tensor([-5.0, 1.0]), torch.tensor([0.5, 7.0]), torch.tensor([0.1, 0.2])], 16), label="16 bits"),
    ],
    random_case=_random_batches,
    describe=lambda f: _describe_observer(f),
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


def _describe_observer(f: Failure) -> list[str]:
    batches, bits = f.case.args
    actual = _numbers(f.actual)
    notes = _pair_notes(f.expected, actual, ("scale", "zero point")) if isinstance(actual, tuple) else []
    if (isinstance(actual, tuple) and len(actual) == 2 and isinstance(actual[0], (int, float))
            and actual[0] and compare(f.expected[0], actual[0], rtol=1e-5) is not None):
        notes = [n for n in notes if not n.startswith("scale")]
        notes.insert(0, f"scale off by a factor {factor(actual[0] / f.expected[0])} (yours / expected)")
    if isinstance(actual, tuple) and len(actual) == 2 and actual[0] == 0:
        notes.append("scale is 0 (the data is all zeros): floor it at 1.1920929e-07")
    if len(batches) > 1:
        flipped = Case((list(reversed(batches)), bits))
        mine, mine_flipped = f.learner(Case((list(batches), bits))), f.learner(flipped)
        if mine is not None and mine_flipped is not None and _same_qparams(_numbers(mine), mine_flipped) is not None:
            notes.append("your answer changes when the same batches come in another order: the running min and max "
                         "must cover every batch (lo = min(lo, x.min()), hi = max(hi, x.max()))")
        together = Case(([torch.cat([b.reshape(-1) for b in batches])], bits))
        if f.right_on(together):
            notes.append("right when all the data comes in one batch, wrong with several: combine the batches' ranges")
    return notes


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
    describe=lambda f: _describe_percentile(f),
    probes=[Case((torch.tensor([-9.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 10.0, 0.5, -0.5]), 75.0, False), label="ten values, 75th"),
            Case((torch.tensor([-9.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 10.0, 0.5, -0.5]), 75.0, True), label="ten values, 75th, symmetric")],
)


def _describe_percentile(f: Failure) -> list[str]:
    x, p, symmetric = f.case.args
    actual = _numbers(f.actual)
    notes = _pair_notes(f.expected, actual, ("lo", "hi")) if isinstance(actual, tuple) else []
    other = f.with_args(symmetric=not symmetric)
    if f.right_on(other):
        notes.append(f"your {'asymmetric' if symmetric else 'symmetric'} range for this x is right: only "
                     f"symmetric={symmetric} is wrong")
    if p != 100.0:
        full = f.with_args(percentile=100.0)
        if f.right_on(full):
            notes.append("right for percentile = 100 (min and max), wrong in between: np.percentile(values, p) "
                         "interpolates linearly between the two nearest sorted values")
    return notes


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
        Case((torch.tensor([0.25, -1.0]), 2, 4), label="alpha 0.5 and 1 tie: keep the smaller"),
        Case((torch.tensor([0.25, -2.0]), 3, 8), label="alpha 0.75 and 1 tie: keep the smaller"),
    ],
    random_case=_random_heavy,
    describe=lambda f: _describe_alpha(f),
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


def _describe_alpha(f: Failure) -> list[str]:
    x, bits, n_grid = f.case.args
    a = _numbers(f.actual)
    if not isinstance(a, (int, float)) or isinstance(a, bool):
        return []
    e = f.expected
    notes = []
    if not 0 < a <= 1:
        return [f"alpha = k / n_grid lies in (0, 1], yours is {a!r} = {factor(a / e)} x the expected {e!r}"
                + (": return k / n_grid, not k" if abs(a / e - n_grid) < 1e-9 else "")]
    if abs(a * n_grid - round(a * n_grid)) > 1e-6:
        note = _ratio_note(e, a)
        notes.append(f"{a!r} is not on the grid k / n_grid (k = 1 .. {n_grid})" + (f"; {note}" if note else "")
                     + (f"; it is {factor(a / e)} x the expected alpha" if e and a else ""))
    else:
        errors = [_mse_at(x, bits, k / n_grid) for k in range(1, n_grid + 1)]
        k_mine = int(round(a * n_grid))
        if 1 <= k_mine <= n_grid and errors[k_mine - 1] == min(errors):
            notes.append(f"your alpha = {a!r} has the smallest error too, but so does the smaller {e!r}: "
                         "on a tie keep the smallest alpha (np.argmin returns the first minimum; a loop needs <, not <=)")
        elif abs(k_mine - round(e * n_grid)) == 1:
            notes.append("one grid step off: alpha = k / n_grid for k = 1 .. n_grid (np.argmin's index 0 is k = 1)")
    return notes


def _mse_at(x, bits, alpha):
    fmt = IntFormat(bits)
    m = float(x.abs().max())
    scale, zp = choose_qparams_from_minmax(torch.tensor(-alpha * m), torch.tensor(alpha * m), fmt, True, symmetric_rule="no_clip")
    return float(((x - fake_quantize(x, scale, zp, fmt)).double() ** 2).mean())


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
              torch.tensor([4.0, 1.5625]), torch.tensor([3.0, 1.0]), torch.tensor([0.0, 1.0]), 0.0),
             label="by hand, eps 0: s = [1.5, 0.8]"),
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
    describe=lambda f: _describe_fold(f),
    probes=[Case((torch.tensor([[1.0, -1.0, 2.0], [0.5, 2.0, -3.0], [4.0, 1.0, 1.0]]), torch.tensor([1.0, 0.0, -2.0]),
                  torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.25, 2.0, 9.0]), torch.tensor([2.0, -1.0, 0.5]),
                  torch.tensor([1.0, 0.5, -0.5]), 0.01), label="three channels, every factor different")],
)


def _describe_fold(f: Failure) -> list[str]:
    w, b, mean, var, gamma, beta, eps = f.case.args
    a = f.actual
    if not (isinstance(a, (tuple, list)) and len(a) == 2):
        return []
    notes = []
    w_ok = compare(f.expected[0], a[0], atol=1e-5, rtol=1e-5) is None
    b_ok = compare(f.expected[1], a[1], atol=1e-5, rtol=1e-5) is None
    if w_ok and not b_ok:
        notes.append("w_fold right, b_fold wrong: b' = beta + (b - mean) * s")
    elif b_ok and not w_ok:
        notes.append("b_fold right, w_fold wrong: W' = W * s, one s per output channel (axis 0)")
    if b is not None:
        no_b = f.with_args(b=None)
        if f.right_on(no_b) and not b_ok:
            notes.append("right when the layer has no bias, wrong when it has one: fold the layer's own bias b too")
    return notes


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


def _describe_drops(f: Failure) -> list[str]:
    a = f.actual
    if not isinstance(a, dict) or sorted(a) != sorted(f.expected):
        return []
    notes = []
    wrong = [k for k in f.expected if compare(f.expected[k], _numbers(a[k]), atol=1e-9) is not None]
    if len(wrong) < len(f.expected):
        notes.append(f"right for {', '.join(k for k in f.expected if k not in wrong)}; wrong for {', '.join(wrong)}")
    signs = [(_numbers(a[k]) > 0) != (f.expected[k] > 0) for k in wrong if isinstance(_numbers(a[k]), (int, float))]
    if wrong and all(abs(_numbers(a[k]) + f.expected[k]) < 1e-9 for k in wrong if isinstance(_numbers(a[k]), (int, float))):
        notes.append("your drops have the opposite sign: drop = float accuracy - quantized accuracy")
    del signs
    return notes


def _golden_sensitivity() -> list[Case]:
    """The trained MLP at 2 bits, then two untrained MLPs: their drops differ from layer to layer and
    from bits to bits, so every classic mistake shows on at least two cases (the trained MLP loses
    nothing at 3 or 4 bits, which would hide them)."""
    from qedu.data import load_digits
    from qedu.models import make_mlp, pretrained

    data = load_digits(seed=0)
    return [Case((pretrained("mlp", seed=0), data, 2), label="trained MLP, 2-bit weights"),
            Case((make_mlp(seed=2), data, 2), label="untrained MLP (seed 2), 2-bit weights"),
            Case((make_mlp(seed=3), data, 3), label="untrained MLP (seed 3), 3-bit weights")]


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
        cache=True,
        describe=_describe_drops,
    )


_SENSITIVITY: list = []  # the spec, built on first use


def check_sensitivity(fn):
    """Check ``fn(model, data, bits) -> {layer: drop}``. ``fn`` gets a copy of the model; changing
    the model it was given is reported as a mistake."""
    if not _SENSITIVITY:
        _SENSITIVITY.append(sensitivity_spec())
    return run_check(_SENSITIVITY[0], fn)
