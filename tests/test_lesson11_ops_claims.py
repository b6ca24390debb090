"""What lesson 11's "Operating a quantized model" and "Governance" prose says, held to the data.

The prose lives in lessons/11_deployment_and_monitoring.ipynb, sections 4 and 5. If the models, the
rules or benchmarks/rollback.py's table change and these fail, the prose must be updated with them.
"""
from __future__ import annotations

import pytest
import torch

from qedu.data import load_digits
from qedu.models import evaluate, pretrained
from qedu.ptq import PTQConfig, quantize_model
from qedu.results import load_results
from qedu.serving import AlarmRules, Rollout, ServingLoop, make_stream


@pytest.fixture(scope="module")
def setup():
    data = load_digits(seed=0)
    mlp = pretrained("mlp", seed=0)
    w8a8 = quantize_model(mlp, PTQConfig(), data.x_calib)
    return data, mlp, w8a8, ServingLoop(mlp, w8a8, data.x_calib)


@pytest.fixture(scope="module")
def table():
    t = load_results("rollback")
    return t, {(r["fault"], r["severity"]): r for r in t["rows"]}


def test_the_defaults_the_prose_names():
    rules, rollout = AlarmRules(), Rollout()
    assert (rollout.canary_fraction, rollout.canary_batches, rules.k, rules.drift_window) == (0.25, 40, 3, 128)
    assert len(load_digits(seed=0).x_calib) == 256 and PTQConfig().name == "W8A8 per-channel minmax"


def test_fc1_grid_ends_at_one(setup):
    w8a8 = setup[2]
    top = float(w8a8.fc1.act.scale) * (w8a8.fc1.act.fmt.qmax - int(w8a8.fc1.act.zero_point))
    assert top == pytest.approx(1.0, abs=1e-6)  # "fc1's grid ends at 1.0"


def test_quantized_and_float_disagree_on_well_under_one_percent_of_clean_test_images(setup):
    data, mlp, w8a8, _ = setup
    disagree = float((mlp(data.x_test).argmax(1) != w8a8(data.x_test).argmax(1)).double().mean())
    assert disagree < 0.005


def test_the_missing_div16_demo(setup):
    data, mlp, _, loop = setup
    stream = make_stream(data.x_test, data.y_test, "missing_div16", n_batches=100, batch_size=32, onset=30, seed=0)
    run, cf = loop.run(stream), loop.run(stream, rollback=False)
    assert run.first_alarm("range") == 30 and run.rollback == 32  # "fires on batch 30 ... after batch 32"
    assert run.accuracy > cf.accuracy + 0.05
    false = [i for i in run.incidents if i.event == "alarm" and i.batch < 30]
    assert [(i.batch, i.signal) for i in false] == [(9, "disagreement")]  # "the alarm at batch 9 is a false one"
    assert round(run.share[9] * 32) == 7 and false[0].evidence["rate"] == pytest.approx(1 / 7)
    assert run.alarms["disagreement"][8:11] == [False, True, False]  # "held for one batch only"
    # "the float model barely minds the missing / 16"
    assert evaluate(mlp, data.x_test * 16, data.y_test) > evaluate(mlp, data.x_test, data.y_test) - 0.01


def test_psi_of_clean_windows_shrinks_with_their_size(setup):
    data, _, _, loop = setup
    clean = loop.features(make_stream(data.x_test, data.y_test, "none", n_batches=100, batch_size=32, seed=0))
    medians, largest = {}, {}
    for size in (8, 32, 128):
        t = loop.track(clean, torch.ones(3200, dtype=torch.bool), drift_window=size)
        scores = t["psi"][t["window"] >= size]
        medians[size], largest[size] = float(scores.median()), float(scores.max())
    assert round(medians[8], 1) == 0.5 and round(medians[32], 2) == 0.12 and round(medians[128], 2) == 0.04
    assert largest[32] > 0.1 > largest[128]  # "only the pooled histogram stays quiet" under 0.1


