"""qedu.nf4: NF4 + double quantization, from scratch, and byte-for-byte against bitsandbytes."""
import pytest
import torch

from qedu.nf4 import (
    NF4_CODE, NF4Weight, nf4_bits_per_parameter, nf4_dequantize, nf4_fake_quantize, nf4_quantize,
    pack_nibbles_high_first, unpack_nibbles_high_first,
)
from qedu.nonuniform import blockwise_absmax_quantize, nf4_levels, quantize_to_codebook
from qedu.optim import dynamic_map
from qedu.packing import pack

REASON = "bitsandbytes (the 'ref' extra, pip install -e .[ref]) is not installed; CI installs it"


def _weights():
    g = torch.Generator().manual_seed(0)
    return {
        "normal_256x512": torch.randn(256, 512, generator=g) * 0.02,
        "heavy_tails_128x384": torch.randn(128, 384, generator=g) ** 3 * 0.05,
        "with_zero_blocks_64x256": torch.cat([torch.zeros(8, 256), torch.randn(56, 256, generator=g)]),
        "odd_length_999": torch.randn(999, generator=g),  # last block of 39, odd number of codes
        "bfloat16_rounded_64x1024": (torch.randn(64, 1024, generator=g) * 0.1).bfloat16().float(),
    }


WEIGHTS = _weights()


def test_code_is_the_computed_nf4_table_to_float32_rounding():
    assert NF4_CODE.dtype == torch.float32 and NF4_CODE.shape == (16,)
    assert float((NF4_CODE - nf4_levels()).abs().max()) < 2e-7
    assert NF4_CODE[7] == 0 and NF4_CODE[0] == -1 and NF4_CODE[15] == 1


