"""qedu.membership: the loss-threshold attack on hand-made losses and on a model that memorised."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qedu.membership import loss_threshold_attack, membership_auc, per_example_loss


def test_auc_hand_cases_and_ties():
    assert membership_auc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert membership_auc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert membership_auc([0.5], [0.5]) == 0.5  # a tie counts half
    assert membership_auc([0.1, 0.5], [0.3, 0.5]) == pytest.approx((1 + 1 + 0 + 0.5) / 4)


def test_per_example_loss_is_cross_entropy_and_restores_the_mode():
    model = nn.Linear(3, 2).train()
    x, y = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 0, 1, 1])
    loss = per_example_loss(model, x, y)
    with torch.no_grad():
        assert torch.allclose(loss, F.cross_entropy(model(x), y, reduction="none").double())
    assert model.training


class _Lookup(nn.Module):
    """A 'model' that memorised: confident and right on the first n_seen images, unsure on the rest."""

    def __init__(self, n_seen: int):
        super().__init__()
        self.n_seen = n_seen

    def forward(self, x):
        idx = x[:, 0].long()
        out = torch.zeros(len(x), 2)
        out[:, 0] = torch.where(idx < self.n_seen, 5.0, 0.1)
        return out


def test_attack_on_a_model_that_memorised_is_perfect_and_on_a_coin_is_zero():
    x = torch.arange(20.0)[:, None]
    y = torch.zeros(20, dtype=torch.long)
    r = loss_threshold_attack(_Lookup(10), x[:10], y[:10], x[10:], y[10:])
    assert (r.tpr, r.fpr, r.advantage, r.auc) == (1.0, 0.0, 1.0, 1.0)
    assert r.threshold == pytest.approx(r.member_loss)  # Yeom et al.: the mean training loss
    same = loss_threshold_attack(_Lookup(0), x[:10], y[:10], x[10:], y[10:])
    assert same.advantage == 0.0 and same.auc == 0.5
    strict = loss_threshold_attack(_Lookup(10), x[:10], y[:10], x[10:], y[10:], threshold=0.0)
    assert strict.tpr == 0.0 and strict.fpr == 0.0


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="one label per input"):
        per_example_loss(nn.Linear(3, 2), torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="nn.Module"):
        per_example_loss("model", torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
