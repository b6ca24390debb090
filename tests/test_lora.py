"""LoRA / QLoRA: a fresh adapter is a no-op, the base stays frozen (its NF4 bytes too), merging is exact."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qedu.lora import LoRALinear, add_lora, merge_lora, trainable_parameters
from qedu.nf4 import nf4_fake_quantize


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 10))


def _x(seed=1, n=32):
    return torch.randn(n, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("base_format", ["float", "nf4"])
def test_a_fresh_adapter_is_a_no_op_on_its_base(base_format):
    lin = _model()[0]
    layer = LoRALinear(lin, r=4, alpha=8, base_format=base_format, seed=0)
    x = _x()
    assert torch.equal(layer.lora_B, torch.zeros(128, 4))
    expected_w = lin.weight if base_format == "float" else nf4_fake_quantize(lin.weight)
    assert torch.allclose(layer(x), x @ expected_w.detach().t() + lin.bias.detach(), rtol=0, atol=1e-6)


def _train(model, x, y, steps=60, lr=1e-2):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_qlora_trains_only_the_adapters_and_never_touches_the_nf4_bytes():
    model = _model()
    targets = ["0", "2", "4"]
    qlora = add_lora(model, targets, r=4, alpha=8, base_format="nf4")
    frozen = {k: v.clone() for k, v in qlora.state_dict().items() if "lora_" not in k}
    assert any(k.endswith("nf4_packed") for k in frozen) and not any(k.endswith(".weight") for k in frozen)
    x, y = _x(), torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(2))
    losses = _train(qlora, x, y)
    assert losses[-1] < 0.5 * losses[0]  # the adapters alone fit the batch
    after = qlora.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items()), "a frozen buffer (NF4 bytes, bias) changed"
    assert all(("lora_" in n) == p.requires_grad for n, p in qlora.named_parameters())
    assert all(not torch.equal(m.lora_B, torch.zeros_like(m.lora_B)) for m in qlora.modules() if isinstance(m, LoRALinear))


@pytest.mark.parametrize("base_format", ["float", "nf4"])
def test_merging_the_adapters_gives_the_same_outputs(base_format):
    lora = add_lora(_model(), ["0", "2"], r=8, alpha=16, base_format=base_format)
    x, y = _x(), torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(3))
    _train(lora, x, y, steps=20)
    merged = merge_lora(lora)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    with torch.no_grad():
        assert torch.allclose(merged(x), lora(x), rtol=1e-5, atol=1e-5)


def test_trainable_parameters_count_r_times_in_plus_out():
    lora = add_lora(_model(), lambda name: name in ("0", "2"), r=4)
    trainable, total = trainable_parameters(lora)
    assert trainable == 4 * (64 + 128) + 4 * (128 + 64)
    assert total == sum(p.numel() for p in _model().parameters()) + trainable


def test_add_lora_copies_and_checks_its_targets():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, ["0"])
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert isinstance(add_lora(nn.Linear(8, 8), [], r=2), LoRALinear)
    with pytest.raises(ValueError, match=r"not nn.Linear"):
        add_lora(model, ["1"])
    with pytest.raises(ValueError, match="chose no layer"):
        add_lora(model, lambda n: False)
    with pytest.raises(ValueError, match="r must be"):
        LoRALinear(nn.Linear(8, 4), r=5)
    with pytest.raises(ValueError, match="base_format"):
        LoRALinear(nn.Linear(8, 4), r=2, base_format="int4")
    with pytest.raises(TypeError, match="base must be an nn.Linear"):
        LoRALinear(nn.Conv2d(1, 1, 1))