@pytest.mark.parametrize("name", list(WEIGHTS))
@pytest.mark.parametrize("absmax_rounding", ["nearest", "lut"])
def test_round_trip_error_and_structure(name, absmax_rounding):
    w = WEIGHTS[name]
    state = nf4_quantize(w, absmax_rounding=absmax_rounding)
    assert isinstance(state, NF4Weight) and state.shape == tuple(w.shape)
    assert state.packed.dtype == torch.uint8 and state.packed.numel() == (w.numel() + 1) // 2
    assert state.absmax.dtype == torch.uint8 and state.absmax.numel() == -(-w.numel() // 64)
    w_hat = nf4_dequantize(state)
    assert w_hat.shape == w.shape
    plain = nf4_fake_quantize(w, double_quant=False)
    # each weight is within half the widest NF4 gap of its block's absmax (plus the absmax's own 8-bit error)
    blocks = torch.nn.functional.pad(w.reshape(-1), (0, -w.numel() % 64)).reshape(-1, 64)
    bound = (blocks.abs().amax(1, keepdim=True) * 0.16).expand(-1, 64).reshape(-1)[: w.numel()].reshape(w.shape)
    assert bool(((plain - w).abs() <= bound + 1e-7).all())
    assert float(((w_hat - w) ** 2).mean()) < 1.02 * float(((plain - w) ** 2).mean()) + 1e-12


def test_packing_puts_element_zero_in_the_high_nibble_unlike_qedu_packing():
    q = torch.tensor([1, 2, 3, 4])
    assert pack_nibbles_high_first(q).tolist() == [0x12, 0x34]
    assert pack(q, bits=4).tolist() == [0x21, 0x43]  # qedu.packing (and torchao): element 0 low
    assert torch.equal(unpack_nibbles_high_first(pack_nibbles_high_first(q), 4), q.int())


def test_nf4_codes_differ_from_nonuniform_only_next_to_a_midpoint():
    # qedu.nonuniform divides and compares with exact midpoints; nf4 multiplies by 1/absmax and uses float32 midpoints
    w = WEIGHTS["normal_256x512"]
    codes_nonuniform, _ = blockwise_absmax_quantize(w, NF4_CODE, 64)
    state = nf4_quantize(w, double_quant=False)
    codes_nf4 = unpack_nibbles_high_first(state.packed, w.numel()).reshape(w.shape)
    differ = codes_nf4 != codes_nonuniform
    mid = ((NF4_CODE[:-1].double() + NF4_CODE[1:].double()) / 2)
    scaled = (w.reshape(-1, 64) / state.absmax[:, None]).reshape(w.shape).double()
    gap = (scaled[..., None] - mid).abs().amin(-1)
    assert int(differ.sum()) <= 5 and bool((gap[differ] < 1e-6).all())
    # a value exactly on a float32 midpoint goes to the lower code
    m = ((NF4_CODE[8] + NF4_CODE[9]) / 2).item()
    state = nf4_quantize(torch.tensor([m, 1.0]), block_size=2, double_quant=False)
    assert unpack_nibbles_high_first(state.packed, 2).tolist() == [8, 15]


def test_double_quant_absmax_nearest_vs_lut():
    w = torch.randn(512, 1024, generator=torch.Generator().manual_seed(1))
    a = nf4_quantize(w, absmax_rounding="nearest")
    b = nf4_quantize(w, absmax_rounding="lut")
    assert torch.equal(a.packed, b.packed) and torch.equal(a.absmax_scale, b.absmax_scale)
    differ = a.absmax != b.absmax
    assert 0 < int(differ.sum()) < 0.01 * differ.numel()  # the table rarely picks the farther code
    assert int((a.absmax.int() - b.absmax.int()).abs().max()) == 1
    # the nearest rule is never farther from the true absmax
    plain = nf4_quantize(w, double_quant=False).absmax
    err = lambda s: ((dynamic_map()[s.absmax.long()] * s.absmax_scale.repeat_interleave(256)[: plain.numel()] + s.offset) - plain).abs()
    assert bool((err(a) <= err(b) + 1e-9).all())


def test_bits_per_parameter():
    assert nf4_bits_per_parameter(double_quant=False) == 4.5
    assert nf4_bits_per_parameter() == pytest.approx(4.127, abs=5e-4)
    assert nf4_bits_per_parameter() == 4 + 8 / 64 + 32 / (64 * 256)
    # and the stored state has exactly that many bits (plus the one float32 offset)
    w = torch.randn(256, 1024)
    s = nf4_quantize(w)
    stored = s.packed.numel() * 8 + s.absmax.numel() * 8 + s.absmax_scale.numel() * 32
    assert stored / w.numel() == nf4_bits_per_parameter()


@pytest.mark.parametrize("call,match", [
    (lambda: nf4_quantize(torch.tensor([float("inf")])), "inf"),
    (lambda: nf4_quantize(torch.randn(64), block_size=0), "block_size"),
    (lambda: nf4_quantize(torch.randn(64), double_quant="yes"), "double_quant"),
    (lambda: nf4_quantize(torch.randn(64), absmax_rounding="cuda"), "absmax_rounding"),
    (lambda: nf4_dequantize(torch.randn(4)), "NF4Weight"),
    (lambda: pack_nibbles_high_first(torch.tensor([16])), r"\[0, 15\]"),
    (lambda: pack_nibbles_high_first(torch.tensor([0.5])), "integer"),
    (lambda: unpack_nibbles_high_first(torch.tensor([1]), 2), "uint8"),
])
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


# ------------------------------------------------------------------ bitsandbytes 0.50.2 cross-checks
@pytest.mark.parametrize("name", list(WEIGHTS))
def test_equals_bitsandbytes_quantize_4bit_with_double_quant(name):
    F = pytest.importorskip("bitsandbytes.functional", reason=REASON)
    w = WEIGHTS[name]
    packed, bnb = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours = nf4_quantize(w, 64, double_quant=True, absmax_rounding="lut")
    assert torch.equal(packed.reshape(-1), ours.packed)  # the 4-bit bytes, packing order included
    assert torch.equal(bnb.code, NF4_CODE)
    assert torch.equal(bnb.offset, ours.offset)
    assert torch.equal(bnb.absmax, ours.absmax)  # the 8-bit absmax codes
    assert torch.equal(bnb.state2.absmax, ours.absmax_scale)
    assert torch.equal(bnb.state2.code, dynamic_map(signed=True))
    assert torch.equal(F.dequantize_4bit(packed, bnb), nf4_dequantize(ours))  # the weights, bit for bit


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_equals_bitsandbytes_on_half_precision_weights(dtype):
    F = pytest.importorskip("bitsandbytes.functional", reason=REASON)
    w = WEIGHTS["normal_256x512"].to(dtype)
    packed, bnb = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours = nf4_quantize(w, absmax_rounding="lut")  # computed in float32, as bitsandbytes does
    assert torch.equal(packed.reshape(-1), ours.packed) and torch.equal(bnb.absmax, ours.absmax)
    assert torch.equal(F.dequantize_4bit(packed, bnb), nf4_dequantize(ours).to(dtype))


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_equals_bitsandbytes_without_double_quant(name):
    F = pytest.importorskip("bitsandbytes.functional", reason=REASON)
    w = WEIGHTS[name]
    packed, bnb = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    ours = nf4_quantize(w, 64, double_quant=False)
    assert torch.equal(packed.reshape(-1), ours.packed)
    assert torch.equal(bnb.absmax, ours.absmax)
    assert torch.equal(F.dequantize_4bit(packed, bnb), nf4_dequantize(ours))


def test_default_nearest_absmax_differs_from_bitsandbytes_only_where_its_table_is_coarse():
    F = pytest.importorskip("bitsandbytes.functional", reason=REASON)
    w = torch.randn(512, 1024, generator=torch.Generator().manual_seed(1))
    packed, bnb = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours = nf4_quantize(w)  # absmax_rounding="nearest"
    assert torch.equal(packed.reshape(-1), ours.packed)
    differ = bnb.absmax != ours.absmax
    assert 0 < int(differ.sum()) < 0.01 * differ.numel()
    # every difference: the scaled absmax lies within one table step (2/65535) of a midpoint between codes
    level = ((nf4_quantize(w, double_quant=False).absmax - ours.offset).reshape(-1, 256) / ours.absmax_scale[:, None]).reshape(-1)
    dm = dynamic_map().double()
    gap = (level[differ].double()[:, None] - (dm[:-1] + dm[1:]) / 2).abs().amin(1)
    assert bool((gap <= 2 / 65535).all())
    assert torch.equal(quantize_to_codebook(level, dynamic_map()).to(torch.uint8), ours.absmax)
