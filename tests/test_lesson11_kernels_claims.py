"""What lesson 11's section "Real kernels and honest speed" (lessons/11_deployment_and_monitoring.ipynb)
says about the committed benchmark, benchmarks/results/deployment.json.

If the benchmark is re-run (on another CPU, say one with VNNI) and a sentence no longer holds,
one of these fails: update the lesson's prose with the new table, then these assertions.
"""
import pytest

from qedu.data import load_digits
from qedu.deploy import PATHS, RECIPES, TOLERANCE
from qedu.models import count_params, make_mlp
from qedu.results import load_results

INT8_FAST = ("torch_dynamic", "ort_dynamic", "ort_static")  # the paths the prose calls fast on wide layers
INT8 = [p for p in PATHS if not p.endswith("fp32")]


@pytest.fixture(scope="module")
def table():
    t = load_results("deployment")
    rows = {(r["model"], r["batch"]): r["paths"] for r in t["latency"]}
    ratio = {key: {p: paths[p][t["clock"]]["ratio_to_fp32"] for p in INT8} for key, paths in rows.items()}
    return t, ratio


def test_the_run_is_what_the_prose_describes(table):
    t, ratio = table
    assert not t["quick"] and t["threads"] == 1 and t["clock"] == "cpu"
    assert t["cpu"]["int8_dot_product"] is False  # "on a CPU without VNNI"
    assert {m for m, _ in ratio} == {"mlp", "linear_128", "linear_512", "linear_1024", "linear_4096"}  # "128 to 4096 wide"
    assert {b for _, b in ratio} == {1, 16, 256}  # "batch sizes 1, 16 and 256"
    assert count_params(make_mlp()) == 17_226
    assert TOLERANCE["ort_static"] == 5e-3 and all(TOLERANCE[p] == 1e-5 for p in PATHS if p != "ort_static")


def test_the_paths_table():
    """The section's table of paths and its test margins ('within one point ... (two for int4)')."""
    from tests.test_deploy import MARGIN

    assert MARGIN["ort_int4"] == 2.0 and all(MARGIN[p] == 1.0 for p in PATHS if p != "ort_int4")
    assert len(load_digits().x_calib) == 256  # "calibrated on the 256 calibration digits"
    assert (RECIPES["torch_dynamic"].act_fmt.qmin, RECIPES["torch_dynamic"].act_fmt.qmax) == (0, 127)
    assert (RECIPES["ort_dynamic"].act_fmt.qmin, RECIPES["ort_dynamic"].act_fmt.qmax) == (0, 255)
    assert RECIPES["ort_int4"].weight_granularity.group_size == 32 and RECIPES["ort_int4"].weight_fmt.bits == 4
    assert {p: RECIPES[p].weight_rule for p in ("torch_dynamic", "torchao_w8", "ort_dynamic", "ort_static")} == {
        "torch_dynamic": "half_range", "torchao_w8": "half_range", "ort_dynamic": "no_clip", "ort_static": "no_clip"}


def test_small_is_slow(table):
    """'On the digits MLP at batch 1, no int8 path is faster than float (every ratio is 0.9 or more,
    most are above 1) ... The same holds for a 128-wide layer at batch 1.'"""
    _, ratio = table
    for key in (("mlp", 1), ("linear_128", 1)):
        assert all(ratio[key][p] >= 0.9 for p in INT8), (key, ratio[key])
        assert sum(ratio[key][p] > 1 for p in INT8) > len(INT8) / 2, (key, ratio[key])


def test_wide_is_fast_even_without_vnni(table):
    """'For layers 1024 and 4096 wide, torch.ao's and ONNX Runtime's int8 paths take at most 0.65 of the float time.'"""
    _, ratio = table
    for width in (1024, 4096):
        for batch in (1, 16, 256):
            for p in INT8_FAST:
                assert ratio[(f"linear_{width}", batch)][p] <= 0.65, (width, batch, p)


def test_torchao_eager_is_not_a_speed_up(table):
    """'its W8A8 path is several times slower than float at every shape ... its weight-only path converts back'."""
    t, ratio = table
    for key, r in ratio.items():
        assert r["torchao_w8a8"] > 3, (key, r["torchao_w8a8"])
        assert r["torchao_w8"] >= 0.95, (key, r["torchao_w8"])  # never faster than float
    probe = t["int_mm_probe"]
    assert probe["int_mm_ms"] > 10 * probe["float_mm_ms"]  # "a slow generic kernel on this CPU"


def test_int4_saves_bytes_not_time(table):
    """'its file is about a sixth of float's for a 1024-wide layer, but it is no faster' (512 wide and up)."""
    t, ratio = table
    sizes = t["bytes_on_disk"]["linear_1024"]
    assert 0.14 < sizes["ort_int4"] / sizes["ort_fp32"] < 0.19
    for width in (512, 1024, 4096):
        for batch in (1, 16, 256):
            assert ratio[(f"linear_{width}", batch)]["ort_int4"] >= 0.9, (width, batch)


def test_bytes_on_disk(table):
    """'about 4x with int8 for the wide layers, but only about 3x for the digits MLP'."""
    t, _ = table
    for p in ("torch_dynamic", "torchao_w8a8", "torchao_w8", "ort_dynamic", "ort_static"):
        base = "ort_fp32" if p.startswith("ort") else "torch_fp32"
        for name in ("linear_1024", "linear_4096"):
            sizes = t["bytes_on_disk"][name]
            assert 3.8 < sizes[base] / sizes[p] < 4.1, (name, p)
        sizes = t["bytes_on_disk"]["mlp"]
        assert 2.5 < sizes[base] / sizes[p] < 3.3, p


def test_onnxruntime_int8_is_not_exact_on_this_cpu(table):
    """'the saturating pairs change most of the digits MLP's logits (by up to about 2% of their range),
    and its accuracy still equals the float model's'."""
    t, _ = table
    q = t["mlp_quality"]
    s = q["ort_dynamic_vs_exact_int8"]
    assert s["ort_saturates"] is True
    assert 0.01 < s["rel_err"] < 0.03 and s["share_of_logits_changed"] > 0.5
    assert q["ort_dynamic"]["accuracy"] == q["torch_fp32"]["accuracy"]
    for p in PATHS:  # and every path still computes its reference (tests/test_deploy.py checks it live)
        assert q[p]["rel_err_to_reference"] <= TOLERANCE[p], p
