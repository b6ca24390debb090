"""Block-scaled formats: OCP Microscaling (MX) and NVIDIA's NVFP4, from scratch.

A block of ``block_size`` consecutive values shares one scale ``X``; each value keeps a tiny
element (fp8, fp6, fp4 or int8)::

    x_hat[i] = X * element[i]          X = 2 ** e, stored as E8M0 (8 bits: e + 127)

**OCP MX v1.0** (the spec's section 6.3): blocks of 32, and the shared exponent::

    e = floor(log2(max|x|)) - emax_elem      emax_elem = the element format's largest power of 2

so the block's largest value lands in the element's top binade; elements round to nearest even
and saturate at the element's max. ``e`` is clamped to E8M0's range [-127, 127]; a block holding
NaN or inf gets the NaN scale (code 255) and dequantizes to NaN, as the spec says.

Four scale rules (``rule=``), as torchao names them:

- ``"floor"``: the spec's rule above. Values between ``2^(emax+1)`` and the element max times
  X can exceed the element max and are clipped: for fp4 (max 6, emax 2), a block whose max is
  7.9 * 2^k keeps it as 6 * 2^k.
- ``"ceil"``: ``ceil(log2 max|x|) - emax_elem``: never clips, wastes up to one binade.
- ``"even"``: round ``max|x|`` to the element's mantissa width first, then floor.
- ``"rceil"`` (cuBLAS, TransformerEngine): ``e = ceil(log2(max|x| / elem_max))``: the smallest
  power of two that fits the block's max under the element max: never clips.

**NVFP4**: fp4 (E2M1) elements in blocks of 16, each with an fp8 E4M3 scale
``amax / 6`` (rounded to E4M3, so not a power of two), optionally under one fp32 per-tensor
scale ``amax_tensor / (448 * 6)``, so that block scales use E4M3's whole range.

**MXINT8**: 8-bit two's-complement elements with an implicit 2^-6 (values -2 .. 1.984375,
``emax_elem = 0``); the spec's symmetric range -127..127 is used here.

Tested bit for bit against torchao 0.18's ``torchao.prototype.mx_formats`` (``to_mx``,
``to_dtype``, ``nvfp4_quantize``) in tests/test_mx.py, with the differences pinned there: torchao
divides by ``2^-126`` where the scale is ``2^-127`` (FLOOR), multiplies by 1 instead of
``2^127`` when RCEIL's exponent code is 0, and keeps a finite scale for blocks holding inf.

>>> x = torch.tensor([[0.5, -1.0, 3.0, 7.9]])
>>> mx = mx_quantize(x, "fp4_e2m1", block_size=4)       # floor(log2 7.9) - 2 = 0: X = 1
>>> mx.scale_code.tolist(), mx_dequantize(mx).tolist()   # 7.9 is clipped to fp4's max, 6
([[127]], [[0.5, -1.0, 3.0, 6.0]])
>>> mx_dequantize(mx_quantize(x, "fp4_e2m1", block_size=4, rule="rceil")).tolist()   # X = 2
[[0.0, -1.0, 3.0, 8.0]]
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from qedu._validation import FLOAT32_MAX, FLOAT32_TINY, as_float_tensor, check_choice, check_int, check_real
from qedu.floats import FP4_E2M1, FP6_E2M3, FP6_E3M2, FP8_E4M3, FP8_E5M2, FloatFormat, cast, encode

__all__ = ["ELEMENTS", "RULES", "E8M0_BIAS", "MXTensor", "shared_exponent", "mx_quantize", "mx_dequantize",
           "pack_fp4", "unpack_fp4", "NVFP4Tensor", "nvfp4_quantize", "nvfp4_dequantize", "bits_per_value"]

ELEMENTS = {"fp8_e4m3": FP8_E4M3, "fp8_e5m2": FP8_E5M2, "fp6_e2m3": FP6_E2M3, "fp6_e3m2": FP6_E3M2,
            "fp4_e2m1": FP4_E2M1, "int8": None}
RULES = ("floor", "ceil", "even", "rceil")
E8M0_BIAS = 127
_INT8_STEP = 2.0**-6  # MXINT8's implicit element scale


def _emax(element: str) -> int:
    """The element format's largest power of two (e4m3: 8, e5m2: 15, e2m3: 2, e3m2: 4, e2m1: 2, int8: 0)."""
    fmt = ELEMENTS[element]
    return 0 if fmt is None else math.floor(math.log2(fmt.max))


def _elem_max(element: str) -> float:
    fmt = ELEMENTS[element]
    return 127 * _INT8_STEP if fmt is None else fmt.max


