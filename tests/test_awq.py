"""qedu.awq: the scale formula by hand, the exact float equivalence, the search against a port of llm-awq."""
import pytest
import torch
from torch import nn

from qedu.awq import activation_scale, awq_linear, awq_quantize, awq_scales, clip_search, scaled_linear
from qedu.gptq import layer_error
from qedu.rtn import rtn_quantize
from tests.test_rtn import awq_pseudo_quantize


def salient_layer(seed=0, c_out=64, c_in=256, n=512):
    """A layer whose inputs have a few channels with much larger magnitude (AWQ's salient channels)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c_out, c_in, generator=g) * 0.02
    channel_size = torch.ones(c_in)
    channel_size[torch.randperm(c_in, generator=g)[:8]] = 20.0
    x = torch.randn(n, c_in, generator=g) * channel_size
    return w, x


def test_scale_formula_on_a_hand_case():
    act = torch.tensor([1.0, 4.0, 16.0])
    assert awq_scales(act, 0.5).tolist() == [0.5, 1.0, 2.0]  # sqrt -> [1, 2, 4], / sqrt(4 * 1)
    assert awq_scales(act, 1.0).tolist() == [0.25, 1.0, 4.0]  # / sqrt(16 * 1)
    assert awq_scales(act, 0.0).tolist() == [1.0, 1.0, 1.0]
    s = awq_scales(torch.tensor([0.0, 1.0]), 1.0)  # a dead channel is clamped to 1e-4 before normalising
    assert s.tolist() == pytest.approx([1e-4 / 1e-2, 1 / 1e-2])
    assert activation_scale(torch.tensor([[1.0, -2.0], [-3.0, 0.0]])).tolist() == [2.0, 1.0]


def test_the_scaled_layer_is_the_float_layer_before_quantization():
    torch.manual_seed(0)
    layer = nn.Linear(256, 64).double()
    w, x = salient_layer()
    s = awq_scales(activation_scale(x), 0.7).double()
    new = scaled_linear(layer, s)
    x = x.double()
    with torch.no_grad():
        torch.testing.assert_close(new(x), layer(x), rtol=1e-13, atol=1e-13)
        assert not torch.equal(new[1].weight, layer.weight)  # the weights did change
    assert torch.equal(new[1].weight, layer.weight * s)


def llm_awq_search(w, x, bits, group_size, n_grid=20):
    """llm-awq auto_scale._search_module_scale for a single Linear (module2inspect = the layer)."""
    org_out = x @ w.T
    x_max = x.abs().view(-1, x.shape[-1]).mean(0)
    best = (float("inf"), None, None)
    for ratio in range(n_grid):
        ratio = ratio * 1 / n_grid
        scales = x_max.pow(ratio).clamp(min=1e-4).view(-1)
        scales = scales / (scales.max() * scales.min()).sqrt()
        w_q = awq_pseudo_quantize(w * scales.view(1, -1), bits, group_size)[0] / scales.view(1, -1)
        loss = (org_out - x @ w_q.T).float().pow(2).mean().item()
        if loss < best[0]:
            best = (loss, ratio, scales)
    return best


@pytest.mark.parametrize("bits,group_size", [(4, 128), (3, 64), (4, None)])
def test_search_picks_the_same_alpha_and_scales_as_llm_awq(bits, group_size):
    w, x = salient_layer(bits)
    loss, ratio, scales = llm_awq_search(w, x, bits, group_size)
    r = awq_quantize(w, x, bits, group_size)
    assert r.alpha == ratio and torch.equal(r.scales, scales)
    assert min(r.errors) == pytest.approx(loss, rel=1e-3)  # the same error, summed in a different order
    assert r.alpha > 0  # salient channels: scaling helps


def test_alpha_zero_is_rtn_and_awq_is_never_worse_on_the_calibration_data():
    for seed in range(3):
        w, x = salient_layer(seed)
        r = awq_quantize(w, x, bits=3, group_size=64)
        rtn = layer_error(w, rtn_quantize(w, 3, 64, convention="awq"), x)
        assert r.errors[0] == pytest.approx(rtn, rel=1e-4)  # float32 Gram form vs float64 direct
        assert layer_error(w, r.weight, x) == pytest.approx(min(r.errors), rel=1e-4)
        assert layer_error(w, r.weight, x) < 0.8 * rtn


def test_clip_search_never_hurts_a_group_and_helps_heavy_tailed_weights():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(32, 128, generator=g) ** 3 * 0.01  # heavy tails: a few large weights stretch each range
    x = torch.randn(256, 128, generator=g)
    best_max = clip_search(w, x, bits=3, group_size=32)
    assert best_max.shape == (32, 4)
    assert bool((best_max <= w.reshape(32, 4, 32).abs().amax(2) + 1e-7).all())
    assert bool((best_max < w.reshape(32, 4, 32).abs().amax(2) - 1e-7).any())
    plain = awq_quantize(w, x, bits=3, group_size=32)
    clipped = awq_quantize(w, x, bits=3, group_size=32, clip=True)
    assert clipped.clip_max is not None and plain.clip_max is None
    assert layer_error(w, clipped.weight, x) < layer_error(w, plain.weight, x)


def test_awq_linear_copies():
    torch.manual_seed(0)
    layer = nn.Linear(256, 64)
    w, x = salient_layer()
    before = layer.weight.detach().clone()
    new = awq_linear(layer, x, bits=4, group_size=128)
    assert torch.equal(layer.weight, before) and torch.equal(new.bias, layer.bias)
    assert torch.equal(new.weight.detach(), awq_quantize(before, x, bits=4, group_size=128).weight)


@pytest.mark.parametrize("call,match", [
    (lambda: awq_scales(torch.tensor([1.0, 2.0]), 1.5), "alpha"),
    (lambda: awq_scales(torch.tensor([-1.0, 2.0]), 0.5), ">= 0"),
    (lambda: awq_scales([1.0, 2.0], 0.5), "1-D tensor"),
    (lambda: awq_quantize(torch.randn(4, 32), torch.randn(8, 16), group_size=None), "16 features"),
    (lambda: awq_quantize(torch.randn(4, 32), torch.randn(8, 32), group_size=24), "group_size=24"),
    (lambda: awq_quantize(torch.randn(4, 32), torch.randn(8, 32), group_size=None, clip=1), "clip"),
    (lambda: awq_quantize(torch.randn(4, 32), torch.randn(8, 32), group_size=None, n_grid=0), "n_grid"),
    (lambda: clip_search(torch.randn(4, 32), torch.randn(8, 32), group_size=None, max_shrink=2), "max_shrink"),
    (lambda: scaled_linear(nn.Linear(4, 2), torch.tensor([1.0, -1.0, 1.0, 1.0])), "positive"),
    (lambda: awq_linear(torch.randn(2, 4), torch.randn(3, 4)), "nn.Linear"),
    (lambda: awq_quantize(torch.randn(4, 32), torch.full((8, 32), 3e38), group_size=None), "overflows float32"),
    (lambda: awq_scales(torch.tensor([1e39], dtype=torch.float64), 0.5), "fit float32"),
])
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()
