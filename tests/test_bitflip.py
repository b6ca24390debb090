"""qedu.bitflip: flipped codes against two's complement by hand and numpy, and the search on a small model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qedu.bitflip import bit_flip_attack, flip_code
from qedu.data import load_digits
from qedu.models import make_mlp
from qedu.packing import pack
from qedu.ptq import PTQConfig, quantize_model


@pytest.mark.parametrize("bits", [4, 8])
def test_flip_code_is_a_bit_flip_of_the_twos_complement_storage(bits):
    q = torch.arange(-(2 ** (bits - 1)), 2 ** (bits - 1))
    for bit in range(bits):
        flipped = flip_code(q, bit, bits)
        stored = (q.numpy() % 2**bits) ^ (1 << bit)  # the same flip done on the unsigned bit pattern
        assert np.array_equal((flipped.numpy() % 2**bits), stored)
        assert torch.equal(flip_code(flipped, bit, bits), q)  # flipping twice restores the code
        assert flipped.min() >= -(2 ** (bits - 1)) and flipped.max() < 2 ** (bits - 1)
    assert flip_code(torch.tensor([-1]), 7, 8).item() == 127 and flip_code(torch.tensor([5]), 0, 8).item() == 4


def test_flip_code_unsigned_and_in_packed_bytes():
    assert flip_code(torch.tensor([3]), 2, 4, signed=False).item() == 7
    codes = torch.tensor([1, 2, 3, 4])  # unsigned 4-bit codes, two per byte, first in the low nibble
    flipped = codes.clone()
    flipped[3] = flip_code(codes[3:4], 3, 4, signed=False)
    before, after = pack(codes, 4), pack(flipped, 4)
    assert int(before[1]) ^ int(after[1]) == 1 << 7 and torch.equal(before[0], after[0])  # code 3 -> byte 1, bit 7


@pytest.fixture(scope="module")
def small():
    data = load_digits(seed=0)
    return data, quantize_model(make_mlp(seed=0), PTQConfig(weight_bits=8, act_bits=8), data.x_calib)


def test_attack_leaves_the_model_alone_and_keeps_codes_and_weights_consistent(small):
    data, q = small
    before = {k: v.clone() for k, v in q.state_dict().items()}
    r = bit_flip_attack(q, data.x_train[:64], data.y_train[:64], n_flips=3, top_k=5)
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())  # the caller's model is untouched
    assert len(r.flips) == 3 and len(r.accuracies) == 4
    losses = [f.loss for f in r.flips]
    assert losses == sorted(losses) and losses[0] > r.loss_before  # every kept flip raises the attack loss
    attacked = dict(r.model.named_modules())
    for f in r.flips:
        layer = attacked[f.layer]
        assert int(layer.weight_q.view(-1)[f.index]) == f.new_code
        assert flip_code(torch.tensor([f.old_code]), f.bit, 8).item() == f.new_code
        assert (f.byte, f.bit_in_byte) == (f.index, f.bit)  # int8: one code per byte
    for name, m in attacked.items():  # the float weight the layer computes with equals dequantize(codes)
        if hasattr(m, "weight_q"):
            expected = m.weight_scale.reshape(-1, 1) * (m.weight_q - m.weight_zero_point.reshape(-1, 1)).float()
            assert torch.allclose(m.layer.weight.reshape(len(expected), -1), expected.reshape(len(expected), -1))


def test_bad_input_is_a_clear_error(small):
    data, q = small
    with pytest.raises(TypeError, match="quantize_model"):
        bit_flip_attack(make_mlp(seed=0), data.x_train[:8], data.y_train[:8])
    with pytest.raises(ValueError, match="n_flips"):
        bit_flip_attack(q, data.x_train[:8], data.y_train[:8], n_flips=0)
    with pytest.raises(ValueError, match="y_attack"):
        bit_flip_attack(q, data.x_train[:8], data.y_train[:7])
    with pytest.raises(ValueError, match="bit"):
        flip_code(torch.tensor([1]), 8, 8)
    with pytest.raises(TypeError, match="integer"):
        flip_code(torch.tensor([1.0]), 0, 8)


def test_exhaustive_search_finds_at_least_the_greedy_first_flip():
    from qedu.bitflip import exhaustive_flip_search

    data = load_digits(seed=0)
    q = quantize_model(make_mlp(hidden=(8,), seed=0), PTQConfig(weight_bits=4, act_bits=8), data.x_calib)
    x, y = data.x_train[:16], data.y_train[:16]
    last = [n for n, m in q.named_modules() if hasattr(m, "weight_q")][-1]
    best, losses = exhaustive_flip_search(q, x, y, layers=[last])
    n_codes = int(dict(q.named_modules())[last].weight_q.numel())
    assert len(losses) == n_codes * 4 and best.loss == float(losses.max())  # every (weight, bit) tried once
    greedy = bit_flip_attack(q, x, y, n_flips=1, top_k=5).flips[0]
    if greedy.layer == last:
        assert best.loss >= greedy.loss - 1e-9
    with pytest.raises(ValueError, match="must name quantized layers"):
        exhaustive_flip_search(q, x, y, layers=["nope"])


def test_lesson_09_exhaustive_search_claims():
    from qedu.results import load_results

    rows = {r["config"].split(",")[0]: r for r in load_results("bitflip")["rows"]}
    assert (rows["W8A8"]["flips_tried"], rows["W4A8"]["flips_tried"]) == (136_192, 68_096)  # "tried every one"
    for r in rows.values():  # "the gradient-guided search found the most damaging single flip on its first try"
        assert r["greedy_rank"] == 1 and r["best"]["loss"] == r["greedy_first"]["loss"]
    assert (rows["W8A8"]["best"]["old_code"], rows["W8A8"]["best"]["new_code"]) == (-1, 127)  # the lesson's first flip
    import math

    assert len(str(math.comb(136_192, 10))) == 45  # "about 10^45 sets of ten"
