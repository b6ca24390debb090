"""Lesson 02's explorer: quantize a real weight tensor and watch the grid, the error and the bytes.

:func:`quantize_weights` is the pure function (settings in, reconstruction and measurements
out); :func:`quantization_explorer` wraps it in a :class:`~qedu.widgets.Panel`.

>>> r = quantize_weights(torch.tensor([[0.5, -1.0], [0.1, 0.2]]), bits=4, granularity=PerChannel(0))
>>> r.codes_used, round(r.error.sqnr_db, 1)
(3, 23.5)
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import ipywidgets as W
import numpy as np
import torch
from matplotlib.ticker import NullLocator

from qedu._validation import as_float_tensor, check_int
from qedu.calibration import minmax_range, percentile_range
from qedu.formats import IntFormat
from qedu.granularity import PerChannel, PerGroup, PerTensor
from qedu.packing import StorageReport, storage_bytes
from qedu.quantizers import (
    ROUNDING_MODES, QuantizationError, choose_qparams_from_minmax, dequantize, quantization_error, quantize,
)
from qedu.widgets import LiveFigure, Panel, plural

__all__ = ["quantize_weights", "WeightQuantization", "error_table", "quantization_explorer", "GRANULARITIES", "CLIPPINGS",
           "example_rows", "slice_grids"]

GRANULARITIES = {"per-tensor": PerTensor(), "per-channel": PerChannel(0), "per-group 32": PerGroup(32)}
CLIPPINGS = {  # label -> (rule, amount): a fraction of the min/max range, or a percentile range
    "none (min/max)": ("fraction", 1.0),
    "0.9 x max": ("fraction", 0.9),
    "0.75 x max": ("fraction", 0.75),
    "0.5 x max": ("fraction", 0.5),
    "99.9th percentile": ("percentile", 99.9),
    "99th percentile": ("percentile", 99.0),
}
BITS = tuple(range(1, 9))
_LEVEL, _END = (0.12, 0.47, 0.71, 0.6), (0.84, 0.15, 0.16, 1.0)  # C0 (a little transparent), C3


class WeightQuantization(NamedTuple):
    """What :func:`quantize_weights` measured."""

    x_hat: torch.Tensor
    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    error: QuantizationError
    codes_used: int
    n_clipped: int
    storage: StorageReport


def quantize_weights(w, bits: int, symmetric: bool = True, granularity=PerTensor(), rounding: str = "half_even",
                     clipping: tuple = ("fraction", 1.0), seed: int = 0) -> WeightQuantization:
    """Fake-quantize ``w`` to signed ``bits``-bit codes and measure the result.

    The range of each slice is its min/max times a fraction (``clipping=("fraction", 0.9)``)
    or a percentile range (``("percentile", 99.9)``, see :func:`qedu.calibration.percentile_range`);
    then ``choose_qparams_from_minmax``, ``quantize`` (stochastic rounding seeded with ``seed``)
    and ``dequantize``. Storage assumes fp16 scales and, when asymmetric, ``bits``-bit zero points.

    Raises:
        ValueError: for symmetric 1-bit codes (the codes -1 and 0 with zero point 0 send every
            weight to 0), an unknown clipping rule, and the errors of the functions it calls.
    """
    w = as_float_tensor(w, "w").detach().to(torch.float32)
    bits = check_int(bits, "bits", 1, 8)
    if symmetric and bits == 1:
        raise ValueError("symmetric quantization needs at least 2 bits: 1-bit codes are -1 and 0, and with zero point 0 "
                         "every weight rounds to 0. Untick 'symmetric' or use 2 bits or more.")
    rule, amount = clipping
    if rule == "fraction":
        lo, hi = minmax_range(w, granularity)
        lo, hi = lo * amount, hi * amount
    elif rule == "percentile":
        lo, hi = percentile_range(w, amount, granularity, symmetric=symmetric)
    else:
        raise ValueError(f"clipping rule {rule!r} is not 'fraction' or 'percentile'.")
    fmt = IntFormat(bits)
    scale, zero_point = choose_qparams_from_minmax(lo, hi, fmt, symmetric)
    q = quantize(w, scale, zero_point, fmt, rounding, torch.Generator().manual_seed(seed))
    x_hat = dequantize(q, scale, zero_point)
    n_clipped = int(((q == fmt.qmin) | (q == fmt.qmax)).logical_and((w - x_hat).abs() > scale / 2 * (1 + 1e-4)).sum())
    storage = storage_bytes(w.shape, bits, granularity, scale_bits=16, zero_point_bits=0 if symmetric else bits)
    return WeightQuantization(x_hat, q, scale, zero_point, quantization_error(w, x_hat), int(q.unique().numel()),
                              n_clipped, storage)


def error_table(tensors: dict, bits=(8, 4, 2), granularities=None, symmetric: bool = True) -> str:
    """A text table of the MSE of every tensor at every bit width and granularity (min/max ranges).

    >>> print(error_table({"w": torch.tensor([[1.0, -0.5], [0.01, 0.02]])}, bits=(4,), granularities={"t": PerTensor()}))
    tensor  bits  t
    w       4     1.5e-03
    """
    granularities = GRANULARITIES if granularities is None else granularities
    width = max(len(name) for name in [*tensors, "tensor"]) + 2
    lines = [f"{'tensor':<{width}}bits  " + "  ".join(f"{label:<12}" for label in granularities).rstrip()]
    for name, w in tensors.items():
        for b in bits:
            mse = [quantize_weights(w, b, symmetric, g).error.mse for g in granularities.values()]
            lines.append(f"{name:<{width}}{b:<6}" + "  ".join(f"{m:<12.1e}" for m in mse).rstrip())
    return "\n".join(lines)


def _default_weights() -> torch.Tensor:
    from qedu.models import pretrained

    return pretrained("mlp", seed=0).fc2.weight.detach().clone()  # (64, 128): the hidden layer


def example_rows(w: torch.Tensor, n: int = 4) -> list[int]:
    """``n`` rows of ``w`` from the narrowest to the widest range (by max |w|), evenly spread: the
    slices the explorer draws, so that granularity's effect shows (one grid for all, or one each).

    >>> example_rows(torch.tensor([[1.0], [0.1], [5.0], [0.5]]), n=2)
    [1, 2]
    """
    order = torch.argsort(w.abs().amax(dim=1)).tolist()  # rows from the smallest to the largest range
    return [order[round(i * (len(order) - 1) / max(n - 1, 1))] for i in range(min(n, len(order)))]


def slice_grids(w: torch.Tensor, r: WeightQuantization, bits: int, row: int) -> list[tuple[int, int, np.ndarray]]:
    """The grids that quantize row ``row`` of ``w``: ``(first column, end column, levels)`` for
    each run of columns that shares a scale and zero point (one run per tensor or channel, one
    per group)."""
    scale = r.scale.expand_as(w)[row].numpy()  # (C_in,): each column's scale
    zero_point = r.zero_point.expand_as(w)[row].numpy()
    fmt = IntFormat(bits)
    codes = np.arange(fmt.qmin, fmt.qmax + 1)
    # a run starts at column 0 and wherever the scale or zero point changes from the column before
    starts = np.flatnonzero(np.r_[True, (scale[1:] != scale[:-1]) | (zero_point[1:] != zero_point[:-1])])
    ends = np.r_[starts[1:], len(scale)]
    return [(int(a), int(b), (codes - zero_point[a]) * scale[a]) for a, b in zip(starts, ends)]


def _segments(x0, x1, ys) -> tuple[np.ndarray, np.ndarray]:
    """x and y data of one line that draws a segment from ``x0`` to ``x1`` at each height in ``ys``
    (NaN between segments lifts the pen): one artist for many lines draws much faster than many.
    ``x0`` and ``x1`` are numbers or arrays as long as ``ys``.

    >>> _segments(0, 1, [2.0, 3.0])[1]
    array([ 2.,  2., nan,  3.,  3., nan])
    """
    ys = np.asarray(ys, dtype=float)
    x = np.empty((len(ys), 3))
    x[:, 0], x[:, 1], x[:, 2] = x0, x1, np.nan
    y = np.repeat(ys, 3)
    y[2::3] = np.nan
    return x.reshape(-1), y


def _fits(granularity, w: torch.Tensor) -> bool:
    """Whether ``granularity`` can cut ``w`` (per-group needs the group size to divide the last axis)."""
    return not isinstance(granularity, PerGroup) or w.shape[-1] % granularity.group_size == 0


def quantization_explorer(weights=None) -> Panel:
    """Bits, symmetric, granularity, rounding and clipping -> histogram + grid, error vs bits, bytes,
    and four rows of the tensor with the grid(s) that quantize each (what granularity changes).

    Args:
        weights: a 2-D weight tensor (default: the hidden ``fc2`` layer, 64 x 128, of
            ``pretrained("mlp", seed=0)``). Per-channel uses axis 0 (rows); per-group 32 cuts
            the last axis into groups of 32.

    Returns:
        a :class:`~qedu.widgets.Panel`; ``panel.controls`` are ``bits``, ``symmetric``,
        ``granularity``, ``rounding``, ``clipping``. Symmetric codes need 2 bits or more, so the
        bits slider starts at 2 while ``symmetric`` is ticked (at 1 when it is not); per-group is
        offered only when its group size divides the rows.
    """
    w = _default_weights() if weights is None else as_float_tensor(weights, "weights").detach().to(torch.float32)
    if w.dim() != 2:
        raise ValueError(f"weights must be a 2-D tensor (rows = output channels), got shape {tuple(w.shape)}.")
    w_max = float(w.abs().max()) or 1.0
    edges = np.linspace(-1.1 * w_max, 1.1 * w_max, 121)
    counts, _ = np.histogram(w.numpy(), edges)
    rows = example_rows(w)
    row_max = {row: float(w[row].abs().max()) for row in rows}
    fig = LiveFigure(figsize=(9.0, 4.7), dpi=80, mosaic="HHHHHHHSSSSS;" + "".join(c * 3 for c in "abcd"[:len(rows)]).ljust(12, "."),
                     gridspec_kw={"height_ratios": [1.25, 1]})
    ax_h, ax_c = fig.axes["H"], fig.axes["S"]
    ax_h.stairs(counts, edges, fill=True, color="0.75", label="weights")
    (grid,) = ax_h.plot([], [], color="C0", lw=0.6, alpha=0.45, solid_capstyle="butt",
                        transform=ax_h.get_xaxis_transform())  # every level: one vertical line each, one artist
    clip_lines = [ax_h.axvline(0.0, color="C3", ls="--", lw=1) for _ in range(2)]
    title = ax_h.set_title("16 levels (the grid of the widest of 256 slices)", fontsize=10)  # room for update()'s
    ax_h.set_xlim(edges[0], edges[-1])
    ax_h.set_ylim(0, counts.max() * 1.1)
    ax_h.set_yticks([])  # counts do not matter here; fewer labels also draw faster
    ax_h.set_xlabel("weight value (grey: histogram, blue: grid, red: its ends)")
    (sqnr_line,) = ax_c.plot(BITS, np.zeros(len(BITS)), "o-", color="C0", ms=3)
    (sqnr_point,) = ax_c.plot([1], [0], "o", color="C3", ms=8, zorder=5)
    # below: four rows of w (narrowest to widest range), each with the grid(s) that quantize it
    small = []
    for key, row in zip("abcd", rows):
        ax = fig.axes[key]
        values = w[row].numpy()
        top = 1.15 * float(np.abs(values).max()) or 1.0
        ax.plot(np.arange(len(values)), values, ".", color="0.35", ms=2)
        ax.set(xlim=(-1, len(values)), ylim=(-top, top), xticks=[], yticks=[-round(top / 1.15, 2), round(top / 1.15, 2)])
        ax.tick_params(labelsize=7)
        # the levels (blue) and the grid's ends (red) over them: one line artist each, however many runs
        (levels,) = ax.plot([], [], color=_LEVEL, lw=0.8, solid_capstyle="butt")
        (ends,) = ax.plot([], [], color=_END, lw=0.8, solid_capstyle="butt")
        ax.set_title(f"row {row}", fontsize=8)  # its scales and error are in the readout
        small.append((row, ax, levels, ends))
    fig.animate(grid, *clip_lines, title, sqnr_line, sqnr_point, *(a for _, _, lv, end in small for a in (lv, end)))
    # MSE = power * 10**(-SQNR / 10): one curve, read in dB on the left and as MSE on the right
    power = float((w.double() ** 2).mean()) or 1.0
    ax_c.set_ylim(-5, 55)  # SQNR of 1..8 bits on any tensor fits here (about 6 dB per bit)
    mse_ticks = [10.0**k for k in range(-12, 3) if -5 <= -10 * np.log10(10.0**k / power) <= 55]
    ax_m = ax_c.secondary_yaxis("right", functions=(lambda s: power * 10.0 ** (-np.asarray(s) / 10),
                                                    lambda m: -10 * np.log10(np.maximum(m, 1e-300) / power)))
    ax_m.set_yticks(mse_ticks, [f"1e{int(round(np.log10(t)))}" for t in mse_ticks])
    ax_m.yaxis.set_minor_locator(NullLocator())
    ax_c.set_xlabel("bits")
    ax_c.set_ylabel("SQNR (dB)", color="C0")
    ax_m.set_ylabel("MSE", color="C2")
    ax_c.set_xticks(BITS)
    curves: dict = {}  # (symmetric, granularity, rounding, clipping) -> SQNR for bits 1..8

    def curve(symmetric, granularity, rounding, clipping):
        key = (symmetric, granularity, rounding, clipping)
        if key not in curves:
            errors = [quantize_weights(w, b, symmetric, GRANULARITIES[granularity], rounding, CLIPPINGS[clipping]).error
                      if not (symmetric and b == 1) else QuantizationError(np.nan, np.nan) for b in BITS]
            curves[key] = np.array([e.sqnr_db for e in errors])
        return curves[key]

    def slice_lines(r: WeightQuantization, bits: int) -> tuple[list, str]:
        """Each example row's level and end lines (x, y data), and an HTML table of their scales and errors."""
        lines, table = [], []
        for row, ax, _levels, _ends in small:
            runs = slice_grids(w, r, bits, row)
            lo, hi = ax.get_ylim()
            level_x0, level_x1, level_y, end_x0, end_x1, end_y, in_view = [], [], [], [], [], [], 0
            for a, b, lv in runs:
                view = (lv >= lo) & (lv <= hi)
                in_view += int(view.sum())
                is_end = np.zeros(len(lv), bool)
                is_end[[0, -1]] = True
                inner = view & ~is_end if 2**bits <= 32 else np.zeros(len(lv), bool)  # beyond 32 levels the
                for keep, xs0, xs1, ys in ((inner, level_x0, level_x1, level_y),   # lines merge into a block:
                                           (view & is_end, end_x0, end_x1, end_y)):  # ends only
                    n = int(keep.sum())
                    xs0 += [a - 0.5] * n
                    xs1 += [b - 0.5] * n
                    ys += lv[keep].tolist()
            lines.append((_segments(level_x0, level_x1, level_y), _segments(end_x0, end_x1, end_y)))
            scales = [float(lv[1] - lv[0]) for _, _, lv in runs]
            mse = float(((w[row] - r.x_hat[row]) ** 2).mean())
            table.append(f"<tr><td>{row}</td><td>{row_max[row]:.3f}</td><td>"
                         + (f"{scales[0]:.4f}" if len(scales) == 1 else f"{min(scales):.4f} to {max(scales):.4f} ({len(scales)})")
                         + f"</td><td>{in_view} of {len(runs) * 2**bits}</td><td>{mse:.1e}</td></tr>")
        return lines, ("<table style='border-collapse:collapse;font-size:90%'><tr><th>row</th><th>max |w|</th>"
                       "<th>scale</th><th>levels in its range</th><th>MSE</th></tr>" + "".join(table) + "</table>")

    views: OrderedDict = OrderedDict()  # settings -> what update shows: line data and text (a few KiB each)

    def view(bits, symmetric, granularity, rounding, clipping) -> dict:
        """Everything update draws and says for these settings; the last 128 are kept, since learners
        go back and forth between settings (the quantization itself is the slow part)."""
        key = (bits, symmetric, granularity, rounding, clipping)
        if key in views:
            views.move_to_end(key)
            return views[key]
        r = quantize_weights(w, bits, symmetric, GRANULARITIES[granularity], rounding, CLIPPINGS[clipping])
        sqnr = curve(symmetric, granularity, rounding, clipping)
        # the grid of the slice that holds the largest |w| (per-tensor: the only grid)
        i = int(w.abs().argmax())
        scale = float(r.scale.expand_as(w).reshape(-1)[i])
        zero_point = int(r.zero_point.expand_as(w).reshape(-1)[i])
        fmt = IntFormat(bits)
        levels = (np.arange(fmt.qmin, fmt.qmax + 1) - zero_point) * scale
        grid_y, grid_x = _segments(0.0, 1.0, levels)  # vertical lines: x and y swap roles
        slices = GRANULARITIES[granularity].num_params(w.shape)
        row_lines, rows_table = slice_lines(r, bits)
        fp32 = w.numel() * 4
        s = r.storage
        text = (
            f"<b>{bits}-bit {'symmetric' if symmetric else 'affine'}, {granularity}, {rounding}, clip {clipping}</b>: "
            f"MSE {r.error.mse:.2e} &middot; SQNR {r.error.sqnr_db:.1f} dB &middot; codes used {r.codes_used} of {2**bits} "
            f"&middot; clipped {plural(r.n_clipped, 'weight')}<br>"
            f"storage {s.total_bytes:,} bytes = {s.bits_per_value:.2f} bits/weight "
            f"(codes {s.payload_bytes:,} + {plural(slices, 'scale')} {s.scale_bytes:,} + zero points {s.zero_point_bytes:,}; "
            f"float32 {fp32:,} bytes, {fp32 / s.total_bytes:.1f}x larger)<br>below: rows {', '.join(map(str, rows))}, "
            f"from the narrowest range to the widest, with the grid{'s' if slices > 1 else ''} that quantize them"
            + (" (one per group of 32: the blue runs change every 32 weights)" if granularity.startswith("per-group")
               else " (each row its own)" if slices > 1 else " (one grid for the whole tensor: narrow rows use few levels)")
            + rows_table
        )
        views[key] = {
            "grid": (grid_x, grid_y), "ends": (levels[0], levels[-1]), "rows": row_lines, "sqnr": sqnr,
            "point": r.error.sqnr_db, "text": text,
            "title": f"{2**bits} levels" + ("" if slices == 1 else f" (the grid of the widest of {slices} slices)"),
        }
        if len(views) > 128:
            views.popitem(last=False)
        return views[key]

    def update(bits, symmetric, granularity, rounding, clipping):
        v = view(bits, symmetric, granularity, rounding, clipping)
        grid.set_data(*v["grid"])
        for line, x in zip(clip_lines, v["ends"]):
            line.set_xdata([x, x])
        title.set_text(v["title"])
        sqnr_line.set_ydata(v["sqnr"])
        sqnr_point.set_data([bits], [v["point"]])
        for (_, _, levels, ends), (level_xy, end_xy) in zip(small, v["rows"]):
            levels.set_data(*level_xy)
            ends.set_data(*end_xy)
        return v["text"]

    controls = {
        "bits": W.IntSlider(value=4, min=2, max=8, description="bits"),
        "symmetric": W.Checkbox(value=True, description="symmetric"),
        "granularity": W.Dropdown(options=[name for name, g in GRANULARITIES.items() if _fits(g, w)], value="per-tensor",
                                  description="granularity"),
        "rounding": W.Dropdown(options=list(ROUNDING_MODES), value="half_even", description="rounding"),
        "clipping": W.Dropdown(options=list(CLIPPINGS), value="none (min/max)", description="clipping"),
    }
    panel_ref: list = []

    def bits_range(change):  # symmetric 1-bit codes are -1 and 0: every weight would round to 0
        with panel_ref[0].hold(update=False):  # the panel's own observer of "symmetric" updates next
            controls["bits"].min = 2 if change["new"] else 1

    controls["symmetric"].observe(bits_range, names="value")
    panel = Panel(controls, update, fig, title="<b>Quantize a real weight tensor</b>: the grid (blue), its ends (red), "
                  "and the error as the bits change; below, four rows of the tensor and the grids that quantize them. "
                  "Bits start at 2 while <i>symmetric</i> is ticked (1-bit symmetric codes are -1 and 0: every weight "
                  "would round to 0); untick it for 1 bit.")
    panel_ref.append(panel)
    panel._weights, panel._slices = w, small  # for tests: what the lower plots show
    return panel
