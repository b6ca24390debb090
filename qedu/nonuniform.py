"""Non-uniform quantization: a sorted table of levels (a *codebook*) instead of an even grid.

A uniform grid spends as many levels on the rare tails as on the crowded middle. A codebook
puts its levels where the values are::

    q     = argmin_i |x - levels[i]|       (index of the nearest level)
    x_hat = levels[q]

Two ways to build the table:

* :func:`kmeans_codebook`: learn it from the data (Lloyd's algorithm = 1-D k-means), the
  levels that minimise the mean squared error for *this* tensor.
* :func:`nf4_levels`: NormalFloat4 (QLoRA, Dettmers et al. 2023), a fixed table of 16
  quantiles of a normal distribution, good for any roughly normal weight tensor once each
  block is scaled by its absolute maximum (:func:`blockwise_absmax_quantize`).

Block-wise absmax scaling works with any sorted table in ``[-1, 1]``: NF4 here, a linear
table (plain symmetric int quantization), or the dynamic map of 8-bit optimizers.

>>> levels = torch.tensor([-1.0, -0.25, 0.0, 0.5, 1.0])
>>> codes = quantize_to_codebook(torch.tensor([-0.7, 0.1, 0.3, 2.0]), levels)
>>> codes, dequantize_codebook(codes, levels)
(tensor([0, 2, 3, 4], dtype=torch.int32), tensor([-1.0000,  0.0000,  0.5000,  1.0000]))
"""
from __future__ import annotations

import math

import torch

from qedu._validation import as_float32, check_int
from qedu.quantizers import _check_x

__all__ = ["quantize_to_codebook", "dequantize_codebook", "kmeans_codebook", "nf4_levels",
           "blockwise_absmax_quantize", "blockwise_absmax_dequantize", "NF4_OFFSET"]

# QLoRA's NF4 uses the normal quantiles from 1 - offset to offset, with offset halfway between
# the choices for 15 and 16 equal-area bins: 1 - (1/(2*15) + 1/(2*16)) / 2 = 0.9677083.
NF4_OFFSET = 1 - (1 / (2 * 15) + 1 / (2 * 16)) / 2


def _check_levels(levels, name: str = "levels", unit: bool = False) -> torch.Tensor:
    if not isinstance(levels, torch.Tensor):
        raise TypeError(f"{name} must be a 1-D float tensor of sorted levels, got {type(levels).__name__}.")
    if levels.ndim != 1 or levels.numel() == 0 or not levels.is_floating_point():
        raise ValueError(f"{name} must be a non-empty 1-D float tensor, got shape {tuple(levels.shape)} and dtype {levels.dtype}.")
    levels = levels.to(torch.float32)
    if not bool(torch.isfinite(levels).all()):
        raise ValueError(f"{name} contains NaN or inf; every level must be a finite number.")
    if bool((levels[1:] < levels[:-1]).any()):
        raise ValueError(f"{name} must be sorted in increasing order; sort it first: torch.sort({name}).values.")
    if unit and float(levels.abs().max()) > 1.0:
        raise ValueError(
            f"{name} must lie in [-1, 1] for absmax scaling (values are divided by their block's absmax), "
            f"got max |level| = {float(levels.abs().max()):.4g}; divide the table by {name}.abs().max()."
        )
    return levels


def quantize_to_codebook(x, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level for every value: ``q = argmin_i |x - codebook[i]|``.

    Uses the midpoints between neighbouring levels as decision boundaries (computed in float64,
    where the midpoint of two float32 numbers is exact); a value exactly on a midpoint goes to
    the lower level.

    Args:
        x: real values, finite and not empty.
        codebook: sorted 1-D float tensor of levels.

    Returns:
        int32 codes of ``x``'s shape, in ``[0, len(codebook) - 1]``.

    Raises:
        TypeError / ValueError: for bad ``x`` or an unsorted, empty or non-finite codebook.

    >>> quantize_to_codebook(torch.tensor([0.2, 0.25, 0.3]), torch.tensor([0.0, 0.5]))
    tensor([0, 0, 1], dtype=torch.int32)
    """
    x = _check_x(x)
    codebook = _check_levels(codebook, "codebook").to(torch.float64)
    midpoints = (codebook[1:] + codebook[:-1]) / 2  # (k,) -> (k - 1,) decision boundaries
    return torch.bucketize(x.to(torch.float64), midpoints).to(torch.int32)


def dequantize_codebook(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Look the codes up: ``x_hat = codebook[q]`` (float32, ``codes``' shape).

    Raises:
        TypeError / ValueError: for non-integer codes, codes outside the table, or a bad codebook.

    >>> dequantize_codebook(torch.tensor([1, 0]), torch.tensor([-0.5, 0.5]))
    tensor([ 0.5000, -0.5000])
    """
    codebook = _check_levels(codebook, "codebook")
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
        raise TypeError("codes must be an integer tensor (the indices quantize_to_codebook returns).")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook.numel()):
        raise ValueError(f"codes must lie in [0, {codebook.numel() - 1}] for a codebook of {codebook.numel()} levels, "
                         f"got values in [{int(codes.min())}, {int(codes.max())}].")
    return codebook[codes.long()]


