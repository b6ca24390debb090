"""Tests for qedu/checks/lowprec.py: each check passes correct code, reports stubs, names every mistake."""
import math

import torch

from qedu import checks
from qedu.checks.lowprec import (DELAYED_SCALE, E8M0_EXPONENT, LORA_FORWARD, MXFP4_BLOCK, delayed_scale_reference,
                                 e8m0_exponent_reference, lora_forward_reference)
from qedu.formats import FP8_E4M3
from qedu.loss_scaling import DelayedScaling
from qedu.lora import LoRALinear
from qedu.mx import shared_exponent
from tests.check_contract import check_contract, exercise_solutions

SOLUTIONS = exercise_solutions("12_low_precision_training")


def e8m0_exponent_frexp(block, emax_elem):
    """A correct variant: frexp instead of log2."""
    amax = block.abs().max()
    if amax == 0:
        return -127
    return int(min(max(int(torch.frexp(amax).exponent) - 1 - emax_elem, -127), 127))


CHECKS = {
    "e8m0_exponent": (checks.check_e8m0_exponent, E8M0_EXPONENT, SOLUTIONS["e8m0_exponent"], e8m0_exponent_frexp),
    "lora_forward": (checks.check_lora_forward, LORA_FORWARD, SOLUTIONS["lora_forward"]),
    "delayed_scale": (checks.check_delayed_scale, DELAYED_SCALE, SOLUTIONS["delayed_scale"]),
    "mxfp4_block": (checks.check_mxfp4_block, MXFP4_BLOCK, SOLUTIONS["mxfp4_block"]),
}

test_check_passes_the_reference, test_check_says_not_implemented_for_a_stub, test_check_names_each_classic_mistake = check_contract(
    CHECKS
)


def test_e8m0_reference_is_qedu_mx_floor_rule():
    g = torch.Generator().manual_seed(0)
    for emax, element in ((2, "fp4_e2m1"), (8, "fp8_e4m3"), (15, "fp8_e5m2")):
        for k in range(-20, 20, 3):
            block = torch.randn(32, generator=g) * 2.0**k
            assert e8m0_exponent_reference(block, emax) == int(shared_exponent(block.abs().max()[None], element)[0])
    assert e8m0_exponent_reference(torch.zeros(3), 2) == int(shared_exponent(torch.zeros(1), "fp4_e2m1")[0]) == -127


def test_lora_reference_is_qedu_lora_layer():
    layer = LoRALinear(torch.nn.Linear(8, 4), r=2, alpha=16, seed=0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 8)
    expected = layer(x).detach()
    with torch.no_grad():
        got = lora_forward_reference(x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, 16.0)
    assert torch.allclose(got, expected, atol=1e-6) and not math.isnan(float(got.sum()))


def test_delayed_scale_reference_replays_qedu_delayed_scaling():
    scaler = DelayedScaling(FP8_E4M3, history_len=3)
    history, g = [], torch.Generator().manual_seed(0)
    for k, size in enumerate([1.0, 2.0, 100.0, 1.0, 1.0, 1.0, 0.5]):
        x = torch.randn(64, generator=g) * size
        scaler.quantize(x)
        history, scale = delayed_scale_reference(history, float(x.abs().max()), 3)
        assert list(scaler.amax_history) == history and scaler.scale == scale, f"step {k}"
