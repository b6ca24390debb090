"""qedu.serving: the loop's signals equal lesson 09's monitors, routing, rollback after k batches, the log."""
from __future__ import annotations

import json

import pytest
import torch

from qedu.data import load_digits
from qedu.drift import DriftMonitor
from qedu.models import pretrained
from qedu.ptq import PTQConfig, quantize_model
from qedu.security import RangeMonitor
from qedu.serving import (
    FAULTS, MIX_CLASSES, SEVERITY_LEVELS, SIGNALS, AlarmRules, Incident, Rollout, ServingLoop, log_jsonl,
    log_markdown, make_stream, outcome,
)


@pytest.fixture(scope="module")
def setup():
    data = load_digits(seed=0)
    model = pretrained("mlp", seed=0)
    quantized = quantize_model(model, PTQConfig(), data.x_calib)
    return data, model, quantized, ServingLoop(model, quantized, data.x_calib)


def stream(data, fault="none", severity=2, **kw):
    kw = dict(n_batches=40, batch_size=32, onset=10, seed=0) | kw
    return make_stream(data.x_test, data.y_test, fault, severity, **kw)


def test_per_batch_signals_equal_the_range_and_drift_monitors(setup):
    data, model, quantized, loop = setup
    rm, dm = RangeMonitor(quantized, data.x_calib), DriftMonitor(quantized, data.x_calib)
    for fault in ("none", "gain", "fading"):
        s = stream(data, fault, 3, onset=1, n_batches=3)
        f = loop.features(s)
        run = loop.run(f, AlarmRules(drift_window=32), Rollout(canary_fraction=1.0), rollback=False)
        for b in range(3):
            idx = torch.arange(32 * b, 32 * (b + 1))
            evidence = loop.signals(f, idx)
            report, drift = rm.check(s.x[idx]), dm.check(s.x[idx])
            excess = max(report.rates[n] - report.baseline[n] for n in report.rates)
            assert evidence["range"]["max_clip_excess"] == pytest.approx(excess, abs=1e-6)
            assert evidence["range"]["min_range_ratio"] == pytest.approx(min(report.range_ratio.values()), rel=1e-6)
            assert run.alarms["range"][b] == report.alarm, (fault, b)
            assert evidence["drift"]["max_psi"] == pytest.approx(max(drift.psi.values()), rel=1e-6)
            assert run.values["drift"][b] * 0.1 == pytest.approx(max(drift.psi.values()), rel=1e-6)
            q, fl = quantized(s.x[idx]).argmax(1), model(s.x[idx]).argmax(1)
            assert evidence["disagreement"]["rate"] == pytest.approx(float((q != fl).double().mean()))


def test_the_vectorised_track_equals_the_plain_signals_on_a_canary(setup):
    data, _, _, loop = setup
    s = stream(data, "gain", 2, onset=5, n_batches=12)
    f = loop.features(s)
    watched = torch.rand(len(s.y), generator=torch.Generator().manual_seed(1)) < 0.3
    watched[:32] = False  # a batch with nothing watched gives no verdict
    track = loop.track(f, watched, 50)
    order = torch.nonzero(watched).flatten()
    assert all(v != v for v in (track["excess"][0], track["psi"][0], track["disagree"][0]))
    for b in range(1, 12):
        idx = torch.nonzero(watched[32 * b:32 * (b + 1)]).flatten() + 32 * b
        window = order[order < 32 * (b + 1)][-50:]
        ev = loop.signals(f, idx, window)
        assert float(track["excess"][b]) == pytest.approx(ev["range"]["max_clip_excess"], abs=1e-12)
        assert float(track["ratio"][b]) == pytest.approx(ev["range"]["min_range_ratio"], rel=1e-12)
        assert float(track["psi"][b]) == pytest.approx(ev["drift"]["max_psi"], rel=1e-9)
        assert float(track["disagree"][b]) == pytest.approx(ev["disagreement"]["rate"], abs=1e-12)
        assert int(track["window"][b]) == len(window)


def test_streams_inject_the_fault_from_the_onset_only(setup):
    data = setup[0]
    clean = stream(data)
    for fault in FAULTS[1:]:
        s = stream(data, fault, 3)
        assert torch.equal(s.x[:320], clean.x[:320]) and torch.equal(s.y[:320], clean.y[:320]), fault
        assert not torch.equal(s.x[320:], clean.x[320:]), fault
    assert torch.equal(stream(data, "gain", 2).x[320:], clean.x[320:] * SEVERITY_LEVELS["gain"][1])
    assert torch.equal(stream(data, "missing_div16").x[320:], clean.x[320:] * 16)
    fading = stream(data, "fading", 3)
    last = fading.x[-32:].sum() / clean.x[-32:].sum()
    assert float(last) == pytest.approx(SEVERITY_LEVELS["fading"][2], rel=1e-5)  # the level is reached at the end
    mix = stream(data, "class_mix", 3, n_batches=100)
    share = torch.isin(mix.y[320:], torch.tensor(MIX_CLASSES)).double().mean()
    assert 0.85 < float(share) < 0.97  # 90 % drawn from digits 8 and 9 (plus their natural share of the rest)
    assert torch.equal(stream(data, "gain", 2).x, stream(data, "gain", 2).x)  # seeded


