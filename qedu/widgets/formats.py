"""Lesson 01's widget: pick a float format, see its grid, its rounding error, and what it does to a tensor."""
from __future__ import annotations

import math

import ipywidgets as W
import numpy as np
import torch
from matplotlib.collections import LineCollection

from qedu._validation import as_float_tensor, check_int
from qedu.formats import BF16, FP4_E2M1, FP6_E2M3, FP6_E3M2, FP8_E4M3, FP8_E5M2, FP16, FP32, FloatFormat, cast, grid
from qedu.widgets import Panel, StackedFigure, plain_log_ticks, toggle_row

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


def tensor_regions(x, fmt: FloatFormat, scale_log2: int = 0) -> dict[str, float]:
    """Fractions of the non-zero values of ``x * 2**scale_log2`` that a cast to ``fmt`` overflows,
    flushes to zero, or makes subnormal.

    Also the median relative error ``|cast(x') - x'| / |x'|`` of the values that stay finite
    (``x' = x * 2**scale_log2``). The zeros are those of ``x``, counted before scaling: a value
    that scaling pushes below float32's smallest subnormal is flushed, not ignored.

    >>> r = tensor_regions(torch.tensor([1e-9, 1e-6, 1.0, 1e6]), FP16)
    >>> r["overflow"], r["zero"], r["subnormal"]
    (0.25, 0.25, 0.25)
    >>> tensor_regions(torch.tensor([1.0, 0.5]), FP16, scale_log2=-200)["zero"]
    1.0
    """
    x = as_float_tensor(x, "x").flatten().float()
    scale_log2 = check_int(scale_log2, "scale_log2", -1100, 1100)
    x = x[x != 0]
    if x.numel() == 0:
        return {"overflow": 0.0, "zero": 0.0, "subnormal": 0.0, "median_rel_error": 0.0}
    xs = x.double() * 2.0**scale_log2  # exact in float64; the cast to float32 below may flush or overflow
    y = cast(xs.float(), fmt, saturate=False).double()
    finite = torch.isfinite(y)
    rel = ((y - xs).abs() / xs.abs())[finite]
    return {"overflow": float((~finite).double().mean()), "zero": float((y == 0).double().mean()),
            "subnormal": float(((y != 0) & (y.abs() < fmt.min_normal)).double().mean()),
            "median_rel_error": float(rel.median()) if rel.numel() else math.nan}


