"""Every number lesson 11's prose states in its integer-only and edge-budget sections, held to the data."""
import pytest
import torch

from qedu.data import load_digits
from qedu.edge import MCU_256KB, Budget, BudgetSearch, Candidate
from qedu.energy import ENERGY_45NM_PJ
from qedu.integer import IntegerCNN, integer_vs_fake_quant, multiply_by_quantized_multiplier, quantize_multiplier, trace_dtypes
from qedu.models import pretrained


@pytest.fixture(scope="module")
def data():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def models():
    return {"mlp": pretrained("mlp", seed=0), "cnn": pretrained("cnn", seed=0)}


# --- 1. integer-only inference ------------------------------------------------------------------

def test_the_rounding_examples():
    # "5 · 0.25 = 1.25 becomes 2 with double rounding, 1 with one rounding; 1001 · 0.25 = 250.25
    # becomes 251 the same way. At an exact tie TFLite rounds up and torch to even (10 · 0.25 = 2.5: 3 against 2)"
    m0, shift = quantize_multiplier(0.25)
    acc = torch.tensor([5, 10, -5, 1001])
    assert multiply_by_quantized_multiplier(acc, m0, shift, "double").tolist() == [2, 3, -1, 251]
    assert multiply_by_quantized_multiplier(acc, m0, shift, "single").tolist() == [1, 3, -1, 250]
    assert torch.round(acc * 0.25).long().tolist() == [1, 2, -1, 250]


def test_the_cnn_trace_holds_integers_only(data, models):
    # "Integers only (bool is a comparison's mask)"; the matmuls are traced
    icnn = IntegerCNN(models["cnn"], data.x_calib)
    ops = trace_dtypes(icnn, icnn.quantize_input(data.x_test[:4]))
    assert {dt for _, dt in ops} == {torch.bool, torch.int64, torch.uint8}
    assert sum("mm" in n for n, _ in ops) == 3  # conv1, conv2, fc


@pytest.fixture(scope="module")
def reports(data, models):
    return {(k, p): integer_vs_fake_quant(m, data, power_of_two=p)
            for k, m in models.items() for p in (None, "scales", "multiplier")}


def test_integer_models_make_the_fake_quantized_predictions(reports):
    # "Every one of the 360 test predictions is identical, for both models", "within one test
    # image (0.28 points) of float", "about 42 dB"
    for kind in ("mlp", "cnn"):
        r = reports[kind, None]
        assert r["agreement"] == 1.0
        assert r["integer_accuracy"] == r["fake_quant_accuracy"]
        assert abs(r["integer_accuracy"] - r["float_accuracy"]) <= 1 / 360 + 1e-9
        assert 41.5 <= r["logit_sqnr_db"] <= 43.5
    assert round(100 * reports["mlp", None]["integer_accuracy"], 2) == 96.94
    assert round(100 * reports["cnn", None]["integer_accuracy"], 2) == 98.89


def test_power_of_two_claims(reports):
    # "Rounding the scales costs 1.5 to 3 dB of logit SQNR and no accuracy at all on digits";
    # "rounding only the multipliers ... SQNR 8 dB ... costs the MLP about 2 points; the CNN survives"
    for kind in ("mlp", "cnn"):
        exact, scales, mult = reports[kind, None], reports[kind, "scales"], reports[kind, "multiplier"]
        assert 1.4 <= exact["logit_sqnr_db"] - scales["logit_sqnr_db"] <= 3.3
        assert scales["integer_accuracy"] == exact["integer_accuracy"]
        assert mult["logit_sqnr_db"] < 11
    assert round(reports["mlp", "multiplier"]["logit_sqnr_db"]) == 8
    drop = reports["mlp", None]["integer_accuracy"] - reports["mlp", "multiplier"]["integer_accuracy"]
    assert 1.5 / 100 <= drop <= 2.5 / 100
    assert reports["cnn", "multiplier"]["integer_accuracy"] == reports["cnn", None]["integer_accuracy"]
    assert 2**0.5 - 1 == pytest.approx(0.41, abs=0.005)  # "off by up to 41 %"


# --- 3. edge budgets ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def search(data, models):
    return BudgetSearch(models, data)


