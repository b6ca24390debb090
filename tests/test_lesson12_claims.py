"""Every number lesson 12's prose states (and the pointers in lessons 01 and 02), held to the data."""
import sys

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
    # "Tensorwise and rowwise overflow no value at all" (with overflow meaning: the cast rounds it past 448)
    assert max(r["tensorwise"]["overflow_share"].values()) == max(r["rowwise"]["overflow_share"].values()) == 0
    # "MXFP8 does overflow: 2.4 % of the values of input_for_grad_weight" (its worst role); "(3.298 above)"
    role, share = max(r["mxfp8"]["overflow_share"].items(), key=lambda kv: kv[1])
    assert role == "input_for_grad_weight" and round(100 * share, 1) == 2.4
    assert set(r["mxfp8"]["overflow_share"]) == set(r["tensorwise"]["overflow_share"])  # counted per role like the others


def test_loss_spike_claims(res):
    s = res["spike"]
    assert (s["spike"], s["spike_start"], s["spike_len"]) == (1000.0, 30, 10)
    at = {name: [run["grad_overflow_per_step"][30 + k] for k in range(0, 10, 2)] for name, run in s["runs"].items()}
    assert all(500_000 < v < 600_000 for v in at["delayed_h1"])  # "about 550,000 gradient values each time"
    # "the first two spike steps saturate, then ... only 1,868 and 12 values overflow, and none at the last"
    assert min(at["delayed_h16"][:2]) > 100_000 and at["delayed_h16"][2:] == [1868, 12, 0]
    # "Current (tensorwise) scaling ... never overflows: 0 values" (in the spike, and at any other step)
    assert s["runs"]["tensorwise"]["grad_overflow_in_spike"] == 0 == sum(s["runs"]["tensorwise"]["grad_overflow_per_step"])


def test_qlora_claims(res):
    q = res["qlora"]
    m = q["methods"]
    full = ("full_fp32", "full_bf16", "full_bf16_pure")
    assert (q["steps"], q["r"], q["alpha"]) == (60, 8, 16)
    assert set(m) == {*full, "lora", "qlora"} and len({len(v["loss"]) for v in m.values()}) == 1  # same steps, seed 0
    assert (round(q["before"]["new_ppl"], 2), round(q["before"]["old_ppl"], 2)) == (12.36, 5.72)
    # Quality: "9.70 in fp32, 9.69 in bf16 with fp32 master weights, 9.72 in pure bf16. LoRA and QLoRA reach 9.96"
    new = {k: round(v["new_ppl"], 2) for k, v in m.items()}
    assert new == {"full_fp32": 9.70, "full_bf16": 9.69, "full_bf16_pure": 9.72, "lora": 9.96, "qlora": 9.96}
    assert max(m[k]["new_ppl"] for k in full) < min(m["lora"]["new_ppl"], m["qlora"]["new_ppl"])  # "full learns most"
    assert m["lora"]["trainable"] == m["qlora"]["trainable"] == 65_536
    assert all(m[k]["trainable"] == m[k]["total"] for k in full)
    assert round(100 * m["qlora"]["trainable"] / m["qlora"]["total"], 1) == 3.8
    # Forgetting: "7.19 LoRA, 7.17 QLoRA; 7.44 full fp32, 7.43 bf16 with master weights, 7.29 pure bf16"
    old = {k: round(v["old_ppl"], 2) for k, v in m.items()}
    assert old == {"full_fp32": 7.44, "full_bf16": 7.43, "full_bf16_pure": 7.29, "lora": 7.19, "qlora": 7.17}
    assert all(v["old_ppl"] > q["before"]["old_ppl"] for v in m.values())  # "all of them forget some"
    assert max(m["lora"]["old_ppl"], m["qlora"]["old_ppl"]) < min(m[k]["old_ppl"] for k in full)  # "the adapters forget least"
    # "pure bf16 learns a little less and forgets a little less than the other full fine-tunes"
    others = (m["full_fp32"], m["full_bf16"])
    assert all(m["full_bf16_pure"]["new_ppl"] > o["new_ppl"] and m["full_bf16_pure"]["old_ppl"] < o["old_ppl"] for o in others)
    # Memory: "26.9 MB ... fp32, and 26.9 MB again in bf16 with fp32 master weights", "pure bf16 ... 13.4 MB",
    # "LoRA needs 7.8 MB", "QLoRA 2.3 MB, 11.8 times less"
    mb = {k: round(v["measured_bytes"]["total"] / 1e6, 1) for k, v in m.items()}
    assert mb == {"full_fp32": 26.9, "full_bf16": 26.9, "full_bf16_pure": 13.4, "lora": 7.8, "qlora": 2.3}
    per_param = {k: m[k]["measured_bytes"]["total"] / m[k]["trainable"] for k in full}
    assert per_param == {"full_fp32": 16, "full_bf16": 16, "full_bf16_pure": 8}  # "2 + 2 + 4 + 8 ... instead of 4 + 4 + 8"
    n = m["full_bf16"]["trainable"]
    assert {k: v / n for k, v in m["full_bf16"]["measured_bytes"].items()} == \
        {"weights": 2, "grads": 2, "master": 4, "optimizer": 8, "total": 16}
    assert {k: v / n for k, v in m["full_fp32"]["measured_bytes"].items()} == \
        {"weights": 4, "grads": 4, "master": 0, "optimizer": 8, "total": 16}
    assert round(m["full_fp32"]["measured_bytes"]["total"] / m["qlora"]["measured_bytes"]["total"], 1) == 11.8
    assert all(abs(v["estimated_bytes"] - v["measured_bytes"]["total"]) <= 32 for v in m.values())
    assert {k: v["memory_recipe"] for k, v in m.items()} == {"full_fp32": "fp32", "full_bf16": "mixed", "full_bf16_pure": "bf16_pure",
                                                            "lora": "fp32", "qlora": "fp32"}
    assert abs(m["qlora"]["new_ppl"] - m["lora"]["new_ppl"]) < 0.02 and abs(m["qlora"]["old_ppl"] - m["lora"]["old_ppl"]) < 0.025


