"""The checks of lesson 05: each passes qedu's reference and typical correct answers, says 'not
implemented yet' for a stub, and names every registered classic mistake."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qedu import checks
from qedu.checks import qat as qat_checks
from qedu.checks.framework import CheckFailed
from tests.check_contract import check_contract

SPECS = {
    "round_ste": (qat_checks.ROUND_STE, checks.check_round_ste),
    "fake_quant_linear": (qat_checks.FAKE_QUANT_LINEAR, checks.check_fake_quant_linear),
    "lsq_grad_scale": (qat_checks.LSQ_GRAD_SCALE, checks.check_lsq_grad_scale),
}
CONTRACT = {name: (check, spec) for name, (spec, check) in SPECS.items()}
test_check_passes_the_reference, test_check_says_not_implemented_for_a_stub, test_check_names_each_classic_mistake = check_contract(
    CONTRACT
)


# --- correct answers written the ways learners write them pass ---------------------------------
class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v):
        return torch.round(v)

    @staticmethod
    def backward(ctx, grad):
        return grad


def _detach_trick(v):
    return v + (torch.round(v) - v).detach()


@pytest.mark.parametrize("fn", [_detach_trick, _RoundSTE.apply], ids=["detach trick", "autograd.Function"])
def test_round_ste_accepts_both_usual_answers(fn):
    assert checks.check_round_ste(fn).passed


def test_fake_quant_linear_accepts_f_linear_and_clamping_in_real_units():
    def with_f_linear(x, weight, bias, scale, bits):
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return F.linear(x, _detach_trick(torch.clamp(weight * (1 / scale), qmin, qmax)) * scale, bias)

    def clamp_real_units(x, weight, bias, scale, bits):
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        w = torch.clamp(weight, qmin * scale, qmax * scale)  # clip the weights, then find their codes
        return x @ (_RoundSTE.apply(w * (1 / scale)) * scale).T + bias

    assert checks.check_fake_quant_linear(with_f_linear).passed
    assert checks.check_fake_quant_linear(clamp_real_units).passed


def test_lsq_grad_scale_accepts_a_tensor_answer():
    def as_tensor(n, bits, signed):
        qp = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
        return torch.tensor(1 / math.sqrt(n * qp), dtype=torch.float64)

    assert checks.check_lsq_grad_scale(as_tensor).passed


def test_wrong_shape_and_type_are_reported_not_crashed():
    with pytest.raises(CheckFailed, match="should be a torch.Tensor"):
        checks.check_round_ste(lambda v: torch.round(v).tolist())
    with pytest.raises(CheckFailed, match=r"y has shape"):
        checks.check_fake_quant_linear(lambda x, w, b, s, bits: (x @ w.T + b)[:, :1].sum(dim=0))


def test_unknown_mistake_names_the_part_that_differs():
    def half_gradient(v):
        return 0.5 * v + (torch.round(v) - 0.5 * v).detach()

    with pytest.raises(CheckFailed, match="gradient of v differs") as info:
        checks.check_round_ste(half_gradient)
    assert "likely mistake" not in str(info.value)