def _check_x(x, block_size: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"x must be float32, bfloat16 or float16, got {x.dtype}: convert it with x.float().")
    if x.numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}); pass at least one block of values.")
    if x.ndim == 0 or x.shape[-1] % block_size:
        raise ValueError(f"x's last dimension ({tuple(x.shape)}) must be a multiple of block_size={block_size}: "
                         "pad it, or pick a block size that divides it.")
    return x.float()


def shared_exponent(amax: torch.Tensor, element: str, rule: str = "floor") -> torch.Tensor:
    """The block exponent ``e`` (int32, clamped to [-127, 127]) for blocks whose largest |x| is ``amax``.

    NaN or inf ``amax`` gives 128, which :func:`mx_quantize` stores as the NaN code 255.

    >>> shared_exponent(torch.tensor([6.0, 7.9, 0.0]), "fp4_e2m1").tolist()
    [0, 0, -127]
    >>> shared_exponent(torch.tensor([6.0, 7.9]), "fp4_e2m1", rule="rceil").tolist()
    [0, 1]
    """
    check_choice(element, "element", tuple(ELEMENTS))
    check_choice(rule, "rule", RULES)
    amax = as_float_tensor(amax, "amax", allow_empty=True, allow_nonfinite=True).float()
    if bool((amax < 0).any()):
        raise ValueError(f"amax must be >= 0 (a block's largest |x|), got {amax[amax < 0][0].item()}; pass x.abs().amax(...).")
    finite = torch.isfinite(amax)
    emax = _emax(element)
    if rule == "rceil":
        descale = amax / _elem_max(element)  # float32, as cuBLAS computes it
        e = torch.ceil(torch.log2(descale))
    else:
        if rule == "even":  # round amax to the element's mantissa bits (ties away from 0 in the bits)
            man_bits = 7 if ELEMENTS[element] is None else ELEMENTS[element].man_bits
            bits = amax.view(torch.int32) + (1 << (23 - man_bits - 1))
            amax = torch.where(torch.isnan(amax), amax, (bits & ~((1 << (23 - man_bits)) - 1)).view(torch.float32))
        _, exp2 = torch.frexp(amax)  # amax = m * 2**exp2 with m in [0.5, 1): floor(log2 amax) = exp2 - 1
        exp2 = torch.where(finite & torch.isinf(amax), 129, exp2)  # "even": float32's max rounds up to 2**128
        e = (exp2 - 1).float()
        if rule == "ceil":
            e = e + (amax > torch.ldexp(torch.ones_like(amax), exp2 - 1)).float()  # not a power of two: round up
        e = torch.where(amax > 0, e - emax, torch.full_like(e, -E8M0_BIAS))
    e = torch.where(finite, e.clamp(-E8M0_BIAS, E8M0_BIAS), torch.full_like(e, E8M0_BIAS + 1))
    return e.to(torch.int32)


class MXTensor(NamedTuple):
    """An MX-quantized tensor: ``x_hat = 2**(scale_code - 127) * elements`` per block."""

    elements: torch.Tensor  # float32 values on the element grid, shape of x
    scale_code: torch.Tensor  # uint8 E8M0 codes, shape (..., n_blocks)
    element: str
    block_size: int


def _to_element(v: torch.Tensor, element: str) -> torch.Tensor:
    """Round scaled values to the element grid (nearest even), saturating at its max."""
    fmt = ELEMENTS[element]
    if fmt is None:  # MXINT8
        return torch.round(v / _INT8_STEP).clamp(-127, 127) * _INT8_STEP
    return cast(v.clamp(-fmt.max, fmt.max), fmt, saturate=True)


def mx_quantize(x: torch.Tensor, element: str = "fp8_e4m3", block_size: int = 32, rule: str = "floor") -> MXTensor:
    """Quantize ``x`` to an MX format along its last dimension.

    Args:
        x: float32/bf16/fp16 tensor whose last dimension is a multiple of ``block_size``.
        element: one of :data:`ELEMENTS` ("fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2",
            "fp4_e2m1", "int8").
        block_size: values per shared scale (the spec's k = 32).
        rule: how the shared exponent is chosen, one of :data:`RULES` (see the module docstring).

    Returns:
        :class:`MXTensor`. A block holding NaN or inf has scale code 255 (NaN).

    Raises:
        TypeError / ValueError: bad ``x``, ``element``, ``block_size`` or ``rule``.
    """
    block_size = check_int(block_size, "block_size", 1)
    check_choice(element, "element", tuple(ELEMENTS))
    x = _check_x(x, block_size)
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)  # (..., K) -> (..., K/b, b)
    amax = blocks.abs().amax(dim=-1)  # NaN if the block holds one
    e = shared_exponent(amax, element, rule)
    scale = torch.ldexp(torch.ones_like(amax), e.clamp(max=E8M0_BIAS))  # 2**e, exact in float32 (2**-127 is subnormal)
    elements = _to_element(blocks / scale.unsqueeze(-1), element)
    nan_block = e > E8M0_BIAS
    elements = torch.where(nan_block.unsqueeze(-1), torch.full_like(elements, math.nan), elements)
    code = (e + E8M0_BIAS).clamp(0, 255).to(torch.uint8)
    return MXTensor(elements.reshape(x.shape), code, element, block_size)


