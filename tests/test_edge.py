"""qedu.edge: costs by arithmetic, the search returns the best configuration that fits, and its
quantized models are the ones qedu.ptq builds."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qedu.edge import MCU_256KB, MCU_320KB, Budget, BudgetSearch, Candidate, energy_estimate, model_costs, table
from qedu.energy import ENERGY_45NM_PJ


@pytest.fixture(scope="module")
def search():
    from qedu.data import load_digits
    from qedu.models import pretrained

    return BudgetSearch({"mlp": pretrained("mlp", seed=0), "cnn": pretrained("cnn", seed=0)}, load_digits(seed=0))


def test_budgets_are_the_cited_microcontrollers():
    assert MCU_256KB.flash_bytes == 2**20 and MCU_256KB.sram_bytes == 256 * 1024
    assert MCU_320KB.sram_bytes == 320 * 1024 and MCU_320KB.flash_bytes == 2**20
    small = MCU_256KB.scaled(1 / 128)
    assert (small.flash_bytes, small.sram_bytes) == (8192, 2048)
    assert Budget(10, 10, 5).fits(10, 10, 5) and not Budget(10, 10, 5).fits(10, 10, 6)
    with pytest.raises(ValueError, match="factor"):
        MCU_256KB.scaled(0)
    with pytest.raises(ValueError, match="flash_bytes"):
        Budget(0, 10)


def test_costs_by_hand():
    from qedu.models import make_cnn, make_mlp

    # MLP 64-128-64-10: the widest pair is 64 in + 128 out (and 128 in + 64 out) bytes
    assert model_costs(make_mlp(seed=0), torch.zeros(1, 1, 8, 8)) == (192, 64 * 128 + 128 * 64 + 64 * 10, 192 + 192 + 74)
    sram, macs, _ = model_costs(make_cnn(seed=0), torch.zeros(3, 1, 8, 8))
    assert sram == 16 * 8 * 8 + 16 * 4 * 4  # the pool: conv1's output (1024 B) in, 256 B out
    assert macs == 16 * 64 * 9 + 32 * 16 * 16 * 9 + 512 * 10
    e = ENERGY_45NM_PJ
    assert energy_estimate(10, 8, 0) == pytest.approx((10 * (e["int8 multiply"] + e["int32 add"]) + 2 * e["32-bit SRAM read (8 KB cache)"]) * 1e-6)
    assert energy_estimate(10, 8, 0, float32=True) > energy_estimate(10, 8, 0)


def test_candidate_models_equal_qedu_ptq(search):
    from qedu.ptq import quantize_model

    for c in [Candidate("mlp", 2, "per-channel", "fc1"), Candidate("cnn", 4, "per-group", "fc")]:
        ours = search.quantized_model(c)
        ref = quantize_model(search.models[c.model], search.config(c), search.data.x_calib)
        with torch.no_grad():
            assert torch.equal(ours(search.data.x_test), ref(search.data.x_test))
    cfg = search.config(Candidate("cnn", 4, "per-group", "fc"))
    assert cfg.for_layer("conv1").weight_granularity.__class__.__name__ == "PerChannel"  # 3x3 kernels: per-channel
    assert cfg.for_layer("fc").weight_bits == 8


def test_the_search_returns_the_best_that_fits(search):
    small = MCU_256KB.scaled(1 / 128)
    rows = search.search(small)
    assert rows and all(r["flash_bytes"] <= 8192 and r["sram_bytes"] <= 2048 for r in rows)
    assert rows[0]["accuracy"] == max(r["accuracy"] for r in rows)
    every = search.search(MCU_256KB)
    assert len(every) == len(search.candidates()) == 54  # the full MCU holds every digits configuration
    fits = {r["label"] for r in rows}
    assert all((r["label"] in fits) == (r["flash_bytes"] <= 8192) for r in every)  # SRAM never binds at 2 KB
    assert "cnn W8 per-channel" not in fits and "mlp W8 per-channel" not in fits  # 8-bit weights do not fit 8 KB
    assert "|" in table(rows)


def test_lower_budgets_force_other_choices(search):
    fast = search.best(Budget(8192, 2048, 20_000))  # a latency proxy: at most 20k MACs
    assert fast["candidate"].model == "mlp"  # the CNN needs 88k MACs
    assert search.best(Budget(4096, 1024)) is None  # the CNN's pool needs 1280 B; the MLP's 2-bit weights 5100 B
    tight = search.best(Budget(4096, 2048))
    assert tight["candidate"].weight_bits == 2 and tight["candidate"].model == "cnn"


def test_bad_input():
    with pytest.raises(TypeError, match="models"):
        BudgetSearch({}, None)
    with pytest.raises(TypeError, match="models"):
        BudgetSearch({"x": "not a model"}, None)
    with pytest.raises(TypeError, match="budget"):
        BudgetSearch.search(object.__new__(BudgetSearch), (8192, 2048))
    with pytest.raises(TypeError, match="model"):
        model_costs(nn.ReLU, torch.zeros(1, 64))
