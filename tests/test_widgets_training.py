"""Tests for qedu/widgets/training.py: the mixed-precision lab and the memory planner, driven headless."""
import dataclasses
import math

import pytest
import torch

from qedu.data import load_digits
from qedu.floats import FP16, cast
from qedu.memory import RECIPES, gpt_param_count, training_memory, transformer_activation_bytes
from qedu.models import make_mlp
from qedu.widgets.training import MODEL_PRESETS, format_regions, gradient_magnitudes, memory_planner, memory_table, mixed_precision_lab


@pytest.fixture(scope="module")
def small_data():
    data = load_digits(seed=0)
    return dataclasses.replace(data, x_train=data.x_train[:256], y_train=data.y_train[:256])


@pytest.fixture(scope="module")
def lab(small_data):
    return mixed_precision_lab(data=small_data, epochs=2)


def state(panel):
    return panel.readout.value, panel.figure.png


LAB_MOVES = [("fmt", "bf16", "fp16"), ("fmt", "fp8 e5m2", "fp16"), ("k", 0, 16), ("loss_scale", "dynamic", "none"),
             ("loss_scale", "2^24", "none"), ("master_weights", False, True)]


@pytest.mark.parametrize("control, new, old", LAB_MOVES, ids=[f"{c}={n}" for c, n, _ in LAB_MOVES])
def test_lab_controls_change_the_picture_and_moving_back_restores_it(lab, control, new, old):
    before = state(lab)
    lab.controls[control].value = new
    assert lab.message.value == "" and lab.error is None
    assert lab.readout.value != before[0]
    assert lab.figure.png != before[1] or control == "master_weights"
    lab.controls[control].value = old
    assert state(lab) == before


def test_lab_readout_reports_the_underflow_the_library_counts(lab):
    lab.controls["fmt"].value, lab.controls["k"].value, lab.controls["loss_scale"].value = "fp16", 24, "none"
    assert "of nonzero gradients flushed to zero" in lab.readout.value
    lost = float(lab.readout.value.split("master weights on: ")[1].split(" %")[0])
    assert lost > 50  # loss / 2**24: most fp16 gradients vanish
    lab.controls["k"].value = 16


def test_gradient_sample_and_regions(small_data):
    sample = gradient_magnitudes(make_mlp(seed=0), small_data, n_batches=2)
    assert sample.ndim == 1 and bool(torch.isfinite(sample).all()) and len(sample) > 10_000
    regions = format_regions(FP16)
    # values in the underflow region round to 0 in fp16, subnormal ones stay nonzero
    under = torch.exp2(torch.tensor([regions["underflow"][1] - 0.1]))
    sub = torch.exp2(torch.tensor([regions["subnormal"][1] - 1.0]))
    assert cast(under, FP16).item() == 0 and cast(sub, FP16).item() != 0


@pytest.fixture(scope="module")
def planner():
    return memory_planner()


PLANNER_MOVES = [("model", "6.7B (GPT-3 shape)", "GPT-2 XL (1.6B)"), ("batch", 32, 8), ("seq_len", 4096, 1024),
                 ("recipe", "bf16_pure", "mixed"), ("gpu", "24 GiB (RTX 4090)", "80 GiB (A100/H100)")]


@pytest.mark.parametrize("control, new, old", PLANNER_MOVES, ids=[f"{c}={n}" for c, n, _ in PLANNER_MOVES])
def test_planner_controls_change_the_picture_and_moving_back_restores_it(planner, control, new, old):
    before = state(planner)
    planner.controls[control].value = new
    assert planner.message.value == "" and planner.error is None
    assert planner.readout.value != before[0] and planner.figure.png != before[1]
    planner.controls[control].value = old
    assert state(planner) == before


def test_planner_picture_depends_only_on_the_controls(planner):
    """The planner blits its moving parts over a cached background: any path to the same values gives the same PNG."""
    for name, value in (("gpu", "24 GiB (RTX 4090)"), ("model", "6.7B (GPT-3 shape)"), ("recipe", "fp8"), ("batch", 2)):
        planner.controls[name].value = value
    fresh = memory_planner()
    for name in ("batch", "recipe", "model", "gpu"):
        fresh.controls[name].value = planner.controls[name].value
    assert state(fresh) == state(planner)
    for name, value in (("gpu", "80 GiB (A100/H100)"), ("model", "GPT-2 XL (1.6B)"), ("recipe", "mixed"), ("batch", 8)):
        planner.controls[name].value = value


def test_memory_table_is_the_library_formula():
    L, h, a, V = MODEL_PRESETS["GPT-2 small (124M)"]
    n = gpt_param_count(L, h, V, 1024)
    table = memory_table("GPT-2 small (124M)", 4, 1024)
    for name, recipe in RECIPES.items():
        expected = training_memory(n, name).as_dict()
        expected["activations"] = transformer_activation_bytes(L, h, 1024, 4, a, recipe.activation)
        assert table[name] == pytest.approx({k: v / 2**30 for k, v in expected.items()})
    assert math.isclose(table["fp32"]["weights"] * 2**30, 4 * n)


def test_planner_recompute_control_shrinks_activations_only():
    panel = memory_planner()
    readout = {}
    for mode in ("none", "selective", "full"):
        panel.controls["recompute"].value = mode
        assert panel.error is None and panel.message.value == ""
        readout[mode] = panel.readout.value
    assert "recomputation adds" in readout["full"] and "recomputation adds" not in readout["none"]
    L, h, a, _V = MODEL_PRESETS["GPT-2 XL (1.6B)"]

    def activations_gib(mode):
        return transformer_activation_bytes(L, h, 1024, 8, a, RECIPES["mixed"].activation, recompute=mode) / 2**30

    for mode in ("none", "selective", "full"):
        assert f"activations {activations_gib(mode):.1f}" in readout[mode]
    assert activations_gib("full") < activations_gib("selective") < activations_gib("none")
    panel.controls["recompute"].value = "none"


