"""Tests for qedu.outliers: per-channel activation maxima, measured with hooks that change nothing."""
import copy

import pytest
import torch
from torch import nn

from qedu.models import TinyGPT
from qedu.outliers import channel_stats, heatmap_data, linear_input_absmax, outlier_table, residual_absmax


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def test_linear_inputs_by_hand():
    model = _mlp()
    x = torch.randn(10, 4)
    stats = linear_input_absmax(model, x)
    assert list(stats) == ["0", "2"]
    assert torch.equal(stats["0"], x.abs().amax(0))
    assert torch.allclose(stats["2"], torch.relu(model[0](x)).abs().amax(0))


def test_measuring_changes_nothing():
    model = _mlp().train()
    before = copy.deepcopy(model.state_dict())
    linear_input_absmax(model, torch.randn(3, 4))
    assert model.training
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_hooks_are_removed_when_the_forward_fails():
    model = _mlp()
    with pytest.raises(ValueError, match="cannot run on inputs"):
        linear_input_absmax(model, torch.randn(3, 5))  # wrong width: torch's error, naming the argument
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_residual_stream_of_a_tinygpt_by_hand():
    torch.manual_seed(0)
    model = TinyGPT(16, 8, 32, 2, 4).eval()
    idx = torch.randint(0, 16, (3, 8))
    stats = residual_absmax(model, idx)
    with torch.no_grad():
        h = model.tok(idx) + model.pos(torch.arange(8))
        assert torch.equal(stats["embed"], h.abs().amax((0, 1)))
        for i, block in enumerate(model.blocks):
            h = block(h)
            assert torch.allclose(stats[f"block{i}"], h.abs().amax((0, 1)))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_table_covers_every_linear_and_the_residual_points():
    torch.manual_seed(0)
    model = TinyGPT(16, 8, 32, 2, 4)
    rows = outlier_table(model, torch.randint(0, 16, (2, 8)))
    names = [r.name for r in rows]
    assert names[:4] == ["blocks.0.qkv", "blocks.0.proj", "blocks.0.fc1", "blocks.0.fc2"]
    assert names[-3:] == ["residual.embed", "residual.block0", "residual.block1"]
    assert rows[3].channels == 128


def test_channel_stats_counts_the_threshold():
    s = channel_stats("x", torch.tensor([6.0, 5.99, 1.0, 12.0]))
    assert s.n_outlier_channels == 2 and s.top_channels == (3, 0, 1) and s.max == 12.0
    assert s.as_dict()["layer"] == "x"


@pytest.mark.parametrize("call, error, match", [
    (lambda: linear_input_absmax(nn.ReLU(), torch.zeros(2)), ValueError, "no nn.Linear"),
    (lambda: residual_absmax(_mlp(), torch.zeros(2, 4)), TypeError, "TinyGPT"),
    (lambda: channel_stats("x", torch.zeros(2, 2)), TypeError, "1-D"),
    (lambda: linear_input_absmax("model", torch.zeros(2)), TypeError, "torch.nn.Module"),
], ids=["no-linear", "no-blocks", "2d", "not-a-module"])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_heatmap_groups_rows_by_width():
    torch.manual_seed(0)
    model = TinyGPT(16, 8, 32, 2, 4)
    idx = torch.randint(0, 16, (2, 8))
    data = heatmap_data(model, idx)
    assert sorted(data) == [32, 128]
    names, m = data[128]
    assert names == ["blocks.0.fc2", "blocks.1.fc2"] and m.shape == (2, 128)
    assert torch.equal(m[1], linear_input_absmax(model, idx)["blocks.1.fc2"])
    assert data[32][0][-1] == "residual.block1"
