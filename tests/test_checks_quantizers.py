"""Tests for qedu/checks/quantizers.py: each check passes correct code, reports stubs, names every mistake."""

import pytest
import torch

from qedu import checks
from qedu.checks.framework import CheckFailed
from tests.check_contract import check_contract, exercise_solutions
from qedu.checks.quantizers import DEQUANTIZE, PACK4, PER_CHANNEL, QPARAMS, QUANTIZE, STOCHASTIC_ROUND


# The exercise notebook's own solutions, run as a learner would write them.
SOLUTIONS = exercise_solutions("02_uniform_quantization")
qparams, dequantize, per_channel, stochastic_round, pack4 = (
    SOLUTIONS[n] for n in ("qparams", "dequantize", "per_channel", "stochastic_round", "pack4"))


# Another correct answer a learner may write (int64 codes instead of the solution's int32).
def quantize_int64(x, scale, zero_point, bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    inv_scale = 1.0 / torch.tensor(scale, dtype=torch.float32)
    return torch.clamp(torch.round(x * inv_scale) + zero_point, qmin, qmax).to(torch.int64)


CHECKS = {
    "qparams": (checks.check_qparams, QPARAMS, qparams),
    "quantize": (checks.check_quantize, QUANTIZE, SOLUTIONS["quantize"], quantize_int64),
    "dequantize": (checks.check_dequantize, DEQUANTIZE, dequantize),
    "per_channel": (checks.check_per_channel, PER_CHANNEL, per_channel),
    "stochastic_round": (checks.check_stochastic_round, STOCHASTIC_ROUND, stochastic_round),
    "pack4": (checks.check_pack4, PACK4, pack4),
}
test_check_passes_the_reference, test_check_says_not_implemented_for_a_stub, test_check_names_each_classic_mistake = check_contract(
    CHECKS
)


def test_tie_case_separates_division_from_reciprocal():
    """-12.15 / 0.1 and -12.15 * (1/0.1) round to different codes: the golden case that shows it."""
    x = torch.tensor([-12.15])
    assert torch.round(x / 0.1).item() == -121 and QUANTIZE.reference(x, 0.1, 0, 8).item() == -122


def test_wrong_types_are_explained():
    with pytest.raises(CheckFailed, match=r"right values, but dtype float32; return integer codes"):
        checks.check_quantize(lambda x, s, z, b: torch.round(x / s))
    with pytest.raises(CheckFailed, match=r"float tensor of integers"):
        checks.check_stochastic_round(lambda v, g: torch.floor(v).long())
    with pytest.raises(CheckFailed, match=r"right values, but dtype int64; expected uint8"):
        checks.check_pack4(lambda q: pack4(q).long())
    with pytest.raises(TypeError, match=r"pass it without \(\)"):
        checks.check_quantize(SOLUTIONS["quantize"](torch.zeros(1), 0.1, 0, 8))


def test_stochastic_check_is_reproducible(capsys):
    """Fresh generators every run: running a check twice gives the same verdict and output."""
    for _ in range(2):
        assert checks.check_stochastic_round(stochastic_round).passed
    out = capsys.readouterr().out.splitlines()
    assert out[0] == out[1]
