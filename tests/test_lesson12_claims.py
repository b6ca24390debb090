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
