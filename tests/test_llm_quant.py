"""Tests for qedu.llm_quant: block-by-block quantization of a TinyGPT with any per-layer method."""
import copy

import pytest
import torch
from torch import nn

from qedu.llm_quant import calibration_tokens, layer_inputs, layer_method, linear_layers, quantize_model
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


def test_registered_methods_do_what_their_modules_do(model):
    from qedu.llm_int8 import Int8Linear
    from qedu.llm_quant import layer_method
    from qedu.nf4 import nf4_fake_quantize
    from qedu.rtn import rtn_quantize

    calib = torch.randint(0, 16, (2, 8))
    nf4, _ = quantize_model(model, layer_method("nf4", block_size=32), calib)
    assert torch.equal(nf4.blocks[1].fc2.weight, nf4_fake_quantize(model.blocks[1].fc2.weight.detach(), block_size=32))
    rtn, _ = quantize_model(model, layer_method("rtn", bits=3, group_size=16), calib)
    assert torch.equal(rtn.blocks[0].qkv.weight, rtn_quantize(model.blocks[0].qkv.weight.detach(), 3, 16))
    int8, _ = quantize_model(model, layer_method("llm_int8"), calib)
    assert isinstance(int8.blocks[0].fc1, Int8Linear) and int8.blocks[0].fc1.threshold == 6.0
    plain, _ = quantize_model(model, layer_method("int8"), calib)
    assert plain.blocks[0].fc1.threshold == 0.0
    with pytest.raises(ValueError, match="name must be one of"):
        layer_method("awq8")


def test_awq_and_smoothquant_through_the_pipeline(model):
    from qedu.awq import awq_linear
    from qedu.llm_quant import quantize_tinylm
    from qedu.smoothquant import W8A8Linear, smooth_model

    calib = calibration_tokens(2, seed=0, seq_len=8) % 16
    awq, _ = quantize_model(model, layer_method("awq", bits=3, group_size=16), calib)
    x0 = layer_inputs(model, "blocks.0.qkv", calib)  # block 0 sees float inputs
    assert torch.equal(awq.blocks[0].qkv.weight, awq_linear(model.blocks[0].qkv, x0, bits=3, group_size=16).weight)

    big = TinyGPT(256, 128, 128, 1, 4).eval()
    sq, errors = quantize_tinylm(big, "smoothquant", n_calib=2, seed=0, alpha=0.5)
    assert all(isinstance(getattr(sq.blocks[0], n), W8A8Linear) for n in ("qkv", "proj", "fc1", "fc2"))
    smoothed = smooth_model(big, calibration_tokens(2, seed=0), alpha=0.5)
    assert torch.equal(sq.blocks[0].ln1.weight, smoothed.blocks[0].ln1.weight)
    assert all(0 < e < 0.05 for e in errors.values())
