"""qedu.packing: exact round trips, the documented bit order, and real storage sizes."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qedu.formats import INT4
from qedu.granularity import PerChannel, PerGroup, PerTensor
from qedu.packing import pack, storage_bytes, unpack
from qedu.quantizers import choose_qparams, quantize


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.data())
def test_pack_unpack_round_trip(bits, data):
    codes = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=0, max_size=70))
    q = torch.tensor(codes, dtype=torch.int64)
    packed = pack(q, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-len(codes) * bits // 8)
    assert torch.equal(unpack(packed, bits, len(codes)), q.to(torch.int32))


def test_bit_order_first_code_in_the_low_bits():
    assert pack(torch.tensor([0x3, 0xA]), 4).tolist() == [0xA3]  # low nibble first
    assert pack(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    bits = torch.randint(0, 2, (1000,), generator=torch.Generator().manual_seed(0))
    expected = np.packbits(bits.numpy().astype(np.uint8), bitorder="little")
    assert pack(bits, 1).numpy().tolist() == expected.tolist()
    assert torch.equal(pack(torch.tensor([7, 200]), 8), torch.tensor([7, 200], dtype=torch.uint8))


def test_signed_int4_weights_round_trip_through_a_shift():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    q = quantize(w, *choose_qparams(w, INT4, PerGroup(32)), INT4)  # codes in -8..7
    packed = pack(q - INT4.qmin, 4)
    assert packed.numel() == w.numel() // 2
    assert torch.equal(unpack(packed, 4, q.numel()).reshape(q.shape) + INT4.qmin, q)


def test_storage_bytes_reports_real_sizes():
    report = storage_bytes((4096, 4096), 4, PerGroup(32))  # int4, g=32, fp16 scales: 4.5 bits/weight
    assert report.payload_bytes == 4096 * 4096 // 2 and report.scale_bytes == 4096 * 128 * 2
    assert report.bits_per_value == 4.5
    assert storage_bytes((4096, 4096), 4, PerGroup(32), zero_point_bits=4).bits_per_value == 4.625
    int8 = storage_bytes((128, 64), 8, PerChannel(0), scale_bits=32, zero_point_bits=32)
    assert int8.total_bytes == 128 * 64 + 128 * 4 + 128 * 4
    fp32 = storage_bytes((128, 64), 32, scale_bits=0)
    assert fp32.total_bytes == 128 * 64 * 4 and fp32.bits_per_value == 32
    assert storage_bytes((3,), 1, PerTensor()).payload_bytes == 1  # partial bytes round up


def test_packing_matches_storage_payload():
    q = torch.randint(0, 4, (7, 9))
    assert pack(q, 2).numel() == storage_bytes(q.shape, 2).payload_bytes


BAD = {
    "bits-3": (lambda: pack(torch.tensor([1]), 3), ValueError, r"bits must be one of \(1, 2, 4, 8\).*got 3"),
    "signed": (lambda: pack(torch.tensor([-1, 3]), 4), ValueError, r"unsigned 4-bit codes in \[0, 15\], got values in \[-1, 3\].*q - fmt.qmin"),
    "too-big": (lambda: pack(torch.tensor([4]), 2), ValueError, r"\[0, 3\], got values in \[4, 4\]"),
    "float": (lambda: pack(torch.tensor([1.0]), 4), TypeError, r"q must be an integer tensor of codes, got dtype torch.float32"),
    "unpack-dtype": (lambda: unpack(torch.tensor([1]), 4, 1), TypeError, r"packed must be the 1-D uint8 tensor"),
    "unpack-n": (lambda: unpack(torch.tensor([1], dtype=torch.uint8), 4, 3), ValueError, r"n must be between 0 and 2, got 3"),
    "storage-granularity": (lambda: storage_bytes((4, 4), 4, "group"), TypeError, r"granularity must be PerTensor"),
    "storage-group": (lambda: storage_bytes((4, 30), 4, PerGroup(32)), ValueError, r"group_size=32 does not divide"),
    "storage-empty": (lambda: storage_bytes((0, 4), 4), ValueError, r"holds no values"),
}


@pytest.mark.parametrize("call, exc, match", list(BAD.values()), ids=list(BAD))
def test_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
