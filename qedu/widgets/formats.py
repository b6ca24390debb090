"""Lesson 01's widget: pick a float format, see its grid, its rounding error, and what it does to a tensor."""
from __future__ import annotations

import math

import ipywidgets as W
import numpy as np
import torch
from matplotlib.collections import LineCollection

from qedu._validation import as_float_tensor
from qedu.formats import BF16, FP4_E2M1, FP6_E2M3, FP6_E3M2, FP8_E4M3, FP8_E5M2, FP16, FP32, FloatFormat, cast, grid
from qedu.widgets import Panel, StackedFigure, plain_log_ticks

__all__ = ["PRESETS", "model_tensors", "tensor_regions", "format_explorer"]

PRESETS = {"FP32": FP32, "BF16": BF16, "FP16": FP16, "FP8_E5M2": FP8_E5M2, "FP8_E4M3": FP8_E4M3,
           "FP6_E3M2": FP6_E3M2, "FP6_E2M3": FP6_E2M3, "FP4_E2M1": FP4_E2M1, "custom": None}
_COLORS = {"overflow": "#d62728", "zero": "0.25", "subnormal": "#ff7f0e"}
_ERR_FLOOR = 1e-10  # relative errors below this (exact casts: 0) are drawn at this height


def model_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every weight of the trained MLP, and its gradients on 256 training images, flattened.

    Weights spread over ~1e-5..0.6; gradients are far smaller, the values fp16 loses.
    """
    from qedu.data import load_digits
    from qedu.models import pretrained

    model = pretrained("mlp", seed=seed)
    data = load_digits(seed=0)
    loss = torch.nn.functional.cross_entropy(model(data.x_train[:256]), data.y_train[:256])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return {"MLP weights": torch.cat([p.detach().flatten() for p in model.parameters()]),
            "MLP gradients": torch.cat([g.flatten() for g in grads])}


def tensor_regions(x, fmt: FloatFormat) -> dict[str, float]:
    """Fractions of the non-zero values of ``x`` that a cast to ``fmt`` overflows, flushes to zero, or makes subnormal.

    Also the median relative error ``|cast(x) - x| / |x|`` of the values that stay finite.

    >>> r = tensor_regions(torch.tensor([1e-9, 1e-6, 1.0, 1e6]), FP16)
    >>> r["overflow"], r["zero"], r["subnormal"]
    (0.25, 0.25, 0.25)
    """
    x = as_float_tensor(x, "x").flatten().float()
    x = x[x != 0]
    if x.numel() == 0:
        return {"overflow": 0.0, "zero": 0.0, "subnormal": 0.0, "median_rel_error": 0.0}
    y = cast(x, fmt, saturate=False)
    finite = torch.isfinite(y)
    rel = ((y - x).abs() / x.abs())[finite]
    return {"overflow": float((~finite).float().mean()), "zero": float((y == 0).float().mean()),
            "subnormal": float(((y != 0) & (y.abs() < fmt.min_normal)).float().mean()),
            "median_rel_error": float(rel.median()) if rel.numel() else math.nan}


def format_explorer(x=None, name: str = "x") -> Panel:
    """Pick a format (or build one): its relative rounding error and grid, and a tensor's histogram.

    Args:
        x: a tensor to show against the format (default: a dropdown with the trained MLP's
            weights and gradients, see :func:`model_tensors`).
        name: what to call ``x`` in the readout.

    Controls: ``preset`` (a format, or "custom" to use ``exp_bits``/``man_bits``/``special``;
    moving one of those three switches to "custom"),
    ``scale_log2`` (multiply the tensor by 2**k first, as loss scaling does) and ``axis`` (the
    |x| axis of the top plot on a log or linear scale).

    The picture is two strips (:class:`~qedu.widgets.StackedFigure`): the format's plot (top)
    is redrawn only when the format or the axis changes (over its cached y axis, the same for
    every format), the tensor's histogram (bottom) only when the tensor or its scale changes;
    a new format only moves the histogram's shaded regions, drawn over its cached axes. That
    keeps every move well under 100 ms.
    """
    tensors = model_tensors() if x is None else {name: as_float_tensor(x, "x").detach().flatten().float()}
    hists = {}  # precomputed once: histogram of log2|x|, in bins of 1/4, shifted by k when scaling
    for key, t in tensors.items():
        if not bool((t != 0).any()):
            raise ValueError(f"{name} has no non-zero values, so there is nothing to place on the format; pass another tensor.")
        lg = torch.log2(t[t != 0].abs().double()).numpy()
        edges = np.arange(math.floor(lg.min()), math.floor(lg.max()) + 1.25, 0.25)
        hists[key] = (np.histogram(lg, bins=edges)[0] / max(len(lg), 1), edges)

    fig = StackedFigure([2.9, 2.1], width=9.0, dpi=80)
    top, bottom = fig.figures
    ax_err = top.add_axes((0.07, 0.17, 0.91, 0.72))
    ax_hist = bottom.add_axes((0.07, 0.23, 0.91, 0.64))
    # top: the relative error of the cast over the format's range, with the grid as a rug below
    (err_pts,) = ax_err.plot([], [], ".", ms=2, color="C0")
    half_eps = ax_err.axhline(1, color="k", lw=1, ls=":")
    rug = LineCollection([], colors="0.2", linewidths=0.8, transform=ax_err.get_xaxis_transform())
    ax_err.add_collection(rug)
    marks = {k: (ax_err.axvline(1, color=c, lw=1.5, ls="--"),
                 ax_err.text(1, y, k, color=c, ha=ha, fontsize=8, transform=ax_err.get_xaxis_transform()))
             for k, c, ha, y in ((" min subnormal", "C2", "left", 0.5), (" min normal", "C1", "left", 0.4),
                                 ("max ", "C3", "right", 0.5))}  # mid-height: below the error of every format but fp32
    ax_err.set(yscale="log", xlabel="|x|")
    # bottom: the tensor; the format's overflow / flush-to-zero / subnormal regions move over it
    stairs = ax_hist.stairs([0.0], [1.0, 2.0], fill=True, color="C0", alpha=0.8)
    ax_hist.set(xscale="log", xlabel="|x|", yticks=[])
    ax_err.set_ylim(_ERR_FLOOR / 2, 2)  # the same for every format, so the y axis is drawn once
    for axis in (ax_err.yaxis, ax_hist.xaxis):
        plain_log_ticks(axis)
    fig.animate(0, ax_err.xaxis, err_pts, half_eps, rug, *(a for pair in marks.values() for a in pair), ax_err.title)
    spans = {k: fig.animate(1, ax_hist.axvspan(1, 2, color=c, alpha=0.15, lw=0)) for k, c in _COLORS.items()}
    drawn = {"top": None, "hist": None, "fmt": None, "what": ""}  # what each strip shows now

    def draw_format(fmt: FloatFormat, axis: str) -> str:
        lo, hi = fmt.min_subnormal, fmt.max
        xs = torch.logspace(math.log10(max(lo / 4, 2.0**-149)), math.log10(min(hi * 4, 3.4e38)), 1200,
                            dtype=torch.float64).float()  # x is float32, so stay inside float32
        rel = ((cast(xs, fmt, saturate=False) - xs).abs() / xs).numpy()
        err_pts.set_data(xs.numpy(), np.clip(rel, _ERR_FLOOR, None))  # exact casts sit on the floor
        half_eps.set_ydata([fmt.eps / 2] * 2)
        if fmt.bits <= 12:  # the rug: every positive value, or the start of each binade for big formats
            values = grid(fmt).numpy()
            values, what = values[values > 0], "every positive value"
        else:
            values = np.exp2(np.arange(fmt.min_exp, fmt.max_exp + 1, dtype=np.float64))
            what = f"the start of each binade (each holds {2**fmt.man_bits:,} values)"
        rug.set_segments([[(v, 0.0), (v, 0.1)] for v in values])
        for (line, text), v in zip(marks.values(), (lo, fmt.min_normal, hi)):
            line.set_xdata([v, v])
            text.set_x(v)
        ax_err.set_xscale(axis)  # resets the ticks
        if axis == "log":
            plain_log_ticks(ax_err.xaxis)
            ax_err.set_xlim(float(xs[0]), float(xs[-1]))
        else:
            ax_err.set_xlim(0, hi * 1.05)
        ax_err.set_title(f"{fmt.name}: relative error of the cast", fontsize=10)  # short: text is slow to draw
        return what

    def update(preset, exp_bits, man_bits, special, scale_log2, axis, tensor):
        fmt = PRESETS[preset] or FloatFormat(exp_bits, man_bits, special)  # may raise: shown in the panel
        lo, hi = fmt.min_subnormal, fmt.max
        if drawn["top"] != (fmt, axis):  # all that changes is animated: drawn over the cached y axis
            drawn["what"] = draw_format(fmt, axis)
            fig.stale(0, background=False)
        if drawn["hist"] != (tensor, scale_log2):  # the histogram's own axes: a full redraw of the strip
            freq, edges = hists[tensor]
            stairs.set_data(freq, np.exp2(edges + scale_log2))
            ax_hist.set_xlim(2.0 ** (edges[0] + scale_log2 - 3), 2.0 ** (edges[-1] + scale_log2 + 3))
            ax_hist.set_ylim(0, freq.max() * 1.15)
            ax_hist.set_title(f"|{tensor}| x 2^{scale_log2}", fontsize=10)
            fig.stale(1)
        if drawn["fmt"] != fmt:  # only the shaded regions move: drawn over the cached histogram
            for key, (a, b) in {"overflow": (hi, 1e300), "zero": (1e-300, lo / 2), "subnormal": (lo / 2, fmt.min_normal)}.items():
                spans[key].set_x(a)
                spans[key].set_width(b - a)
            fig.stale(1, background=False)
        drawn.update(top=(fmt, axis), hist=(tensor, scale_log2), fmt=fmt)
        r = tensor_regions(tensors[tensor] * 2.0**scale_log2, fmt)
        return (f"<b>{fmt.name}</b>: {fmt.bits} bits = 1 sign + {fmt.exp_bits} exponent + {fmt.man_bits} mantissa; "
                f"max {fmt.max:.5g}, min normal {fmt.min_normal:.4g}, min subnormal {lo:.4g}, eps {fmt.eps:.3g} "
                f"(~{(fmt.man_bits + 1) * math.log10(2):.1f} decimal digits); ticks at the bottom: {drawn['what']}<br>"
                f"{tensor} x 2^{scale_log2}, {len(tensors[tensor]):,} values; of the non-zero ones "
                f"<span style='color:{_COLORS['overflow']}'>overflow {100 * r['overflow']:.2f} %</span>, "
                f"flushed to zero {100 * r['zero']:.2f} %, "
                f"<span style='color:{_COLORS['subnormal']}'>subnormal {100 * r['subnormal']:.2f} %</span>; "
                f"median relative error {100 * r['median_rel_error']:.3g} %")

    controls = {
        "preset": W.Dropdown(options=list(PRESETS), value="FP16", description="format"),
        "exp_bits": W.IntSlider(value=4, min=1, max=8, description="exp bits", continuous_update=False),
        "man_bits": W.IntSlider(value=3, min=1, max=23, description="man bits", continuous_update=False),
        "special": W.Dropdown(options=["ieee", "fn", "none"], value="fn", description="special"),
        "scale_log2": W.IntSlider(value=0, min=-24, max=24, description="x * 2^k", continuous_update=False),
        "axis": W.ToggleButtons(options=["log", "linear"], value="log", description="number line"),
        "tensor": W.Dropdown(options=list(tensors), value=next(iter(tensors)), description="tensor"),
    }

    def switch_to_custom(_change):  # registered before the panel's own observer, so it runs first
        controls["preset"].value = "custom"

    for key in ("exp_bits", "man_bits", "special"):
        controls[key].observe(switch_to_custom, names="value")
    return Panel(controls, update, fig,
                 title="<b>Float format explorer</b>: pick a format (or 'custom' + the three controls after it). "
                       "Top: the relative error of casting each |x| to the format (dotted line: eps/2), with a "
                       "tick at the bottom for each representable value. Bottom: the tensor's histogram; "
                       "<span style='color:#d62728'>red</span>: overflow, grey: flushed to zero, "
                       "<span style='color:#ff7f0e'>orange</span>: subnormal.")
