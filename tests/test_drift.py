"""qedu.drift: PSI by hand, code histograms, the monitor's rule and its false-alarm rate."""
from __future__ import annotations

import math

import pytest
import torch

from qedu.data import load_digits
from qedu.drift import DriftMonitor, code_histogram, false_alarm_rate, psi
from qedu.models import make_mlp
from qedu.ptq import PTQConfig, quantize_model


def test_psi_hand_cases():
    assert psi([1, 1], [1, 1]) == 0.0
    assert psi([5, 5], [9, 1]) == pytest.approx(0.4 * math.log(1.8) + (-0.4) * math.log(0.2))
    assert psi([5, 5], [9, 1]) == pytest.approx(psi([9, 1], [5, 5]))  # symmetric
    assert psi([1, 0], [0, 1]) == pytest.approx(2 * (1 - 1e-4) * math.log(1 / 1e-4))  # empty bins floored


def test_code_histogram_counts_every_code_and_both_clipped_ends():
    x = torch.tensor([-0.2, 0.0, 0.04, 0.06, 0.3, 0.35, 5.0])  # codes -2, 0, 0, 1, 3, 4 and 50: 4 and 50 clip high
    h = code_histogram(x, 0.1, 0, 0, 3)
    assert h.tolist() == [1.0, 2.0, 1.0, 0.0, 1.0, 2.0] and h.sum() == len(x)


@pytest.fixture(scope="module")
def setup():
    data = load_digits(seed=0)
    q = quantize_model(make_mlp(seed=0), PTQConfig(weight_bits=8, act_bits=4), data.x_calib)
    return data, q


def test_monitor_is_silent_on_its_own_calibration_and_alarms_on_a_shift(setup):
    data, q = setup
    monitor = DriftMonitor(q, data.x_calib, threshold=0.1)
    same = monitor.check(data.x_calib)
    assert not same.alarm and max(same.psi.values()) == pytest.approx(0.0, abs=1e-12)
    shifted = monitor.check(data.x_test * 0.3)
    assert shifted.alarm and "ALARM" in shifted.summary() and set(shifted.alarms) <= set(shifted.psi)


def test_false_alarm_rate_counts_alarming_batches(setup):
    data, q = setup

    class Always:
        def check(self, x):
            return type("Report", (), {"alarm": len(x) > 0})()

    assert false_alarm_rate(Always(), data.x_test, batch_size=8, n_batches=5) == 1.0
    rate = false_alarm_rate(DriftMonitor(q, data.x_calib, threshold=0.1), data.x_test, batch_size=32, n_batches=20)
    assert rate == false_alarm_rate(DriftMonitor(q, data.x_calib, threshold=0.1), data.x_test, batch_size=32, n_batches=20)


@pytest.mark.parametrize("call, error, fragment", [
    (lambda q, d: psi([1, 2], [1, 2, 3]), ValueError, "same bins"),
    (lambda q, d: psi([0, 0], [1, 1]), ValueError, "positive total"),
    (lambda q, d: DriftMonitor(q, d.x_calib, threshold=0), ValueError, "threshold"),
    (lambda q, d: DriftMonitor(make_mlp(seed=0), d.x_calib), TypeError, "quantize_model"),
    (lambda q, d: false_alarm_rate(object(), d.x_test), TypeError, "check"),
    (lambda q, d: false_alarm_rate(DriftMonitor(q, d.x_calib), d.x_test, batch_size=1000), ValueError, "batch_size"),
])
def test_bad_input_is_a_clear_error(setup, call, error, fragment):
    data, q = setup
    with pytest.raises(error, match=fragment):
        call(q, data)
