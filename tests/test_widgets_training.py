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
