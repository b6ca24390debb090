"""Checks for the exercises of lessons 06-07: loss scaling, stochastic rounding, 8-bit states, memory.

After a mismatch a classic mistake is named only when a second probe confirms it; otherwise the
probes describe what differs (which output, which kind of input, the bf16 neighbours, the block).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from qedu.checks.formats import _pair_notes, _ratio_note
from qedu.checks.framework import Case, CheckSpec, Failure, Mistake, _close, compare, localize, run_check
from qedu.checks.quantizers import factor
from qedu.memory import training_memory
from qedu.nonuniform import blockwise_absmax_quantize
from qedu.optim import dynamic_map, linear_map

__all__ = ["update_loss_scale_reference", "stochastic_round_bf16_reference", "blockwise_absmax_reference",
           "training_bytes_reference", "check_update_loss_scale", "check_stochastic_round_bf16",
           "check_blockwise_absmax", "check_training_bytes"]


# --- 1. the dynamic loss scaler's update rule -----------------------------------------------

def update_loss_scale_reference(scale: float, clean_steps: int, found_inf: bool, growth_factor: float = 2.0,
                                backoff_factor: float = 0.5, growth_interval: int = 2000) -> tuple[float, int]:
    """One ``update()`` of :class:`qedu.loss_scaling.DynamicLossScaler`: ``(new_scale, new_clean_steps)``."""
    if found_inf:
        return scale * backoff_factor, 0
    clean_steps += 1
    if clean_steps == growth_interval:
        return scale * growth_factor, 0
    return scale, clean_steps


def _no_reset_after_overflow(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, clean_steps
    return update_loss_scale_reference(scale, clean_steps, False, growth_factor, backoff_factor, growth_interval)


def _compare_before_counting(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, 0
    if clean_steps == growth_interval:
        return scale * growth_factor, 0
    return scale, clean_steps + 1


def _no_reset_after_growth(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, 0
    clean_steps += 1
    if clean_steps == growth_interval:
        return scale * growth_factor, clean_steps
    return scale, clean_steps


def _divided_by_backoff(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale / backoff_factor, 0
    return update_loss_scale_reference(scale, clean_steps, False, growth_factor, backoff_factor, growth_interval)


def _overflow_counts_as_clean(scale, clean_steps, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    new_scale, new_steps = update_loss_scale_reference(scale, clean_steps, False, growth_factor, backoff_factor, growth_interval)
    return (scale * backoff_factor, new_steps) if found_inf else (new_scale, new_steps)


def _scale_case(rng: np.random.Generator) -> Case:
    interval = int(rng.integers(1, 6))
    return Case((float(2.0 ** int(rng.integers(-4, 24))), int(rng.integers(0, interval)), bool(rng.random() < 0.3)),
                {"growth_factor": float(rng.choice([2.0, 4.0])), "backoff_factor": float(rng.choice([0.5, 0.25])),
                 "growth_interval": interval})


UPDATE_LOSS_SCALE = CheckSpec(
    name="update_loss_scale",
    reference=update_loss_scale_reference,
    golden=[
        Case((1024.0, 0, False), label="a clean step is counted"),
        Case((1024.0, 1999, False), label="the 2000th clean step doubles the scale"),
        Case((1024.0, 5, True), label="an overflow halves the scale"),
        Case((8.0, 2, True), {"growth_interval": 3}, label="an overflow on the step that would have grown"),
        Case((8.0, 0, False), {"growth_interval": 1, "growth_factor": 4.0}, label="growth_interval=1"),
        Case((64.0, 3, True), {"backoff_factor": 0.25, "growth_interval": 5}, label="backoff_factor 0.25"),
        Case((3.0, 4, False), {"growth_factor": 3.0, "growth_interval": 5}, label="growth_factor 3 on the 5th clean step"),
    ],
    describe=lambda f: _describe_loss_scale(f),
    random_case=_scale_case,
    mistakes=[
        Mistake("the clean-step counter was not reset after an overflow", _no_reset_after_overflow,
                "after an overflow the count of clean steps starts again from 0."),
        Mistake("compared with growth_interval before counting this step", _compare_before_counting,
                "first add this clean step (clean_steps + 1), then compare with growth_interval: "
                "with growth_interval=2000 the 2000th clean step grows the scale."),
        Mistake("the counter was not reset after growing", _no_reset_after_growth,
                "after growing, return clean_steps = 0, or the scale never grows again."),
        Mistake("divided by backoff_factor instead of multiplying", _divided_by_backoff,
                "backoff_factor is < 1 (0.5): scale * backoff_factor makes the scale smaller."),
        Mistake("an overflow step was counted as a clean step", _overflow_counts_as_clean,
                "on found_inf, back off and return 0 clean steps; only finite steps count."),
    ],
    hints=("if found_inf: (scale * backoff_factor, 0); else count the step and grow when the count "
           "reaches growth_interval.",),
)


def _describe_loss_scale(f: Failure) -> list[str]:
    notes = _pair_notes(f.expected, f.actual, ("the new scale", "the new clean_steps"))
    a = f.actual
    if isinstance(a, (tuple, list)) and len(a) == 2 and a[0] != f.expected[0]:
        note = _ratio_note(f.expected[0], a[0]) if f.expected[0] and a[0] else None
        if note is None and f.expected[0] and isinstance(a[0], (int, float)) and a[0]:
            notes.append(f"the new scale is {factor(a[0] / f.expected[0])} x the expected")
    scale, clean, found = f.case.args
    other = Case((scale, clean, not found), dict(f.case.kwargs))
    if f.right_on(other):
        notes.append(f"right for found_inf={not found}, wrong for found_inf={found}")
    if f.case.kwargs:
        plain = Case((scale, min(clean, 1998), found))
        if f.right_on(plain):
            notes.append(f"right with the default factors and interval, wrong with {f.case.kwargs}: use the arguments "
                         "growth_factor, backoff_factor and growth_interval, not fixed numbers")
    return notes


def check_update_loss_scale(fn):
    """Check ``fn(scale, clean_steps, found_inf, growth_factor, backoff_factor, growth_interval)``."""
    return run_check(UPDATE_LOSS_SCALE, fn)


# --- 2. stochastic rounding of float32 to bfloat16 with 16 random bits -------------------------

def stochastic_round_bf16_reference(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Add 16 random bits ``r`` (0..65535) below bf16's last kept bit, then cut the low 16 bits.

    A float32 whose dropped bits are ``low`` rounds up exactly when ``low + r >= 2**16``, which
    happens with probability ``low / 2**16``: stochastic rounding on the bit pattern.
    """
    bits = x.contiguous().view(torch.int32)
    return ((bits + r.to(torch.int32)) & -65536).view(torch.float32)  # -65536 = 0xFFFF0000


