"""Lesson 12's widgets (qedu.widgets.lowprec), driven headless: the numbers they show are the formats' own."""
import pytest
import torch

from qedu.floats import FP4_E2M1, cast
from qedu.mx import mx_dequantize, mx_quantize
from qedu.nf4 import nf4_fake_quantize
from qedu.widgets.lowprec import FORMATS, block_format_explorer, format_error, fp8_run_explorer


@pytest.fixture(scope="module")
def weight():
    return torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) * 0.02  # like a trained layer's weights


def test_format_error_is_the_relative_error_of_each_format(weight):
    err, bits = format_error(weight, "MXFP4", 32, "rceil")
    w_hat = mx_dequantize(mx_quantize(weight, "fp4_e2m1", 32, "rceil"))
    assert err == pytest.approx(float((w_hat - weight).norm() / weight.norm())) and bits == 4.25
    err, bits = format_error(weight, "NF4", 64)
    assert err == pytest.approx(float((nf4_fake_quantize(weight, 64) - weight).norm() / weight.norm()))
    assert bits == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    # without a scale, weights of size ~0.02 all round to fp4's 0: relative error exactly 1
    assert format_error(weight, "fp4, no scale")[0] == 1.0 and bool((cast(weight, FP4_E2M1) == 0).all())
    assert format_error(weight, "int4", 32)[1] == 4.5
    assert format_error(weight, "NVFP4")[1] == pytest.approx(4.5 + 32 / weight.numel())


def test_int4_is_symmetric_absmax_per_block():
    w = torch.tensor([[7.0, -3.0, 1.0, 0.0]])  # amax 7: scale 1, integers stay exact
    assert format_error(w, "int4", 4)[0] == 0.0


@pytest.mark.parametrize("bad, match", [(dict(fmt="fp5"), "fmt must be one of"), (dict(fmt="int4", block_size=48), "must divide")])
def test_bad_arguments_name_the_fix(weight, bad, match):
    with pytest.raises(ValueError, match=match):
        format_error(weight, **{"block_size": 32, **bad})


def test_block_format_explorer_updates_caches_and_reports_every_format(weight):
    panel = block_format_explorer(weight, name="w")
    assert panel.error is None and all(f in panel.readout.value for f in ("MXFP4", "NVFP4", "int4", "NF4"))
    first, n = panel.figure.png, len(panel.cache)
    panel.controls["block_size"].value = 64
    assert panel.error is None and "4.125 bits" in panel.readout.value and panel.figure.png != first
    panel.controls["block_size"].value = 32
    assert panel.figure.png == first  # same inputs, same picture
    panel.controls["rule"].value = "rceil"  # only MXFP4 depends on the rule: one new entry
    assert len(panel.cache) == n + 3 + 1


def test_fp8_run_explorer_reads_the_committed_results():
    from qedu.results import load_results

    results = load_results("low_precision_training")
    panel = fp8_run_explorer(results)
    assert panel.error is None
    r = results["fp8"]["recipes"]["unscaled"]
    panel.controls["recipe"].value = "unscaled"
    assert f"{r['val_loss_mean']:.3f}" in panel.readout.value and panel.error is None
    assert set(panel.controls["recipe"].options) == set(results["fp8"]["recipes"]) >= {"fp32", "bf16", "tensorwise", "unscaled"}
    # every fp8 recipe, MXFP8 included, has its overflow/underflow counts; fp32 and bf16 cast nothing to fp8
    panel.controls["recipe"].value = "mxfp8"
    assert "no overflow / underflow to count" not in panel.readout.value
    assert max(results["fp8"]["recipes"]["mxfp8"]["overflow_share"].values()) > 0
    panel.controls["recipe"].value = "fp32"
    assert "no overflow / underflow to count" in panel.readout.value
