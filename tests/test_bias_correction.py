"""qedu.bias_correction: the expected output shift of rounded weights is zero on the calibration data."""
import pytest
import torch

from qedu.bias_correction import _inputs, correct_bias, layer_output, output_shift
from qedu.granularity import PerTensor
from qedu.models import make_cnn, make_mlp
from qedu.ptq import PTQConfig, QuantLayer, fold_batchnorm, quantize_model

X = torch.rand(128, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _shifts(float_model, quantized, x):
    reference = fold_batchnorm(float_model)
    return {name: output_shift(reference.get_submodule(name), m, _inputs(quantized, m.layer, x))
            for name, m in quantized.named_modules() if isinstance(m, QuantLayer)}


@pytest.mark.parametrize("make", [make_mlp, make_cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("act_bits", [None, 8], ids=["W", "WA"])
def test_bias_correction_zeroes_the_expected_output_shift(make, act_bits):
    model = make(seed=0).eval()
    quantized = quantize_model(model, PTQConfig(weight_bits=3, weight_granularity=PerTensor(), act_bits=act_bits), X)
    before = _shifts(model, quantized, X)
    assert max(s.abs().max().item() for s in before.values()) > 1e-3  # rounding does shift the mean
    corrected = correct_bias(model, quantized, X)
    after = _shifts(model, corrected, X)
    for name, shift in after.items():
        scale = layer_output(fold_batchnorm(model).get_submodule(name), _inputs(corrected, corrected.get_submodule(name).layer, X),
                             fold_batchnorm(model).get_submodule(name).weight, None).abs().mean()
        assert shift.abs().max().item() <= 1e-5 * max(1.0, scale.item()), name
    # the weights are untouched, only biases move; the caller's quantized model is unchanged
    for name, m in corrected.named_modules():
        if isinstance(m, QuantLayer):
            assert torch.equal(m.layer.weight, quantized.get_submodule(name).layer.weight)
    assert _shifts(model, quantized, X).keys() == before.keys()
    assert all(torch.equal(_shifts(model, quantized, X)[k], before[k]) for k in before)


def test_layer_output_and_bad_input():
    lin = torch.nn.Linear(2, 1)
    assert torch.equal(layer_output(lin, torch.ones(1, 2), torch.tensor([[1.0, 2.0]]), None), torch.tensor([[3.0]]))
    with pytest.raises(TypeError, match="layer must be a Linear, Conv1d or Conv2d"):
        layer_output(torch.nn.ReLU(), torch.ones(1), torch.ones(1), None)
    model = make_mlp(seed=0)
    with pytest.raises(ValueError, match="quantized holds no QuantLayer"):
        correct_bias(model, model, X)
    with pytest.raises(TypeError, match="quantized must be a torch.nn.Module"):
        correct_bias(model, "q", X)
    q = quantize_model(make_cnn(seed=0), PTQConfig(weight_bits=4, act_bits=None))
    with pytest.raises(ValueError, match=r"float_model has no layer\(s\)"):
        correct_bias(model, q, X)