def kmeans_codebook(x, bits: int, iters: int = 30, seed: int = 0):
    """Learn ``2**bits`` levels for ``x`` with Lloyd's algorithm (k-means in one dimension).

    Start from the quantiles ``(i + 1/2) / k`` of ``x`` (one level per equal-count slice), then
    repeat until nothing changes or ``iters`` rounds have run:

    1. assign every value to its nearest level (:func:`quantize_to_codebook`);
    2. move every level to the mean of the values assigned to it.

    Each round can only lower the mean squared error. A level that lost all its values is moved
    to a value drawn at random (with ``seed``), so the result is deterministic.

    Args:
        x: real values, finite and not empty (any shape).
        bits: 1..8; the codebook has ``2**bits`` levels.
        iters: at most this many Lloyd rounds (>= 0).
        seed: seeds the re-placement of empty levels.

    Returns:
        ``(codebook, codes)``: sorted float32 levels of shape ``(2**bits,)`` and int32 codes
        of ``x``'s shape, so ``codebook[codes]`` is the reconstruction.

    >>> codebook, codes = kmeans_codebook(torch.tensor([0.0, 0.1, 1.0, 1.2]), bits=1)
    >>> codebook
    tensor([0.0500, 1.1000])
    """
    x = _check_x(x)
    bits = check_int(bits, "bits", 1, 8)
    iters = check_int(iters, "iters", 0)
    seed = check_int(seed, "seed", 0, 2**63 - 1)
    generator = torch.Generator().manual_seed(seed)
    flat = x.reshape(-1)  # (...) -> (n,)
    k = 2**bits
    probabilities = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    codebook = torch.quantile(flat.double(), probabilities).float()  # (k,) initial levels
    for _ in range(iters):
        codes = quantize_to_codebook(flat, codebook).long()
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, codes, flat.double())
        counts = torch.bincount(codes, minlength=k)
        new = torch.where(counts > 0, sums / counts.clamp(min=1), codebook.double()).float()
        empty = (counts == 0).nonzero().flatten()
        new[empty] = flat[torch.randint(flat.numel(), (empty.numel(),), generator=generator)]
        new = torch.sort(new).values
        if torch.equal(new, codebook):
            break
        codebook = new
    return codebook, quantize_to_codebook(x, codebook)


def nf4_levels() -> torch.Tensor:
    """The 16 NormalFloat4 levels of QLoRA (Dettmers et al. 2023), built as the paper's code does.

    Quantiles of the standard normal, normalised to ``[-1, 1]``: 8 positive ones at
    probabilities ``linspace(offset, 1/2, 9)[:-1]``, 7 negative ones at
    ``linspace(offset, 1/2, 8)[:-1]`` (mirrored), and an exact 0 -- so zero is representable
    and the table is slightly asymmetric (one more positive level). ``offset = NF4_OFFSET``.

    Returns:
        float32 tensor of 16 sorted levels from -1 to 1.

    >>> nf4_levels()[[0, 7, 8, 15]]
    tensor([-1.0000,  0.0000,  0.0796,  1.0000])
    """
    quantile = torch.special.ndtri  # inverse CDF of the standard normal
    positive = quantile(torch.linspace(NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1])  # 8 levels
    negative = -quantile(torch.linspace(NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1])  # 7 levels
    levels = torch.sort(torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive])).values
    return (levels / levels.max()).float()