def _nearest_bf16(x, r):
    return x.to(torch.bfloat16).float()


def _truncate(x, r):
    return (x.contiguous().view(torch.int32) & -65536).view(torch.float32)


def _no_mask(x, r):
    return (x.contiguous().view(torch.int32) + r.to(torch.int32)).view(torch.float32)


def _bits_shifted(x, r):
    return ((x.contiguous().view(torch.int32) + (r.to(torch.int32) << 16)) & -65536).view(torch.float32)


def _kept_low_bits(x, r):
    return ((x.contiguous().view(torch.int32) + r.to(torch.int32)) & 0xFFFF).view(torch.float32)


def _bf16_case(rng: np.random.Generator) -> Case:
    n = int(rng.integers(1, 12))
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)).astype(np.float32)
    return Case((torch.from_numpy(x), torch.from_numpy(rng.integers(0, 2**16, n).astype(np.int32))))


_X_QUARTER = torch.tensor([1.0 + 2**-9] * 4 + [-(1.0 + 2**-9)] * 2)  # low 16 bits = 0x4000: p(up) = 1/4
STOCHASTIC_ROUND_BF16 = CheckSpec(
    name="stochastic_round_bf16",
    reference=stochastic_round_bf16_reference,
    golden=[
        Case((torch.tensor([1.0 + 2**-9, 1.0 + 3 * 2**-9]), torch.tensor([49152, 0], dtype=torch.int32)),
             label="a quarter of a step up with r = 49152, three quarters with r = 0"),
        Case((_X_QUARTER, torch.tensor([0, 49151, 49152, 65535, 49151, 49152], dtype=torch.int32)),
             label="1 + 2^-9 rounds up iff r >= 49152"),
        Case((torch.tensor([1.5, -3.0, 0.0]), torch.tensor([65535, 65535, 65535], dtype=torch.int32)),
             label="bf16 values never move"),
        Case((torch.tensor([3e-39, 1e-3, 123.456]), torch.tensor([40000, 1, 30000], dtype=torch.int32)),
             label="subnormal, small, large"),
    ],
    random_case=_bf16_case,
    mistakes=[
        Mistake("rounded to nearest instead of stochastically", _nearest_bf16,
                "x.to(torch.bfloat16) rounds to nearest; add the random bits r to x's bit pattern instead."),
        Mistake("truncated without adding the random bits", _truncate,
                "add r to the integer bit pattern first, then clear the low 16 bits."),
        Mistake("added the random bits but kept the low 16 bits", _no_mask,
                "after adding r, clear the 16 bits bf16 does not keep: & 0xFFFF0000 (-65536 as int32)."),
        Mistake("shifted the random bits into the kept part", _bits_shifted,
                "r goes into the 16 bits that are dropped (add r, not r << 16)."),
        Mistake("masked with 0xFFFF, keeping the low bits instead of the high ones", _kept_low_bits,
                "bf16 is the *top* 16 bits of a float32: keep them with & -65536 (0xFFFF0000)."),
    ],
    hints=("bits = x.view(torch.int32); add r; clear the low 16 bits (& -65536); view the result as float32 again.",),
    describe=lambda f: _describe_bf16(f),
)


