"""qedu.ternary: TWN's threshold and level, against the math and against min/max ternary."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qedu.formats import IntFormat
from qedu.granularity import PerChannel
from qedu.quantizers import choose_qparams, fake_quantize
from qedu.ternary import twn_ptq, twn_quantize


def test_hand_case_per_row():
    w = torch.tensor([[0.1, -0.5, 0.6, 0.0], [2.0, -2.0, 0.1, -0.1]])
    q, scale = twn_quantize(w)
    # row 0: mean|w| = 0.3, delta 0.21 -> codes 0 -1 1 0, scale mean(0.5, 0.6); row 1: mean 1.05, delta 0.735
    assert q.tolist() == [[0, -1, 1, 0], [1, -1, 0, 0]]
    assert q.dtype == torch.int8 and scale.shape == (2, 1)
    assert torch.allclose(scale.flatten(), torch.tensor([0.55, 2.0]))


def test_axis_one_and_zero_rows():
    w = torch.tensor([[1.0, 0.0], [0.1, 0.0]])
    q, scale = twn_quantize(w, axis=1)  # per column: column 1 is all zero
    assert scale.shape == (1, 2) and scale[0, 1] == 0 and (q[:, 1] == 0).all()
    assert q[:, 0].tolist() == [1, 0]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(2, 40), st.integers(0, 2**16))
def test_scale_is_the_least_squares_level_for_its_codes(rows, cols, seed):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    q, scale = twn_quantize(w)
    assert set(q.unique().tolist()) <= {-1, 0, 1}
    err = lambda s: ((w - s * q) ** 2).sum(dim=1)
    for factor in (0.9, 1.1):  # any other level for the same codes is worse (or equal for empty rows)
        assert (err(scale) <= err(scale * factor) + 1e-6).all()


def test_twn_beats_min_max_ternary_on_normal_weights():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    q, scale = twn_quantize(w)
    ternary = IntFormat(2, narrow_range=True)  # codes -1, 0, 1: min/max puts the level at max|w|
    s, z = choose_qparams(w, ternary, PerChannel(0))
    mse_twn = ((w - scale * q) ** 2).mean()
    mse_minmax = ((w - fake_quantize(w, s, z, ternary)) ** 2).mean()
    assert mse_twn < 0.5 * mse_minmax


def test_twn_ptq_copies_and_ternarizes_every_linear():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    before = [p.detach().clone() for p in model.parameters()]
    out = twn_ptq(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # caller untouched
    for layer in (out[0], out[2]):
        for row in layer.weight.detach():
            assert len(row.abs().unique()) <= 2  # 0 and the row's level
    assert torch.equal(out[0].bias, model[0].bias)


@pytest.mark.parametrize("call,error,match", [
    (lambda: twn_quantize(torch.tensor(1.0)), ValueError, "at least one dimension"),
    (lambda: twn_quantize(torch.ones(2, 2), delta_factor=-1), ValueError, "delta_factor"),
    (lambda: twn_quantize(torch.ones(2, 2), axis=2), ValueError, "axis"),
    (lambda: twn_ptq("mlp"), TypeError, "model must be"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
