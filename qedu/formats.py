"""Number formats as values: integer formats (and, below, floating-point formats).

An integer format fixes the codes a quantizer may produce::

    signed, b bits:   qmin = -2**(b-1)      qmax = 2**(b-1) - 1     (int8: -128..127)
    narrow range:     qmin = -2**(b-1) + 1                          (int8: -127..127)
    unsigned:         qmin = 0              qmax = 2**b - 1         (uint8: 0..255)

>>> INT8.qmin, INT8.qmax
(-128, 127)
>>> IntFormat(4, signed=False).qmax
15
"""
from __future__ import annotations

from dataclasses import dataclass

from qedu._validation import check_int

__all__ = ["IntFormat", "INT8", "UINT8", "INT4", "UINT4", "INT2", "UINT2", "BINARY"]


@dataclass(frozen=True)
class IntFormat:
    """A b-bit integer code range.

    Args:
        bits: number of bits, 1..16.
        signed: two's-complement codes (``True``) or unsigned codes (``False``).
        narrow_range: drop the lowest code: signed int8 becomes -127..127 (symmetric, as
            symmetric weight quantizers often use), unsigned uint8 becomes 1..255.

    Raises:
        TypeError / ValueError: for bits that are not an int in 1..16, or narrow_range on a
            format where it would leave fewer than two codes.
    """

    bits: int
    signed: bool = True
    narrow_range: bool = False

    def __post_init__(self):
        check_int(self.bits, "bits", 1, 16)
        if not isinstance(self.signed, bool):
            raise TypeError(f"signed must be True or False, got {self.signed!r}.")
        if not isinstance(self.narrow_range, bool):
            raise TypeError(f"narrow_range must be True or False, got {self.narrow_range!r}.")
        if self.narrow_range and self.bits == 1:
            raise ValueError("narrow_range=True needs bits >= 2: a 1-bit narrow range would hold a single code.")

    @property
    def qmin(self) -> int:
        """Smallest integer code."""
        if not self.signed:
            return 1 if self.narrow_range else 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        if not self.signed:
            return 2**self.bits - 1
        return 2 ** (self.bits - 1) - 1

    @property
    def levels(self) -> int:
        """How many distinct codes the format has."""
        return self.qmax - self.qmin + 1

    @property
    def name(self) -> str:
        return f"{'' if self.signed else 'u'}int{self.bits}{'_narrow' if self.narrow_range else ''}"

    def __str__(self) -> str:
        return self.name


INT8 = IntFormat(8)
UINT8 = IntFormat(8, signed=False)
INT4 = IntFormat(4)
UINT4 = IntFormat(4, signed=False)
INT2 = IntFormat(2)
UINT2 = IntFormat(2, signed=False)
BINARY = IntFormat(1, signed=False)


# Floating-point formats live in qedu/floats.py (one sitting each); they are formats too.
from qedu.floats import (  # noqa: E402
    BF16, FP4_E2M1, FP6_E2M3, FP6_E3M2, FP8_E4M3, FP8_E5M2, FP16, FP32, Fields, FloatFormat,
    cast, decode, default_saturate, encode, fields, format_table, grid, repeated_add,
)
from qedu import floats as _floats  # noqa: E402

__all__ += _floats.__all__