def _blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """``(n,) -> (n_blocks, block_size)``, padding the last block with zeros."""
    n_blocks = math.ceil(flat.numel() / block_size)
    padded = torch.nn.functional.pad(flat, (0, n_blocks * block_size - flat.numel()))  # (n,) -> (n_blocks * bs,)
    return padded.reshape(n_blocks, block_size)  # (n_blocks * bs,) -> (n_blocks, bs)


def blockwise_absmax_quantize(x, levels: torch.Tensor, block_size: int = 64):
    """Codes of ``x`` against a level table, each block scaled by its absolute maximum.

    ``x`` is flattened and cut into blocks of ``block_size`` consecutive values (the last one
    may be shorter). For each block ``absmax = max |x|``, and every value is coded as the
    nearest level of ``x / absmax`` (which lies in ``[-1, 1]``)::

        q = nearest(x / absmax, levels)          x_hat = levels[q] * absmax

    NF4 uses blocks of 64 (QLoRA); 8-bit optimizers use 256 or 2048 with their dynamic map.

    Args:
        x: real values, finite and not empty.
        levels: sorted 1-D table within ``[-1, 1]``, e.g. :func:`nf4_levels`.
        block_size: values per block (>= 1).

    Returns:
        ``(codes, absmax)``: int32 codes of ``x``'s shape, float32 absmax of shape ``(n_blocks,)``.
        An all-zero block has absmax 0 and decodes to zeros.

    >>> codes, absmax = blockwise_absmax_quantize(torch.tensor([0.1, -2.0, 0.5, 0.5]), nf4_levels(), 2)
    >>> codes, absmax
    (tensor([ 8,  0, 15, 15], dtype=torch.int32), tensor([2.0000, 0.5000]))
    """
    x = _check_x(x)
    levels = _check_levels(levels, unit=True)
    block_size = check_int(block_size, "block_size", 1)
    blocks = _blocks(x.reshape(-1), block_size)  # (...) -> (n,) -> (n_blocks, bs)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # an all-zero block stays 0
    codes = quantize_to_codebook(blocks / safe[:, None], levels)  # (n_blocks, bs)
    return codes.reshape(-1)[: x.numel()].reshape(x.shape), absmax  # drop the padding, x's shape


def blockwise_absmax_dequantize(codes: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor,
                                block_size: int = 64) -> torch.Tensor:
    """Undo :func:`blockwise_absmax_quantize`: ``x_hat = levels[q] * absmax`` of its block.

    Returns:
        float32 tensor of ``codes``' shape.

    Raises:
        ValueError: if ``absmax`` does not have one value per block, holds NaN, inf or negative
            values, or codes are out of range.

    >>> blockwise_absmax_dequantize(torch.tensor([8, 0, 15, 15]), torch.tensor([2.0, 0.5]), nf4_levels(), 2)
    tensor([ 0.1592, -2.0000,  0.5000,  0.5000])
    """
    block_size = check_int(block_size, "block_size", 1)
    levels = _check_levels(levels, unit=True)
    values = dequantize_codebook(codes, levels)
    n_blocks = math.ceil(values.numel() / block_size)
    if not isinstance(absmax, torch.Tensor) or absmax.shape != (n_blocks,):
        got = tuple(absmax.shape) if isinstance(absmax, torch.Tensor) else type(absmax).__name__
        raise ValueError(f"absmax must hold one value per block of {block_size}: shape ({n_blocks},) for "
                         f"{values.numel()} codes, got {got}; pass the absmax that blockwise_absmax_quantize returned.")
    if absmax.is_complex() or absmax.dtype == torch.bool or not bool((torch.isfinite(absmax) & (absmax >= 0)).all()):
        raise ValueError(f"absmax must hold finite values >= 0 (one block maximum |x| each), got {absmax.tolist()[:8]}; "
                         "pass the absmax that blockwise_absmax_quantize returned.")
    absmax = as_float32(absmax, "absmax") if absmax.is_floating_point() else absmax.float()
    blocks = _blocks(values.reshape(-1), block_size) * absmax[:, None]  # (n_blocks, bs)
    return blocks.reshape(-1)[: values.numel()].reshape(codes.shape)
