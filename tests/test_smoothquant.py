"""qedu.smoothquant: the scale formula, an exact float equivalence, and W8A8 with and without smoothing."""
import copy

import pytest
import torch
from torch import nn

from qedu.layerwise import linear_inputs
from qedu.models import TinyGPT
from qedu.smoothquant import (
    W8A8Linear, alpha_sweep, default_pairs, smooth_ln_linears, smooth_model, smoothing_scales, w8a8_model,
)


def tiny_gpt(outliers: bool, dtype=torch.float32):
    """A random TinyGPT; with ``outliers`` its LayerNorms amplify 3 channels 30x.

    A synthetic fixture for the tests only (lesson 10 measures the shipped model's real activations).
    """
    torch.manual_seed(0)
    model = TinyGPT(vocab_size=64, seq_len=32, hidden=64, n_layers=2, n_heads=4).to(dtype).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
                if outliers:
                    m.weight[[5, 17, 40]] *= 30
    return model


TOKENS = torch.randint(0, 64, (16, 32), generator=torch.Generator().manual_seed(1))


def test_scale_formula_on_a_hand_case():
    act, w = torch.tensor([16.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0])
    s = smoothing_scales(act, w, alpha=0.5)
    assert s[:2].tolist() == [4.0, 0.5]  # sqrt(16) / sqrt(1), sqrt(1) / sqrt(4)
    assert s[2].item() == pytest.approx(1e-5)  # a channel that is always 0 is clamped, never 0
    assert smoothing_scales(act[:2], w[:2], alpha=0.0).tolist() == [1.0, 0.25]  # 1 / w
    # at alpha = 0.5 the activation and weight maxima end equal: sqrt(max|x| * max|W|)
    assert torch.allclose(act[:2] / s[:2], w[:2] * s[:2])


def test_smooth_ln_linears_matches_the_reference_formula_and_copies():
    torch.manual_seed(0)
    ln, fcs = nn.LayerNorm(8), [nn.Linear(8, 4), nn.Linear(8, 6)]
    with torch.no_grad():
        ln.weight.uniform_(0.5, 2)
        ln.bias.uniform_(-1, 1)
    act = torch.rand(8) * 10
    before = [p.clone() for p in [ln.weight, ln.bias] + [fc.weight for fc in fcs]]
    new_ln, new_fcs, s = smooth_ln_linears(ln, fcs, act, alpha=0.6)
    w_max = torch.cat([fc.weight.abs() for fc in fcs]).amax(0)  # smooth_ln_fcs: max over every Linear's column
    torch.testing.assert_close(s, (act**0.6 / w_max**0.4).clamp(min=1e-5))
    torch.testing.assert_close(new_ln.weight, ln.weight / s)
    torch.testing.assert_close(new_ln.bias, ln.bias / s)
    torch.testing.assert_close(new_fcs[1].weight, fcs[1].weight * s)
    assert all(torch.equal(a, b) for a, b in zip(before, [ln.weight, ln.bias] + [fc.weight for fc in fcs]))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.85, 1.0])
def test_the_smoothed_model_is_the_float_model_in_float_arithmetic(alpha):
    model = tiny_gpt(outliers=True, dtype=torch.float64)
    smoothed = smooth_model(model, TOKENS, alpha)
    with torch.no_grad():
        torch.testing.assert_close(smoothed(TOKENS), model(TOKENS), rtol=1e-10, atol=1e-10)
    assert not torch.equal(smoothed.blocks[0].qkv.weight, model.blocks[0].qkv.weight)


def test_smoothing_flattens_the_activation_channels():
    model = tiny_gpt(outliers=True)
    before = linear_inputs(model, TOKENS)["blocks.0.qkv"].abs().amax(0)
    after = linear_inputs(smooth_model(model, TOKENS, 0.5), TOKENS)["blocks.0.qkv"].abs().amax(0)
    assert float(before.max() / before.median()) > 10  # the fixture's outlier channels
    assert float(after.max() / after.median()) < float(before.max() / before.median()) / 3


def test_smoothquant_w8a8_beats_plain_w8a8_when_activations_have_outliers():
    model = tiny_gpt(outliers=True)
    with torch.no_grad():
        ref = model(TOKENS)
        plain = float(((w8a8_model(model)(TOKENS) - ref) ** 2).mean())
        smooth = float(((w8a8_model(smooth_model(model, TOKENS, 0.5))(TOKENS) - ref) ** 2).mean())
    assert smooth < plain / 2
    sweep = alpha_sweep(model, TOKENS, alphas=(0.25, 0.5, 0.75))
    assert [a for a, _ in sweep] == [0.25, 0.5, 0.75]
    assert dict(sweep)[0.5] == pytest.approx(smooth, rel=1e-6)
    assert min(e for _, e in sweep) < plain


def test_w8a8_linear_is_per_tensor_int8_on_both_sides():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    q = W8A8Linear(layer)
    step = float(layer.weight.detach().abs().max()) / 127
    k = q.weight / step
    assert torch.allclose(k, k.round(), atol=1e-4) and len(torch.unique(k.round())) > 20
    x = torch.randn(5, 16)
    x_step = float(x.abs().max()) / 127
    x_hat = torch.round(x / x_step) * x_step
    torch.testing.assert_close(q(x), nn.functional.linear(x_hat, q.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_callers_model_and_mode_are_untouched():
    model = tiny_gpt(outliers=True).train()
    state = copy.deepcopy(model.state_dict())
    smooth_model(model, TOKENS)
    alpha_sweep(model, TOKENS, alphas=(0.5,))
    assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_default_pairs():
    model = tiny_gpt(outliers=False)
    assert default_pairs(model)[2] == ("blocks.1.ln1", ["blocks.1.qkv"])
    assert default_pairs(nn.Sequential(nn.Linear(2, 2))) == []


@pytest.mark.parametrize("call,match", [
    (lambda: smoothing_scales(torch.ones(3), torch.ones(2)), "same shape"),
    (lambda: smoothing_scales(torch.ones(3), torch.ones(3), alpha=2), "alpha"),
    (lambda: smoothing_scales(torch.tensor([-1.0]), torch.ones(1)), ">= 0"),
    (lambda: smoothing_scales(torch.tensor([1e39], dtype=torch.float64), torch.ones(1)), "fit float32"),
    (lambda: smooth_ln_linears(nn.Linear(2, 2), [nn.Linear(2, 2)], torch.ones(2)), "LayerNorm"),
    (lambda: smooth_ln_linears(nn.LayerNorm(2), [nn.Linear(3, 2)], torch.ones(2)), "reading the LayerNorm"),
    (lambda: smooth_model(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2)), "no \\(LayerNorm, Linears\\) pairs"),
    (lambda: smooth_model(tiny_gpt(False), TOKENS, pairs=[("ln9", ["blocks.0.qkv"])]), "does not have"),
    (lambda: W8A8Linear(nn.Conv1d(2, 2, 1)), "nn.Linear"),
])
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()