def test_model_sizes_and_the_scaled_budget(search):
    # "about a hundred times smaller"; "every one of the 54 configurations fits" the real device;
    # "8 KB of flash and 2 KB of SRAM, where the 8-bit models no longer fit"
    int8 = {k: search.costs(Candidate(k, 8, "per-channel")) for k in ("mlp", "cnn")}
    assert (int8["mlp"].flash_bytes, int8["cnn"].flash_bytes) == (18_664, 10_360)
    assert 50 <= MCU_256KB.flash_bytes / int8["mlp"].flash_bytes <= 150
    assert (int8["mlp"].sram_bytes, int8["cnn"].sram_bytes) == (192, 1280)
    assert (int8["mlp"].macs, int8["cnn"].macs) == (17_024, 88_064)
    assert len(search.search(MCU_256KB)) == len(search.candidates()) == 54
    small = MCU_256KB.scaled(1 / 128)
    assert (small.flash_bytes, small.sram_bytes) == (8192, 2048)
    rows = search.search(small)
    assert len(rows) == 26
    assert not any(r["candidate"].weight_bits == 8 for r in rows)


def test_the_best_under_8kb(search, models, data):
    # "the CNN with 4-bit weights and its first convolution kept in 8 bits"; "differ by one or two
    # images from the float CNN (98.89 %)"
    rows = search.search(MCU_256KB.scaled(1 / 128))
    best = rows[0]["candidate"]
    assert (best.model, best.weight_bits, best.keep_8bit) == ("cnn", 4, "conv1")
    float_acc = (models["cnn"](data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert round(100 * float_acc, 2) == 98.89
    assert all(abs(r["accuracy"] - float_acc) <= 2 / 360 + 1e-9 for r in rows[:4])


def test_tighter_budgets(search):
    # 20k MACs -> the MLP, 2-bit, last layer in 8 bits; 4 KB -> 2-bit weights, first conv in 8 bits
    # "buys back two points"; 1 KB SRAM -> nothing fits (pool 1,024 + 256 bytes)
    fast = search.best(Budget(8192, 2048, 20_000))["candidate"]
    assert (fast.model, fast.weight_bits, fast.keep_8bit) == ("mlp", 2, "fc3")
    tight = search.search(Budget(4096, 2048))
    assert (tight[0]["candidate"].weight_bits, tight[0]["candidate"].keep_8bit) == (2, "conv1")
    plain = [r for r in tight if r["candidate"].keep_8bit is None]
    assert 1.5 / 100 <= tight[0]["accuracy"] - max(r["accuracy"] for r in plain) <= 2.5 / 100
    assert search.best(Budget(4096, 1024)) is None


def test_energy_claims(search):
    # "0.2 pJ ... 3.7 pJ ... 5 pJ"; "about a twelfth of the float CNN's energy"; "0.3 pJ each in
    # integers, 4.6 pJ in fp32"; the MLP saves more than fewer bits do
    e = ENERGY_45NM_PJ
    assert (e["int8 multiply"], e["fp32 multiply"], e["32-bit SRAM read (8 KB cache)"]) == (0.2, 3.7, 5.0)
    assert e["int8 multiply"] + e["int32 add"] == pytest.approx(0.3)
    assert e["fp32 multiply"] + e["fp32 add"] == pytest.approx(4.6)
    best = search.search(MCU_256KB.scaled(1 / 128))[0]
    ratio = search.float_costs("cnn").energy_uj / best["energy_uj"]
    assert 11 <= ratio <= 13.5
    mlp2 = search.best(Budget(8192, 2048, 20_000))
    assert mlp2["energy_uj"] < best["energy_uj"] / 2


def test_two_bit_cnn_spread(search):
    # "At 2 bits the CNN spans 94.2 to 98.6 %: keeping its first convolution (144 weights) in 8 bits
    # matters far more than the granularity"
    rows = [r for r in search.search(MCU_256KB) if r["candidate"].model == "cnn" and r["candidate"].weight_bits == 2]
    acc = [100 * r["accuracy"] for r in rows]
    assert (round(min(acc), 1), round(max(acc), 1)) == (94.2, 98.6)
    kept = [100 * r["accuracy"] for r in rows if r["candidate"].keep_8bit == "conv1"]
    others = [100 * r["accuracy"] for r in rows if r["candidate"].keep_8bit != "conv1"]
    assert min(kept) > max(others)
    assert search.models["cnn"].conv1.weight.numel() == 144
