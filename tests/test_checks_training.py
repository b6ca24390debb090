"""Tests for qedu/checks/training.py: each check passes correct code, reports stubs, names every mistake."""
import math

import torch

from qedu import checks
from tests.check_contract import check_contract, exercise_solutions
from qedu.checks.training import BLOCKWISE_ABSMAX, STOCHASTIC_ROUND_BF16, TRAINING_BYTES, UPDATE_LOSS_SCALE
from qedu.loss_scaling import DynamicLossScaler
from qedu.rounding import stochastic_round
from qedu.floats import BF16


# The exercise notebooks' own solutions, and below them other correct answers a learner may write.
SOLUTIONS = {**exercise_solutions("06_mixed_precision_training"),
             **exercise_solutions("07_low_bit_optimizers_and_memory")}


def update_loss_scale_variant(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, 0
    if clean_steps + 1 >= growth_interval:
        return scale * growth_factor, 0
    return scale, clean_steps + 1


def stochastic_round_bf16_variant(x, r):
    bits = x.view(torch.int32)
    return ((bits + r) & -65536).view(torch.float32)


def blockwise_absmax_variant(x, levels, block_size):
    flat = x.reshape(-1)
    n_blocks = math.ceil(flat.numel() / block_size)
    padded = torch.cat([flat, flat.new_zeros(n_blocks * block_size - flat.numel())]).reshape(n_blocks, block_size)
    absmax = padded.abs().amax(dim=1)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    q = torch.argmin((padded[..., None] / safe[:, None, None] - levels).abs(), dim=-1)
    return q.reshape(-1)[: flat.numel()].reshape(x.shape).to(torch.uint8), absmax


CHECKS = {
    "update_loss_scale": (checks.check_update_loss_scale, UPDATE_LOSS_SCALE, SOLUTIONS["update_loss_scale"],
                          update_loss_scale_variant),
    "stochastic_round_bf16": (checks.check_stochastic_round_bf16, STOCHASTIC_ROUND_BF16,
                              SOLUTIONS["stochastic_round_bf16"], stochastic_round_bf16_variant),
    "blockwise_absmax": (checks.check_blockwise_absmax, BLOCKWISE_ABSMAX, SOLUTIONS["blockwise_absmax"],
                         blockwise_absmax_variant),
    "training_bytes": (checks.check_training_bytes, TRAINING_BYTES, SOLUTIONS["training_bytes"]),
}
test_check_passes_the_reference, test_check_says_not_implemented_for_a_stub, test_check_names_each_classic_mistake = check_contract(
    CHECKS
)


def test_update_rule_is_the_dynamic_loss_scaler():
    """The exercise's pure function replays DynamicLossScaler.update() on a sequence of overflows."""
    p = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([p], lr=0.0)
    scaler = DynamicLossScaler(init_scale=8.0, growth_interval=3)
    scale, clean = 8.0, 0
    for found in [False, False, False, True, False, False, False, False, True]:
        opt.zero_grad()
        scaler.scale(p.sum() * (math.inf if found else 1.0)).backward()
        scaler.step(opt)
        scaler.update()
        scale, clean = UPDATE_LOSS_SCALE.reference(scale, clean, found, growth_interval=3)
        assert (scale, clean) == (scaler.get_scale(), scaler.clean_steps)


def test_bit_trick_is_stochastic_rounding_in_distribution():
    """With uniform random bits the bit trick rounds up with probability (x - lo) / (hi - lo), like stochastic_round."""
    g = torch.Generator().manual_seed(0)
    x = torch.full((40000,), 1.0 + 3 * 2**-10)  # 3/8 of the way from 1 to 1 + 2**-7
    r = torch.randint(0, 2**16, x.shape, generator=g, dtype=torch.int32)
    up_bits = (STOCHASTIC_ROUND_BF16.reference(x, r) > 1).double().mean().item()
    up_qedu = (stochastic_round(x, BF16, g) > 1).double().mean().item()
    assert abs(up_bits - 0.375) < 0.01 and abs(up_qedu - 0.375) < 0.01