def _check_fits_float32(x_hat: torch.Tensor, finite_in: torch.Tensor, name: str) -> torch.Tensor:
    """Refuse a dequantized value that float32 cannot hold (a block max rounded up past 3.4e38)."""
    over = ~torch.isfinite(x_hat) & finite_in  # (0 times a scale that overflowed is NaN)
    if bool(over.any()):
        raise ValueError(f"{name} holds {int(over.sum())} value(s) beyond float32's largest ({FLOAT32_MAX:.4g}): "
                         "the block's largest |x| was so close to it that its nearest value on the grid is 2**128. "
                         "Scale x down before quantizing (or use rule='floor', which clips instead of rounding up).")
    return x_hat


def mx_dequantize(mx: MXTensor) -> torch.Tensor:
    """``x_hat = 2**(scale_code - 127) * elements`` (float32; NaN where the scale code is 255).

    Raises:
        TypeError: ``mx`` is not an :class:`MXTensor`. ValueError: a value beyond float32's range
        (only for blocks whose largest |x| was within a rounding of float32's largest, 3.4e38).
    """
    if not isinstance(mx, MXTensor):
        raise TypeError(f"mx must be an MXTensor from mx_quantize, got {type(mx).__name__}.")
    e = mx.scale_code.to(torch.int32) - E8M0_BIAS
    scale = torch.ldexp(torch.ones(e.shape), e.clamp(max=E8M0_BIAS))
    scale = torch.where(mx.scale_code == 255, torch.full_like(scale, math.nan), scale)
    blocks = mx.elements.reshape(*mx.elements.shape[:-1], -1, mx.block_size)
    x_hat = blocks * scale.unsqueeze(-1)
    _check_fits_float32(x_hat, torch.isfinite(blocks) & torch.isfinite(scale).unsqueeze(-1), "mx")
    return x_hat.reshape(mx.elements.shape)


def pack_fp4(values: torch.Tensor) -> torch.Tensor:
    """Pack fp4 (E2M1) values, two per byte, element 0 in the LOW nibble (torchao's ``pack_uint4``,
    and ``torch.float4_e2m1fn_x2``'s layout: view the result with ``.view(torch.float4_e2m1fn_x2)``).

    >>> pack_fp4(torch.tensor([0.5, -6.0])).tolist()   # codes 0x1 and 0xF
    [241]
    """
    if not isinstance(values, torch.Tensor) or values.ndim == 0:
        raise TypeError(f"values must be a torch.Tensor with at least one dimension, got {type(values).__name__} "
                        f"{getattr(values, 'shape', '')}.")
    codes = encode(values, FP4_E2M1, saturate=True).to(torch.uint8)
    if codes.shape[-1] % 2:
        raise ValueError(f"values' last dimension must be even to pack two per byte, got {tuple(values.shape)}.")
    pairs = codes.reshape(*codes.shape[:-1], -1, 2)  # (..., K) -> (..., K/2, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """The fp4 values (float32) of bytes packed by :func:`pack_fp4`."""
    from qedu.floats import decode

    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.ndim == 0:
        raise TypeError(f"packed must be a uint8 tensor of at least one dimension (what pack_fp4 returns), got "
                        f"{getattr(packed, 'dtype', type(packed).__name__)}.")
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(*packed.shape[:-1], -1)
    return decode(codes.long(), FP4_E2M1).float()


class NVFP4Tensor(NamedTuple):
    """``x_hat = per_tensor_scale * block_scale * elements`` per block of 16."""

    elements: torch.Tensor  # float32 fp4 values, shape of x
    block_scale: torch.Tensor  # float32 values of the E4M3 block scales, shape (..., n_blocks)
    per_tensor_scale: float | None