def test_routing_follows_the_canary_and_stops_after_a_rollback(setup):
    data, _, _, loop = setup
    s = stream(data, "missing_div16", onset=30, n_batches=60)
    rollout = Rollout(canary_fraction=0.25, canary_batches=20, seed=3)
    run = loop.run(s, AlarmRules(k=3), rollout)
    canary = sum(run.share[:20]) / 20
    assert 0.18 < canary < 0.32 and all(x == 1.0 for x in run.share[20:30])
    assert run.rollback == 32 and all(x == 0.0 for x in run.share[33:]) and run.share[32] == 1.0
    again = loop.run(s, AlarmRules(k=3), rollout)
    assert again.share == run.share and again.served == run.served  # deterministic


@pytest.mark.parametrize("k", [1, 3, 5])
def test_rollback_comes_when_an_alarm_has_held_k_batches(setup, k):
    data, _, _, loop = setup
    s = stream(data, "missing_div16", onset=10)
    run = loop.run(s, AlarmRules(k=k), Rollout(canary_fraction=1.0))
    assert run.rollback == 10 + k - 1  # the range alarm fires from the first faulty batch
    assert all(run.alarms["range"][10:10 + k]) and not any(run.alarms["range"][:10])
    assert run.served[run.rollback + 1:] == run.float_acc[run.rollback + 1:]  # the float model serves after it
    assert run.served[:run.rollback + 1] == run.quant_acc[:run.rollback + 1]
    kinds = [(i.batch, i.event) for i in run.incidents]
    assert (10, "alarm") in kinds and (10 + k - 1, "rollback") in kinds


def test_counterfactual_never_rolls_back_and_the_rollback_saves_accuracy(setup):
    data, _, _, loop = setup
    s = stream(data, "missing_div16", onset=10)
    cf = loop.run(s, rollback=False)
    assert cf.rollback is None and all(cf.alarms["range"][10:])
    o = outcome(loop, s)
    assert o.rollback_delay == 2 and not o.false_rollback and o.saved > 0.03  # canary: 25 % exposed till batch 40
    assert o.served_accuracy == pytest.approx(o.float_accuracy, abs=0.01)


def test_clean_stream_raises_no_rollback_with_the_default_rules(setup):
    data, _, _, loop = setup
    for seed in range(3):
        o = outcome(loop, stream(data, seed=seed, n_batches=60), AlarmRules(), Rollout(seed=seed))
        assert o.rollback is None and not o.false_rollback and o.saved == 0.0


def test_drift_waits_for_a_full_window(setup):
    data, _, _, loop = setup
    run = loop.run(stream(data), AlarmRules(drift_window=128), Rollout(canary_fraction=1.0))
    assert all(v != v for v in run.values["drift"][:3]) and run.values["drift"][3] == run.values["drift"][3]


def test_incident_log_prints_as_markdown_and_json_lines(setup):
    data, _, _, loop = setup
    run = loop.run(stream(data, "gain", 3), AlarmRules(), Rollout())
    rb = [i for i in run.incidents if i.event == "rollback"]
    assert len(rb) == 1 and rb[0].batch == run.rollback and rb[0].signal in SIGNALS
    assert rb[0].evidence["k"] == 3 and len(rb[0].evidence["value_over_threshold"]) == 3
    assert all(v > 1 for v in rb[0].evidence["value_over_threshold"])
    md = log_markdown(run.incidents)
    assert md.count("\n") == len(run.incidents) + 1 and "| rollback |" in md
    records = [json.loads(line) for line in log_jsonl(run.incidents).splitlines()]
    assert [Incident(**r) for r in records] == run.incidents


