"""Lesson 11's deployment simulator, driven headless, and the lab behind it."""
from __future__ import annotations

import numpy as np
import pytest

from qedu.serving import AlarmRules, Rollout, make_stream
from qedu.widgets.deploy import KEEP, STREAM, DeploymentLab, deployment_simulator


@pytest.fixture(scope="module")
def panel():
    return deployment_simulator()


def test_lab_equals_the_serving_loop_on_the_same_setting():
    lab = DeploymentLab()
    sim = lab.simulate("gain", 3, 0.5, 0.1, 0.05, 0.01, 2, seed=1)
    stream = make_stream(lab.data.x_test, lab.data.y_test, "gain", 3, **STREAM, seed=1)
    rules = AlarmRules(clip_tolerance=0.01, psi_threshold=0.1, disagreement_threshold=0.05, k=2)
    direct = lab.loop.run(stream, rules, Rollout(0.5, 40, seed=1))
    assert sim.run.served == direct.served and sim.run.rollback == direct.rollback == STREAM["onset"] + 1
    cf = lab.loop.run(stream, rules, Rollout(0.5, 40, seed=1), rollback=False)
    assert sim.counterfactual.rollback is None and sim.counterfactual.alarms == cf.alarms
    for name in cf.values:
        np.testing.assert_array_equal(sim.counterfactual.values[name], cf.values[name])  # NaN (no verdict) equal too
    assert lab.features("missing_div16", 1, 0) is lab.features("missing_div16", 3, 0)  # one size: cached once
    for fault in ("gain", "fading", "class_mix"):
        for severity in (1, 2, 3):
            lab.features(fault, severity, 0)
    assert len(lab._features) == KEEP  # a bounded cache: about 10 MB per stream


MOVES = {"fault": "missing_div16", "severity": 3, "canary": 1.0, "psi_threshold": 0.02, "disagreement": 0.02,
         "clip_tolerance": 0.2, "k": 6}


@pytest.mark.parametrize("name", MOVES)
def test_each_control_changes_the_picture_and_back(panel, name):
    before_png, before_text = panel.figure.png, panel.readout.value
    original = panel.controls[name].value
    panel.controls[name].value = MOVES[name]
    assert panel.message.value == "" and panel.current, panel.message.value
    assert panel.figure.png != before_png and panel.readout.value != before_text
    panel.controls[name].value = original
    assert panel.figure.png == before_png and panel.readout.value == before_text


def test_every_fault_draws_and_reports(panel):
    for fault in ("none", "gain", "missing_div16", "fading", "class_mix"):
        panel.controls["fault"].value = fault
        assert panel.error is None, (fault, panel.message.value)
        assert "accuracy over" in panel.readout.value
    panel.controls["fault"].value = "missing_div16"
    assert "rolled back" in panel.readout.value and "| rollback |" not in panel.readout.value
    assert "<td>rollback</td>" in panel.readout.value  # the incident log, as a table
    panel.controls["fault"].value = "gain"


def test_severity_is_disabled_where_it_does_nothing(panel):
    for fault, disabled in (("none", True), ("missing_div16", True), ("fading", False), ("gain", False)):
        panel.controls["fault"].value = fault
        assert panel.controls["severity"].disabled is disabled, fault
        assert ("severity" in panel.hint.value) is disabled
    assert panel.last_update_ms > 0


def test_a_tight_drift_threshold_causes_a_false_rollback_on_a_clean_stream(panel):
    panel.controls["fault"].value = "none"
    assert "no rollback" in panel.readout.value
    panel.controls["psi_threshold"].value = 0.02
    assert "false rollback" in panel.readout.value
    panel.controls["psi_threshold"].value = 0.1
    panel.controls["fault"].value = "gain"


def test_the_rollback_line_is_drawn_at_the_rollback(panel):
    panel.controls["fault"].value = "missing_div16"
    ax = panel.figure.axes[0]
    red = [line for line in ax.lines if line.get_color() == "C3"]
    assert len(red) == 1 and red[0].get_xdata()[0] == pytest.approx(STREAM["onset"] + 2 + 0.5)
    panel.controls["fault"].value = "none"
    assert red[0].get_xdata()[0] != red[0].get_xdata()[0]  # NaN: no rollback, no line
    panel.controls["fault"].value = "gain"


def test_every_point_stays_inside_the_axes(panel):
    """Issue 15 item 5: nothing may leave the frame unmarked (accuracy floors at the axis, signals are clipped)."""
    ax_a, ax_s, _ = panel.figure.axes
    for fault in ("gain", "missing_div16", "fading", "class_mix", "none"):
        panel.controls["fault"].value = fault
        for ax in (ax_a, ax_s):
            low, high = ax.get_ylim()
            for line in ax.lines:
                if line.get_transform() != ax.transData:
                    continue  # the vertical marks (onset, canary, rollback) span the axes by design
                y = np.asarray(line.get_ydata(), dtype=float)
                y = y[np.isfinite(y)]
                assert y.size == 0 or (low <= y.min() and y.max() <= high), (fault, line.get_label())
    panel.controls["fault"].value = "gain"
