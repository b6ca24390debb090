"""Property tests over extreme floats for the evaluation modules (issue 20: nothing silently wrong).

The rule of ``tests/test_properties.py``, for the modules of lessons 08-12 (``stats``, ``drift``,
``membership``, ``bitflip``, ``lm_eval``, ``text``, ``outliers``, ``llm_quant``) and the bad-argument
paths of ``bundle``, ``results`` and ``doctor``: from finite, valid input a public function returns
finite values (or documents where it does not: ``nan`` for empty calibration bins, ``inf``
perplexity, KL and channel ratio, each tested); any other input raises a ``ValueError`` or
``TypeError`` whose message names the argument. Every call also leaves torch's and numpy's global
random state alone.

Inputs mix float32's extremes (largest value, smallest normal and subnormal numbers), float64
values beyond float32's range (1e39, 1e300, 1e-320), signed zeros, +-inf, NaN and ordinary values.
Models are tiny (a 4-unit MLP, a one-block TinyGPT with 16 tokens) and each property is bounded
(``max_examples`` 10-50), so the file runs in seconds.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests.extremes import F32, fits_float32, number, tensor64, values
from tests.extremes import finite as all_finite  # `finite` is also an argument name below
from torch import nn

from qedu import bitflip, bundle, doctor, drift, lm_eval, llm_quant, membership, models, outliers, ptq, results, stats, text

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])
FEW = settings(SETTINGS, max_examples=12)  # properties that run a model








def clear(fn, *args, names, finite: bool = True, **kwargs):
    """Call ``fn``: a ValueError/TypeError naming one of ``names``, or (with ``finite``) an output without NaN or
    inf. Either way the global random state is unchanged. Returns the output, or None after an error."""
    torch_rng, np_rng = torch.get_rng_state(), np.random.get_state()
    try:
        out = fn(*args, **kwargs)
    except (ValueError, TypeError) as err:
        assert any(n in str(err) for n in names), f"{fn.__name__}: the error does not name {names}: {err}"
        out = None
    else:
        assert not finite or all_finite(out), f"{fn.__name__} returned a non-finite value without saying so: {out}"
    assert torch.equal(torch.get_rng_state(), torch_rng), f"{fn.__name__} drew from torch's global generator"
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state()[1:3], np_rng[1:3])), f"{fn.__name__} used numpy's"
    return out


def refuses(fn, *args, names, **kwargs):
    """``fn`` must raise a ValueError/TypeError naming one of ``names``."""
    with pytest.raises((ValueError, TypeError)) as info:
        fn(*args, **kwargs)
    assert any(n in str(info.value) for n in names), f"the error does not name {names}: {info.value}"


labels = st.lists(st.integers(0, 3), min_size=1, max_size=20)


def _triple(draw_y, draw_a, draw_b):
    n = min(len(draw_y), len(draw_a), len(draw_b))
    return torch.tensor(draw_y[:n]), torch.tensor(draw_a[:n]), torch.tensor(draw_b[:n])


# ============================================================================= stats
@SETTINGS
@given(labels, labels, labels, st.booleans())
def test_stats_mcnemar_p_value_is_a_probability_and_symmetric(y, a, b, exact):
    y, a, b = _triple(y, a, b)
    r = clear(stats.mcnemar_test, y, a, b, exact=exact, names=())
    assert 0.0 <= r.p_value <= 1.0 and r.b + r.c <= len(y)
    swapped = stats.mcnemar_test(y, b, a, exact=exact)
    assert (swapped.b, swapped.c, swapped.p_value) == (r.c, r.b, r.p_value)


@SETTINGS
@given(labels, labels, labels, st.floats(0.5, 0.99), st.integers(0, 2**32 - 1))
def test_stats_bootstrap_interval_holds_the_observed_change(y, a, b, confidence, seed):
    y, a, b = _triple(y, a, b)
    ci = clear(stats.bootstrap_delta, y, a, b, n_resamples=100, confidence=confidence, seed=seed, names=())
    assert -1.0 <= ci.low <= ci.delta <= ci.high <= 1.0
    assert ci.delta == pytest.approx(float((b == y).double().mean() - (a == y).double().mean()))


@SETTINGS
@given(number)
def test_stats_confidence_any_number(confidence):
    y = torch.tensor([0, 1, 1, 0])
    ci = clear(stats.bootstrap_delta, y, y, 1 - y, n_resamples=100, confidence=confidence, names=("confidence",))
    assert (ci is not None) == (0 < confidence < 1)


@SETTINGS
@example([1e308, 1e308, 1e308])  # the mean overflowed to inf and every p-value came out 0
@example([1e-320, -1e-320, 1e-320])
@given(values)
def test_stats_sign_flip_p_value(vals):
    p = clear(stats.sign_flip_test, tensor64(vals), names=("diffs",))
    if not all(math.isfinite(v) for v in vals):
        assert p is None, "NaN/inf differences must be refused"
        return
    assert p is not None and 0 < p <= 1
    assert p == stats.sign_flip_test(-tensor64(vals))  # a two-sided test: the sign of every difference is irrelevant
    if len(set(vals)) == 1 and vals[0] != 0:
        assert p == pytest.approx(2 / 2 ** len(vals))  # all equal: only "all +" and "all -" are as extreme


def test_stats_sign_flip_is_unit_free():
    d = torch.tensor([0.3, -0.1, 0.5, 0.2], dtype=torch.float64)
    assert stats.sign_flip_test(d) == stats.sign_flip_test(d * 1e300) == stats.sign_flip_test(d * 1e-300) == 0.25


@SETTINGS
@given(labels, st.integers(-2, 25), st.integers(1, 5))
def test_stats_worst_class_null(y, n_flips, n_classes):
    y = torch.tensor(y)
    out = clear(stats.worst_class_null, y, y.flip(0), n_flips, n_trials=3, n_classes=n_classes,
                names=("n_flips", "n_classes", "labels must lie"))
    if 0 <= n_flips <= len(y) and n_classes >= 2 and int(y.max()) < n_classes:
        assert out is not None and out.shape == (3,) and bool(((out >= -1) & (out <= 1)).all())
    else:
        assert out is None


@SETTINGS
@given(st.lists(number, min_size=6, max_size=6), st.integers(1, 20))
def test_stats_confidence_calibration(vals, n_bins):
    logits = tensor64(vals).reshape(3, 2)
    y = torch.tensor([0, 1, 1])
    cal = clear(stats.confidence_calibration, logits, y, n_bins=n_bins, names=("logits",), finite=False)
    if not all(math.isfinite(v) for v in vals):
        assert cal is None
        return
    assert cal is not None and 0 <= cal.ece <= 1 and math.isfinite(cal.ece)
    assert cal.counts.sum() == 3 and len(cal.counts) == n_bins
    empty = cal.counts == 0  # documented: nan exactly in the empty bins
    assert torch.equal(torch.isnan(cal.accuracy), empty) and torch.equal(torch.isnan(cal.confidence), empty)
    assert bool(((cal.confidence[~empty] >= 0.5 - 1e-12) & (cal.confidence[~empty] <= 1)).all())  # 2 classes: top p >= 1/2
    rank = clear(stats.confidence_rank, logits, names=("logits",))
    assert bool(((rank >= 0) & (rank <= 2 / 3)).all())


@SETTINGS
@given(st.lists(st.tuples(number, number), min_size=1, max_size=6))
def test_stats_pareto_front(pairs):
    points = [{"accuracy": a, "bytes": b} for a, b in pairs]
    front = clear(stats.pareto_front, points, minimize=("bytes",), names=("points[",))
    if any(math.isnan(v) for pair in pairs for v in pair):
        assert front is None, "NaN would never be dominated: it must be refused"
        return
    assert front is not None and len(front) == len(points) and any(front)  # a finite set always has a front


@pytest.mark.parametrize("call, names", [
    (lambda: stats.mcnemar_test(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), torch.tensor([0, 1])), ("y",)),
    (lambda: stats.mcnemar_test(torch.tensor([0, 1]), torch.tensor([[0, 1]]), torch.tensor([0, 1])), ("pred_a",)),
    (lambda: stats.mcnemar_test(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 1, 1])), ("lengths",)),
    (lambda: stats.mcnemar_test(torch.tensor([], dtype=torch.long), torch.tensor([0]), torch.tensor([0])), ("y",)),
    (lambda: stats.mcnemar_test(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), exact=1), ("exact",)),
    (lambda: stats.bootstrap_delta(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), n_resamples=10), ("n_resamples",)),
    (lambda: stats.bootstrap_delta(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), confidence="95%"), ("confidence",)),
    (lambda: stats.bootstrap_delta(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), seed=-1), ("seed",)),
    (lambda: stats.sign_flip_test([]), ("diffs",)),
    (lambda: stats.sign_flip_test("abc"), ("diffs",)),
    (lambda: stats.sign_flip_test([1.0] * 21, n_resamples=0), ("n_resamples",)),
    (lambda: stats.worst_class_null(torch.tensor([0, 1]), torch.tensor([0, 1]), 3), ("n_flips",)),
    (lambda: stats.worst_class_null(torch.tensor([0, 1]), torch.tensor([0]), 0), ("float_pred",)),
    (lambda: stats.worst_class_null(torch.tensor([0, 12]), torch.tensor([0, 1]), 1), ("n_classes",)),
    (lambda: stats.worst_class_null(torch.tensor([0, 1]), torch.tensor([0, 1]), 1, n_trials=0), ("n_trials",)),
    (lambda: stats.confidence_calibration(torch.randn(3, 2), torch.tensor([0, 5, 1])), ("y",)),  # label 5 of 2 classes
    (lambda: stats.confidence_calibration(torch.randn(3, 2), torch.tensor([0, -1, 1])), ("y",)),
    (lambda: stats.confidence_calibration(torch.randn(3, 2), torch.tensor([0, 1])), ("logits",)),
    (lambda: stats.confidence_calibration(torch.randn(3, 1), torch.tensor([0, 0, 0])), ("logits",)),
    (lambda: stats.confidence_calibration(torch.randn(3, 2), torch.tensor([0, 1, 1]), n_bins=0), ("n_bins",)),
    (lambda: stats.confidence_calibration(torch.randn(3, 2), torch.tensor([0, 1, 1]), n_bins=10**8), ("n_bins",)),
    (lambda: stats.confidence_rank(torch.randn(3)), ("logits",)),
    (lambda: stats.pareto_front([{"accuracy": "high", "bytes": 1}], minimize=("bytes",)), ("points[0]['accuracy']",)),
    (lambda: stats.pareto_front([{"accuracy": 0.9}], minimize=("bytes",)), ("point 0",)),
    (lambda: stats.pareto_front([{"accuracy": 0.9}], maximize="accuracy", minimize=()), ("maximize",)),
    (lambda: stats.pareto_front([{"accuracy": 0.9}], maximize=(), minimize=()), ("objective",)),
], ids=lambda v: "" if callable(v) else v[0])
def test_stats_bad_input_names_the_argument(call, names):
    refuses(call, names=names)


# ============================================================================= drift
@SETTINGS
@example([1e308, 1e308], [1.0, 3.0])  # the sum overflowed to inf: every share became 0 and PSI came out 8.6
@given(st.lists(number, min_size=1, max_size=8), st.lists(number, min_size=1, max_size=8))
def test_drift_psi_is_non_negative_symmetric_and_zero_on_itself(e, a):
    n = min(len(e), len(a))
    e, a = e[:n], a[:n]
    value = clear(drift.psi, tensor64(e), tensor64(a), names=("expected", "actual"))
    valid = all(math.isfinite(v) and v >= 0 for v in e + a) and max(e) > 0 and max(a) > 0
    assert (value is not None) == valid
    if valid:
        assert value >= 0 and value == pytest.approx(drift.psi(tensor64(a), tensor64(e)), rel=1e-9, abs=1e-12)
        assert drift.psi(tensor64(e), tensor64(e)) == 0.0
        scaled = [v / max(e) for v in e]  # counts and shares give the same PSI
        assert value == pytest.approx(drift.psi(tensor64(scaled), tensor64(a)), rel=1e-9, abs=1e-12)


@SETTINGS
@example(1e-320)  # a subnormal floor: a / e overflowed and PSI came out inf
@example(0.0)  # ln(a / 0): inf before
@given(number)
def test_drift_psi_floor(floor):
    value = clear(drift.psi, torch.tensor([1.0, 0.0]), torch.tensor([1.0, 3.0]), floor=floor, names=("floor",))
    assert (value is not None) == (1e-12 <= floor < 1)


@SETTINGS
@given(values, number, st.one_of(st.integers(-300, 300), st.sampled_from([0.5, math.nan, 1e30])),
       st.integers(-3, 3), st.integers(-3, 4))
def test_drift_code_histogram(vals, scale, zero_point, qmin, qmax):
    counts = clear(drift.code_histogram, tensor64(vals), scale, zero_point, qmin, qmax,
                   names=("x", "scale", "zero_point", "qmin", "qmax"))
    if counts is not None:
        assert fits_float32(vals) and 0 < scale <= F32.max and qmin < qmax
        assert len(counts) == qmax - qmin + 3 and counts.sum() == len(vals) and bool((counts >= 0).all())


_PTQ = {}


def ptq_mlp_cached():
    if not _PTQ:
        x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        _PTQ["model"] = (ptq.quantize_model(models.make_mlp(hidden=(4,), seed=0), ptq.PTQConfig(weight_bits=4, act_bits=4), x), x)
    return _PTQ["model"]


@FEW
@given(number, st.integers(0, 63))
def test_drift_monitor_on_extreme_images(value, where):
    quantized, x_calib = ptq_mlp_cached()
    monitor = drift.DriftMonitor(quantized, x_calib)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x.view(4, -1)[0, where] = value
    report = clear(monitor.check, x, names=("x",))
    assert (report is not None) == fits_float32([value])
    if report is not None:
        assert all(v >= 0 for v in report.psi.values()) and report.alarm == any(v > 0.2 for v in report.psi.values())


def test_drift_false_alarm_rate_is_a_fraction_and_clean_data_on_itself_is_quiet():
    quantized, x = ptq_mlp_cached()
    rate = clear(drift.false_alarm_rate, drift.DriftMonitor(quantized, x), x, batch_size=16, n_batches=2, names=())
    assert rate == 0.0  # the calibration images themselves: PSI 0 in every layer


@pytest.mark.parametrize("call, names", [
    (lambda q, x: drift.DriftMonitor("model", x), ("quantized",)),
    (lambda q, x: drift.DriftMonitor(models.make_mlp(seed=0), x), ("quantized",)),
    (lambda q, x: drift.DriftMonitor(ptq.prepare(models.make_mlp(seed=0), ptq.PTQConfig(act_bits=8)), x), ("quantized",)),
    (lambda q, x: drift.DriftMonitor(q, x, threshold=0), ("threshold",)),
    (lambda q, x: drift.DriftMonitor(q, x, threshold=math.nan), ("threshold",)),
    (lambda q, x: drift.DriftMonitor(q, x, threshold="0.2"), ("threshold",)),
    (lambda q, x: drift.DriftMonitor(q, x).check(x[:, :, :4]), ("x",)),
    (lambda q, x: drift.false_alarm_rate(object(), x), ("monitor",)),
    (lambda q, x: drift.false_alarm_rate(drift.DriftMonitor(q, x), x, batch_size=17), ("batch_size",)),
    (lambda q, x: drift.false_alarm_rate(drift.DriftMonitor(q, x), x, batch_size=4, n_batches=0), ("n_batches",)),
    (lambda q, x: drift.code_histogram(torch.ones(3), torch.tensor([0.1, 0.2]), 0, 0, 3), ("scale",)),
    (lambda q, x: drift.code_histogram(torch.ones(3), 0.1, 0.5, 0, 3), ("zero_point",)),
    (lambda q, x: drift.code_histogram(torch.ones(3), 0.1, 0, -2**31, 2**31 - 1), ("qmin",)),
    (lambda q, x: drift.code_histogram(torch.ones(3), 1e-39, 0, 0, 3), ("scale",)),  # 1 / scale is inf in float32
    (lambda q, x: drift.psi(torch.tensor([1.0, -1.0, 2.0]), torch.ones(3)), ("expected",)),
    (lambda q, x: drift.psi(torch.ones(3), torch.zeros(3)), ("actual",)),
    (lambda q, x: drift.psi(torch.ones(3), torch.ones(4)), ("bins",)),
], ids=lambda v: "" if callable(v) else v[0])
def test_drift_bad_input_names_the_argument(call, names):
    refuses(call, *ptq_mlp_cached(), names=names)


# ============================================================================= membership
@SETTINGS
@given(values, values)
def test_membership_auc_is_a_probability_and_complementary(m, n):
    auc = clear(membership.membership_auc, tensor64(m), tensor64(n), names=("member_loss", "nonmember_loss"))
    if not all(math.isfinite(v) for v in m + n):
        assert auc is None
        return
    assert 0 <= auc <= 1 and auc + membership.membership_auc(tensor64(n), tensor64(m)) == pytest.approx(1.0)


_MLP = {}


def mlp():
    if not _MLP:
        _MLP["model"] = models.make_mlp(hidden=(4,), seed=0).train()
    return _MLP["model"]


@FEW
@given(number, st.integers(0, 63), st.sampled_from([torch.float32, torch.float64]))
def test_membership_loss_on_extreme_images(value, where, dtype):
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x.view(3, -1)[1, where] = value
    x = x.to(dtype)  # float32: 1e39 becomes inf (refused as inf); float64: refused as beyond the model's float32
    loss = clear(membership.per_example_loss, mlp(), x, torch.tensor([0, 1, 2]), names=("x", "loss"))
    if not fits_float32([value]):
        assert loss is None
    elif loss is not None:
        assert loss.shape == (3,) and bool((loss >= 0).all())
    assert mlp().training  # the mode is restored


@FEW
@given(number)
def test_membership_attack_threshold(threshold):
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2, 3])
    r = clear(membership.loss_threshold_attack, mlp(), x, y, x.flip(0), y, threshold=threshold, names=("threshold",))
    assert (r is not None) == math.isfinite(threshold)
    if r is not None:
        assert 0 <= r.tpr <= 1 and 0 <= r.fpr <= 1 and r.advantage == r.tpr - r.fpr and 0 <= r.auc <= 1


@pytest.mark.parametrize("call, names", [
    (lambda x: membership.per_example_loss("mlp", x, torch.tensor([0, 1])), ("model",)),
    (lambda x: membership.per_example_loss(mlp(), x, torch.tensor([0, 12])), ("y",)),  # 10 classes
    (lambda x: membership.per_example_loss(mlp(), x, torch.tensor([0, -1])), ("y",)),
    (lambda x: membership.per_example_loss(mlp(), x, torch.tensor([0.0, 1.0])), ("y",)),
    (lambda x: membership.per_example_loss(mlp(), x, torch.tensor([0, 1, 2])), ("y",)),
    (lambda x: membership.per_example_loss(mlp(), x, torch.tensor([0, 1]), batch_size=0), ("batch_size",)),
    (lambda x: membership.per_example_loss(mlp(), x[:, :, :4], torch.tensor([0, 1])), ("x",)),
    (lambda x: membership.per_example_loss(mlp(), x[:0], torch.tensor([], dtype=torch.long)), ("x",)),
    (lambda x: membership.per_example_loss(mlp(), "x", torch.tensor([0, 1])), ("x",)),
    (lambda x: membership.membership_auc([], [1.0]), ("member_loss",)),
    (lambda x: membership.loss_threshold_attack(mlp(), x, torch.tensor([0, 1]), x, torch.tensor([0, 1]), threshold="low"),
     ("threshold",)),
], ids=lambda v: "" if callable(v) else v[0])
def test_membership_bad_input_names_the_argument(call, names):
    refuses(call, torch.rand(2, 1, 8, 8), names=names)


def test_membership_nan_weights_are_refused_not_averaged():
    broken = models.make_mlp(hidden=(4,), seed=0)
    with torch.no_grad():
        for p in broken.parameters():
            p.fill_(math.nan)
    refuses(membership.per_example_loss, broken, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), names=("loss",))


# ============================================================================= bitflip
@SETTINGS
@given(st.data(), st.integers(2, 16), st.booleans())
def test_bitflip_flip_code_properties(data, bits, signed):
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    q = torch.tensor(data.draw(st.lists(st.integers(qmin, qmax), min_size=1, max_size=8)))
    bit = data.draw(st.integers(0, bits - 1))
    new = clear(bitflip.flip_code, q, bit, bits, signed=signed, names=())
    assert new.dtype == q.dtype and bool(((new >= qmin) & (new <= qmax)).all())
    assert torch.equal(bitflip.flip_code(new, bit, bits, signed=signed), q)  # flipping twice restores the code
    if signed and bit == bits - 1:
        assert torch.equal(new < 0, q >= 0)  # the sign bit flips the sign
        assert bool(((new - q).abs() == 2 ** (bits - 1)).all())
    else:
        assert bool(((new - q).abs() == 2**bit).all())


@SETTINGS
@given(st.lists(st.integers(-70000, 70000), min_size=1, max_size=5), st.integers(-1, 17), st.integers(-1, 17), st.booleans())
def test_bitflip_flip_code_any_arguments(codes, bit, bits, signed):
    q = torch.tensor(codes)
    out = clear(bitflip.flip_code, q, bit, bits, signed=signed, names=("q", "bit", "bits"))
    if out is not None:
        qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        assert 2 <= bits <= 16 and 0 <= bit < bits and min(codes) >= qmin and max(codes) <= qmax


def test_bitflip_attacks_on_a_tiny_model_give_finite_results():
    quantized, x = ptq_mlp_cached()
    y = torch.arange(16) % 10
    r = clear(bitflip.bit_flip_attack, quantized, x, y, n_flips=1, top_k=2, names=())
    assert r.flips[0].loss >= r.loss_before - 1e-6 and all(0 <= a <= 1 for a in r.accuracies)
    best, losses = clear(bitflip.exhaustive_flip_search, quantized, x[:4], y[:4], layers=["fc2"], names=())
    assert best.loss == float(losses.max())


@pytest.mark.parametrize("call, names", [
    (lambda q, x, y: bitflip.flip_code([3, 1], 0, 8), ("q",)),
    (lambda q, x, y: bitflip.flip_code(torch.tensor([1.0]), 0, 8), ("q",)),
    (lambda q, x, y: bitflip.flip_code(torch.tensor([200]), 0, 8), ("q",)),  # outside int8: wrapped silently before
    (lambda q, x, y: bitflip.flip_code(torch.tensor([-1]), 0, 8, signed=False), ("q",)),
    (lambda q, x, y: bitflip.flip_code(torch.tensor([3], dtype=torch.uint8), 7, 8), ("q",)),  # -125 cannot be a uint8
    (lambda q, x, y: bitflip.flip_code(torch.tensor([3]), 8, 8), ("bit",)),
    (lambda q, x, y: bitflip.flip_code(torch.tensor([3]), 0, 1), ("bits",)),
    (lambda q, x, y: bitflip.flip_code(torch.tensor([3]), 0, 8, signed="yes"), ("signed",)),
    (lambda q, x, y: bitflip.bit_flip_attack("model", x, y), ("quantized",)),
    (lambda q, x, y: bitflip.bit_flip_attack(models.make_mlp(seed=0), x, y), ("quantized",)),
    (lambda q, x, y: bitflip.bit_flip_attack(q, x, y, n_flips=0), ("n_flips",)),
    (lambda q, x, y: bitflip.bit_flip_attack(q, x, y, top_k=0), ("top_k",)),
    (lambda q, x, y: bitflip.bit_flip_attack(q, x, y + 10), ("y_attack",)),
    (lambda q, x, y: bitflip.bit_flip_attack(q, x, y[:3]), ("y_attack",)),
    (lambda q, x, y: bitflip.bit_flip_attack(q, x[:, :, :4], y), ("x_attack",)),
    (lambda q, x, y: bitflip.bit_flip_attack(q, x * math.nan, y), ("x_attack",)),
    (lambda q, x, y: bitflip.bit_flip_attack(q, 0.5, y), ("x_attack",)),  # IndexError on a 0-dim tensor before
    (lambda q, x, y: bitflip.bit_flip_attack(q, x, y, x_eval=x), ("y_eval",)),
    (lambda q, x, y: bitflip.bit_flip_attack(q, x, y, x_eval=x, y_eval=y.float()), ("y_eval",)),
    (lambda q, x, y: bitflip.exhaustive_flip_search(q, x, y, layers="fc2"), ("layers",)),
    (lambda q, x, y: bitflip.exhaustive_flip_search(q, x, y, layers=[]), ("layers",)),  # crashed with an unpacking error
    (lambda q, x, y: bitflip.exhaustive_flip_search(q, x, y, layers=["nope"]), ("layers",)),
    (lambda q, x, y: bitflip.exhaustive_flip_search(q, x, y * 0 - 1, layers=["fc2"]), ("y",)),
], ids=lambda v: "" if callable(v) else v[0])
def test_bitflip_bad_input_names_the_argument(call, names):
    quantized, x = ptq_mlp_cached()
    refuses(call, quantized, x[:4], torch.tensor([0, 1, 2, 3]), names=names)


# ============================================================================= lm_eval
def tiny_gpt():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return models.TinyGPT(vocab_size=16, seq_len=8, hidden=8, n_layers=1, n_heads=2).train()


_GPT = {}


def gpt():
    if not _GPT:
        _GPT["model"] = tiny_gpt()
    return _GPT["model"]


@SETTINGS
@given(st.lists(number, min_size=8, max_size=8), st.lists(number, min_size=8, max_size=8), st.integers(0, 3))
def test_lm_eval_scores_from_extreme_logits(a, b, target):
    ref = tensor64(a).float().reshape(1, 2, 4).log_softmax(-1)  # (1 row, 2 positions, 4 tokens)
    lp = tensor64(b).float().reshape(1, 2, 4).log_softmax(-1)
    targets = torch.full((1, 2), target)
    valid = fits_float32(a) and fits_float32(b)
    names = ("ref", "lp")
    kl = clear(lm_eval.kl_divergence, ref, lp, names=names, finite=False)
    flips = clear(lm_eval.top1_flips, ref, lp, names=names)
    nll = clear(lm_eval.nll_from_log_probs, lp, targets, names=names, finite=False)
    if not valid:
        return  # NaN logits give NaN log-probabilities, refused; inf logits may give valid ones
    assert kl is not None and flips is not None and nll is not None
    assert kl >= 0 and lm_eval.kl_divergence(ref, ref) == 0.0 and 0 <= flips <= 1 and nll >= 0
    # documented infinities: KL is inf only where lp rules out a token ref expects; NLL only where a target has p = 0
    assert math.isfinite(kl) or bool(((ref > -math.inf) & (lp == -math.inf)).any())
    assert math.isfinite(nll) or bool((lp[..., target] == -math.inf).any())


@SETTINGS
@given(st.lists(number, min_size=6, max_size=6))
def test_lm_eval_raw_logits_are_refused(vals):
    logits = tensor64(vals).float().reshape(1, 2, 3)
    nll = clear(lm_eval.nll_from_log_probs, logits, torch.zeros(1, 2, dtype=torch.long), names=("lp",), finite=False)
    if nll is not None:  # accepted only if each position really is a distribution
        assert bool((logits.double().logsumexp(-1).abs() < 1e-2).all()) and nll >= 0


@FEW
@given(st.lists(st.integers(-2, 18), min_size=1, max_size=10), st.integers(1, 3))
def test_lm_eval_perplexity_of_token_rows(ids, batch_size):
    n = len(ids)
    x = torch.tensor(ids).reshape(1, n)
    ppl = clear(lm_eval.perplexity, gpt(), x, x.clamp(0, 15), batch_size=batch_size, names=("inputs",))
    valid = min(ids) >= 0 and max(ids) < 16 and n <= 8
    assert (ppl is not None) == valid
    if valid:
        assert 1 <= ppl < math.inf
    assert gpt().training  # the mode is restored


@FEW
@given(st.lists(st.integers(0, 15), min_size=1, max_size=20), st.integers(0, 5))
def test_lm_eval_generate_keeps_ids_in_the_vocabulary(prompt, n_new):
    out = clear(lm_eval.generate, gpt(), torch.tensor(prompt), n_new=n_new, names=())
    assert len(out) == len(prompt) + n_new and out[: len(prompt)].tolist() == prompt
    assert int(out.min()) >= 0 and int(out.max()) < 16


def test_lm_eval_perplexity_overflow_is_a_documented_inf():
    lp = torch.tensor([[[-3e37, 0.0]]])  # the target has probability exp(-3e37): math.exp(nll) raised OverflowError
    nll = lm_eval.nll_from_log_probs(lp, torch.tensor([[0]]))
    assert nll == pytest.approx(3e37) and lm_eval._exp(nll) == math.inf and lm_eval._exp(1.0) == math.e


def test_lm_eval_evaluator_keeps_its_own_copy_of_the_batch():
    x = torch.randint(0, 16, (2, 8), generator=torch.Generator().manual_seed(0))
    ev = lm_eval.LMEvaluator(gpt(), x, x)
    before = ev.score(gpt())
    x.zero_()  # the caller reuses the tensor: the stored reference must not follow
    assert ev.score(gpt()) == before and (before.kl, before.flips) == (0.0, 0.0) and before.perplexity >= 1


def test_lm_eval_nan_model_is_refused():
    broken = tiny_gpt()
    with torch.no_grad():
        broken.tok.weight.fill_(math.nan)
    refuses(lm_eval.log_probs, broken, torch.zeros(1, 4, dtype=torch.long), names=("model",))


@pytest.mark.parametrize("call, names", [
    (lambda m: lm_eval.log_probs("gpt", torch.zeros(1, 4, dtype=torch.long)), ("model",)),
    (lambda m: lm_eval.log_probs(m, torch.zeros(1, 4)), ("inputs",)),
    (lambda m: lm_eval.log_probs(m, torch.zeros(4, dtype=torch.long)), ("inputs",)),
    (lambda m: lm_eval.log_probs(m, torch.zeros(1, 0, dtype=torch.long)), ("inputs",)),
    (lambda m: lm_eval.log_probs(m, torch.tensor([[0, 16]])), ("inputs",)),  # raw IndexError before
    (lambda m: lm_eval.log_probs(m, torch.tensor([[0, -1]])), ("inputs",)),
    (lambda m: lm_eval.log_probs(m, torch.zeros(1, 9, dtype=torch.long)), ("inputs",)),  # longer than seq_len 8
    (lambda m: lm_eval.log_probs(m, torch.zeros(1, 4, dtype=torch.bool)), ("inputs",)),
    (lambda m: lm_eval.log_probs(m, torch.zeros(1, 4, dtype=torch.long), batch_size=0), ("batch_size",)),
    (lambda m: lm_eval.nll_from_log_probs(torch.zeros(1, 2, 3).log_softmax(-1), torch.zeros(1, 3, dtype=torch.long)), ("lp",)),
    (lambda m: lm_eval.nll_from_log_probs(torch.zeros(1, 2, 3).log_softmax(-1), torch.full((1, 2), 3)), ("targets",)),
    (lambda m: lm_eval.nll_from_log_probs(torch.randn(1, 2, 3) + 5, torch.zeros(1, 2, dtype=torch.long)), ("lp",)),
    (lambda m: lm_eval.kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4)), ("lp",)),
    (lambda m: lm_eval.kl_divergence(torch.full((2, 3), math.nan), torch.zeros(2, 3).log_softmax(-1)), ("ref",)),  # gave 0.0
    (lambda m: lm_eval.top1_flips(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), ("ref",)),
    (lambda m: lm_eval.generate(m, torch.tensor([[1, 2]])), ("prompt",)),
    (lambda m: lm_eval.generate(m, torch.tensor([99])), ("prompt",)),
    (lambda m: lm_eval.generate(m, torch.tensor([1]), n_new=-1), ("n_new",)),
    (lambda m: lm_eval.LMEvaluator(m, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)), ("targets",)),
], ids=lambda v: "" if callable(v) else v[0])
def test_lm_eval_bad_input_names_the_argument(call, names):
    refuses(call, gpt(), names=names)


# ============================================================================= text
@SETTINGS
@given(st.text(max_size=40))
def test_text_encode_decode_round_trip(s):
    ids = clear(text.encode, s, names=())
    assert ids.dtype == torch.int64 and (ids.numel() == 0 or 0 <= int(ids.min()) <= int(ids.max()) <= 255)
    assert text.decode(ids) == s and text.decode(ids.tolist()) == s


@SETTINGS
@given(st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3))
def test_text_lone_surrogates_are_named(s):
    refuses(text.encode, s, names=("text",))  # a raw UnicodeEncodeError before


@SETTINGS
@given(st.lists(st.integers(-5, 300), max_size=20))
def test_text_decode_any_ints(ids):
    out = clear(text.decode, torch.tensor(ids, dtype=torch.int64), names=("tokens",))
    assert (out is not None) == all(0 <= i <= 255 for i in ids)


@SETTINGS
@given(st.lists(number, min_size=1, max_size=5))
def test_text_decode_refuses_fractional_tokens(vals):
    out = clear(text.decode, vals, names=("tokens",))
    assert out is None  # floats are never tokens: 104.7 decoded as 'h' before


@SETTINGS
@given(st.integers(0, 40), st.integers(-1, 12), st.one_of(st.none(), st.integers(-1, 5)))
def test_text_windows_shapes_and_shift(n, seq_len, n_windows):
    tokens = torch.arange(n)
    out = clear(text.windows, tokens, seq_len, n_windows, names=("tokens", "seq_len", "n_windows"))
    if out is not None:
        x, y = out
        assert x.shape == y.shape and x.shape[1] == seq_len and bool((y == x + 1).all())
        assert n_windows is None or len(x) <= n_windows
    else:
        assert seq_len < 1 or (n_windows is not None and n_windows < 1) or n < seq_len + 1 or (n - 1) // seq_len < 1


@SETTINGS
@given(st.integers(1, 40), st.integers(-1, 12), st.integers(-1, 4))
def test_text_random_windows(n, seq_len, batch):
    out = clear(text.random_windows, torch.arange(n), seq_len, batch, torch.Generator().manual_seed(0),
                names=("tokens", "seq_len", "batch"))
    if out is not None:
        x, y = out
        assert x.shape == (batch, seq_len) and bool((y == x + 1).all())


def test_text_load_text_cache_key_includes_chunk_bytes():
    a, b = text.load_text(256), text.load_text(512)
    assert len(a.test) != len(b.test)  # a different split, not the cached one of the other size
    assert text.load_text(256) is a and text.load_text(np.int64(256)) is a  # the same key, the same object
    assert sum(map(len, (a.train, a.val, a.test))) == sum(map(len, (b.train, b.val, b.test)))


@pytest.mark.parametrize("call, names", [
    (lambda: text.encode(b"bytes"), ("text",)),
    (lambda: text.decode(torch.tensor([104.0])), ("tokens",)),
    (lambda: text.decode(torch.tensor([[104]])), ("tokens",)),
    (lambda: text.decode("hi"), ("tokens",)),
    (lambda: text.decode([True]), ("tokens",)),
    (lambda: text.decode([256]), ("tokens",)),
    (lambda: text.load_text(255), ("chunk_bytes",)),
    (lambda: text.load_text(10**9), ("chunk_bytes",)),  # one chunk: val and test were empty, torch.cat failed
    (lambda: text.load_text(4096.0), ("chunk_bytes",)),
    (lambda: text.load_text().split("dev"), ("split",)),
    (lambda: text.windows(torch.ones(10, dtype=torch.bool), 2), ("tokens",)),
    (lambda: text.windows(torch.rand(10), 2), ("tokens",)),
    (lambda: text.windows([1, 2, 3], 2), ("tokens",)),
    (lambda: text.random_windows(torch.arange(10), 4, 2, 0), ("generator",)),
], ids=lambda v: "" if callable(v) else v[0])
def test_text_bad_input_names_the_argument(call, names):
    refuses(call, names=names)


# ============================================================================= outliers
@SETTINGS
@example([-2.2e-309], 1.0, 1)  # a negative value that float32 rounds to -0.0 is still negative: refused
@example([0.0, 0.0, 2.0], 6.0, 3)  # median 0: the documented inf ratio
@given(values, number, st.integers(-1, 5))
def test_outliers_channel_stats(vals, threshold, top):
    s = clear(outliers.channel_stats, "fc", tensor64(vals), threshold, top, names=("channel_max", "threshold", "top"),
              finite=False)
    if s is None:
        return
    assert fits_float32(vals) and min(vals) >= 0 and math.isfinite(threshold) and threshold >= 0 and top >= 1
    assert s.max >= s.median >= 0 and math.isfinite(s.max) and s.channels == len(vals)
    assert (s.ratio == math.inf) == (s.median == 0)  # documented: inf only when the median channel is 0
    assert s.ratio == math.inf or 1 <= s.ratio < math.inf
    assert len(s.top_channels) == min(top, len(vals)) and s.top_channels[0] in [i for i, v in enumerate(vals)
                                                                                if np.float32(v) == np.float32(max(vals))]
    assert s.n_outlier_channels == sum(float(np.float32(v)) >= threshold for v in vals)  # float32 maxima, float64 threshold


@FEW
@given(st.lists(number, min_size=4, max_size=4), st.sampled_from([torch.float32, torch.float64]))
def test_outliers_linear_input_absmax(vals, dtype):
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.tensor(vals, dtype=torch.float64).reshape(2, 2).to(dtype)
    stats_ = clear(outliers.linear_input_absmax, model, x, names=("inputs",))
    if not fits_float32(vals):
        assert stats_ is None
    elif stats_ is not None:  # refused only if an activation overflowed inside the model (named)
        assert torch.equal(stats_["0"], x.float().abs().amax(dim=0)) and bool((stats_["2"] >= 0).all())
    assert not any(m._forward_pre_hooks for m in model.modules())


@FEW
@given(st.lists(st.integers(0, 15), min_size=2, max_size=8))
def test_outliers_tinygpt_tables(ids):
    x = torch.tensor(ids).reshape(1, -1)
    rows = clear(outliers.outlier_table, gpt(), x, names=())
    assert len(rows) == 4 + 2 and all(r.max >= r.median >= 0 for r in rows)  # 4 linear inputs + embed + block0
    data = clear(outliers.heatmap_data, gpt(), x, names=())
    assert sorted(data) == [8, 32] and all(m.shape == (len(n), w) for w, (n, m) in data.items())


def test_outliers_overflow_inside_the_model_is_named():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.fill_(1e38)
    refuses(outliers.linear_input_absmax, model, torch.tensor([[10.0, 10.0]]), names=("inputs of ['1']",))


@pytest.mark.parametrize("call, names", [
    (lambda: outliers.channel_stats("fc", [1.0, 2.0]), ("channel_max",)),
    (lambda: outliers.channel_stats("fc", torch.ones(2, 2)), ("channel_max",)),
    (lambda: outliers.channel_stats("fc", torch.tensor([])), ("channel_max",)),
    (lambda: outliers.channel_stats("fc", torch.tensor([1.0, math.nan])), ("channel_max",)),  # gave max=nan
    (lambda: outliers.channel_stats("fc", torch.tensor([-1.0, -3.0])), ("channel_max",)),  # gave max=-1
    (lambda: outliers.channel_stats("fc", torch.tensor([1.0]), threshold=math.nan), ("threshold",)),
    (lambda: outliers.channel_stats("fc", torch.tensor([1.0]), top=0), ("top",)),
    (lambda: outliers.linear_input_absmax(nn.ReLU(), torch.ones(1, 2)), ("model",)),
    (lambda: outliers.linear_input_absmax(nn.Linear(2, 2), torch.ones(1, 3)), ("inputs",)),
    (lambda: outliers.linear_input_absmax(nn.Linear(2, 2), torch.tensor([[math.nan, 1.0]])), ("inputs",)),
    (lambda: outliers.residual_absmax(nn.Linear(2, 2), torch.ones(1, 2)), ("model",)),
    (lambda: outliers.residual_absmax(gpt(), torch.tensor([[0, 16]])), ("inputs",)),
], ids=lambda v: "" if callable(v) else v[0])
def test_outliers_bad_input_names_the_argument(call, names):
    refuses(call, names=names)


# ============================================================================= llm_quant
@FEW
@given(st.integers(1, 3), st.integers(1, 8), st.integers(2, 8), st.sampled_from([None, 4]))
def test_llm_quant_errors_are_finite_fractions(rows, seq_len, bits, group_size):
    calib = torch.randint(0, 16, (rows, seq_len), generator=torch.Generator().manual_seed(rows * 10 + seq_len))
    q, errors = clear(llm_quant.quantize_model, gpt(), llm_quant.layer_method("rtn", bits, group_size), calib, names=())
    assert list(errors) == llm_quant.linear_layers(gpt()) and all(0 <= e < math.inf for e in errors.values())
    assert q is not gpt() and gpt().training


@FEW
@given(st.integers(1, 3), st.integers(0, 2**32 - 1), st.integers(1, 16))
def test_llm_quant_calibration_tokens_are_seeded_and_leave_the_global_rng_alone(n, seed, seq_len):
    x = clear(llm_quant.calibration_tokens, n, seed, seq_len, names=())  # clear() checks the global RNG states
    assert x.shape == (n, seq_len) and torch.equal(x, llm_quant.calibration_tokens(n, seed, seq_len))
    assert 0 <= int(x.min()) and int(x.max()) < 256


def _nan_method(layer, x):
    with torch.no_grad():
        layer.weight.fill_(math.nan)
    return layer


@pytest.mark.parametrize("call, names", [
    (lambda: llm_quant.quantize_model(gpt(), _nan_method, torch.zeros(1, 4, dtype=torch.long)), ("method",)),  # gave NaN errors
    (lambda: llm_quant.quantize_model(gpt(), lambda layer, x: nn.Linear(3, 3), torch.zeros(1, 4, dtype=torch.long)), ("method",)),
    (lambda: llm_quant.quantize_model(gpt(), lambda layer, x: "layer", torch.zeros(1, 4, dtype=torch.long)), ("method",)),
    (lambda: llm_quant.quantize_model(gpt(), "rtn", torch.zeros(1, 4, dtype=torch.long)), ("method",)),
    (lambda: llm_quant.quantize_model(gpt(), lambda layer, x: layer, torch.tensor([[0, 99]])), ("calib",)),  # IndexError before
    (lambda: llm_quant.quantize_model(gpt(), lambda layer, x: layer, torch.zeros(1, 9, dtype=torch.long)), ("calib",)),
    (lambda: llm_quant.quantize_model(gpt(), lambda layer, x: layer, torch.zeros(1, 4)), ("calib",)),
    (lambda: llm_quant.quantize_model(nn.Linear(2, 2), lambda layer, x: layer, torch.zeros(1, 4, dtype=torch.long)), ("model",)),
    (lambda: llm_quant.layer_inputs(gpt(), "blocks.0.fc1", torch.zeros(1, 4)), ("tokens",)),
    (lambda: llm_quant.layer_inputs(gpt(), "blocks.9.fc1", torch.zeros(1, 4, dtype=torch.long)), ("blocks.9.fc1",)),
    (lambda: llm_quant.layer_inputs(gpt(), 5, torch.zeros(1, 4, dtype=torch.long)), ("layer 5",)),
    (lambda: llm_quant.linear_layers("gpt"), ("model",)),
    (lambda: llm_quant.calibration_tokens(0), ("n_sequences",)),
    (lambda: llm_quant.calibration_tokens(1, seed=-1), ("seed",)),
    (lambda: llm_quant.calibration_tokens(1, seq_len=0), ("seq_len",)),
    (lambda: llm_quant.calibration_tokens(1, seq_len=10**7), ("seq_len",)),
    (lambda: llm_quant.layer_method("fp3"), ("name",)),
], ids=lambda v: "" if callable(v) else v[0])
def test_llm_quant_bad_input_names_the_argument(call, names):
    refuses(call, names=names)


# ============================================================================= bundle, results, doctor
@pytest.mark.parametrize("call, names", [
    (lambda: bundle.bundle_path(["lessons"]), ("kind",)),  # "unhashable type: 'list'" before
    (lambda: bundle.bundle_path("lesson"), ("kind",)),
    (lambda: bundle.notebooks("results"), ("kind",)),
    (lambda: bundle.notebooks(3), ("kind",)),
    (lambda: results.load_results(5), ("name",)),
    (lambda: results.load_results(""), ("name",)),
    (lambda: results.load_results("../../setup"), ("name",)),  # left the results folder before
    (lambda: results.results_markdown("sub/ptq_ablation"), ("name",)),
], ids=lambda v: "" if callable(v) else v[0])
def test_files_bad_input_names_the_argument(call, names):
    refuses(call, names=names)


def test_results_missing_file_and_folder_are_named(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_table.json"):
        results.load_results("no_such_table")
    monkeypatch.setenv("QEDU_RESULTS_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="QEDU_RESULTS_DIR"):
        results.results_dir()


def test_doctor_report_is_text_all_the_way_down():
    report = clear(doctor.doctor_report, names=())
    flat = [v for part in report.values() for v in (part.values() if isinstance(part, dict) else [part])]
    assert all(isinstance(v, (str, int, float, bool, dict, list, type(None))) for v in flat)
    assert isinstance(doctor.doctor_text(), str) and isinstance(doctor.extras_status(), dict)


# ============================================================================= LLM methods: what test_llm_methods_extremes.py leaves out
from qedu import awq, layerwise, llm_int8  # noqa: E402


@SETTINGS
@given(st.lists(number, min_size=4, max_size=4))
def test_awq_activation_scale(vals):
    x = tensor64(vals).reshape(2, 2)
    s = clear(awq.activation_scale, x, names=("x",))
    if s is not None:
        assert all(math.isfinite(v) for v in vals) and bool((s >= 0).all())
    else:
        assert not fits_float32(vals) or not bool(torch.isfinite(x.abs().mean(0).float()).all())


@SETTINGS
@given(number, st.integers(-2**31, 2**31 - 1))
def test_llm_int8_mm_dequant_factor_and_overflow(factor, acc):
    out = clear(llm_int8.int8_mm_dequant, torch.tensor([[acc]], dtype=torch.int32), torch.tensor([2.0]), torch.tensor([3.0]),
                factor=factor, names=("factor", "beyond float32"))
    if out is not None:
        assert math.isfinite(factor) and factor > 0  # an inf factor gave inf outputs before


@FEW
@given(st.lists(number, min_size=4, max_size=4), st.booleans())
def test_layerwise_quantize_linears_on_extreme_inputs(vals, sequential):
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    x = tensor64(vals).reshape(2, 2)
    q = clear(layerwise.quantize_linears, model, x, lambda w, x_: w.round(), sequential=sequential, names=("inputs",))
    if not fits_float32(vals):
        assert q is None  # NaN/inf inputs were recorded as NaN inputs before
    elif q is not None:
        assert all(bool(torch.isfinite(p).all()) for p in q.parameters())


@pytest.mark.parametrize("call, names", [
    (lambda m: layerwise.linear_inputs(m, torch.ones(2, 5)), ("inputs",)),  # raw "mat1 and mat2" before
    (lambda m: layerwise.linear_inputs(m, torch.full((2, 2), math.nan)), ("inputs",)),
    (lambda m: layerwise.linear_inputs(m, "tokens"), ("inputs",)),  # AttributeError from inside a hook before
    (lambda m: layerwise.quantize_linears(m, torch.ones(2, 2), lambda w, x: w * math.nan), ("quantize_weight",)),  # NaN weights before
    (lambda m: layerwise.quantize_linears(m, torch.ones(2, 2), lambda w, x: w[:1]), ("quantize_weight",)),
    (lambda m: layerwise.replace_linears(m, lambda lin: lin, names="0"), ("names",)),
    (lambda m: llm_int8.int8_mm_dequant(torch.ones(1, 1, dtype=torch.int32), torch.tensor([-1.0]), torch.ones(1)), ("absmax",)),
], ids=lambda v: "" if callable(v) else v[0])
def test_layerwise_and_llm_int8_bad_input_names_the_argument(call, names):
    refuses(call, nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)), names=names)