def test_a_psi_threshold_of_002_rolls_back_a_clean_stream():
    from qedu.widgets.deploy import DeploymentLab

    lab = DeploymentLab()
    assert lab.simulate("none", 2, 0.25, 0.1, 0.1, 0.01, 3).run.rollback is None
    assert lab.simulate("none", 2, 0.25, 0.02, 0.1, 0.01, 3).run.rollback is not None


def test_table_setup_matches_the_prose(table):
    t, _ = table
    assert t["setup"]["stream"] == {"n_batches": 100, "batch_size": 32, "onset": 30}
    assert len(t["setup"]["seeds"]) == 10 and len(t["setup"]["clean_seeds"]) == 20


def test_missing_div16_row(table):
    r = table[1][("missing_div16", 2)]
    assert r["detected"] == r["seeds"] == 10 and r["rollback_delay_median"] == r["rollback_delay_max"] == 2
    assert round(r["saved_points_mean"]) == 13  # "about 13 points"


def test_gain_rows(table):
    for severity in (1, 2, 3):
        r = table[1][("gain", severity)]
        assert r["detected"] == 10 and r["rollback_delay_median"] == 2, severity
        assert 1 <= r["saved_points_mean"] <= 3, severity  # "saves 1 to 3 points"
        assert r["saved_points_min"] > 0


def test_fading_rows(table):
    for severity in (1, 2, 3):
        r = table[1][("fading", severity)]
        assert r["detected"] == 10 and r["rollback_delay_median"] == r["rollback_delay_max"] == 3, severity
        assert r["first_alarm_delay"]["drift"]["seeds"] == 10
        assert abs(r["saved_points_mean"]) < 0.05, severity  # "saves nothing"
        assert (r["first_alarm_delay"]["range"]["seeds"] > 0) == (severity == 3)  # under-use: strongest only
    assert table[1][("fading", 3)]["first_alarm_delay"]["range"]["median"] > 30  # "and late"


def test_class_mix_rows(table):
    rows = table[1]
    assert rows[("class_mix", 1)]["detected"] == rows[("class_mix", 2)]["detected"] == 0
    r = rows[("class_mix", 3)]
    assert r["detected"] == 6 and r["rollback_delay_median"] == 23
    for severity in (1, 2, 3):
        row = rows[("class_mix", severity)]
        assert abs(row["saved_points_mean"]) < 0.05 and abs(row["served"] - row["float"]) < 0.003


def test_clean_streams(table):
    t, _ = table
    c = t["clean"]
    assert t["clean_false_rollbacks"] == 0 and t["clean_streams"] == 20
    assert c["range"]["all"]["alarms"] == c["drift"]["all"]["alarms"] == 0
    assert (c["disagreement"]["canary"]["alarms"], c["disagreement"]["canary"]["batches"]) == (12, 800)
    assert round(100 * c["disagreement"]["canary"]["rate"], 1) == 1.5 and c["disagreement"]["full"]["alarms"] == 0
    assert 32 * Rollout().canary_fraction == 8  # "a canary batch holds only about 8 requests"
    assert not any(x["false_rollback"] for x in t["per_seed"])  # no false rollback on the faulty streams either


def test_tradeoff_table(table):
    t, _ = table
    rows = {(r["k"], r["psi_threshold"]): r for r in t["tradeoff"]}
    assert rows[1, 0.1]["clean_false_rollbacks"] == 9  # "rolls back 9 of the 20 clean streams"
    assert rows[1, 0.1]["gain_false_rollbacks"] == rows[1, 0.1]["fading_false_rollbacks"] == 5  # "half of the faulty ones"
    assert rows[2, 0.1]["clean_false_rollbacks"] == rows[3, 0.1]["clean_false_rollbacks"] == 0
    for fault in ("gain", "fading"):  # "one batch of delay" per step of k
        assert rows[2, 0.1][f"{fault}_delay_median"] + 1 == rows[3, 0.1][f"{fault}_delay_median"]
        assert rows[1, 0.1][f"{fault}_delay_median"] < rows[2, 0.1][f"{fault}_delay_median"]
    assert rows[5, 0.05]["clean_false_rollbacks"] == 2  # "even with k = 5 it still rolls back 2 clean streams"
