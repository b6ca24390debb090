"""Bit packing: store 1-, 2- or 4-bit codes several to a byte, and count real storage sizes.

torch has no 4-bit dtype, so low-bit codes live in ``uint8`` bytes, ``8 // bits`` per byte.
Bit order (little-endian within the byte, as ``numpy.packbits(..., bitorder="little")``):
the first code goes to the lowest bits::

    bits=4:  byte = q[0] | q[1] << 4                      (q[0] is the low nibble)
    bits=2:  byte = q[0] | q[1] << 2 | q[2] << 4 | q[3] << 6
    bits=1:  byte = q[0] | q[1] << 1 | ... | q[7] << 7

Codes must be unsigned, ``0 <= q < 2**bits``; shift signed codes first (``q - fmt.qmin``)
and back after unpacking.

>>> packed = pack(torch.tensor([1, 2, 15]), bits=4)
>>> packed, unpack(packed, bits=4, n=3)
(tensor([33, 15], dtype=torch.uint8), tensor([ 1,  2, 15], dtype=torch.int32))
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from qedu._validation import check_int
from qedu.granularity import PerChannel, PerGroup, PerTensor

__all__ = ["pack", "unpack", "storage_bytes", "StorageReport", "PACK_BITS"]

PACK_BITS = (1, 2, 4, 8)


def _check_bits(bits) -> int:
    bits = check_int(bits, "bits")
    if bits not in PACK_BITS:
        raise ValueError(f"bits must be one of {PACK_BITS} (codes that tile a byte), got {bits}.")
    return bits


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``bits``-bit codes into bytes, first code in the lowest bits.

    ``q`` is flattened (row-major) and padded with zero codes to a whole number of bytes.

    Args:
        q: integer tensor with values in ``[0, 2**bits - 1]`` (any shape).
        bits: 1, 2, 4 or 8 (8 just converts to ``uint8``).

    Returns:
        1-D ``uint8`` tensor of ``ceil(q.numel() * bits / 8)`` bytes.

    Raises:
        TypeError: if ``q`` is not an integer tensor.
        ValueError: for other ``bits`` or codes outside ``[0, 2**bits - 1]``.

    >>> pack(torch.tensor([1, 0, 1, 1]), bits=1)
    tensor([13], dtype=torch.uint8)
    """
    bits = _check_bits(bits)
    if not isinstance(q, torch.Tensor) or q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        what = f"dtype {q.dtype}" if isinstance(q, torch.Tensor) else type(q).__name__
        raise TypeError(f"q must be an integer tensor of codes, got {what}; quantize first, then pack.")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 2**bits - 1):
        raise ValueError(
            f"pack stores unsigned {bits}-bit codes in [0, {2**bits - 1}], got values in [{int(q.min())}, {int(q.max())}]; "
            "shift signed codes first: pack(q - fmt.qmin, bits), and add fmt.qmin back after unpack."
        )
    per_byte = 8 // bits
    flat = q.reshape(-1).to(torch.int32)  # (...) -> (n,)
    n_bytes = math.ceil(flat.numel() / per_byte)
    flat = torch.nn.functional.pad(flat, (0, n_bytes * per_byte - flat.numel()))  # zero codes fill the last byte
    groups = flat.reshape(n_bytes, per_byte)  # (n,) -> (n_bytes, codes per byte)
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits  # code j of a byte sits at bit j * bits
    return (groups << shifts).sum(dim=1).to(torch.uint8)  # the shifted codes do not overlap: sum = OR


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Undo :func:`pack`: the first ``n`` codes, as a 1-D int32 tensor (reshape it yourself).

    Args:
        packed: 1-D ``uint8`` tensor from :func:`pack`.
        bits: the same bits as for packing.
        n: number of codes that were packed (the padding is dropped).

    Raises:
        TypeError / ValueError: for a non-uint8 or non-1-D ``packed``, bad ``bits``, or an ``n``
            that needs more bytes than ``packed`` has.

    >>> unpack(torch.tensor([13], dtype=torch.uint8), bits=1, n=4)
    tensor([1, 0, 1, 1], dtype=torch.int32)
    """
    bits = _check_bits(bits)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.ndim != 1:
        what = f"dtype {packed.dtype}, shape {tuple(packed.shape)}" if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise TypeError(f"packed must be the 1-D uint8 tensor that pack returns, got {what}.")
    per_byte = 8 // bits
    n = check_int(n, "n", 0, packed.numel() * per_byte)
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32)[:, None] >> shifts) & (2**bits - 1)  # (n_bytes,) -> (n_bytes, codes per byte)
    return codes.reshape(-1)[:n]  # (n_bytes * per_byte,) -> (n,)


class StorageReport(NamedTuple):
    """Bytes of a quantized tensor: codes, scales, zero points, their total, and bits per value."""

    payload_bytes: int
    scale_bytes: int
    zero_point_bytes: int
    total_bytes: int
    bits_per_value: float


def storage_bytes(shape, bits: int, granularity=PerTensor(), scale_bits: int = 16,
                  zero_point_bits: int = 0) -> StorageReport:
    """Real storage of a quantized tensor: packed codes plus one scale (and zero point) per slice.

    ``payload = ceil(numel * bits / 8)`` (codes packed densely, as :func:`pack` does),
    ``scales = ceil(n_slices * scale_bits / 8)``, ``zero points = ceil(n_slices * zero_point_bits / 8)``.

    The defaults describe common int4 weight formats: fp16 scales, symmetric codes with no
    zero point. Pass ``scale_bits=32`` for the float32 scales qedu and torch compute, and
    ``zero_point_bits=bits`` (packed like the codes) or 8/32 for asymmetric quantization.

    Args:
        shape: the tensor's shape.
        bits: bits per code (1..32; e.g. 32 with ``scale_bits=0`` for a plain float32 tensor).
        granularity: ``PerTensor()``, ``PerChannel(axis)`` or ``PerGroup(group_size, axis)``.
        scale_bits, zero_point_bits: bits per stored scale / zero point (0 for none).

    Returns:
        :class:`StorageReport`.

    >>> storage_bytes((4096, 4096), 4, PerGroup(32)).bits_per_value
    4.5
    """
    shape = tuple(check_int(d, "shape entry", 0) for d in shape)
    bits = check_int(bits, "bits", 1, 32)
    scale_bits = check_int(scale_bits, "scale_bits", 0, 64)
    zero_point_bits = check_int(zero_point_bits, "zero_point_bits", 0, 64)
    if not isinstance(granularity, (PerTensor, PerChannel, PerGroup)):
        raise TypeError(f"granularity must be PerTensor(), PerChannel(axis) or PerGroup(group_size), got {granularity!r}.")
    numel = math.prod(shape)
    if numel == 0:
        raise ValueError(f"shape {shape} holds no values; storage per value is undefined.")
    n_slices = granularity.num_params(shape)
    payload = math.ceil(numel * bits / 8)
    scales = math.ceil(n_slices * scale_bits / 8)
    zero_points = math.ceil(n_slices * zero_point_bits / 8)
    total = payload + scales + zero_points
    return StorageReport(payload, scales, zero_points, total, total * 8 / numel)
