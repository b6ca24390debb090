"""Tests for qedu.llm_quant: block-by-block quantization of a TinyGPT with any per-layer method."""
import copy

import pytest
import torch
from torch import nn

from qedu.llm_quant import calibration_tokens, layer_inputs, linear_layers, quantize_model
from qedu.models import TinyGPT
from qedu.text import load_text


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyGPT(16, 8, 32, 2, 4).eval()


def _round_weights(step):
    def method(layer, x):
        with torch.no_grad():
            layer.weight.copy_(torch.round(layer.weight / step) * step)
        return layer
    return method


def test_identity_method_gives_the_same_model_and_zero_errors(model):
    calib = torch.randint(0, 16, (3, 8))
    same, errors = quantize_model(model, lambda layer, x: layer, calib)
    assert list(errors) == linear_layers(model) and set(errors.values()) == {0.0}
    idx = torch.randint(0, 16, (2, 8))
    assert torch.equal(same(idx), model(idx))


def test_the_original_model_is_untouched(model):
    before = copy.deepcopy(model.state_dict())
    quantized, errors = quantize_model(model, _round_weights(0.05), torch.randint(0, 16, (3, 8)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(e > 0 for e in errors.values())
    assert not torch.equal(quantized.blocks[0].qkv.weight, model.blocks[0].qkv.weight)
    assert all(not m._forward_pre_hooks for m in quantized.modules())


def test_layers_see_the_outputs_of_the_already_quantized_blocks(model):
    """Block 1's layers are calibrated on what quantized block 0 outputs (GPTQ's sequential order)."""
    calib = torch.randint(0, 16, (3, 8))
    seen = {}

    def method(layer, x):
        seen.setdefault(len(seen), x.clone())
        return _round_weights(0.1)(layer, x)

    quantized, _ = quantize_model(model, method, calib)
    with torch.no_grad():
        h = model.tok(calib) + model.pos(torch.arange(8))
        h = quantized.blocks[0](h)  # quantized block 0
        expected = quantized.blocks[1].ln1(h).reshape(-1, 32)  # the qkv input of block 1
    assert torch.allclose(seen[4], expected, atol=1e-6)


def test_relative_error_by_hand(model):
    calib = torch.randint(0, 16, (2, 8))
    captured = {}

    def method(layer, x):
        captured.setdefault("x", x)
        return _round_weights(0.1)(layer, x)

    quantized, errors = quantize_model(model, method, calib)
    x, ref, new = captured["x"], model.blocks[0].qkv, quantized.blocks[0].qkv
    with torch.no_grad():
        expected = float((ref(x) - new(x)).pow(2).sum() / ref(x).pow(2).sum())
    assert errors["blocks.0.qkv"] == pytest.approx(expected, rel=1e-6)


def test_calibration_comes_from_the_training_split():
    calib = calibration_tokens(4, seed=3)
    train = load_text().train
    assert torch.equal(calib, calibration_tokens(4, seed=3)) and not torch.equal(calib, calibration_tokens(4, seed=4))
    first = calib[0].tolist()
    starts = (train[: len(train) - 128] == first[0]).nonzero().flatten().tolist()
    assert any(train[s : s + 128].tolist() == first for s in starts)


def test_layer_inputs_by_hand(model):
    idx = torch.randint(0, 16, (2, 8))
    x = layer_inputs(model, "blocks.1.qkv", idx)
    with torch.no_grad():
        h = model.blocks[0](model.tok(idx) + model.pos(torch.arange(8)))
    assert torch.allclose(x, model.blocks[1].ln1(h).reshape(-1, 32), atol=1e-6)
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError, match="no layer 'blocks.9.qkv'"):
        layer_inputs(model, "blocks.9.qkv", idx)


@pytest.mark.parametrize("call, error, match", [
    (lambda m: quantize_model(nn.Linear(2, 2), lambda l, x: l, torch.zeros(1, 2, dtype=torch.long)), TypeError, "TinyGPT"),
    (lambda m: quantize_model(m, "rtn", torch.zeros(1, 2, dtype=torch.long)), TypeError, "method must be a function"),
    (lambda m: quantize_model(m, lambda l, x: l, torch.zeros(1, 2)), TypeError, "calib must be a 2-D integer"),
    (lambda m: quantize_model(m, lambda l, x: l.weight, torch.zeros(1, 2, dtype=torch.long)), TypeError, "must return a module"),
    (lambda m: calibration_tokens(0), ValueError, "n_sequences"),
], ids=["not-gpt", "method", "calib", "returns-tensor", "n"])
def test_bad_input(model, call, error, match):
    with pytest.raises(error, match=match):
        call(model)
