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

from qedu._validation import as_float_tensor, check_int, check_labels, check_module, check_real, run_model, to_model_dtype

__all__ = ["per_example_loss", "membership_auc", "MembershipResult", "loss_threshold_attack"]


def per_example_loss(model: nn.Module, x, y, batch_size: int = 1024) -> torch.Tensor:
    """Cross-entropy of each image, float64 ``(N,)``, in eval mode without gradients (mode restored).

    Raises:
        TypeError / ValueError: ``model`` not a module; ``x`` empty, NaN/inf or beyond the model's
            dtype (float64 is converted), or a shape the model cannot take; ``y`` not one integer
            label per image in ``0..n_outputs - 1``; ``batch_size < 1``; a non-finite loss (the
            model's outputs hold NaN or inf).
    """
    model = check_module(model)
    x = to_model_dtype(as_float_tensor(x, "x"), model, "x")
    y = check_labels(y, "y", len(x))
    batch_size = check_int(batch_size, "batch_size", 1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            losses = []
            for i in range(0, len(x), batch_size):
                logits = run_model(model, x[i:i + batch_size], "x")  # (batch, n_classes)
                check_labels(y[i:i + batch_size], "y", n_classes=logits.shape[-1])
                losses.append(F.cross_entropy(logits, y[i:i + batch_size], reduction="none"))
    finally:
        model.train(was_training)
    loss = torch.cat(losses).double()
    if not bool(torch.isfinite(loss).all()):
        raise ValueError(f"the loss of {int((~torch.isfinite(loss)).sum())} image(s) is NaN or inf: the model's outputs "
                         "are not finite on them. Check the model's weights (and x) for NaN/inf.")
    return loss


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
    tau = float(member.mean()) if threshold is None else check_real(threshold, "threshold", example="0.5")
    tpr, fpr = float((member <= tau).double().mean()), float((nonmember <= tau).double().mean())
    return MembershipResult(tau, tpr, fpr, tpr - fpr, membership_auc(member, nonmember), float(member.mean()),
                            float(nonmember.mean()))
