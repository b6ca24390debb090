"""Tests for qedu/widgets/formats.py: the format explorer, driven headless."""
import pytest
import torch

from qedu.formats import BF16, FP8_E4M3, FP16, cast
from qedu.widgets.formats import format_explorer, model_tensors, tensor_regions


def panel_x():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4000, generator=g) * 0.05  # weight-like values


@pytest.fixture(scope="module")
def panel():
    return format_explorer(panel_x(), name="weights")


def state(panel):
    return panel.readout.value, panel.figure.png


# (control, new value, value to go back to); custom controls first switch the preset to "custom".
MOVES = [("preset", "FP8_E4M3", "FP16"), ("preset", "FP4_E2M1", "FP16"), ("preset", "FP32", "FP16"),
         ("scale_log2", 10, 0), ("scale_log2", -12, 0), ("axis", "linear", "log"),
         ("exp_bits", 3, 4), ("man_bits", 2, 3), ("special", "none", "fn")]


@pytest.mark.parametrize("control, new, old", MOVES, ids=[f"{c}={n}" for c, n, _ in MOVES])
def test_each_control_changes_the_picture_and_moving_back_restores_it(panel, control, new, old):
    if control in ("exp_bits", "man_bits", "special"):
        panel.controls["preset"].value = "custom"
    else:
        panel.controls["preset"].value = "FP16"
    before = state(panel)
    panel.controls[control].value = new
    assert panel.message.value == "" and panel.error is None
    assert panel.readout.value != before[0] or control == "axis"  # the axis only changes the picture
    assert panel.figure.png != before[1]
    panel.controls[control].value = old
    assert state(panel) == before  # byte-identical PNG and the same numbers


def test_moving_a_custom_control_switches_to_custom(panel):
    panel.controls["preset"].value = "FP16"
    panel.controls["man_bits"].value = 5
    assert panel.controls["preset"].value == "custom"
    assert "fp10_e4m5_fn" in panel.readout.value
    panel.controls["man_bits"].value = 3


def test_invalid_custom_format_shows_a_message_not_an_exception(panel):
    panel.controls["preset"].value = "custom"
    good = state(panel)
    panel.controls["exp_bits"].value = 1
    panel.controls["special"].value = "ieee"  # e1 with inf/NaN has no normal numbers
    assert "special=&#x27;ieee&#x27; needs exp_bits &gt;= 2" in panel.message.value
    assert isinstance(panel.error, ValueError)
    panel.controls["special"].value = "fn"
    panel.controls["exp_bits"].value = 4
    assert panel.message.value == "" and state(panel) == good


def test_readout_reports_the_tensor_regions(panel):
    panel.controls["preset"].value = "FP8_E4M3"
    panel.controls["scale_log2"].value = 4
    x = torch.randn(4000, generator=torch.Generator().manual_seed(0)) * 0.05 * 16
    r = tensor_regions(x, FP8_E4M3)
    text = panel.readout.value
    assert f"overflow {100 * r['overflow']:.2f} %" in text and f"flushed to zero {100 * r['zero']:.2f} %" in text
    assert "fp8_e4m3fn" in text and "max 448" in text
    assert panel.last_update_ms > 0
    panel.controls["scale_log2"].value = 0
    panel.controls["preset"].value = "FP16"


def test_tensor_regions_by_hand():
    x = torch.tensor([1e-9, -1e-6, 1.0, 1e6, 0.0])  # the zero is ignored
    r = tensor_regions(x, FP16)
    assert (r["overflow"], r["zero"], r["subnormal"]) == (0.25, 0.25, 0.25)
    # relative errors of the finite casts: 1 (flushed), that of the subnormal -1e-6, 0 (1.0): the median is the middle one
    x_sub = torch.tensor([-1e-6])
    assert r["median_rel_error"] == float((cast(x_sub, FP16) - x_sub).abs() / x_sub.abs())


def test_default_tensors_are_the_trained_mlp():
    tensors = model_tensors()
    assert list(tensors) == ["MLP weights", "MLP gradients"]
    assert tensors["MLP weights"].numel() == tensors["MLP gradients"].numel() == 17_226
    assert tensors["MLP gradients"].abs().median() < tensors["MLP weights"].abs().median()
    # lesson 01's claim: gradients / 2**16 mostly flush to zero in fp16, never in bf16
    small = tensors["MLP gradients"] * 2.0**-16
    assert tensor_regions(small, FP16)["zero"] > 0.5 and tensor_regions(small, BF16)["zero"] == 0.0
    panel = format_explorer()
    panel.controls["tensor"].value = "MLP gradients"
    assert "MLP gradients" in panel.readout.value and panel.message.value == ""


def test_bad_x_is_refused():
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        format_explorer(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="w has no non-zero values"):
        format_explorer(torch.zeros(3), name="w")
    assert format_explorer(torch.ones(3)).message.value == ""  # a single value is fine


def test_the_picture_depends_only_on_the_controls_not_on_the_path(panel):
    """The explorer redraws only the strips a move changes: any path to the same values gives the same PNG."""
    target = {"preset": "FP8_E5M2", "scale_log2": -6, "axis": "linear"}
    for name, value in (("scale_log2", 9), ("preset", "BF16"), ("axis", "linear"), ("preset", "FP8_E5M2"),
                        ("scale_log2", -6)):
        panel.controls[name].value = value
    via_path = state(panel)
    fresh = format_explorer(panel_x(), name="weights")
    for name, value in target.items():
        fresh.controls[name].value = value
    assert state(fresh) == via_path
    for name, value in (("preset", "FP16"), ("scale_log2", 0), ("axis", "log")):
        panel.controls[name].value = value


def test_a_scale_move_redraws_only_the_histogram(panel):
    top, bottom = (f.canvas for f in panel.figure.figures)
    calls = []
    top.draw = lambda draw=top.draw: (calls.append("top"), draw())
    bottom.draw = lambda draw=bottom.draw: (calls.append("bottom"), draw())
    try:
        panel.controls["scale_log2"].value = 3
        panel.controls["scale_log2"].value = 0
    finally:
        del top.draw, bottom.draw  # back to the class's draw
    assert calls == ["bottom", "bottom"]
