"""Every number lesson 12's prose states (and the pointers in lessons 01 and 02), held to the data."""
import pytest
import torch

from qedu.models import load_tinylm
from qedu.mx import bits_per_value, mx_dequantize, mx_quantize
from qedu.widgets.lowprec import FORMATS, format_error


@pytest.fixture(scope="module")
def fc1():
    return load_tinylm().blocks[0].fc1.weight.detach()


@pytest.fixture(scope="module")
def errors(fc1):
    return {f: format_error(fc1, f, 32, "floor") for f in FORMATS}


def test_fp4_without_a_scale_rounds_every_weight_to_zero(fc1, errors):
    # "every weight (|w| < 0.25) rounds to 0", "relative error 1.0" (lessons 01 and 12)
    assert float(fc1.abs().max()) < 0.25 and errors["fp4, no scale"][0] == 1.0


def test_the_ranking_of_the_four_scaled_formats_at_blocks_of_32(errors):
    # "MXFP4 is the cheapest scaled format (4.25 bits) but the least accurate of the four";
    # "NVFP4 and int4 cost 4.5 bits and are more accurate; NF4 is the most accurate of all"
    err = {f: e for f, (e, _) in errors.items()}
    bits = {f: b for f, (_, b) in errors.items()}
    assert bits["MXFP4"] == 4.25 == min(b for f, b in bits.items() if f != "fp4, no scale")
    assert err["MXFP4"] > max(err["NVFP4"], err["int4"], err["NF4"])
    assert bits["int4"] == 4.5 and 4.5 < bits["NVFP4"] < 4.501
    assert err["NF4"] < min(err["NVFP4"], err["int4"])


def test_the_worked_mx_example():
    # "7.9 became 6": the spec's floor rule clips; RCEIL does not
    x = torch.tensor([[0.5, -1.0, 3.0, 7.9]])
    assert mx_dequantize(mx_quantize(x, "fp4_e2m1", 4)).tolist() == [[0.5, -1.0, 3.0, 6.0]]
    assert mx_dequantize(mx_quantize(x, "fp4_e2m1", 4, "rceil")).tolist() == [[0.0, -1.0, 3.0, 8.0]]
    assert bits_per_value("fp4_e2m1", 32) == 4.25 and bits_per_value("fp4_e2m1", 16) == 4.5


# --- the committed runs (benchmarks/results/low_precision_training.json) ------------------------

@pytest.fixture(scope="module")
def res():
    from qedu.results import load_results

    return load_results("low_precision_training")


def test_fp8_recipe_claims(res):
    r = res["fp8"]["recipes"]
    assert len(res["fp8"]["config"]["seeds"]) == 3 and res["fp8"]["config"]["steps"] == 60
    fp32 = r["fp32"]
    lo, hi = min(fp32["val_loss"]), max(fp32["val_loss"])
    assert (round(fp32["val_loss_mean"], 3), round(lo, 3), round(hi, 3)) == (3.291, 3.224, 3.379)
    stated = {"tensorwise": 3.291, "rowwise": 3.301, "delayed": 3.304, "mxfp8": 3.298, "bf16": 3.315}
    for name, value in stated.items():  # "all end inside that seed-to-seed range"
        assert round(r[name]["val_loss_mean"], 3) == value and lo <= r[name]["val_loss_mean"] <= hi
    # "74 % of the output-gradient values underflow"; "unscaled ends at 3.410, worse than every fp32 seed"
    assert round(100 * r["unscaled"]["underflow_share"]["grad_output"]) == 74
    assert round(r["unscaled"]["val_loss_mean"], 3) == 3.410 and r["unscaled"]["val_loss_mean"] > hi
    # "at most about 1 value in 400,000" overflow for tensorwise
    worst = max(r["tensorwise"]["overflow_share"].values())
    assert 0 < worst and round(1 / worst, -5) == 400_000


def test_loss_spike_claims(res):
    s = res["spike"]
    assert (s["spike"], s["spike_start"], s["spike_len"]) == (1000.0, 30, 10)
    at = {name: [run["grad_overflow_per_step"][30 + k] for k in range(0, 10, 2)] for name, run in s["runs"].items()}
    assert all(500_000 < v < 600_000 for v in at["delayed_h1"])  # "about 550,000 gradient values each time"
    assert at["delayed_h16"][:2] > [100_000, 100_000] and at["delayed_h16"][2:] == [2584, 20, 2]
    assert s["runs"]["tensorwise"]["grad_overflow_in_spike"] == 6  # "its 6 values are the rounding artefact"


def test_qlora_claims(res):
    q = res["qlora"]
    m = q["methods"]
    assert (q["steps"], q["r"], q["alpha"]) == (60, 8, 16)
    assert (round(q["before"]["new_ppl"], 2), round(q["before"]["old_ppl"], 2)) == (12.36, 5.72)
    assert round(m["full_fp32"]["new_ppl"], 2) == 9.70 and round(m["lora"]["new_ppl"], 2) == round(m["qlora"]["new_ppl"], 2) == 9.96
    assert m["lora"]["trainable"] == m["qlora"]["trainable"] == 65_536
    assert round(100 * m["qlora"]["trainable"] / m["qlora"]["total"], 1) == 3.8
    old = {k: round(v["old_ppl"], 2) for k, v in m.items()}
    assert old == {"full_fp32": 7.44, "lora": 7.19, "qlora": 7.17}
    assert all(v > q["before"]["old_ppl"] for v in old.values())  # "all three forget some of the old domain"
    mb = {k: round(v["measured_bytes"]["total"] / 1e6, 1) for k, v in m.items()}
    assert mb == {"full_fp32": 26.9, "lora": 7.8, "qlora": 2.3}
    assert round(m["full_fp32"]["measured_bytes"]["total"] / m["qlora"]["measured_bytes"]["total"], 1) == 11.8
    assert all(abs(v["estimated_bytes"] - v["measured_bytes"]["total"]) <= 32 for v in m.values())
    assert abs(m["qlora"]["new_ppl"] - m["lora"]["new_ppl"]) < 0.02 and abs(m["qlora"]["old_ppl"] - m["lora"]["old_ppl"]) < 0.025