@pytest.mark.parametrize("call, error, fragment", [
    (lambda d: make_stream(d.x_test, d.y_test, "flood"), ValueError, "fault"),
    (lambda d: make_stream(d.x_test, d.y_test, "gain", 4), ValueError, "severity"),
    (lambda d: make_stream(d.x_test * 16, d.y_test), ValueError, "pixel / 16"),
    (lambda d: make_stream(d.x_test, d.y_test[:5]), ValueError, "one label per image"),
    (lambda d: make_stream(d.x_test, d.y_test, onset=101), ValueError, "onset"),
    (lambda d: make_stream(d.x_test[d.y_test < 8], d.y_test[d.y_test < 8], "class_mix"), ValueError, "class_mix"),
    (lambda d: AlarmRules(k=0), ValueError, "k"),
    (lambda d: AlarmRules(psi_threshold=0), ValueError, "psi_threshold"),
    (lambda d: AlarmRules(clip_tolerance=0.0), ValueError, "clip_tolerance"),
    (lambda d: Rollout(canary_fraction=0), ValueError, "canary_fraction"),
    (lambda d: Rollout(canary_fraction=float("nan")), ValueError, "canary_fraction"),
])
def test_bad_input_is_a_clear_error(setup, call, error, fragment):
    with pytest.raises(error, match=fragment):
        call(setup[0])


def test_loop_refuses_what_it_cannot_serve(setup):
    data, model, _, loop = setup
    with pytest.raises(TypeError, match="make_stream"):
        loop.features(data.x_test)
    with pytest.raises(TypeError, match="act_bits"):
        ServingLoop(model, quantize_model(model, PTQConfig(act_bits=None)), data.x_calib)
    with pytest.raises(TypeError, match="float_model"):
        ServingLoop("mlp", model, data.x_calib)
    with pytest.raises(TypeError, match="AlarmRules"):
        loop.run(stream(data), rules={"k": 3})
    other = ServingLoop(model, quantize_model(model, PTQConfig(act_bits=4), data.x_calib), data.x_calib)
    with pytest.raises(ValueError, match="another ServingLoop"):
        other.run(loop.features(stream(data)))


def test_cached_signals_give_the_same_runs_as_fresh_ones(setup):
    data, _, _, loop = setup
    s = stream(data, "gain", 2)
    f = loop.features(s)
    for rules in (AlarmRules(), AlarmRules(k=1, psi_threshold=0.05), AlarmRules()):
        cached, fresh = loop.run(f, rules), loop.run(s, rules)
        assert cached.served == fresh.served and cached.alarms == fresh.alarms and cached.incidents == fresh.incidents
    assert sorted(rolled for _, rolled in f.tracks if rolled is not None) == [9, 12]  # k = 1, PSI > 0.05: a false one
    assert len(f.tracks) == 3  # one routing without rollback, and one per rollback moment


# ----------------------------------------------------------------------------- extremes (issue 20's rule)
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXTREMES = [3.4e38, -3.4e38, 1.2e-38, 1.4e-45, 0.0, -0.0, 1.0, -1.0, 0.5, 1e39, 1e-320, float("inf"),
            float("-inf"), float("nan"), 16.0]
number = st.one_of(st.sampled_from(EXTREMES), st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=60, deadline=None)
@given(v=number)
def test_rules_and_rollout_take_a_valid_number_or_say_why(v):
    for build, valid in ((lambda: AlarmRules(psi_threshold=v), v > 0 and v < float("inf")),
                         (lambda: AlarmRules(clip_tolerance=v), 0 < v < 1),
                         (lambda: AlarmRules(disagreement_threshold=v), 0 <= v < 1),
                         (lambda: Rollout(canary_fraction=v), 0 < v <= 1)):
        if valid:
            build()
        else:
            with pytest.raises(ValueError):
                build()


@settings(max_examples=30, deadline=None)
@given(v=number)
def test_streams_refuse_pixels_outside_zero_one(v):
    x, y = torch.full((4, 1, 8, 8), 0.5, dtype=torch.float64), torch.arange(4)
    x[0, 0, 0, 0] = v
    if 0 <= float(torch.tensor(v, dtype=torch.float64).float()) <= 1:  # judged on the float32 value used
        s = make_stream(x, y, "gain", 3, n_batches=2, batch_size=2, onset=1)
        assert bool(torch.isfinite(s.x).all())
    else:
        with pytest.raises(ValueError, match="x"):
            make_stream(x, y, "gain", 3, n_batches=2, batch_size=2, onset=1)


def test_the_loop_serves_a_cnn_too():
    from qedu.models import make_cnn

    data = load_digits(seed=0)
    cnn = make_cnn(seed=0).eval()
    loop = ServingLoop(cnn, quantize_model(cnn, PTQConfig(), data.x_calib), data.x_calib)
    assert list(loop.grids) == ["conv1", "conv2", "fc"]
    run = loop.run(stream(data, "missing_div16"), AlarmRules(), Rollout(canary_fraction=1.0))
    assert run.first_alarm("range") == 10 and run.rollback == 12