def _bf16_features(x, r) -> dict:
    bits = x.contiguous().view(torch.int32)
    low = bits & 0xFFFF
    return {"low 16 bits of x + r reach 2**16 (the sum carries: round the magnitude up)": (low + r.to(torch.int32)) >= 2**16,
            "low 16 bits of x + r stay below 2**16 (round the magnitude down)": (low + r.to(torch.int32)) < 2**16,
            "x < 0": x < 0,
            "x is already a bf16 value": low == 0}


def _describe_bf16(f: Failure) -> list[str]:
    x, r = f.case.args
    a = f.actual
    if not isinstance(a, torch.Tensor) or a.shape != x.shape:
        return []
    notes = []
    if a.dtype != torch.float32:
        return notes
    bits_a = a.detach().contiguous().view(torch.int32)
    if bool(((bits_a & 0xFFFF) != 0).any()):
        notes.append("some of your results are not bf16 values (their low 16 bits are not 0): clear them with & -65536")
    down = stochastic_round_bf16_reference(x, torch.zeros_like(r))
    up = (down.contiguous().view(torch.int32) + 65536).view(torch.float32)
    neighbour = (a == down) | (a == up) | (a == x)
    if not bool(neighbour.all()):
        notes.append(f"{int((~neighbour).sum())} of your {a.numel()} results are neither of x's two bf16 neighbours "
                     "(x with its low 16 bits cleared, and the next bf16 value away from 0)")

    def per_case(case, expected, mine):
        if not isinstance(mine, torch.Tensor) or mine.shape != expected.shape or mine.dtype != torch.float32:
            return None
        return ~_close(expected, mine.detach()), _bf16_features(*case.args)

    wrong, features = f.pooled(per_case)
    where = localize(wrong, features) if wrong is not None else None
    if where:
        notes.append("wrong " + where)
    return notes


