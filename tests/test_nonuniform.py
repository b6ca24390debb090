"""qedu.nonuniform: codebooks, k-means, NF4 and block-wise absmax scaling."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qedu.formats import IntFormat
from qedu.granularity import PerGroup
from qedu.nonuniform import (
    NF4_OFFSET, blockwise_absmax_dequantize, blockwise_absmax_quantize, dequantize_codebook, kmeans_codebook,
    nf4_levels, quantize_to_codebook,
)
from qedu.quantizers import choose_qparams, fake_quantize, quantization_error

# QLoRA's NF4 table as bitsandbytes prints it (get_4bit_type('nf4')), to 4 decimals (REFERENCE.md).
NF4_TABLE = [-1, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0, 0.0796, 0.1609, 0.2461, 0.3379,
             0.4407, 0.5626, 0.7230, 1]


def test_nf4_levels_reproduce_the_published_table():
    levels = nf4_levels()
    assert levels.dtype == torch.float32 and levels.shape == (16,)
    assert torch.allclose(levels, torch.tensor(NF4_TABLE), atol=1e-4, rtol=0)
    assert levels[7] == 0 and levels[0] == -1 and levels[15] == 1  # exact zero and ends
    assert NF4_OFFSET == pytest.approx(0.9677083, abs=1e-7)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-10, 10, width=32), min_size=1, max_size=60),
       st.lists(st.floats(-5, 5, width=32), min_size=1, max_size=12))
def test_quantize_to_codebook_picks_the_nearest_level(values, levels):
    x = torch.tensor(values)
    codebook = torch.sort(torch.tensor(levels)).values
    codes = quantize_to_codebook(x, codebook)
    distance = (x.double()[:, None] - codebook.double()[None, :]).abs()  # (n, k) brute force in float64
    assert torch.equal(distance.gather(1, codes.long()[:, None])[:, 0], distance.min(dim=1).values)
    assert codes.dtype == torch.int32


def test_codebook_ties_go_to_the_lower_level_and_lookup():
    codebook = torch.tensor([-1.0, 0.0, 1.0])
    codes = quantize_to_codebook(torch.tensor([-0.5, 0.5, 0.49, 7.0, -7.0]), codebook)
    assert codes.tolist() == [0, 1, 1, 2, 0]
    assert dequantize_codebook(codes, codebook).tolist() == [-1.0, 0.0, 0.0, 1.0, -1.0]


NORMALISH = torch.randn(4096, generator=torch.Generator().manual_seed(0))


def test_kmeans_is_deterministic_sorted_and_sized():
    codebook, codes = kmeans_codebook(NORMALISH.reshape(64, 64), bits=3, seed=1)
    again = kmeans_codebook(NORMALISH.reshape(64, 64), bits=3, seed=1)
    assert torch.equal(codebook, again[0]) and torch.equal(codes, again[1])
    assert codebook.shape == (8,) and bool((codebook[1:] >= codebook[:-1]).all())
    assert codes.shape == (64, 64) and codes.dtype == torch.int32
    assert torch.equal(codes, quantize_to_codebook(NORMALISH.reshape(64, 64), codebook))


def test_kmeans_error_decreases_with_bits_and_beats_its_start_and_uniform():
    mse = []
    for bits in range(1, 6):
        codebook, codes = kmeans_codebook(NORMALISH, bits)
        mse.append(quantization_error(NORMALISH, codebook[codes]).mse)
        start, _ = kmeans_codebook(NORMALISH, bits, iters=0)  # quantile initialisation only
        assert mse[-1] <= quantization_error(NORMALISH, dequantize_codebook(quantize_to_codebook(NORMALISH, start), start)).mse
        if bits >= 2:
            fmt = IntFormat(bits)
            uniform = fake_quantize(NORMALISH, *choose_qparams(NORMALISH, fmt, symmetric=False), fmt)
            assert mse[-1] < quantization_error(NORMALISH, uniform).mse
    assert all(a > b for a, b in zip(mse, mse[1:])), mse


def test_kmeans_with_few_distinct_values_is_exact():
    x = torch.tensor([3.0, 3.0, -1.0, 0.5, 0.5, 3.0])
    codebook, codes = kmeans_codebook(x, bits=2)
    assert torch.equal(codebook[codes.long()], x)
    codebook, codes = kmeans_codebook(torch.full((10,), 2.0), bits=3)  # many empty levels
    assert torch.equal(codebook[codes.long()], torch.full((10,), 2.0))


@pytest.mark.parametrize("n, block_size", [(256, 64), (100, 64), (7, 1), (5, 64)], ids=str)
def test_blockwise_absmax_round_trip(n, block_size):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 3
    levels = nf4_levels()
    codes, absmax = blockwise_absmax_quantize(x, levels, block_size)
    assert codes.shape == x.shape and absmax.shape == (-(-n // block_size),)
    x_hat = blockwise_absmax_dequantize(codes, absmax, levels, block_size)
    for b, start in enumerate(range(0, n, block_size)):
        block, block_hat = x[start:start + block_size], x_hat[start:start + block_size]
        assert absmax[b] == block.abs().max()
        i = block.abs().argmax()
        assert block_hat[i] == block[i]  # the block's extreme is exact (levels hold -1 and 1)
        gap = (levels[1:] - levels[:-1]).max() * absmax[b]
        assert bool(((block - block_hat).abs() <= gap / 2 * (1 + 1e-5)).all())


def test_blockwise_zero_block_and_shape():
    x = torch.cat([torch.zeros(4), torch.tensor([1.0, -0.5, 0.25, 0.0])]).reshape(2, 4)
    codes, absmax = blockwise_absmax_quantize(x, nf4_levels(), 4)
    assert absmax.tolist() == [0.0, 1.0]
    x_hat = blockwise_absmax_dequantize(codes, absmax, nf4_levels(), 4)
    assert x_hat.shape == (2, 4) and torch.equal(x_hat[0], torch.zeros(4))


def test_blockwise_with_a_linear_table_is_per_group_int_quantization():
    """Levels k/7 for k = -7..7 and absmax scaling = symmetric narrow int4 per group, no clipping."""
    x = torch.randn(32, 128, generator=torch.Generator().manual_seed(3))
    levels = torch.arange(-7, 8, dtype=torch.float32) / 7
    codes, absmax = blockwise_absmax_quantize(x, levels, 32)
    x_hat = blockwise_absmax_dequantize(codes, absmax, levels, 32)
    fmt = IntFormat(4, narrow_range=True)
    uniform = fake_quantize(x, *choose_qparams(x, fmt, PerGroup(32), symmetric_rule="no_clip"), fmt)
    assert torch.allclose(x_hat, uniform, atol=1e-6, rtol=1e-6)


def test_nf4_beats_uniform_int4_on_normal_weights():
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(4))
    codes, absmax = blockwise_absmax_quantize(x, nf4_levels(), 64)
    nf4 = blockwise_absmax_dequantize(codes, absmax, nf4_levels(), 64)
    linear = torch.linspace(-1, 1, 16)
    codes, absmax = blockwise_absmax_quantize(x, linear, 64)
    uniform = blockwise_absmax_dequantize(codes, absmax, linear, 64)
    assert quantization_error(x, nf4).mse < 0.9 * quantization_error(x, uniform).mse


BAD = {
    "kmeans-bits": (lambda: kmeans_codebook(NORMALISH, 9), ValueError, r"bits must be between 1 and 8, got 9"),
    "kmeans-iters": (lambda: kmeans_codebook(NORMALISH, 2, iters=-1), ValueError, r"iters must be between 0 and inf"),
    "kmeans-empty": (lambda: kmeans_codebook(torch.zeros(0), 2), ValueError, r"x is empty"),
    "kmeans-nan": (lambda: kmeans_codebook(torch.tensor([float("nan")]), 2), ValueError, r"x contains 1 NaN"),
    "unsorted": (lambda: quantize_to_codebook(NORMALISH, torch.tensor([1.0, 0.0])), ValueError,
                 r"codebook must be sorted.*torch.sort\(codebook\).values"),
    "codebook-2d": (lambda: quantize_to_codebook(NORMALISH, torch.zeros(2, 2)), ValueError, r"non-empty 1-D float tensor"),
    "codebook-list": (lambda: quantize_to_codebook(NORMALISH, [0.0, 1.0]), TypeError, r"codebook must be a 1-D float tensor"),
    "codebook-nan": (lambda: quantize_to_codebook(NORMALISH, torch.tensor([0.0, float("nan")])), ValueError, r"NaN or inf"),
    "codes-range": (lambda: dequantize_codebook(torch.tensor([2]), torch.tensor([0.0, 1.0])), ValueError,
                    r"codes must lie in \[0, 1\].*got values in \[2, 2\]"),
    "codes-float": (lambda: dequantize_codebook(torch.tensor([0.0]), torch.tensor([0.0, 1.0])), TypeError, r"codes must be an integer"),
    "levels-unit": (lambda: blockwise_absmax_quantize(NORMALISH, torch.arange(-8.0, 8.0), 64), ValueError,
                    r"levels must lie in \[-1, 1\].*got max \|level\| = 8.*levels.abs\(\).max\(\)"),
    "block-size": (lambda: blockwise_absmax_quantize(NORMALISH, nf4_levels(), 0), ValueError, r"block_size must be between 1 and inf, got 0"),
    "absmax-shape": (lambda: blockwise_absmax_dequantize(torch.zeros(10, dtype=torch.int32), torch.ones(2), nf4_levels(), 4),
                     ValueError, r"absmax must hold one value per block of 4: shape \(3,\) for 10 codes, got \(2,\)"),
}


@pytest.mark.parametrize("call, exc, match", list(BAD.values()), ids=list(BAD))
def test_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
_CODES, _ABSMAX = torch.tensor([8, 0, 15, 15]), torch.tensor([2.0, 0.5])
ISSUE20_BAD = {
    "absmax-nan": (lambda: blockwise_absmax_dequantize(_CODES, torch.tensor([float("nan"), 0.5]), nf4_levels(), 2), ValueError, r"absmax must hold finite values >= 0"),
    "absmax-negative": (lambda: blockwise_absmax_dequantize(_CODES, torch.tensor([-2.0, 0.5]), nf4_levels(), 2), ValueError, r"absmax must hold finite values >= 0"),
    "absmax-inf": (lambda: blockwise_absmax_dequantize(_CODES, torch.tensor([float("inf"), 0.5]), nf4_levels(), 2), ValueError, r"absmax must hold finite"),
    "absmax-float64-beyond-float32": (lambda: blockwise_absmax_dequantize(_CODES, torch.tensor([1e39, 0.5], dtype=torch.float64), nf4_levels(), 2), ValueError, r"absmax holds 1 finite value"),
    "x-float64-beyond-float32": (lambda: blockwise_absmax_quantize(torch.tensor([1e39], dtype=torch.float64), nf4_levels()), ValueError, r"x holds 1 finite value"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
