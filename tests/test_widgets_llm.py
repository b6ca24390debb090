"""Lesson 10's widget, driven headless on a small random TinyGPT: it computes, caches, redraws and reports."""
import pytest
import torch

from qedu.lm_eval import LMEvaluator
from qedu.llm_quant import quantize_tinylm
from qedu.models import TinyGPT
from qedu.widgets.llm import evaluation_batch, llm_explorer, llm_result, model_bits_per_weight


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyGPT(256, 128, 128, 1, 4).eval()


def test_result_matches_quantizing_by_hand(model):
    ev = LMEvaluator(model, *evaluation_batch(2))
    r = llm_result(model, ev, "rtn", 4, 64, 4)
    quantized, errors = quantize_tinylm(model, "rtn", bits=4, group_size=64, n_calib=4)
    assert r.scores == ev.score(quantized) and r.layer_errors == errors
    assert r.scores.kl > 0 and r.bits_per_weight == pytest.approx(4 + 16 / 64 + 4 / 64)


def test_bits_per_weight_weights_layers_by_size(model):
    # per channel, asymmetric: 4 + 20 / in_features per layer; fc2 has 4x the inputs
    bpw = model_bits_per_weight(model, 4, None)
    sizes = {"qkv": (384, 128), "proj": (128, 128), "fc1": (512, 128), "fc2": (128, 512)}
    expected = sum(o * i * (4 + 20 / i) for o, i in sizes.values()) / sum(o * i for o, i in sizes.values())
    assert bpw == pytest.approx(expected)


def test_widget_computes_caches_and_redraws_identically(model):
    panel = llm_explorer(model, n_windows=2, methods=["rtn"])
    assert panel.error is None and "perplexity" in panel.readout.value and panel.busy.value == ""
    first, text = panel.figure.png, panel.readout.value
    panel.controls["bits"].value = 3
    assert panel.error is None and "3 bits" in panel.readout.value and panel.figure.png != first
    assert len(panel.cache) == 2
    panel.controls["bits"].value = 4
    assert panel.figure.png == first and panel.readout.value == text and len(panel.cache) == 2


def test_widget_shows_errors_inside(model):
    panel = llm_explorer(model, n_windows=2, methods=["rtn", "no-such-method"])
    panel.controls["method"].value = "no-such-method"
    assert panel.error is not None and "method" in panel.message.value and panel.busy.value == ""


def test_nf4_ignores_bits_and_group_size(model):
    panel = llm_explorer(model, n_windows=2, methods=["rtn", "nf4"])
    panel.controls["method"].value = "nf4"
    assert panel.error is None and "NF4, blocks of 64" in panel.readout.value and "4.127 bits/weight" in panel.readout.value
    n = len(panel.cache)
    panel.controls["bits"].value = 3
    panel.controls["group_size"].value = "32"
    assert len(panel.cache) == n and "NF4, blocks of 64" in panel.readout.value
