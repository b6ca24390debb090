"""Lessons 03-04's widgets, driven headless: they respond, cache, redraw identically, and say what they compute."""
from __future__ import annotations

import pytest
import torch

from qedu.calibration import record_activations
from qedu.data import load_digits
from qedu.models import evaluate, pretrained
from qedu.ptq import PTQConfig, quantize_model
from qedu.widgets.ptq import (
    calibrate_activations, calibration_explorer, calibration_images, ptq_explorer, ptq_result, with_corrupted_image,
)


@pytest.fixture(scope="module")
def data():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    # the lessons' model, in a cache shared by this session's test modules (trained once)
    return pretrained("mlp", seed=0, cache_dir=tmp_path_factory.getbasetemp() / "qedu-models")


def test_ptq_explorer_recomputes_caches_and_redraws_identically(mlp, data):
    panel = ptq_explorer(model=mlp, data=data)
    first = panel.figure.png
    assert panel.error is None and "W8A8 per-channel minmax" in panel.readout.value
    panel.controls["weight_bits"].value = 2
    expected = evaluate(quantize_model(mlp, PTQConfig(weight_bits=2, percentile=99.9), data.x_calib), data.x_test, data.y_test)
    assert f"test accuracy <b>{100 * expected:.1f} %</b>" in panel.readout.value
    assert panel.figure.png != first
    panel.controls["act_bits"].value = "none"
    assert "<b>W2 per-channel minmax</b>" in panel.readout.value
    panel.controls["keep_8bit"].value = "fc1 + fc3"
    assert "(overrides)" in panel.readout.value
    for name, value in [("keep_8bit", "none"), ("act_bits", 8), ("weight_bits", 8)]:
        panel.controls[name].value = value
    assert panel.figure.png == first  # moving back shows the very same picture
    assert panel.error is None and panel.last_update_ms < 1000  # cached: redraw only


def test_ptq_explorer_every_method_and_granularity(mlp, data):
    panel = ptq_explorer(model=mlp, data=data)
    for method in ("mse", "percentile", "minmax"):
        for granularity in ("per-tensor", "per-channel"):
            panel.controls["method"].value = method
            panel.controls["granularity"].value = granularity
            assert panel.error is None, panel.message.value
            assert "bytes" in panel.readout.value


def test_ptq_result_is_the_pipeline(mlp, data):
    config = PTQConfig(weight_bits=4, act_bits=4, act_method="percentile")
    r = ptq_result(mlp, data, config)
    q = quantize_model(mlp, config, data.x_calib)
    assert r.accuracy == evaluate(q, data.x_test, data.y_test)
    assert r.per_class.shape == (10,) and r.size.total_bytes == 10152  # codes, scales, biases and activation grids


def test_calibrate_activations_reports_the_observed_ranges(mlp, data):
    x = calibration_images(data, 32)
    r = calibrate_activations(mlp, x, data.x_test, data.y_test, "minmax", 8)
    acts = record_activations(mlp, x)  # the float model's; the observers saw those of the 8-bit-weight model
    assert r.ranges["fc1"] == (float(acts["fc1"].min()), float(acts["fc1"].max()))  # the pixels themselves
    for name in ("fc2", "fc3"):
        assert r.ranges[name][0] == 0.0 and abs(r.ranges[name][1] / float(acts[name].max()) - 1) < 0.01
    assert 0.9 < r.accuracy <= 1.0 and set(r.grids) == {"fc1", "fc2", "fc3"}
    clipped = calibrate_activations(mlp, x, data.x_test, data.y_test, "percentile", 8, percentile=99.0)
    assert clipped.ranges["fc3"][1] < r.ranges["fc3"][1]


def test_calibration_explorer_drives_every_control(mlp, data):
    panel = calibration_explorer(mlp, data)
    first = panel.figure.png
    assert panel.error is None and "A4 minmax, 256 calibration images" in panel.readout.value
    clean = panel.readout.value
    panel.controls["outlier"].value = True
    assert "one corrupted" in panel.readout.value and panel.readout.value != clean
    for name, value in [("n_calib", 8), ("method", "percentile"), ("percentile", 99.0), ("method", "mse"),
                        ("method", "kl"), ("bits", 3), ("layer", "fc3"), ("layer", "fc1")]:
        panel.controls[name].value = value
        assert panel.error is None, (name, value, panel.message.value)
    for name, value in [("layer", "fc2"), ("bits", 4), ("n_calib", 256), ("method", "minmax"), ("outlier", False)]:
        panel.controls[name].value = value
    assert panel.readout.value == clean and panel.figure.png == first


def test_with_corrupted_image_and_calibration_images_copy(data):
    x = data.x_calib[:4].clone()
    bad = with_corrupted_image(x, factor=3.0)
    assert torch.equal(bad[0], 3 * x[0]) and torch.equal(bad[1:], x[1:]) and torch.equal(x, data.x_calib[:4])
    assert torch.equal(calibration_images(data, len(data.x_calib)), data.x_calib)
    assert len(calibration_images(data, 10)) == 10


def test_calibration_explorer_disables_percentile_unless_it_is_the_method(mlp, data):
    """Issue 15 item 3: the percentile control silently did nothing for the other methods."""
    panel = calibration_explorer(mlp, data)
    for method in ("minmax", "mse", "kl"):
        panel.controls["method"].value = method
        assert panel.controls["percentile"].disabled and "percentile method only" in panel.hint.value
    panel.controls["method"].value = "percentile"
    assert not panel.controls["percentile"].disabled and panel.hint.value == ""
    panel.controls["n_calib"].value = 1
    assert "1 calibration image</b>" in panel.readout.value  # issue 15 item 9: not "1 calibration image(s)"


def test_calibration_explorer_writes_a_zero_clipping_error_on_its_bar(mlp, data):
    """Issue 15 item 5: a zero "clipping" bar was invisible on the log axis."""
    panel = calibration_explorer(mlp, data)  # min/max on clean images: no test value of fc2 beyond the range
    texts = [t.get_text() for t in panel.figure.axes[1].texts]
    assert "clipped 0.00 %" in panel.readout.value
    assert texts == ["0\n(none)", ""]  # clipping: none, written; rounding: a visible bar (its MSE in the readout)
    panel.controls["method"].value = "percentile"  # now some values are clipped: the bar shows its value
    clip = [t.get_text() for t in panel.figure.axes[1].texts][0]
    height = panel.figure.axes[1].patches[0].get_height()
    assert height > 0 and clip == ("" if height >= 1e-7 else f"{height:.1e}\n(below the axis)")


def test_ptq_explorer_disables_keep_8bit_where_it_does_nothing(mlp, data):
    """Issue 15 item 3: "keep 8-bit" did nothing at 8-bit weights."""
    panel = ptq_explorer(model=mlp, data=data)
    assert panel.controls["keep_8bit"].disabled and "already at 8 bits" in panel.hint.value
    panel.controls["act_bits"].value = 4  # 8-bit weights, 4-bit activations: keeping a layer at 8 bits matters
    assert not panel.controls["keep_8bit"].disabled
    panel.controls["act_bits"].value = "none"
    assert panel.controls["keep_8bit"].disabled
    panel.controls["weight_bits"].value = 4
    assert not panel.controls["keep_8bit"].disabled and panel.hint.value == ""