def _exp_bits_range(special: str) -> tuple[int, int]:
    """The exponent widths the custom controls offer for ``special``: every one gives a valid
    :class:`FloatFormat` whose values float32 holds (with 8 bits only IEEE's reserved top
    exponent keeps the largest value inside float32; IEEE needs 2 bits to have normal numbers)."""
    return (2, 8) if special == "ieee" else (1, 7)


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
        hists[key] = (np.histogram(lg, bins=edges)[0] / max(len(lg), 1), edges, float(t.abs().max()))

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
        (_, sub_text), (_, normal_text) = marks[" min subnormal"], marks[" min normal"]
        if axis == "log":
            plain_log_ticks(ax_err.xaxis)
            ax_err.set_xlim(float(xs[0]), float(xs[-1]))
            sub_text.set_text(" min subnormal")
            normal_text.set_text(" min normal")
        else:  # both sit at 0 on this scale: one label for the two, instead of two on top of each other
            ax_err.set_xlim(0, hi * 1.05)
            sub_text.set_text("")
            normal_text.set_text(" min subnormal, min normal: at ~0 here")
        ax_err.set_title(f"{fmt.name}: relative error of the cast", fontsize=10)  # short: text is slow to draw
        return what

    moved = {"control": None, "from": None}  # what switched the preset to "custom" last

    def update(preset, exp_bits, man_bits, special, scale_log2, axis, tensor):
        fmt = PRESETS[preset] or FloatFormat(exp_bits, man_bits, special)  # the controls' ranges keep this valid
        lo, hi = fmt.min_subnormal, fmt.max
        if drawn["top"] != (fmt, axis):  # all that changes is animated: drawn over the cached y axis
            drawn["what"] = draw_format(fmt, axis)
            fig.stale(0, background=False)
        if drawn["hist"] != (tensor, scale_log2, axis):  # the histogram's own axes: a full redraw of the strip
            freq, edges, top = hists[tensor]
            stairs.set_data(freq, np.exp2(edges + scale_log2))
            ax_hist.set_xscale(axis)  # the same number line as the plot above
            if axis == "log":
                plain_log_ticks(ax_hist.xaxis)
                ax_hist.set_xlim(2.0 ** (edges[0] + scale_log2 - 3), 2.0 ** (edges[-1] + scale_log2 + 3))
            else:
                ax_hist.set_xlim(0, top * 2.0**scale_log2 * 1.05)
            ax_hist.set_ylim(0, freq.max() * 1.15)
            ax_hist.set_title(f"|{tensor}| x 2^{scale_log2}" + (" (linear: the small values crowd at 0)"
                                                                 if axis == "linear" else ""), fontsize=10)
            fig.stale(1)
        if drawn["fmt"] != fmt or drawn["hist"] != (tensor, scale_log2, axis):  # the shaded regions move
            for key, (a, b) in {"overflow": (hi, 1e300), "zero": (1e-300, lo / 2), "subnormal": (lo / 2, fmt.min_normal)}.items():
                spans[key].set_x(a)
                spans[key].set_width(b - a)
            fig.stale(1, background=False)
        drawn.update(top=(fmt, axis), hist=(tensor, scale_log2, axis), fmt=fmt)
        r = tensor_regions(tensors[tensor], fmt, scale_log2)
        n = len(tensors[tensor])
        if preset == "custom":
            how = (f"custom: switched from {moved['from']} when you moved <i>{moved['control']}</i>; pick a named "
                   "format to go back" if moved["from"] else "custom: built from exp bits, man bits and special")
            name = f"<b>{fmt.name}</b> ({how})"
        else:
            name = f"<b>{fmt.name}</b> ({preset})"
        return (f"{name}: {fmt.bits} bits = 1 sign + {fmt.exp_bits} exponent + {fmt.man_bits} mantissa; "
                f"max {fmt.max:.5g}, min normal {fmt.min_normal:.4g}, min subnormal {lo:.4g}, eps {fmt.eps:.3g} "
                f"(~{(fmt.man_bits + 1) * math.log10(2):.1f} decimal digits); ticks at the bottom: {drawn['what']}<br>"
                f"{tensor} x 2^{scale_log2}, {n:,} value{'s' if n != 1 else ''}; of the non-zero ones "
                f"<span style='color:{_COLORS['overflow']}'>overflow {100 * r['overflow']:.2f} %</span>, "
                f"flushed to zero {100 * r['zero']:.2f} %, "
                f"<span style='color:{_COLORS['subnormal']}'>subnormal {100 * r['subnormal']:.2f} %</span>; "
                f"median relative error {100 * r['median_rel_error']:.3g} %")

    start = PRESETS["FP16"]
    exp_lo, exp_hi = _exp_bits_range(start.special)
    controls = {
        "preset": W.Dropdown(options=list(PRESETS), value="FP16", description="format"),
        "exp_bits": W.IntSlider(value=start.exp_bits, min=exp_lo, max=exp_hi, description="exp bits",
                                continuous_update=False),
        "man_bits": W.IntSlider(value=start.man_bits, min=1, max=23, description="man bits", continuous_update=False),
        "special": W.Dropdown(options=["ieee", "fn", "none"], value=start.special, description="special"),
        "scale_log2": W.IntSlider(value=0, min=-24, max=24, description="x * 2^k", continuous_update=False),
        "axis": W.ToggleButtons(options=["log", "linear"], value="log", description="number line",
                                style={"description_width": "initial"}, layout=toggle_row()),
        "tensor": W.Dropdown(options=list(tensors), value=next(iter(tensors)), description="tensor"),
    }
    panel_ref: list = []  # the panel, once built (observers fire only after that)
    applying = [False]  # True while a named format sets the three custom controls

    def limit_exp_bits(change):  # every exp bits the slider offers gives a valid format with this special
        lo_bits, hi_bits = _exp_bits_range(change["new"])
        slider = controls["exp_bits"]
        with panel_ref[0].hold(update=False):  # the clamp moves the value: the panel updates once, after
            slider.min, slider.max = min(lo_bits, slider.min), max(hi_bits, slider.max)
            slider.value = min(max(slider.value, lo_bits), hi_bits)
            slider.min, slider.max = lo_bits, hi_bits

    def switch_to_custom(change):  # registered before the panel's own observer, so it runs first
        if applying[0] or controls["preset"].value == "custom":
            return
        moved.update(control=change["owner"].description, **{"from": controls["preset"].value})
        with panel_ref[0].hold(update=False):  # the panel's observer of the moved control updates next
            controls["preset"].value = "custom"

    def apply_preset(change):  # a named format sets the three custom controls to its fields
        fmt = PRESETS[change["new"]]
        if fmt is None:
            return
        applying[0] = True
        try:
            with panel_ref[0].hold(update=False):  # the panel's observer of "preset" updates next
                controls["special"].value = fmt.special
                controls["exp_bits"].value = fmt.exp_bits
                controls["man_bits"].value = fmt.man_bits
        finally:
            applying[0] = False

    for key in ("exp_bits", "man_bits", "special"):  # first: so a moved "special" is named, not its clamp
        controls[key].observe(switch_to_custom, names="value")
    controls["special"].observe(limit_exp_bits, names="value")
    controls["preset"].observe(apply_preset, names="value")
    panel = Panel(controls, update, fig,
                  title="<b>Float format explorer</b>: pick a format, and its exponent bits, mantissa bits and "
                        "special values show on the three controls after it; move one of them to build a custom "
                        "format (exp bits 2-8 with special 'ieee', 1-7 with 'fn' or 'none': the formats float32 holds). "
                       "Top: the relative error of casting each |x| to the format (dotted line: eps/2), with a "
                       "tick at the bottom for each representable value. Bottom: the tensor's histogram; "
                       "<span style='color:#d62728'>red</span>: overflow, grey: flushed to zero, "
                       "<span style='color:#ff7f0e'>orange</span>: subnormal.")
    panel_ref.append(panel)
    return panel