def nvfp4_quantize(x: torch.Tensor, per_tensor_scale: float | None = None) -> NVFP4Tensor:
    """NVFP4: blocks of 16 fp4 values, each block with an E4M3 scale, under an optional fp32 scale.

    ``block_scale = e4m3(clamp(amax / 6 / per_tensor_scale, e4m3_tiny, 448))`` and
    ``elements = fp4(x * (1 / per_tensor_scale) / block_scale)`` (torchao multiplies by the
    reciprocal, as the NVIDIA kernels do). Pass ``per_tensor_scale = amax(x) / (448 * 6)`` for
    two-level scaling.

    Raises:
        TypeError / ValueError: bad ``x`` (NaN or inf included: fp4 cannot store them) or a
        ``per_tensor_scale`` that is not a float32 number > 0 (or whose reciprocal overflows).

    >>> nv = nvfp4_quantize(torch.linspace(-3, 3, 16).reshape(1, 16))
    >>> nv.block_scale.tolist(), nv.elements[0, :3].tolist()
    ([[0.5]], [-6.0, -6.0, -4.0])
    """
    x = _check_x(x, 16)
    if not bool(torch.isfinite(x).all()):  # fp4 has no NaN or inf, and NVFP4 has no NaN block code
        raise ValueError(f"x contains {int((~torch.isfinite(x)).sum())} NaN/inf value(s); NVFP4 can only store finite "
                         "numbers. Find where they come from, or clean them with torch.nan_to_num(x).")
    blocks = x.reshape(*x.shape[:-1], -1, 16)  # (..., K) -> (..., K/16, 16)
    block_scale = blocks.abs().amax(dim=-1) / FP4_E2M1.max  # float32
    tiny = FP8_E4M3.min_normal
    if per_tensor_scale is None:
        block_scale = cast(block_scale.clamp(tiny, FP8_E4M3.max), FP8_E4M3)
        reciprocal = 1.0 / block_scale
    else:
        per_tensor_scale = check_real(per_tensor_scale, "per_tensor_scale", FLOAT32_TINY, FLOAT32_MAX,
                                      example="amax(x) / (448 * 6), or None for block scales alone")
        pts = torch.tensor(per_tensor_scale, dtype=torch.float32)
        block_scale = cast((block_scale / pts).clamp(tiny, FP8_E4M3.max), FP8_E4M3)
        reciprocal = (1.0 / pts) / block_scale
        if not bool(torch.isfinite(reciprocal).all()):  # 1 / (per_tensor_scale * block_scale) beyond float32
            raise ValueError(f"per_tensor_scale={per_tensor_scale!r} is too small: 1 / (per_tensor_scale * block_scale) "
                             "overflows float32. Use amax(x) / (448 * 6), or None for block scales alone.")
    scaled = (blocks * reciprocal.unsqueeze(-1)).clamp(-FP4_E2M1.max, FP4_E2M1.max)
    elements = cast(scaled, FP4_E2M1, saturate=True).reshape(x.shape)
    return NVFP4Tensor(elements, block_scale, per_tensor_scale)


def nvfp4_dequantize(nv: NVFP4Tensor) -> torch.Tensor:
    """``x_hat = per_tensor_scale * block_scale * elements`` (float32).

    Raises:
        TypeError: ``nv`` is not an :class:`NVFP4Tensor`. ValueError: a value beyond float32's range.
    """
    if not isinstance(nv, NVFP4Tensor):
        raise TypeError(f"nv must be an NVFP4Tensor from nvfp4_quantize, got {type(nv).__name__}.")
    blocks = nv.elements.reshape(*nv.elements.shape[:-1], -1, 16)
    scale = nv.block_scale if nv.per_tensor_scale is None else nv.block_scale * nv.per_tensor_scale
    x_hat = blocks * scale.unsqueeze(-1)
    _check_fits_float32(x_hat, torch.isfinite(blocks) & torch.isfinite(nv.block_scale).unsqueeze(-1), "nv")
    return x_hat.reshape(nv.elements.shape)


def bits_per_value(element: str, block_size: int, scale_bits: int = 8, tensor_bits: int = 0, n_values: int | None = None) -> float:
    """Storage per value, scales included: ``elem_bits + scale_bits / block_size (+ tensor_bits / n)``.

    >>> bits_per_value("fp4_e2m1", 32), bits_per_value("fp4_e2m1", 16)   # MXFP4, NVFP4's blocks
    (4.25, 4.5)
    """
    check_choice(element, "element", tuple(ELEMENTS))
    block_size = check_int(block_size, "block_size", 1)
    fmt: FloatFormat | None = ELEMENTS[element]
    bits = 8 if fmt is None else fmt.bits
    scale_bits = check_int(scale_bits, "scale_bits", 0)
    tensor_bits = check_int(tensor_bits, "tensor_bits", 0)
    extra = 0.0 if not tensor_bits else tensor_bits / check_int(n_values, "n_values", 1)
    return bits + scale_bits / block_size + extra