def test_the_mxfp8_floor_clipping_claim():
    # "values above 464 times the scale are clipped to 448 times it (by up to 12.5 %)"; "RCEIL would not clip"
    from qedu.floats import FP8_E4M3
    from qedu.fp8_training import overflowed

    x = torch.full((1, 32), 1.0)
    x[0, :3] = torch.tensor([511.9, 465.0, 464.0])  # floor(log2 511.9) - 8 = 0: the scale is 1
    x_hat = mx_dequantize(mx_quantize(x, "fp8_e4m3", 32))
    assert x_hat[0, :3].tolist() == [448.0, 448.0, 448.0]
    assert overflowed(x[0, :3], FP8_E4M3).tolist() == [True, True, False]  # 464 merely rounds to 448
    assert 0.12 < (511.9 - 448) / 511.9 < 0.125 == (512 - 448) / 512
    assert torch.allclose(mx_dequantize(mx_quantize(x, "fp8_e4m3", 32, "rceil"))[0, :3], x[0, :3], rtol=2**-4)


def test_the_benchmarks_bf16_matmuls_are_bf16_gemms_with_fp32_sums():
    # "The bf16 runs round every matmul's inputs and outputs to bf16 as a GPU does, but multiply with fp32 kernels"
    import importlib.util
    from pathlib import Path

    import torch.nn.functional as F

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "low_precision_training.py"
    spec = importlib.util.spec_from_file_location("low_precision_training", path)
    bench = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    try:
        spec.loader.exec_module(bench)  # it puts the repository and benchmarks/ on sys.path
    finally:
        sys.path[:] = saved
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, generator=g).bfloat16().requires_grad_()
    w = torch.randn(32, 64, generator=g).bfloat16().requires_grad_()
    with bench.Bf16Matmuls():
        y, z = F.linear(x, w), x @ w.t()
    expected = (x.detach().float() @ w.detach().float().t()).bfloat16()  # fp32 products and sums, rounded once
    assert y.dtype == z.dtype == torch.bfloat16 and torch.equal(y, expected) and torch.equal(z, expected)
    assert torch.allclose(y.float(), (x.detach() @ w.detach().t()).float(), rtol=2**-7, atol=0)  # torch's own bf16 matmul
    grad = torch.randn(16, 32, generator=g).bfloat16()
    y.backward(grad)
    assert x.grad.dtype == w.grad.dtype == torch.bfloat16  # the backward matmuls' results are rounded to bf16 too
    assert torch.equal(x.grad, (grad.float() @ w.detach().float()).bfloat16())
    assert torch.equal(w.grad, (grad.float().t() @ x.detach().float()).bfloat16())
    with bench.Bf16Matmuls():  # fp32 operands pass through untouched
        assert (x.detach().float() @ w.detach().float().t()).dtype == torch.float32