def check_stochastic_round_bf16(fn):
    """Check ``fn(x, r) -> float32 tensor of bf16 values`` (``r``: int32 random bits in 0..65535)."""
    return run_check(STOCHASTIC_ROUND_BF16, fn)


# --- 3. block-wise absmax quantization of an optimizer state -----------------------------------

def blockwise_absmax_reference(x: torch.Tensor, levels: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, absmax)``: uint8 codes shaped like ``x`` (nearest level of ``x / absmax`` of its block,
    a tie to the lower level) and float32 absmax per block. :func:`qedu.nonuniform.blockwise_absmax_quantize`."""
    q, absmax = blockwise_absmax_quantize(x, levels, block_size)
    return q.to(torch.uint8), absmax


def _nearest(normalized, levels):
    return torch.argmin((normalized[..., None] - levels).abs(), dim=-1)


def _blocks(x, block_size):
    n = x.numel()
    n_blocks = math.ceil(n / block_size)
    return torch.nn.functional.pad(x.reshape(-1), (0, n_blocks * block_size - n)).reshape(n_blocks, block_size)


def _per_tensor(x, levels, block_size):
    absmax = x.abs().max().reshape(1)
    q = _nearest(x / absmax, levels)
    return q.to(torch.uint8), absmax


def _signed_max(x, levels, block_size):
    blocks = _blocks(x, block_size)
    absmax = blocks.amax(dim=1)
    q = _nearest(blocks / absmax[:, None], levels).reshape(-1)[: x.numel()].reshape(x.shape)
    return q.to(torch.uint8), absmax


def _round_down(x, levels, block_size):
    blocks = _blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1)
    idx = torch.searchsorted(levels, blocks / absmax[:, None], right=True) - 1
    q = idx.clamp(0, len(levels) - 1).reshape(-1)[: x.numel()].reshape(x.shape)
    return q.to(torch.uint8), absmax


def _returned_values(x, levels, block_size):
    q, absmax = blockwise_absmax_reference(x, levels, block_size)
    return levels[q.long()] * absmax.repeat_interleave(block_size)[: x.numel()].reshape(x.shape), absmax


def _blockwise_case(rng: np.random.Generator) -> Case:
    n = int(rng.integers(1, 40))
    x = (rng.standard_normal(n) * np.exp(rng.standard_normal(n) * 2)).astype(np.float32)
    if n % 3 == 0 and rng.random() < 0.5:
        x = x.reshape(3, n // 3)  # 2-D states too
    signed = rng.random() < 0.5
    levels = dynamic_map(signed=True) if signed else linear_map(signed=True)
    return Case((torch.from_numpy(x), levels, int(rng.choice([1, 2, 4, 8, 16]))))


BLOCKWISE_ABSMAX = CheckSpec(
    name="blockwise_absmax",
    reference=blockwise_absmax_reference,
    golden=[
        Case((torch.tensor([0.3, -1.0, 4.0]), linear_map(signed=True), 2), label="two blocks, linear levels"),
        Case((torch.tensor([[-8.0, 1.0, 0.5], [0.0, 0.0, 0.0]]), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]), 3),
             label="a negative absmax and an all-zero block"),
        Case((torch.tensor([1e-4, 1e-2, 1.0, -0.3, 2e-6]), dynamic_map(signed=True), 5), label="dynamic map"),
        Case((torch.tensor([0.25, 1.0, -0.75, 1.0]), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]), 2),
             label="ties go to the lower level: 0.25 -> 0, -0.75 -> -1"),
        Case((torch.tensor([[1.0, -2.0, 0.5], [4.0, 0.0, -1.0], [0.5, 0.25, 3.0]]), linear_map(signed=True), 4),
             label="a 3x3 tensor in blocks of 4 (blocks cross rows)"),
        Case((torch.tensor([[0.0, 0.0], [0.0, 0.0], [2.0, -1.0]]), torch.tensor([-1.0, 0.0, 0.5, 1.0]), 2),
             label="all-zero blocks, uneven levels"),
    ],
    random_case=_blockwise_case,
    describe=lambda f: _describe_blockwise(f),
    mistakes=[
        Mistake("one absmax for the whole tensor instead of one per block", _per_tensor,
                "split the flattened tensor into blocks of block_size and take max |x| of each block."),
        Mistake("used max(x) instead of max(|x|)", _signed_max,
                "a block of mostly negative values needs its largest magnitude: x.abs().amax(dim=1)."),
        Mistake("rounded down to the level below instead of the nearest", _round_down,
                "pick the nearest level: argmin |x / absmax - levels| (ties to the lower level)."),
        Mistake("returned the dequantized values instead of the codes", _returned_values,
                "return the indices q of the levels (uint8), not levels[q] * absmax."),
    ],
    hints=("pad the flat tensor to whole blocks, absmax = |block|.max(), q = nearest level of x / absmax, "
           "then drop the padding and reshape like x.",),
)


def _blockwise_features(x, levels, block_size) -> dict:
    n = x.numel()
    blocks = _blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    normalized = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    d = (normalized[..., None] - levels).abs()
    two = d.sort(dim=-1).values[..., :2]
    per_block = lambda t: t.reshape(-1)[:n].reshape(x.shape)  # noqa: E731  (n_blocks, block_size) -> x's shape
    last = torch.zeros_like(blocks, dtype=torch.bool)
    last[-1] = n % block_size != 0
    return {"x / absmax is exactly halfway between two levels": per_block(two[..., 0] == two[..., 1]),
            "the block is all zeros": per_block((absmax == 0).expand_as(blocks)),
            "the value is in the last block, which needs padding": per_block(last),
            "the block's largest magnitude is a negative value": per_block((blocks.amax(dim=1, keepdim=True) < absmax).expand_as(blocks)),
            "x < 0": x < 0}


def _describe_blockwise(f: Failure) -> list[str]:
    a = f.actual
    if not (isinstance(a, (tuple, list)) and len(a) == 2):
        return []
    q_ok = compare(f.expected[0], a[0]) is None
    m_ok = compare(f.expected[1], a[1]) is None
    notes = []
    if q_ok and not m_ok:
        notes.append("codes right, absmax wrong: one float32 max|x| per block, shape (n_blocks,)")
    elif m_ok and not q_ok:
        notes.append("absmax right, codes wrong")

    def per_case(case, expected, mine):
        if not (isinstance(mine, (tuple, list)) and len(mine) == 2 and isinstance(mine[0], torch.Tensor)):
            return None
        if mine[0].shape != expected[0].shape:
            return None
        return mine[0].long() != expected[0].long(), _blockwise_features(*case.args)

    wrong, features = f.pooled(per_case)
    where = localize(wrong, features) if wrong is not None and bool(wrong.any()) else None
    if where:
        tip = {"halfway": ": a tie goes to the lower level (torch.argmin returns the first minimum)",
               "all zeros": ": an all-zero block has absmax 0; divide by 1 there and it gets the code of level 0",
               "padding": ": pad the flat tensor with zeros to whole blocks, then drop the padding from q"}
        notes.append("codes wrong " + where + next((t for k, t in tip.items() if k in where), ""))
    return notes


def check_blockwise_absmax(fn):
    """Check ``fn(x, levels, block_size) -> (uint8 codes shaped like x, float32 absmax per block)``."""
    return run_check(BLOCKWISE_ABSMAX, fn)


# --- 4. the memory calculator -------------------------------------------------------------------

def training_bytes_reference(n_params: int, recipe: str, block_size: int = 256) -> float:
    """Bytes of weights + gradients + fp32 master weights + Adam states (:func:`qedu.memory.training_memory`)."""
    return float(training_memory(n_params, recipe, block_size=block_size).total)


_TABLE = {"fp32": (4, 4, 0, 8), "mixed": (2, 2, 4, 8), "mixed_adam8bit": (2, 2, 4, None), "bf16_pure": (2, 2, 0, 4)}


def _with(changes):
    def bytes_fn(n_params, recipe, block_size=256):
        w, g, m, o = changes.get(recipe, _TABLE[recipe])
        o = 2 + 8 / block_size if o is None else o
        return float(n_params * (w + g + m + o))
    return bytes_fn


def _training_case(rng: np.random.Generator) -> Case:
    return Case((int(rng.integers(1, 10**10)), str(rng.choice(list(_TABLE)))), {"block_size": int(rng.choice([64, 256, 2048]))})


TRAINING_BYTES = CheckSpec(
    name="training_bytes",
    reference=training_bytes_reference,
    golden=[Case((1_000_000, name), label=name) for name in _TABLE],
    random_case=_training_case,
    mistakes=[
        Mistake("forgot the fp32 master weights of mixed precision", _with({"mixed": (2, 2, 0, 8), "mixed_adam8bit": (2, 2, 0, None)}),
                "mixed precision keeps an fp32 copy of every weight for the optimizer: + 4 bytes."),
        Mistake("counted one Adam state instead of two",
                _with({"fp32": (4, 4, 0, 4), "mixed": (2, 2, 4, 4), "bf16_pure": (2, 2, 0, 2)}),
                "Adam keeps two numbers per parameter: m and v."),
        Mistake("8-bit Adam without the absmax of each block", _with({"mixed_adam8bit": (2, 2, 4, 2)}),
                "each block of block_size values also stores one float32 absmax, for m and for v: + 2 * 4 / block_size."),
        Mistake("pure bf16 with fp32 Adam states", _with({"bf16_pure": (2, 2, 0, 8)}),
                "in pure bf16 training Adam's m and v are bf16 too: 2 x 2 bytes."),
        Mistake("kept fp32 gradients in mixed precision", _with({"mixed": (2, 4, 4, 8), "mixed_adam8bit": (2, 4, 4, None)}),
                "the backward pass produces gradients in the 16-bit format: 2 bytes each."),
    ],
    hints=("bytes per parameter = weights + grads + master + optimizer; e.g. fp32: 4 + 4 + 0 + 8.",),
    rtol=1e-6,  # float32 arithmetic is fine
    describe=lambda f: _describe_bytes(f),
)


def _describe_bytes(f: Failure) -> list[str]:
    n, recipe = f.case.args
    notes = []
    a = f.actual
    if isinstance(a, (int, float)) and a and f.expected:
        per = a / n
        notes.append(f"you count {per:g} bytes per parameter for {recipe!r}, the table gives {f.expected / n:g} "
                     f"(yours is {factor(a / f.expected)} x the expected)")
    right = [r for r in _TABLE if f.right_on(Case((n, r), dict(f.case.kwargs)))]
    if right and len(right) < len(_TABLE):
        notes.append(f"right for {', '.join(right)}; wrong for {', '.join(r for r in _TABLE if r not in right)}")
    if recipe == "mixed_adam8bit":
        other = Case((n, recipe), {"block_size": 64 if f.case.kwargs.get("block_size", 256) != 64 else 2048})
        if not f.right_on(other) and f.right_on(Case((n, recipe))):
            notes.append("right for block_size=256 only: the absmax costs 2 * 4 / block_size bytes per parameter")
    return notes


def check_training_bytes(fn):
    """Check ``fn(n_params, recipe, block_size=256) -> total bytes`` for the recipes of lesson 07."""
    return run_check(TRAINING_BYTES, fn)
