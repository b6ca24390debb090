"""Lessons 06-07: wrong and right answers for update_loss_scale, stochastic_round_bf16,
blockwise_absmax and training_bytes."""
import math

import numpy as np
import torch

from qedu import checks
from qedu.checks.training import BLOCKWISE_ABSMAX, STOCHASTIC_ROUND_BF16, TRAINING_BYTES, UPDATE_LOSS_SCALE
from tests.wrong_answers import AnswerSet

LS = AnswerSet("update_loss_scale", checks.check_update_loss_scale, UPDATE_LOSS_SCALE, "06")
BF = AnswerSet("stochastic_round_bf16", checks.check_stochastic_round_bf16, STOCHASTIC_ROUND_BF16, "06")
BA = AnswerSet("blockwise_absmax", checks.check_blockwise_absmax, BLOCKWISE_ABSMAX, "07")
TB = AnswerSet("training_bytes", checks.check_training_bytes, TRAINING_BYTES, "07")


# --- update_loss_scale ----------------------------------------------------------------------------

@LS.wrong("the clean-step counter was not reset after an overflow")
def ls_no_reset_inf(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, clean_steps
    clean_steps += 1
    if clean_steps == growth_interval:
        return scale * growth_factor, 0
    return scale, clean_steps


@LS.wrong("compared with growth_interval before counting this step")
def ls_compare_first(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, 0
    if clean_steps == growth_interval:
        return scale * growth_factor, 0
    return scale, clean_steps + 1


@LS.wrong("compared with growth_interval before counting this step")
def ls_greater(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, 0
    if clean_steps + 1 > growth_interval:
        return scale * growth_factor, 0
    return scale, clean_steps + 1


@LS.wrong("the counter was not reset after growing")
def ls_no_reset_growth(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, 0
    clean_steps += 1
    if clean_steps % growth_interval == 0:
        scale *= growth_factor
    return scale, clean_steps


@LS.wrong("divided by backoff_factor instead of multiplying")
def ls_divide(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale / backoff_factor, 0
    clean_steps += 1
    if clean_steps == growth_interval:
        return scale * growth_factor, 0
    return scale, clean_steps


@LS.wrong("an overflow step was counted as a clean step")
def ls_counts_overflow(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    clean_steps += 1
    if found_inf:
        return scale * backoff_factor, 0 if clean_steps == growth_interval else clean_steps
    if clean_steps == growth_interval:
        return scale * growth_factor, 0
    return scale, clean_steps


@LS.wrong("right with the default factors and interval")
def ls_hardcoded(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * 0.5, 0
    clean_steps += 1
    if clean_steps == 2000:
        return scale * 2.0, 0
    return scale, clean_steps


@LS.wrong("the new clean_steps off by +1")
def ls_reset_to_one(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, 0
    clean_steps += 1
    if clean_steps == growth_interval:
        return scale * growth_factor, 1
    return scale, clean_steps


@LS.wrong("right for found_inf=True")
def ls_grows_every_step(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, 0
    clean_steps += 1
    if clean_steps == growth_interval:
        return scale * growth_factor, 0
    return scale * growth_factor, clean_steps


@LS.wrong("the new scale right, the new clean_steps off by")
def ls_counts_nothing(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, 0
    if clean_steps + 1 == growth_interval:
        return scale * growth_factor, 0
    return scale, clean_steps


@LS.wrong("right for found_inf=False")
def ls_backoff_growth_factor(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale / growth_factor, 0
    clean_steps += 1
    if clean_steps == growth_interval:
        return scale * growth_factor, 0
    return scale, clean_steps


@LS.right
def ls_one_return(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    steps = 0 if found_inf else clean_steps + 1
    grow = steps == growth_interval
    new_scale = scale * (backoff_factor if found_inf else growth_factor if grow else 1.0)
    return new_scale, 0 if grow else steps


@LS.right
def ls_list(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return [scale * backoff_factor, 0]
    if clean_steps + 1 >= growth_interval:
        return [scale * growth_factor, 0]
    return [scale, clean_steps + 1]


# --- stochastic_round_bf16 ------------------------------------------------------------------------

@BF.wrong("rounded to nearest instead of stochastically")
def bf_nearest(x, r):
    return x.to(torch.bfloat16).to(torch.float32)


@BF.wrong("truncated without adding the random bits")
def bf_truncate(x, r):
    return (x.view(torch.int32) & -65536).view(torch.float32)


@BF.wrong("added the random bits but kept the low 16 bits")
def bf_no_mask(x, r):
    return (x.view(torch.int32) + r).view(torch.float32)


@BF.wrong("shifted the random bits into the kept part")
def bf_shifted(x, r):
    return ((x.view(torch.int32) + (r << 16)) & -65536).view(torch.float32)


@BF.wrong("masked with 0xFFFF, keeping the low bits")
def bf_low_mask(x, r):
    return ((x.view(torch.int32) + r) & 0xFFFF).view(torch.float32)


@BF.wrong("changed its input `x`")
def bf_in_place(x, r):
    bits = x.view(torch.int32)
    bits += r
    bits &= -65536
    return bits.view(torch.float32)


@BF.wrong("right values, but dtype bfloat16")
def bf_returns_bf16(x, r):
    return ((x.view(torch.int32) + r) & -65536).view(torch.float32).to(torch.bfloat16)


@BF.wrong("neither of x's two bf16 neighbours")
def bf_adds_to_value(x, r):  # adds r to the number, not to its bits
    return ((x + r).view(torch.int32) & -65536).view(torch.float32)


@BF.wrong("neither of x's two bf16 neighbours")
def bf_subtracts(x, r):  # subtracts: rounds toward zero one step lower instead of up
    return ((x.view(torch.int32) - r) & -65536).view(torch.float32)


@BF.wrong("round the magnitude up")
def bf_threshold(x, r):  # rounds up only when the low bits reach a half step: round to nearest, with r ignored
    bits = x.view(torch.int32)
    up = (bits & 0xFFFF) + r > 2**16
    return ((bits & -65536) + up.int() * 65536).view(torch.float32)


@BF.right
def bf_python_mask(x, r):  # 0xFFFF0000 written as a Python int works too
    return ((x.view(torch.int32) + r) & 0xFFFF0000).view(torch.float32)


@BF.wrong("rounded to nearest instead of stochastically")
def bf_half_constant(x, r):  # adds half a step (0x8000) instead of the random bits
    return ((x.view(torch.int32) + 0x8000) & -65536).view(torch.float32)


@BF.right
def bf_numpy(x, r):
    bits = x.numpy().view(np.int32) + r.numpy()
    return torch.from_numpy((bits & np.int32(-65536)).view(np.float32))


@BF.right
def bf_int64_then_back(x, r):
    bits = x.view(torch.int32).to(torch.int64) + r.to(torch.int64)
    return ((bits >> 16) << 16).to(torch.int32).view(torch.float32)


# --- blockwise_absmax -----------------------------------------------------------------------------

def _pad_blocks(x, block_size, value=0.0):
    flat = x.reshape(-1)
    n_blocks = math.ceil(flat.numel() / block_size)
    pad = n_blocks * block_size - flat.numel()
    return torch.cat([flat, flat.new_full((pad,), value)]).reshape(n_blocks, block_size), flat.numel()


def _codes(blocks, absmax, levels):
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    return torch.argmin((blocks / safe[:, None])[..., None].sub(levels).abs(), dim=-1)


@BA.wrong("one absmax for the whole tensor instead of one per block")
def ba_per_tensor(x, levels, block_size):
    absmax = x.abs().max()
    q = torch.argmin((x.reshape(-1, 1) / absmax - levels).abs(), dim=-1)
    return q.reshape(x.shape).to(torch.uint8), absmax.reshape(1)


@BA.wrong("used max(x) instead of max(|x|)")
def ba_signed_max(x, levels, block_size):
    blocks, n = _pad_blocks(x, block_size)
    absmax = blocks.amax(dim=1)
    q = torch.argmin((blocks / absmax[:, None])[..., None].sub(levels).abs(), dim=-1)
    return q.reshape(-1)[:n].reshape(x.shape).to(torch.uint8), absmax


@BA.wrong("rounded down to the level below")
def ba_round_down(x, levels, block_size):
    blocks, n = _pad_blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1)
    idx = torch.searchsorted(levels, blocks / absmax[:, None], right=True) - 1
    return idx.clamp(0, len(levels) - 1).reshape(-1)[:n].reshape(x.shape).to(torch.uint8), absmax


@BA.wrong("returned the dequantized values instead of the codes")
def ba_values(x, levels, block_size):
    blocks, n = _pad_blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1)
    v = levels[_codes(blocks, absmax, levels)] * absmax[:, None]
    return v.reshape(-1)[:n].reshape(x.shape), absmax


@BA.wrong("fails only on inputs like this one")
def ba_no_padding(x, levels, block_size):
    blocks = x.reshape(-1, block_size)
    absmax = blocks.abs().amax(dim=1)
    return _codes(blocks, absmax, levels).reshape(x.shape).to(torch.uint8), absmax


@BA.wrong("right values, but dtype int64")
def ba_int64(x, levels, block_size):
    blocks, n = _pad_blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1)
    return _codes(blocks, absmax, levels).reshape(-1)[:n].reshape(x.shape), absmax


@BA.wrong("right values, but shape")
def ba_flat_codes(x, levels, block_size):
    blocks, n = _pad_blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1)
    return _codes(blocks, absmax, levels).reshape(-1)[:n].to(torch.uint8), absmax


@BA.wrong("halfway between two levels")
def ba_tie_up(x, levels, block_size):  # flips the levels so argmin finds the upper one first
    blocks, n = _pad_blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    idx = torch.argmin((blocks / safe[:, None])[..., None].sub(levels.flip(0)).abs(), dim=-1)
    return (len(levels) - 1 - idx).reshape(-1)[:n].reshape(x.shape).to(torch.uint8), absmax


@BA.wrong("the block is all zeros")
def ba_zero_block_nan(x, levels, block_size):  # divides by 0 in an all-zero block
    blocks, n = _pad_blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1)
    q = torch.argmin((blocks / absmax[:, None])[..., None].sub(levels).abs(), dim=-1)
    return q.reshape(-1)[:n].reshape(x.shape).to(torch.uint8), absmax


@BA.wrong("the last block, which needs padding")
def ba_pad_with_ones(x, levels, block_size):
    blocks, n = _pad_blocks(x, block_size, value=1.0)
    absmax = blocks.abs().amax(dim=1)
    return _codes(blocks, absmax, levels).reshape(-1)[:n].reshape(x.shape).to(torch.uint8), absmax


@BA.wrong("changed its input `x`")
def ba_in_place(x, levels, block_size):
    blocks, n = _pad_blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1)
    flat = x.view(-1)
    flat /= torch.where(absmax > 0, absmax, torch.ones_like(absmax)).repeat_interleave(block_size)[:n]
    q = torch.argmin((flat[:, None] - levels).abs(), dim=-1)
    return q.reshape(x.shape).to(torch.uint8), absmax


@BA.right
def ba_loop_blocks(x, levels, block_size):
    flat = x.reshape(-1).tolist()
    q, absmax = [], []
    for start in range(0, len(flat), block_size):
        block = flat[start:start + block_size]
        m = max(abs(v) for v in block)
        absmax.append(m)
        for v in block:
            d = [abs(v / (m if m > 0 else 1.0) - lv) for lv in levels.tolist()]
            q.append(d.index(min(d)))
    return torch.tensor(q, dtype=torch.uint8).reshape(x.shape), torch.tensor(absmax, dtype=torch.float32)


@BA.right
def ba_padded_with_f_pad(x, levels, block_size):
    flat = x.flatten()
    n_pad = -flat.numel() % block_size
    blocks = torch.nn.functional.pad(flat, (0, n_pad)).view(-1, block_size)
    absmax = blocks.abs().max(dim=1).values
    q = _codes(blocks, absmax, levels)
    return q.flatten()[: flat.numel()].view_as(x).byte(), absmax


# --- training_bytes -------------------------------------------------------------------------------

PER = {"fp32": 16, "mixed": 16, "bf16_pure": 8}


@TB.wrong("forgot the fp32 master weights")
def tb_no_master(n_params, recipe, block_size=256):
    return float(n_params * {"fp32": 16, "mixed": 12, "mixed_adam8bit": 6 + 8 / block_size, "bf16_pure": 8}[recipe])


@TB.wrong("counted one Adam state instead of two")
def tb_one_state(n_params, recipe, block_size=256):
    return float(n_params * {"fp32": 12, "mixed": 12, "mixed_adam8bit": 10 + 8 / block_size, "bf16_pure": 6}[recipe])


@TB.wrong("8-bit Adam without the absmax of each block")
def tb_no_absmax(n_params, recipe, block_size=256):
    return float(n_params * {**PER, "mixed_adam8bit": 10}[recipe])


@TB.wrong("pure bf16 with fp32 Adam states")
def tb_bf16_fp32_states(n_params, recipe, block_size=256):
    return float(n_params * {**PER, "bf16_pure": 12, "mixed_adam8bit": 10 + 8 / block_size}[recipe])


@TB.wrong("kept fp32 gradients in mixed precision")
def tb_fp32_grads(n_params, recipe, block_size=256):
    return float(n_params * {"fp32": 16, "mixed": 18, "mixed_adam8bit": 12 + 8 / block_size, "bf16_pure": 8}[recipe])


@TB.wrong("right for block_size=256 only")
def tb_fixed_block(n_params, recipe, block_size=256):
    return float(n_params * {**PER, "mixed_adam8bit": 10 + 8 / 256}[recipe])


@TB.wrong("the table gives")
def tb_gib(n_params, recipe, block_size=256):
    return n_params * {**PER, "mixed_adam8bit": 10 + 8 / block_size}[recipe] / 2**30


@TB.right
def tb_sum_parts(n_params, recipe, block_size=256):
    weights, grads, master, states = {"fp32": (4, 4, 0, 8), "mixed": (2, 2, 4, 8),
                                      "mixed_adam8bit": (2, 2, 4, 2 + 2 * 4 / block_size), "bf16_pure": (2, 2, 0, 4)}[recipe]
    return (weights + grads + master + states) * n_params


@TB.right
def tb_float32(n_params, recipe, block_size=256):
    per = {"fp32": 16, "mixed": 16, "mixed_adam8bit": 10 + 8 / block_size, "bf16_pure": 8}[recipe]
    return torch.tensor(n_params, dtype=torch.float32) * per
