"""Membership inference: can an attacker tell whether an image was in the training set?

A model usually fits its training images better than new ones. Yeom, Giacomelli, Fredrikson
and Jha (2018, "Privacy risk in machine learning") turned that gap into the simplest attack:
guess "member" when the model's loss on the image is at most a threshold ``tau``, for example
the average training loss (which an attacker can estimate)::

    member(x, y)  <=>  cross_entropy(model(x), y) <= tau
    advantage     =   TPR - FPR = P(guess member | member) - P(guess member | non-member)

Advantage 0 is a coin flip; 1 is a perfect attack. The threshold-free view is the AUC, the
probability that a random member has a lower loss than a random non-member (ties count half).
Quantization rounds the weights, so it changes the losses; whether it leaks more or less is a
measurement, which :func:`loss_threshold_attack` makes for any model.

>>> loss = torch.tensor([0.1, 0.2, 0.9, 1.0])
>>> membership_auc(loss[:2], loss[2:])  # every member has a lower loss than every non-member
1.0
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qedu._validation import as_float_tensor, check_module

__all__ = ["per_example_loss", "membership_auc", "MembershipResult", "loss_threshold_attack"]


def per_example_loss(model: nn.Module, x, y, batch_size: int = 1024) -> torch.Tensor:
    """Cross-entropy of each image, float64 ``(N,)``, in eval mode without gradients (mode restored)."""
    model = check_module(model)
    x = as_float_tensor(x, "x")
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() or len(y) != len(x):
        raise ValueError(f"y must be a 1-D integer tensor with one label per image ({len(x)}).")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([F.cross_entropy(model(x[i:i + batch_size]), y[i:i + batch_size], reduction="none")
                              for i in range(0, len(x), batch_size)]).double()
    finally:
        model.train(was_training)


def membership_auc(member_loss, nonmember_loss) -> float:
    """``P(loss_member < loss_nonmember) + P(equal) / 2`` over all pairs (the Mann-Whitney AUC)."""
    m = as_float_tensor(member_loss, "member_loss").double().flatten()
    n = as_float_tensor(nonmember_loss, "nonmember_loss").double().flatten()
    less = (m[:, None] < n[None, :]).double().mean()  # (M, N) pairs
    ties = (m[:, None] == n[None, :]).double().mean()
    return float(less + ties / 2)


@dataclass(frozen=True)
class MembershipResult:
    """The attack's ``threshold``, true and false positive rates, ``advantage`` (TPR - FPR),
    ``auc`` and the mean loss of members and non-members."""

    threshold: float
    tpr: float
    fpr: float
    advantage: float
    auc: float
    member_loss: float
    nonmember_loss: float


def loss_threshold_attack(model: nn.Module, x_members, y_members, x_nonmembers, y_nonmembers, *,
                          threshold: float | None = None) -> MembershipResult:
    """Yeom et al.'s loss-threshold membership attack on ``model``.

    Args:
        model: any classifier (float or quantized).
        x_members, y_members: images the model was trained on.
        x_nonmembers, y_nonmembers: images it never saw (same distribution; ideally as many).
        threshold: ``tau``; default the members' mean loss (Yeom et al.'s choice: the attacker
            knows the average training loss).
    """
    member = per_example_loss(model, x_members, y_members)
    nonmember = per_example_loss(model, x_nonmembers, y_nonmembers)
    tau = float(member.mean()) if threshold is None else float(threshold)
    tpr, fpr = float((member <= tau).double().mean()), float((nonmember <= tau).double().mean())
    return MembershipResult(tau, tpr, fpr, tpr - fpr, membership_auc(member, nonmember), float(member.mean()),
                            float(nonmember.mean()))
