"""Energy per operation in a 45 nm chip: why fewer bits pay. Published figures, not measured here.

M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, for a
45 nm process at 0.9 V. The 32-bit SRAM and DRAM reads are the per-32-bit figures that Han et
al. ("Learning both weights and connections for efficient neural networks", NeurIPS 2015,
Table 1) derive from the same source. Orders of magnitude, not a model of any one chip: newer
processes lower every number, but the ordering (small integer ops << float ops << DRAM)
stays.

>>> ENERGY_45NM_PJ["fp32 multiply"] / ENERGY_45NM_PJ["int8 add"]
123.33333333333334
"""
from __future__ import annotations

__all__ = ["ENERGY_45NM_PJ", "SOURCE", "energy_table"]

SOURCE = "Horowitz, ISSCC 2014 (45 nm, 0.9 V); 32-bit memory reads as tabulated by Han et al. 2015"

ENERGY_45NM_PJ = {  # picojoules per operation
    "int8 add": 0.03,
    "int32 add": 0.1,
    "fp16 add": 0.4,
    "fp32 add": 0.9,
    "int8 multiply": 0.2,
    "int32 multiply": 3.1,
    "fp16 multiply": 1.1,
    "fp32 multiply": 3.7,
    "32-bit SRAM read (8 KB cache)": 5.0,
    "32-bit DRAM read": 640.0,
}


def energy_table(relative_to: str = "int8 add") -> str:
    """The table as markdown: each operation in pJ and as a multiple of ``relative_to``.

    Raises:
        ValueError: ``relative_to`` is not one of the operations.

    >>> energy_table().splitlines()[2]
    '| int8 add | 0.03 | 1 |'
    """
    if not isinstance(relative_to, str) or relative_to not in ENERGY_45NM_PJ:
        raise ValueError(f"relative_to must be one of {list(ENERGY_45NM_PJ)}, got {relative_to!r}.")
    base = ENERGY_45NM_PJ[relative_to]
    rows = [f"| operation | energy (pJ) | x {relative_to} |", "|---|---|---|"]
    rows += [f"| {op} | {pj:g} | {pj / base:,.0f} |" for op, pj in ENERGY_45NM_PJ.items()]
    return "\n".join(rows)
