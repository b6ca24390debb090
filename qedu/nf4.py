"""NF4 with double quantization (QLoRA, Dettmers et al. 2023), byte for byte as bitsandbytes stores it.

NF4 (:func:`qedu.nonuniform.nf4_levels`) codes every weight as one of 16 normal quantiles,
scaled by the absolute maximum of its block of 64 weights::

    absmax_b = max |w| over block b                      (one float32 per 64 weights: +0.5 bit/weight)
    q        = nearest level of w / absmax_b             (4 bits, two codes per byte)
    w_hat    = NF4_CODE[q] * absmax_b

**Double quantization** stores the absmax values themselves in 8 bits: subtract their mean
(``offset``), cut them into blocks of 256, and code each as the nearest value of the 8-bit
dynamic map (:func:`qedu.optim.dynamic_map`) times its block's own absmax::

    c      = absmax - offset                             offset = mean(absmax), one float32
    q2     = nearest dynamic-map level of c / absmax2    absmax2 = max |c| per 256 absmax values
    absmax_hat = DYNAMIC[q2] * absmax2 + offset

Bits per weight: ``4 + 32/64 = 4.5`` without, ``4 + 8/64 + 32/(64*256) = 4.127`` with double
quantization (:func:`nf4_bits_per_parameter`).

**Equal to bitsandbytes 0.50.2** (``functional.quantize_4bit(w, blocksize=64, quant_type="nf4",
compress_statistics=True)``, CPU), byte for byte (``tests/test_nf4.py``). Its conventions,
which differ from the rest of qedu by design:

* The table is QLoRA's published ``NF4_CODE`` (float32 literals); it differs from the computed
  :func:`qedu.nonuniform.nf4_levels` by at most 1.8e-7.
* Values are scaled by multiplying with ``1 / absmax`` and compared with midpoints rounded to
  float32; a value exactly on a midpoint goes to the lower code. (In a last, partial block
  bitsandbytes divides by the absmax instead; the two can differ only for a value within a
  float32 rounding of a midpoint. Weights whose size is a multiple of 64 have no such block.)
  (:func:`qedu.nonuniform.blockwise_absmax_quantize` divides and compares with exact midpoints,
  so a value within a float32 rounding of a midpoint can land on the other side.)
* **Packing: element 0 goes to the HIGH nibble** (``byte = q[0] << 4 | q[1]``);
  :func:`qedu.packing.pack` puts element 0 in the low nibble, as torchao's ``pack_uint4`` does.
* bitsandbytes' CPU kernel finds the nearest 8-bit code of an absmax through a 65,536-entry
  lookup table over [-1, 1] rather than a search, so a value within one table step
  (2/65535) of a midpoint between two codes may get the farther code. qedu takes the nearest
  code by default (``absmax_rounding="nearest"``) and reproduces the kernel with
  ``absmax_rounding="lut"``.

>>> state = nf4_quantize(torch.linspace(-1, 1, 128), double_quant=False)
>>> state.packed.shape, nf4_dequantize(state)[:2]
(torch.Size([64]), tensor([-1., -1.]))
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from qedu._validation import check_bool, check_choice, check_int
from qedu.nonuniform import _blocks, quantize_to_codebook
from qedu.optim import dynamic_map
from qedu.quantizers import _check_x

__all__ = ["NF4_CODE", "NF4Weight", "nf4_quantize", "nf4_dequantize", "nf4_fake_quantize", "pack_nibbles_high_first",
           "unpack_nibbles_high_first", "nf4_bits_per_parameter", "ABSMAX_ROUNDINGS"]

# QLoRA's NF4 table as published (Dettmers et al. 2023, appendix) and hard-coded in bitsandbytes.
NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
], dtype=torch.float32)

ABSMAX_ROUNDINGS = ("nearest", "lut")
_LUT_SIZE = 65536  # bitsandbytes' CPU lookup table: 65,536 bins over [-1, 1]


class NF4Weight(NamedTuple):
    """A weight stored as NF4 (what :func:`nf4_quantize` returns and :func:`nf4_dequantize` reads).

    ``packed``: uint8 ``(ceil(numel / 2),)``, two 4-bit codes per byte, element 0 high.
    ``absmax``: float32 ``(n_blocks,)`` without double quantization, else uint8 codes into the
    dynamic map. ``absmax_scale``: float32 ``(ceil(n_blocks / 256),)``, the second-level absmax
    (``None`` without double quantization). ``offset``: the mean subtracted from the absmax
    values (0-d float32, or ``None``). ``shape``, ``block_size``, ``block_size2``: the layout.
    """

    packed: torch.Tensor
    absmax: torch.Tensor
    absmax_scale: torch.Tensor | None
    offset: torch.Tensor | None
    shape: tuple
    block_size: int
    block_size2: int


def pack_nibbles_high_first(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte, **first code in the high nibble**: ``byte = q[0] << 4 | q[1]``.

    An odd count is padded with code 7 (NF4's exact 0), as bitsandbytes pads with a zero value.

    >>> pack_nibbles_high_first(torch.tensor([1, 2, 15]))
    tensor([ 18, 247], dtype=torch.uint8)
    """
    if not isinstance(q, torch.Tensor) or q.is_floating_point() or q.dtype == torch.bool:
        raise TypeError("q must be an integer tensor of 4-bit codes (0..15).")
    flat = q.reshape(-1).to(torch.int32)  # (...) -> (n,)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > 15):
        raise ValueError(f"q must hold 4-bit codes in [0, 15], got values in [{int(flat.min())}, {int(flat.max())}].")
    if flat.numel() % 2:
        flat = torch.cat([flat, torch.full((1,), 7, dtype=torch.int32)])
    pairs = flat.reshape(-1, 2)  # (n,) -> (n / 2, 2)
    return ((pairs[:, 0] << 4) | pairs[:, 1]).to(torch.uint8)


