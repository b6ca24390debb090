"""Tests for qedu/widgets/formats.py: the format explorer, driven headless."""
import pytest
import torch

from qedu.formats import BF16, FP8_E4M3, FP16, FloatFormat, cast
from qedu.widgets.formats import PRESETS, format_explorer, model_tensors, tensor_regions


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
         ("exp_bits", 3, 5), ("man_bits", 2, 10), ("special", "none", "ieee")]


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


@pytest.mark.parametrize("preset", [k for k in PRESETS if k != "custom"])
def test_a_named_format_sets_the_three_controls_to_its_fields(panel, preset):
    """Issue 15 item 2: with FP16 chosen the sliders said e4m3fn's fields."""
    panel.controls["preset"].value = "FP16" if preset != "FP16" else "BF16"
    panel.controls["preset"].value = preset
    fmt = PRESETS[preset]
    c = panel.controls
    assert (c["exp_bits"].value, c["man_bits"].value, c["special"].value) == (fmt.exp_bits, fmt.man_bits, fmt.special)
    assert c["preset"].value == preset  # setting the fields did not switch to custom
    assert f"<b>{fmt.name}</b> ({preset})" in panel.readout.value and panel.current
    panel.controls["preset"].value = "FP16"


def test_moving_a_field_switches_to_custom_and_says_so(panel):
    panel.controls["preset"].value = "FP16"
    n = panel.n_updates
    panel.controls["man_bits"].value = 5
    assert panel.n_updates == n + 1  # one update, not one per observer
    assert panel.controls["preset"].value == "custom"
    assert "fp11_e5m5_ieee" in panel.readout.value
    assert "switched from FP16 when you moved <i>man bits</i>" in panel.readout.value
    panel.controls["preset"].value = "FP8_E4M3"
    panel.controls["special"].value = "none"
    assert "switched from FP8_E4M3 when you moved <i>special</i>" in panel.readout.value
    assert "fp8_e4m3_none" in panel.readout.value
    panel.controls["preset"].value = "FP16"
    assert "(FP16)" in panel.readout.value and "custom" not in panel.readout.value.split("<br>")[0]


def test_every_setting_the_custom_controls_offer_is_a_valid_format(panel):
    """Issue 15 item 1: exp bits 8 gave "choose a bias in 128..147" (there is no bias control).
    Now the exp bits slider offers only widths that make a valid format with the chosen special."""
    c = panel.controls
    panel.controls["preset"].value = "custom"
    for special in ("ieee", "fn", "none"):
        c["special"].value = special
        for exp_bits in range(c["exp_bits"].min, c["exp_bits"].max + 1):
            for man_bits in range(c["man_bits"].min, c["man_bits"].max + 1):
                FloatFormat(exp_bits, man_bits, special)  # raises if any offered setting were invalid
        for exp_bits in (c["exp_bits"].min, c["exp_bits"].max):  # the widget itself, at the extremes
            c["exp_bits"].value = exp_bits
            for man_bits in (1, 23):
                c["man_bits"].value = man_bits
                assert panel.current and panel.error is None, panel.message.value
    assert (c["special"].value, c["exp_bits"].max) == ("none", 7)
    c["special"].value = "ieee"
    assert (c["exp_bits"].min, c["exp_bits"].max) == (2, 8)
    panel.controls["preset"].value = "FP16"


def test_a_special_that_cannot_hold_the_exponent_clamps_it(panel):
    panel.controls["preset"].value = "FP32"
    assert panel.controls["exp_bits"].value == 8
    panel.controls["special"].value = "fn"  # e8 with only NaN reserved would reach 2^128: beyond float32
    assert panel.controls["exp_bits"].value == 7 and panel.controls["exp_bits"].max == 7
    assert panel.current and panel.error is None
    assert "fp31_e7m23_fn" in panel.readout.value and "moved <i>special</i>" in panel.readout.value
    panel.controls["preset"].value = "FP16"


def test_linear_number_line_applies_to_both_plots_and_labels_do_not_overlap(panel):
    """Issue 15 item 9: on the linear axis "min subnormal" and "min normal" sat on top of each other,
    and the histogram below stayed logarithmic."""
    ax_err, ax_hist = (f.axes[0] for f in panel.figure.figures)
    panel.controls["axis"].value = "linear"
    assert ax_err.get_xscale() == ax_hist.get_xscale() == "linear"
    labels = [t.get_text() for t in ax_err.texts if t.get_text()]
    assert " min subnormal, min normal: at ~0 here" in labels and " min subnormal" not in labels
    panel.controls["axis"].value = "log"
    assert ax_hist.get_xscale() == "log"
    assert {" min subnormal", " min normal"} <= {t.get_text() for t in ax_err.texts}


def test_values_scaled_below_float32_count_as_flushed():
    """Issue 20: scale_log2=-200 reported "flushed to zero 0.00 %" though every value became 0."""
    x = torch.tensor([1.0, -0.5, 3e-3, 0.0])
    r = tensor_regions(x, FP16, scale_log2=-200)
    assert (r["zero"], r["overflow"]) == (1.0, 0.0)
    assert tensor_regions(x, BF16, scale_log2=200)["overflow"] == 1.0
    # the same numbers as scaling first, whenever float32 holds the scaled values
    assert tensor_regions(x, FP16, scale_log2=-20) == tensor_regions(x * 2.0**-20, FP16)
    with pytest.raises(TypeError, match="scale_log2"):
        tensor_regions(x, FP16, scale_log2=0.5)


def test_the_scale_slider_cannot_leave_its_range(panel):
    panel.controls["scale_log2"].value = -200  # ipywidgets clamps to the slider's range
    assert panel.controls["scale_log2"].value == -24 and panel.current
    x = torch.randn(4000, generator=torch.Generator().manual_seed(0)) * 0.05
    assert f"flushed to zero {100 * tensor_regions(x, FP16, -24)['zero']:.2f} %" in panel.readout.value
    panel.controls["scale_log2"].value = 0


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
    assert r["median_rel_error"] == float((cast(x_sub, FP16).double() - x_sub.double()).abs() / x_sub.double().abs())


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
