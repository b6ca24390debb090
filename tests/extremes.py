"""What the property tests share (issue 20): extreme inputs, and "is every number in this finite?".

The inputs mix float32's extremes (its largest value, its smallest normal and subnormal numbers),
float64 values beyond float32's range (1e39, 1e-320), signed zeros, +-inf, NaN and ordinary values.
"""
import math
from dataclasses import fields, is_dataclass

import numpy as np
import torch
from hypothesis import strategies as st
from torch import nn

F32 = torch.finfo(torch.float32)
EXTREMES = [F32.max, -F32.max, F32.tiny, -F32.tiny, 1.4e-45, -1.4e-45, 0.0, -0.0, 1.0, -1.0, 0.1, 3e38, -3e38,
            1e38, 1e-38, 1e39, -1e39, 1e-320, 1e300, math.inf, -math.inf, math.nan]
FINITE_EXTREMES = [v for v in EXTREMES if math.isfinite(v)]
F32_EXTREMES = [v for v in FINITE_EXTREMES if abs(v) <= F32.max]
# a number: float32 or float64 extremes, any float32, any float64
number = st.one_of(st.sampled_from(EXTREMES), st.floats(width=32), st.floats(allow_nan=True, allow_infinity=True))
finite_number = st.one_of(st.sampled_from(FINITE_EXTREMES), st.floats(allow_nan=False, allow_infinity=False))
values = st.lists(number, min_size=1, max_size=12)
finite_values = st.lists(finite_number, min_size=1, max_size=12)


def tensor64(vals) -> torch.Tensor:
    return torch.tensor(vals, dtype=torch.float64)


def fits_float32(vals) -> bool:
    """Every value is finite and stays finite in float32 (the valid inputs of qedu's float32 math)."""
    return all(math.isfinite(v) and abs(v) <= F32.max for v in vals)


def finite(out) -> bool:
    """No NaN or inf anywhere in ``out``: tensors, numbers, a module's parameters and buffers, the
    items of dicts, tuples and lists, and the public fields of result objects."""
    if isinstance(out, torch.Tensor):
        return not out.is_floating_point() or bool(torch.isfinite(out).all())
    if isinstance(out, (float, np.floating)):
        return math.isfinite(out)
    if isinstance(out, (int, np.integer, bool, str, bytes)) or out is None:
        return True
    if isinstance(out, nn.Module):
        return all(finite(t) for t in (*out.parameters(), *out.buffers()))
    if isinstance(out, dict):
        return all(finite(v) for v in out.values())
    if isinstance(out, (tuple, list)):
        return all(finite(v) for v in out)
    if is_dataclass(out):
        return all(finite(getattr(out, f.name)) for f in fields(out))
    if hasattr(out, "__dict__"):  # a report object: its public fields
        return all(finite(v) for k, v in vars(out).items() if not k.startswith("_"))
    return True
