"""The checks of lessons 03-04: each passes qedu's reference, says 'not implemented yet' for a stub,
and names every registered classic mistake."""
from __future__ import annotations

import os
import re

import pytest
import torch

from qedu import checks
from qedu.checks import ptq as ptq_checks
from qedu.checks.framework import CheckFailed
from tests.check_contract import check_contract

SPECS = {
    "minmax_observer": (ptq_checks.MINMAX_OBSERVER, checks.check_minmax_observer),
    "percentile_range": (ptq_checks.PERCENTILE_RANGE, checks.check_percentile_range),
    "mse_clip": (ptq_checks.MSE_CLIP, checks.check_mse_clip),
    "fold_bn": (ptq_checks.FOLD_BN, checks.check_fold_bn),
}
CONTRACT = {name: (check, spec) for name, (spec, check) in SPECS.items()}
def _stub(*args, **kwargs):
    raise NotImplementedError("Replace this line with your code.")


test_check_passes_the_reference, test_check_says_not_implemented_for_a_stub, test_check_names_each_classic_mistake = check_contract(
    CONTRACT
)


def test_checks_accept_0d_tensors_for_numbers():
    def observer_tensors(batches, bits):
        scale, zero_point = ptq_checks._minmax_observer(batches, bits)
        return torch.tensor(scale), torch.tensor(zero_point)

    assert checks.check_minmax_observer(observer_tensors).passed


# --- the sensitivity check needs a trained MLP: train it once, in a temporary cache --------------
@pytest.fixture(scope="module")
def sensitivity_spec(tmp_path_factory):
    old = os.environ.get("QEDU_CACHE_DIR")
    os.environ["QEDU_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "qedu-models")  # shared: trained once
    try:
        yield ptq_checks.sensitivity_spec()
    finally:
        if old is None:
            os.environ.pop("QEDU_CACHE_DIR")
        else:
            os.environ["QEDU_CACHE_DIR"] = old


def test_sensitivity_check_passes_reference_and_stub(sensitivity_spec, monkeypatch, capsys):
    monkeypatch.setattr(ptq_checks, "_SENSITIVITY", [sensitivity_spec])
    assert checks.check_sensitivity(sensitivity_spec.reference).passed
    assert checks.check_sensitivity(_stub).status == "not implemented"
    assert "not implemented yet" in capsys.readouterr().out


def test_sensitivity_check_names_each_classic_mistake(sensitivity_spec, monkeypatch):
    monkeypatch.setattr(ptq_checks, "_SENSITIVITY", [sensitivity_spec])
    for mistake in sensitivity_spec.mistakes:
        with pytest.raises(CheckFailed, match=f"mistake:  {re.escape(mistake.name)}"):
            checks.check_sensitivity(mistake.impl)


def test_sensitivity_check_reports_a_mutated_model(sensitivity_spec, monkeypatch):
    monkeypatch.setattr(ptq_checks, "_SENSITIVITY", [sensitivity_spec])

    def in_place(model, data, bits):
        with torch.no_grad():
            model.fc1.weight.mul_(0.5)
        return sensitivity_spec.reference(model, data, bits)

    with pytest.raises(CheckFailed, match="changed its input `model`: it had its parameters changed"):
        checks.check_sensitivity(in_place)
