"""qedu.granularity: slices, statistic shapes that broadcast against x, and clear errors."""
import pytest
import torch

from qedu.granularity import PerChannel, PerGroup, PerTensor

AMAX = lambda rows: rows.amax(dim=1)  # noqa: E731 - the reduction used throughout


def test_per_tensor_gives_one_number():
    x = torch.randn(3, 4, 5)
    stat = PerTensor().reduce(x, AMAX)
    assert stat.shape == () and stat == x.max()
    assert PerTensor().reduce(torch.tensor(2.5), AMAX) == 2.5  # a 0-d tensor is one slice too


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_per_channel_keepdim_shape_and_values(axis):
    x = torch.randn(3, 4, 5)
    stat = PerChannel(axis).reduce(x, AMAX)
    expected_shape = [1, 1, 1]
    expected_shape[axis] = x.shape[axis]
    assert list(stat.shape) == expected_shape
    other = tuple(d for d in range(3) if d != axis % 3)
    assert torch.equal(stat, x.amax(dim=other, keepdim=True))
    assert torch.broadcast_shapes(stat.shape, x.shape) == x.shape


@pytest.mark.parametrize("shape, group_size, axis", [((4, 8), 2, -1), ((4, 8), 8, 1), ((6, 3), 3, 0),
                                                     ((2, 6, 4), 2, 1), ((12,), 4, 0)], ids=str)
def test_per_group_matches_a_loop_over_groups(shape, group_size, axis):
    x = torch.randn(shape)
    stat = PerGroup(group_size, axis).reduce(x, AMAX)
    assert stat.shape == x.shape  # repeated back so it broadcasts
    moved, smoved = x.movedim(axis, -1), stat.movedim(axis, -1)
    for start in range(0, shape[axis], group_size):
        block = moved[..., start:start + group_size]
        expected = block.amax(dim=-1, keepdim=True).expand_as(block)
        assert torch.equal(smoved[..., start:start + group_size], expected)


def test_per_group_compact_and_num_params():
    x = torch.randn(4, 64)
    g = PerGroup(32)
    stat = g.reduce(x, AMAX)
    compact = g.compact(stat)  # (4, 64) -> (4, 2)
    assert compact.shape == (4, 2) and compact.numel() == g.num_params(x.shape) == 8
    assert torch.equal(compact, x.reshape(4, 2, 32).amax(dim=-1))
    assert PerTensor().num_params((4, 64)) == 1 and PerChannel(0).num_params((4, 64)) == 4


@pytest.mark.parametrize("g", [PerTensor(), PerChannel(0), PerChannel(1), PerGroup(2), PerGroup(3, 0)], ids=repr)
def test_rows_round_trip(g):
    x = torch.arange(36.0).reshape(6, 6)
    rows = g.to_rows(x)
    assert rows.numel() == x.numel() and rows.shape[0] == g.num_params(x.shape)
    # each row is one slice: its amax, broadcast back, must bound every member of that slice
    assert bool((g.from_rows(rows.amax(dim=1), x.shape) >= x).all())


def test_granularities_are_frozen_values():
    assert PerGroup(32) == PerGroup(32, -1) and hash(PerChannel(0)) == hash(PerChannel(0))
    with pytest.raises(Exception):
        PerChannel(0).axis = 1


@pytest.mark.parametrize("make, x, exc, match", [
    (lambda: PerChannel(2), torch.zeros(3, 4), ValueError, r"axis=2 is out of range .* 2 dimension"),
    (lambda: PerChannel(-3), torch.zeros(3, 4), ValueError, r"axis=-3 is out of range"),
    (lambda: PerChannel(0), torch.tensor(1.0), ValueError, r"at least one dimension, got a 0-d tensor; use PerTensor"),
    (lambda: PerGroup(4), torch.tensor(1.0), ValueError, r"at least one dimension.*0-d"),
    (lambda: PerGroup(5), torch.zeros(3, 8), ValueError, r"group_size=5 does not divide the length 8 .* divisor"),
    (lambda: PerGroup(2, axis=3), torch.zeros(3, 8), ValueError, r"axis=3 is out of range"),
    (lambda: PerTensor(), torch.zeros(0, 3), ValueError, r"x is empty"),
    (lambda: PerTensor(), [1.0, 2.0], TypeError, r"x must be a torch.Tensor"),
], ids=["channel-axis", "channel-neg-axis", "channel-0d", "group-0d", "group-divide", "group-axis", "empty", "list"])
def test_bad_inputs_raise_clear_errors(make, x, exc, match):
    with pytest.raises(exc, match=match):
        make().reduce(x, AMAX)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: PerGroup(0), ValueError, r"group_size must be between 1 and inf, got 0"),
    (lambda: PerGroup(2.0), TypeError, r"group_size must be an int, got the float 2.0; pass 2"),
    (lambda: PerChannel("0"), TypeError, r"axis must be an int"),
], ids=["group-zero", "group-float", "axis-str"])
def test_bad_construction_raises(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_reduction_must_return_one_value_per_row():
    with pytest.raises(ValueError, match=r"one value per row.*dim=1"):
        PerChannel(0).reduce(torch.zeros(3, 4), lambda rows: rows.amax(dim=0))


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
ISSUE20_BAD = {
    "per-channel-negative-size": (lambda: PerChannel(0).num_params((-3, 4)), ValueError, r"shape\[0\] must be between 0 and inf, got -3"),
    "per-tensor-negative-size": (lambda: PerTensor().num_params((4, -1)), ValueError, r"shape\[1\] must be between 0"),
    "per-group-negative-size": (lambda: PerGroup(2).num_params((-2, 4)), ValueError, r"shape\[0\]"),
    "per-channel-float-size": (lambda: PerChannel(0).num_params((2.5, 4)), TypeError, r"shape\[0\] must be an int"),
    "shape-not-a-tuple": (lambda: PerChannel(0).num_params("64x128"), TypeError, r"shape must be a tuple of sizes"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_issue20_num_params_takes_torch_sizes_and_numpy_ints():
    import numpy as np

    assert PerChannel(0).num_params(torch.Size([np.int64(3), 4])) == 3
    assert PerGroup(2).num_params([4, 6]) == 12
