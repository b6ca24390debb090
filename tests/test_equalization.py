"""qedu.equalization: cross-layer equalization leaves the float function unchanged and evens the ranges."""
import pytest
import torch
from torch import nn

from qedu.equalization import _input_channel_ranges, equalizable_pairs, equalization_scales, equalize
from qedu.models import make_cnn, make_mlp
from qedu.ptq import fold_batchnorm

X = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _trained_like(model):
    """Spread the channel ranges apart (as training and BatchNorm folding do)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(torch.exp(torch.randn(m.weight.shape[0], generator=g)).reshape(-1, *[1] * (m.weight.ndim - 1)))
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.1, 4.0, generator=g)
                m.weight.uniform_(0.2, 3.0, generator=g)
                m.running_mean.uniform_(-1, 1, generator=g)
    return model.eval()


@pytest.mark.parametrize("make", [make_mlp, make_cnn], ids=["mlp", "cnn"])
def test_equalization_leaves_the_float_function_unchanged(make):
    model = _trained_like(make(seed=0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    equalized = equalize(model)
    with torch.no_grad():
        y, y_eq = fold_batchnorm(model)(X), equalized(X)
    assert torch.allclose(y_eq, y, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is untouched
    changed = [n for n, p in equalized.named_parameters() if not torch.allclose(p, fold_batchnorm(model).get_parameter(n))]
    assert changed  # ... while the weights did move


@pytest.mark.parametrize("make", [make_mlp, make_cnn], ids=["mlp", "cnn"])
def test_after_equalization_each_channel_has_the_same_range_on_both_sides(make):
    model = _trained_like(make(seed=0))
    equalized = equalize(model, sweeps=50)
    for first, second in equalizable_pairs(equalized):
        w1, w2 = equalized.get_submodule(first).weight, equalized.get_submodule(second).weight
        r1 = w1.detach().abs().flatten(1).amax(dim=1)
        r2 = _input_channel_ranges(w2.detach(), w1.shape[0])
        assert torch.allclose(r1, r2, rtol=0.05)
    # the spread of ranges across channels shrinks (what a per-tensor scale needs)
    spread = {}
    for name, m in (("before", fold_batchnorm(model)), ("after", equalized)):
        r = m.get_submodule(equalizable_pairs(m)[0][0]).weight.detach().abs().flatten(1).amax(dim=1)
        spread[name] = float(r.max() / r.min())
    assert spread["after"] < spread["before"]


def test_scales_by_hand_and_pairs():
    assert torch.allclose(equalization_scales(torch.tensor([[4.0], [1.0]]), torch.tensor([[1.0, 4.0]])),
                          torch.tensor([2.0, 0.5]))
    assert torch.equal(equalization_scales(torch.zeros(2, 1), torch.ones(1, 2)), torch.ones(2))  # a dead channel stays
    assert equalizable_pairs(make_cnn(seed=0)) == []  # BatchNorm not folded yet: not scale-equivariant in between
    assert equalizable_pairs(fold_batchnorm(make_cnn(seed=0))) == [("conv1", "conv2"), ("conv2", "fc")]
    sig = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1))
    assert equalizable_pairs(sig) == []


def test_bad_input():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        equalize("mlp")
    with pytest.raises(ValueError, match="sweeps must be between 1"):
        equalize(make_mlp(seed=0), sweeps=0)
    with pytest.raises(ValueError, match="w2 must have a multiple of 3 inputs"):
        equalization_scales(torch.ones(3, 2), torch.ones(2, 4))
