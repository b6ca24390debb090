"""qedu.layerwise: per-layer inputs, sequential quantization of a copy, module replacement."""
import pytest
import torch
from torch import nn

from qedu.gptq import gptq_quantize
from qedu.layerwise import linear_inputs, linear_names, quantize_linears, replace_linears
from qedu.models import TinyGPT


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def test_linear_inputs_are_the_real_inputs():
    model, x = _mlp(), torch.randn(10, 6)
    xs = linear_inputs(model, x)
    assert list(xs) == ["0", "2", "4"]
    assert torch.equal(xs["0"], x)
    assert torch.allclose(xs["2"], torch.relu(model[0](x)))
    assert torch.allclose(xs["4"], torch.relu(model[2](torch.relu(model[0](x)))))


def test_sequential_feeds_each_layer_the_quantized_predecessors_output():
    model, x = _mlp(), torch.randn(32, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def round_to_tenths(w, xin):
        seen.append(xin.clone())
        return torch.round(w * 10) / 10

    q = quantize_linears(model, x, round_to_tenths, sequential=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # caller untouched
    assert torch.allclose(seen[1], torch.relu(q[0](x)))  # layer 2 saw the *quantized* layer 0's output
    assert not torch.allclose(seen[1], torch.relu(model[0](x)))
    for i in (0, 2, 4):
        assert torch.equal(q[i].weight, torch.round(model[i].weight * 10) / 10)
    seen.clear()
    quantize_linears(model, x, round_to_tenths, sequential=False)
    assert torch.allclose(seen[1], torch.relu(model[0](x)))  # one pass of the float model


def test_sequential_gptq_on_a_tiny_gpt_beats_rtn_on_the_logits():
    torch.manual_seed(0)
    model = TinyGPT(vocab_size=32, seq_len=16, hidden=32, n_layers=2, n_heads=2).eval()
    tokens = torch.randint(0, 32, (8, 16), generator=torch.Generator().manual_seed(0))
    from qedu.rtn import rtn_quantize
    gptq = quantize_linears(model, tokens, lambda w, x: gptq_quantize(w, x, bits=3, group_size=None).weight)
    rtn = quantize_linears(model, tokens, lambda w, x: rtn_quantize(w, 3, None))
    with torch.no_grad():
        ref = model(tokens)
        assert ((gptq(tokens) - ref) ** 2).mean() < ((rtn(tokens) - ref) ** 2).mean()
    assert len(linear_names(model)) == 8


def test_replace_linears_builds_new_modules_on_a_copy():
    model = _mlp()
    q = replace_linears(model, lambda lin: nn.Linear(lin.in_features, lin.out_features, bias=False), names=["2"])
    assert q[2].bias is None and model[2].bias is not None and q[0] is not model[0]


@pytest.mark.parametrize("call,match", [
    (lambda: linear_names(_mlp(), names=["9"]), "not nn.Linear"),
    (lambda: linear_names(_mlp(), names="0"), "list of module names"),
    (lambda: linear_names("model"), "torch.nn.Module"),
    (lambda: quantize_linears(_mlp(), torch.randn(2, 6), "gptq"), "quantize_weight must be a function"),
    (lambda: quantize_linears(_mlp(), torch.randn(2, 6), lambda w, x: w[:1]), "weight's shape"),
    (lambda: quantize_linears(_mlp(), torch.randn(2, 6), lambda w, x: w, sequential=1), "sequential"),
    (lambda: replace_linears(_mlp(), lambda lin: 3), "nn.Module"),
])
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()