def unpack_nibbles_high_first(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Undo :func:`pack_nibbles_high_first`: the first ``n`` codes as int32.

    >>> unpack_nibbles_high_first(torch.tensor([18, 247], dtype=torch.uint8), 3)
    tensor([ 1,  2, 15], dtype=torch.int32)
    """
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError("packed must be a uint8 tensor (what pack_nibbles_high_first returns).")
    n = check_int(n, "n", 0, 2 * packed.numel())
    b = packed.reshape(-1).to(torch.int32)
    return torch.stack([b >> 4, b & 0xF], dim=1).reshape(-1)[:n]  # (bytes,) -> (bytes, 2) -> (2 bytes,)


def _nearest_code(values: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Nearest level in float32 arithmetic, ties to the lower level (bitsandbytes' bucketize)."""
    midpoints = (code[:-1] + code[1:]) / 2  # float32, rounded as bitsandbytes computes them
    return torch.bucketize(values, midpoints).to(torch.int32)


def _nearest_code_by_lut(values: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' CPU kernel: round ``values`` in [-1, 1] to one of 65,536 bins, then look the
    bin's code up in a table built from the bins' own values."""
    i = torch.arange(_LUT_SIZE, dtype=torch.float32)
    lut = _nearest_code(-1.0 + (2.0 * i) / (_LUT_SIZE - 1), code)  # the code of each bin's value
    index = ((values.clamp(-1, 1) + 1.0) * 0.5 * (_LUT_SIZE - 1) + 0.5).to(torch.int64)  # truncation = floor
    return lut[index]


def nf4_quantize(weight, block_size: int = 64, double_quant: bool = True, block_size2: int = 256,
                 absmax_rounding: str = "nearest") -> NF4Weight:
    """Store a weight as NF4, optionally with double-quantized absmax values (QLoRA).

    The formulas are in the module docstring. ``weight`` is flattened row-major (as
    bitsandbytes does) and cut into blocks of ``block_size``; the last block may be shorter.

    Args:
        weight: real values of any shape, finite.
        block_size: weights per absmax (64 in QLoRA).
        double_quant: quantize the absmax values to 8 bits in blocks of ``block_size2``.
        block_size2: absmax values per second-level scale (256 in QLoRA).
        absmax_rounding: ``"nearest"`` or ``"lut"`` (bitsandbytes' CPU table, see module docstring).

    Returns:
        :class:`NF4Weight`.

    Raises:
        TypeError / ValueError: naming the bad argument.

    >>> nf4_quantize(torch.tensor([0.5, -1.0, 0.0, 1.0]), block_size=4, double_quant=False).packed
    tensor([192, 127], dtype=torch.uint8)
    """
    w = _check_x(weight, "weight")
    block_size = check_int(block_size, "block_size", 1)
    double_quant = check_bool(double_quant, "double_quant")
    block_size2 = check_int(block_size2, "block_size2", 1)
    absmax_rounding = check_choice(absmax_rounding, "absmax_rounding", ABSMAX_ROUNDINGS)
    blocks = _blocks(w.reshape(-1), block_size)  # (numel,) -> (n_blocks, block_size), zero-padded
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1)  # in [-1, 1]; an all-0 block stays 0
    q = _nearest_code(scaled, NF4_CODE).reshape(-1)[: w.numel()]  # drop the padding
    packed = pack_nibbles_high_first(q)
    if not double_quant:
        return NF4Weight(packed, absmax, None, None, tuple(w.shape), block_size, block_size2)
    offset = absmax.mean()  # absmax values are all > 0: centring them uses the signed map's both halves
    centred = _blocks(absmax - offset, block_size2)  # (n_blocks2, block_size2)
    absmax2 = centred.abs().amax(dim=1)  # (n_blocks2,)
    level = centred * (1.0 / absmax2.clamp(min=1e-38))[:, None]
    nearest = _nearest_code_by_lut if absmax_rounding == "lut" else quantize_to_codebook
    q2 = nearest(level, dynamic_map(signed=True)).reshape(-1)[: absmax.numel()].to(torch.uint8)
    q2[torch.repeat_interleave(absmax2 == 0, block_size2)[: absmax.numel()]] = 0  # bitsandbytes: an all-0 block -> 0
    return NF4Weight(packed, q2, absmax2, offset, tuple(w.shape), block_size, block_size2)


def _dequantize_absmax(state: NF4Weight) -> torch.Tensor:
    if state.absmax_scale is None:
        return state.absmax.float()
    levels = dynamic_map(signed=True)[state.absmax.long()]  # (n_blocks,)
    blocks = _blocks(levels, state.block_size2) * state.absmax_scale[:, None]  # (n_blocks2, block_size2)
    return blocks.reshape(-1)[: state.absmax.numel()] + state.offset


def nf4_dequantize(state: NF4Weight) -> torch.Tensor:
    """The weight an :class:`NF4Weight` stands for: ``NF4_CODE[q] * absmax_hat`` of its block.

    Returns:
        float32 tensor of ``state.shape``.

    >>> nf4_dequantize(nf4_quantize(torch.tensor([0.5, -1.0, 0.0, 1.0]), block_size=4))
    tensor([ 0.4407, -1.0000,  0.0000,  1.0000])
    """
    if not isinstance(state, NF4Weight):
        raise TypeError(f"state must be an NF4Weight (what nf4_quantize returns), got {type(state).__name__}.")
    n = math.prod(state.shape)
    codes = unpack_nibbles_high_first(state.packed, n)
    values = _blocks(NF4_CODE[codes.long()], state.block_size)  # (n_blocks, block_size)
    return (values * _dequantize_absmax(state)[:, None]).reshape(-1)[:n].reshape(state.shape)


def nf4_fake_quantize(weight, block_size: int = 64, double_quant: bool = True, block_size2: int = 256,
                      absmax_rounding: str = "nearest") -> torch.Tensor:
    """``nf4_dequantize(nf4_quantize(weight, ...))``: the weight as an NF4 model computes with it.

    >>> nf4_fake_quantize(torch.tensor([[0.3, -0.6]]), block_size=2, double_quant=False)
    tensor([[ 0.2644, -0.6000]])
    """
    return nf4_dequantize(nf4_quantize(weight, block_size, double_quant, block_size2, absmax_rounding))


def nf4_bits_per_parameter(block_size: int = 64, double_quant: bool = True, block_size2: int = 256,
                           absmax_bits: int = 32) -> float:
    """Storage per weight: ``4 + absmax_bits / block_size`` without double quantization,
    ``4 + 8 / block_size + 32 / (block_size * block_size2)`` with it (QLoRA: 4.5 vs 4.127).

    >>> nf4_bits_per_parameter(double_quant=False), round(nf4_bits_per_parameter(), 3)
    (4.5, 4.127)
    """
    block_size = check_int(block_size, "block_size", 1)
    double_quant = check_bool(double_quant, "double_quant")
    block_size2 = check_int(block_size2, "block_size2", 1)
    absmax_bits = check_int(absmax_bits, "absmax_bits", 1, 64)
    if not double_quant:
        return 4 + absmax_bits / block_size
    return 4 + 8 / block_size + absmax_bits / (block_size * block_size2)