def test_lab_fp32_draws_no_region_at_all(lab):
    """Issue 15 item 7: fp32 showed an unexplained red line at log2 = 0 (an empty underflow span's edge)."""
    spans = [p for p in lab.figure.axes[0].patches if p.get_label() in ("underflow", "subnormal", "overflow")]
    assert len(spans) == 3
    lab.controls["fmt"].value = "fp32"
    assert not any(span.get_visible() for span in spans)
    lab.controls["fmt"].value = "fp16"
    assert all(span.get_visible() for span in spans if span.get_label() != "overflow") and spans[0].get_width() > 0


def test_lab_refuses_a_divisor_it_does_not_offer(lab):
    """Issue 20: k=±200 was accepted and showed "0.0 % flushed" over a NaN histogram."""
    k = lab.controls["k"]
    original = k.options
    k.options = (*original, 200)
    try:
        k.value = 200
        assert isinstance(lab.error, ValueError) and "k=200 is not one of" in lab.message.value
        assert not lab.current and "Not current" in lab.readout.value
    finally:
        k.options = original
        k.value = 16
    assert lab.current and "nan" not in lab.readout.value.lower()


def test_lab_first_visit_shows_the_busy_sign(lab):
    """Issue 15 item 7: first visits lag 1-2 s (a short training run) with no busy sign."""
    from qedu.widgets import BUSY_HTML

    seen = []
    lab.busy.observe(lambda change: seen.append(change["new"]), names="value")
    lab.controls["loss_scale"].value = "2^8"  # not cached yet: trains before it draws
    assert seen == [BUSY_HTML, ""] and lab.busy.value == ""
    lab.controls["loss_scale"].value = "none"


def test_planner_small_parts_keep_a_visible_size(planner):
    """Issue 15 item 5: at 70B or sequence 8192 the small components were squeezed to nothing."""
    _, ax_parts = planner.figure.axes
    planner.controls["model"].value = "70B-class"
    planner.controls["seq_len"].value = 8192
    table = memory_table("70B-class", 8, 8192)["mixed"]
    lo, hi = ax_parts.get_xlim()
    bars = ax_parts.patches[:5]
    for bar, text, kind in zip(bars, ax_parts.texts, ("weights", "grads", "master", "optimizer", "activations")):
        assert bar.get_visible() and lo < bar.get_width() < hi and text.get_text() == ""
        assert f"{kind} {table[kind]:.1f}" in planner.readout.value
    # the smallest part is under 1 % of the stacked bar, but at least a tenth of the log axis here
    assert table["weights"] / sum(table.values()) < 0.01
    assert math.log(bars[0].get_width() / lo) / math.log(hi / lo) > 0.1
    planner.controls["recipe"].value = "fp32"  # fp32 keeps no master copy: no bar, a "0"
    assert not bars[2].get_visible() and ax_parts.texts[2].get_text() == "0"
    for name, value in (("recipe", "mixed"), ("seq_len", 1024), ("model", "GPT-2 XL (1.6B)")):
        planner.controls[name].value = value


def test_lesson_06_benchmark_tables_say_where_and_keep_the_lessons_headings_largest():
    """Issue 15 item 7: embedded tables brought H1 headings, an always-empty column, a footnote three
    times, and "on this machine" over a file measured elsewhere."""
    from qedu.results import load_results
    from qedu.widgets.training import mixed_precision_results

    cpu = mixed_precision_results("mixed_precision_cpu")
    gpu = mixed_precision_results("mixed_precision_cuda", "mixed_precision_cuda_fused", footnote=False)
    both = cpu + "\n" + gpu
    assert not any(line.lstrip().startswith("#") for line in both.splitlines())
    assert both.count("above 1 means faster") == 1
    for name in ("mixed_precision_cpu", "mixed_precision_cuda", "mixed_precision_cuda_fused"):
        assert f"**Measured on {load_results(name)['environment']['device_name']}**" in both
    for table in (cpu, gpu):  # every column of every table holds something in some row
        rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| ") and "recipe" not in line]
        for column in zip(*rows):
            assert any(cell.strip() not in ("", "-") for cell in column)
    assert "note" not in gpu and "note" in cpu  # the CUDA runs have no notes: no note column


def test_planner_parts_axis_holds_every_setting_the_controls_offer():
    """The parts axis is fixed (no redraw of its ticks on every move): every non-zero part of every
    setting the controls offer must lie inside it."""
    from qedu.memory import RECIPES, transformer_activation_bytes

    planner = memory_planner()
    c = planner.controls
    lo, hi = planner.figure.axes[1].get_xlim()
    sizes = []
    for model in c["model"].options:
        L, h, a, _ = MODEL_PRESETS[model]
        for batch in c["batch"].options:
            for seq_len in c["seq_len"].options:
                table = memory_table(model, batch, seq_len)
                for recompute in c["recompute"].options:
                    for name, recipe in RECIPES.items():
                        row = dict(table[name])
                        if recompute != "none":
                            row["activations"] = transformer_activation_bytes(
                                L, h, seq_len, batch, a, recipe.activation, recompute=recompute) / 2**30
                        sizes += [v for v in row.values() if v > 0]
    assert lo <= min(sizes) and max(sizes) * 1.15 <= hi
