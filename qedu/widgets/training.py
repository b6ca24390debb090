"""Widgets for lessons 06-07: mixed-precision training and where training memory goes."""
from __future__ import annotations

import functools
import math

import ipywidgets as W
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from torch import nn

from qedu.floats import BF16, FP8_E4M3, FP8_E5M2, FP16, FloatFormat
from qedu.memory import RECIPES, RECOMPUTE, gpt_param_count, recompute_flops_overhead, training_memory, transformer_activation_bytes
from qedu.mixed_precision import Precision, train_simulated
from qedu.widgets import LiveFigure, Panel, plain_log_ticks

__all__ = ["FORMATS", "SCALES", "gradient_magnitudes", "format_regions", "mixed_precision_lab", "mixed_precision_results",
           "MODEL_PRESETS", "GPUS", "memory_table", "memory_planner"]

FORMATS = {"fp32": None, "fp16": FP16, "bf16": BF16, "fp8 e5m2": FP8_E5M2, "fp8 e4m3": FP8_E4M3}
SCALES = {"none": None, "2^8": 2.0**8, "2^16": 2.0**16, "2^24": 2.0**24, "dynamic": "dynamic"}
K_CHOICES = (0, 8, 16, 20, 24)  # the lab's loss divisors 2^k: a shrunken loss, as in a long sum of small terms


def gradient_magnitudes(model: nn.Module, data, n_batches: int = 4, batch_size: int = 32) -> torch.Tensor:
    """log2 |g| of every nonzero fp32 gradient value of ``model`` on a few training batches.

    Collects the gradient arriving at each Linear/Conv2d output (the activation gradients) and
    each weight gradient, for the unscaled loss. Dividing the loss by ``2**k`` and scaling it by
    ``S`` shifts every value by ``log2(S) - k``: widgets shift this sample instead of recomputing.
    """
    model = _copy(model)
    grads: list[torch.Tensor] = []
    def keep_output_grad(_module, _inputs, out):
        out.register_hook(lambda g: grads.append(g.detach().reshape(-1)))

    hooks = [m.register_forward_hook(keep_output_grad) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        for i in range(n_batches):
            xb = data.x_train[i * batch_size:(i + 1) * batch_size]
            yb = data.y_train[i * batch_size:(i + 1) * batch_size]
            model.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            grads += [p.grad.reshape(-1).clone() for p in model.parameters()]
    finally:
        for h in hooks:
            h.remove()
    g = torch.cat(grads).abs()
    return torch.log2(g[g > 0])


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def format_regions(fmt: FloatFormat) -> dict[str, tuple[float, float]]:
    """log2 ranges of |g| that a format flushes to zero, keeps as subnormals, keeps, or overflows.

    Below half the smallest subnormal a value rounds to 0; between that and the smallest normal
    it is subnormal (fewer significant bits); above ``max`` (plus half a step) it overflows.

    >>> {k: tuple(round(v, 1) for v in r) for k, r in format_regions(FP16).items()}
    {'underflow': (-inf, -25.0), 'subnormal': (-25.0, -14.0), 'normal': (-14.0, 16.0), 'overflow': (16.0, inf)}
    """
    lo = math.log2(fmt.min_subnormal) - 1
    return {"underflow": (-math.inf, lo), "subnormal": (lo, math.log2(fmt.min_normal)),
            "normal": (math.log2(fmt.min_normal), math.log2(fmt.max)), "overflow": (math.log2(fmt.max), math.inf)}


_REGION_COLORS = {"underflow": "#d62728", "subnormal": "#ff7f0e", "overflow": "#9467bd"}


def mixed_precision_lab(model_fn=None, data=None, epochs: int = 8, lr: float = 1e-3) -> Panel:
    """Format, loss divisor, loss scale and master weights -> gradient histogram + training curve.

    The histogram shows log2 |gradient| of the digits MLP with the chosen format's underflow,
    subnormal and overflow regions shaded; the curve shows test accuracy per epoch of a short
    simulated run (cached: the first visit to a setting trains for a second or two, later visits
    are instant) against fp32.
    """
    from qedu.data import load_digits
    from qedu.models import make_mlp

    model_fn = model_fn or (lambda: make_mlp(seed=0))
    data = data if data is not None else load_digits(seed=0)
    sample = gradient_magnitudes(model_fn(), data).numpy()

    @functools.lru_cache(maxsize=64)
    def run(fmt_name: str, scale_name: str, master: bool, k: int):
        fmt = FORMATS[fmt_name]
        return train_simulated(model_fn(), data, Precision(fmt, fmt, master_weights=master), epochs=epochs, lr=lr,
                               loss_divisor=2.0**k, loss_scale=SCALES[scale_name], backend="torch")

    fig = LiveFigure(1, 2, figsize=(9.0, 3.2))
    ax_hist, ax_curve = fig.axes
    (ref_line,) = ax_curve.plot([], [], color="0.6", lw=1.5, label="fp32")
    (line,) = ax_curve.plot([], [], color="C0", lw=2, marker="o", ms=3, label="chosen")
    ax_curve.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1), xlim=(0.5, epochs + 0.5))
    # no legends (a curve could cross them): the title and the panel's title say what each colour is
    ax_curve.set_title("digits MLP: grey fp32, blue the chosen setting", fontsize=9)
    edges = np.arange(-60, 40.5, 1.0)
    bars = ax_hist.stairs(np.zeros(len(edges) - 1), edges, fill=True, color="C0", alpha=0.7)
    spans = {name: ax_hist.axvspan(0, 0, color=color, alpha=0.18, label=name) for name, color in _REGION_COLORS.items()}
    ax_hist.set(xlim=(edges[0], edges[-1]), ylim=(0, 0.3), xlabel="log2 |gradient|", ylabel="fraction")
    ax_hist.set_title(" ", fontsize=9)  # room for the title update() writes
    # The axes never move: draw them once, then only these on every update ("blitting").
    fig.animate(bars, *spans.values(), ax_hist.title, ref_line, line)

    def update(fmt: str, k: int, loss_scale: str, master_weights: bool) -> str:
        if k not in K_CHOICES:  # the dropdown offers only these; others underflow float32 itself (2^-200 is 0)
            raise ValueError(f"k={k!r} is not one of the loss divisors 2^k the lab offers, k in {list(K_CHOICES)}.")
        result = run(fmt, loss_scale, master_weights, k)
        reference = run("fp32", "none", True, 0)
        scale = float(np.median(result.scales))
        shift = math.log2(scale) - k
        counts, _ = np.histogram(sample + shift, bins=edges)
        outside = len(sample) - int(counts.sum())  # beyond the plotted 2^-60..2^40
        bars.set_data(counts / len(sample))
        regions = format_regions(FORMATS[fmt]) if FORMATS[fmt] is not None else {}
        for name, span in spans.items():  # fp32's regions lie far outside the plot: not drawn at all
            lo, hi = regions.get(name, (0.0, 0.0))
            lo, hi = min(max(lo, edges[0] - 1), edges[-1] + 1), min(max(hi, edges[0] - 1), edges[-1] + 1)
            span.set_visible(hi > lo)  # an empty span would still draw its edge: a stray line
            span.set_x(lo)
            span.set_width(hi - lo)
        ax_hist.set_title(f"{fmt} gradients x 2^{shift:+.0f} (loss / 2^{k}, scale {loss_scale})"
                          + (f", {100 * outside / len(sample):.0f} % off the plot" if outside else ""), fontsize=9)
        ref_line.set_data(range(1, epochs + 1), reference.test_acc)
        line.set_data(range(1, epochs + 1), result.test_acc)
        stats = result.total_stats()
        return (f"<b>{fmt}</b>, loss / 2^{k}, loss scale {loss_scale}, master weights {'on' if master_weights else 'off'}: "
                f"{100 * stats.lost_fraction:.1f} % of nonzero gradients flushed to zero, "
                f"{100 * stats.subnormal_fraction:.1f} % subnormal, {stats.overflow:,} overflowed; "
                f"{sum(result.skipped)} of {len(result.skipped)} steps skipped; "
                f"final accuracy {100 * result.final_test_acc:.1f} % (fp32 {100 * reference.final_test_acc:.1f} %)")

    controls = {
        "fmt": W.Dropdown(options=list(FORMATS), value="fp16", description="format"),
        "k": W.Dropdown(options=list(K_CHOICES), value=16, description="loss / 2^k"),
        "loss_scale": W.Dropdown(options=list(SCALES), value="none", description="loss scale"),
        "master_weights": W.Checkbox(value=True, description="fp32 master weights"),
    }
    return Panel(controls, update, fig, title="<b>Mixed precision</b>: pick a format and a loss scale; "
                 "shaded: where that format flushes gradients to zero (red), keeps them as subnormals (orange), overflows (purple).")


def mixed_precision_results(*names: str, footnote: bool = True) -> str:
    """Markdown for lesson 06 of the results files ``benchmarks/mixed_precision.py`` wrote.

    Each table comes under a line that says where and on what it was measured (not
    necessarily the learner's machine), keeps only the columns that hold something, and the
    footnote comes once (``footnote=False`` leaves it out). No heading: the lesson's own
    headings stay the largest.

    >>> mixed_precision_results("mixed_precision_cpu").startswith("**Measured on ")
    True
    """
    from qedu.results import load_results

    out = []
    for name in names:
        d = load_results(name)
        env, size = d["environment"], d["size"]
        fused = size.get("attention") == "fused"
        command = "python benchmarks/mixed_precision.py" + (" --device cuda" if d["device"] == "cuda" else "") + (
            " --fused-attention" if fused else "")
        where = f"GPU, host with {env['cpu_count']} CPU cores" if d["device"] == "cuda" else f"CPU, {env['cpu_count']} cores"
        out.append(f"**Measured on {env['device_name']}** ({where}; torch {env['torch']}) by `{command}`: "
                   f"TinyGPT of {d['n_params']:,} parameters, batch "
                   f"{size['batch']} x sequence {size['seq_len']}" + (", fused attention" if fused else "") + ".")
        rows = d["results"]
        notes = [r.get("note") or r.get("skipped") or "" for r in rows]
        header = "| recipe | ms per step (median) | tokens/s | speed vs fp32 | peak memory MiB |" + (" note |" if any(notes) else "")
        out += ["", header, "|---" * (header.count("|") - 1) + "|"]
        fp32 = next(r["median_ms"] for r in rows if r["recipe"] == "fp32")
        for r, note in zip(rows, notes):
            cells = ([f"{r['median_ms']:.1f}", f"{r['tokens_per_s']:,.0f}", f"{fp32 / r['median_ms']:.2f}x",
                      f"{r['peak_memory_bytes'] / 2**20:,.0f}"] if "median_ms" in r else ["-"] * 4)
            out.append(f"| {r['recipe']} | " + " | ".join(cells) + (f" | {note} |" if any(notes) else " |"))
        out.append("")
    if footnote:
        out.append("*Speed vs fp32* above 1 means faster than fp32. Speed depends on the hardware: CPUs without "
                   "AMX/AVX512-BF16 emulate bf16 and fp16 matmuls and run them slower than fp32.")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Memory planner
# --------------------------------------------------------------------------------------------

MODEL_PRESETS = {  # GPT-style shapes: (layers, hidden, heads, vocabulary)
    "GPT-2 small (124M)": (12, 768, 12, 50257),
    "GPT-2 XL (1.6B)": (48, 1600, 25, 50257),
    "6.7B (GPT-3 shape)": (32, 4096, 32, 50257),
    "13B (GPT-3 shape)": (40, 5120, 40, 50257),
    "70B-class": (80, 8192, 64, 32000),
}
GPUS = {"24 GiB (RTX 4090)": 24, "80 GiB (A100/H100)": 80, "141 GB (H200)": 141e9 / 2**30}
_KINDS = ("weights", "grads", "master", "optimizer", "activations")


def memory_table(model: str, batch: int, seq_len: int, dropout: bool = True) -> dict[str, dict[str, float]]:
    """GiB per kind for every recipe in :data:`qedu.memory.RECIPES`, for a preset model.

    >>> round(memory_table("GPT-2 small (124M)", 1, 1024)["fp32"]["weights"], 3)
    0.464
    """
    L, h, a, V = MODEL_PRESETS[model]
    n = gpt_param_count(L, h, V, seq_len)
    out = {}
    for name, recipe in RECIPES.items():
        act = transformer_activation_bytes(L, h, seq_len, batch, a, recipe.activation, dropout=dropout)
        m = training_memory(n, name)
        out[name] = {k: v / 2**30 for k, v in m.as_dict().items()}
        out[name]["activations"] = act / 2**30
    return out


def memory_planner() -> Panel:
    """Model, batch, sequence length, recipe -> stacked bars of training memory vs a GPU's memory."""
    fig = LiveFigure(1, 2, figsize=(9.0, 3.2), gridspec_kw={"width_ratios": [3, 1.25]})
    ax, ax_parts = fig.axes
    colors = dict(zip(_KINDS, ("C0", "C1", "C2", "C3", "C7")))
    names = list(RECIPES)
    # every bar segment is made once; update() only moves and resizes them (rebuilding costs more than drawing)
    segments = {(name, kind): ax.barh(i, 0.0, color=colors[kind], label=kind if i == 0 else None)[0]
                for i, name in enumerate(names) for kind in _KINDS}
    outline = ax.add_patch(Rectangle((0, 0), 0, 0.8, fill=False, edgecolor="black", linewidth=1.5))
    capacity_line = ax.axvline(1.0, color="black", ls="--", lw=1)
    capacity_text = ax.text(1.0, -0.55, "", fontsize=8, ha="center", va="bottom")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first recipe on top
    ax.set_xlabel("GiB")
    ax.set_title(" ", fontsize=9, pad=14)  # reserve room for the title update() writes
    # Right: the chosen recipe's parts one by one on a log axis, so the small ones (weights of a
    # 70B model at sequence 8192 are a sliver of the stacked bar) keep a visible size; its
    # coloured labels are the legend of the stacked bars.
    part_bars = ax_parts.barh(range(len(_KINDS)), np.ones(len(_KINDS)), color=[colors[k] for k in _KINDS])
    part_values = [ax_parts.text(1.0, i, "", fontsize=8, va="center", ha="left") for i in range(len(_KINDS))]
    ax_parts.set_yticks(range(len(_KINDS)), _KINDS)
    for label, kind in zip(ax_parts.get_yticklabels(), _KINDS):
        label.set_color(colors[kind])
    ax_parts.set_ylim(len(_KINDS) - 0.5, -0.5)
    ax_parts.set_xscale("log")
    ax_parts.set_xlim(1e-3, 1e6)  # every part of every setting (tests/test_widgets_training.py)
    plain_log_ticks(ax_parts.xaxis, numticks=4)  # plain labels: mathtext (10^2) is slow to redraw
    ax_parts.set_xlabel("GiB (log scale)")
    ax_parts.set_title("the chosen recipe's parts", fontsize=9, pad=14)
    # Drawn on every update, over a cached background of what never changes (y labels):
    fig.animate(ax.xaxis, *segments.values(), outline, capacity_line, capacity_text, ax.title,
                *part_bars, *part_values)

    def update(model: str, batch: int, seq_len: int, recipe: str, gpu: str, recompute: str = "none") -> str:
        table = memory_table(model, batch, seq_len)
        if recompute != "none":  # activation recomputation (Korthikanti et al. 2022) stores less
            L, h, a, _vocab = MODEL_PRESETS[model]
            for name, r in RECIPES.items():
                table[name]["activations"] = transformer_activation_bytes(L, h, seq_len, batch, a, r.activation,
                                                                          recompute=recompute) / 2**30
        for name in names:
            left = 0.0
            for kind in _KINDS:
                segments[name, kind].set_x(left)
                segments[name, kind].set_width(table[name][kind])
                left += table[name][kind]
        row = table[recipe]
        total = sum(row.values())
        outline.set_xy((0.0, names.index(recipe) - 0.4))
        outline.set_width(total)
        capacity = GPUS[gpu]
        capacity_line.set_xdata([capacity, capacity])
        capacity_text.set_x(capacity)
        capacity_text.set_text(gpu)
        ax.set_xlim(0, 1.05 * max(capacity, *(sum(r.values()) for r in table.values())))
        ax.set_title(f"{model}, batch {batch}, sequence {seq_len}, recomputation: {recompute}", fontsize=9, pad=14)
        sizes = np.array([row[k] for k in _KINDS])
        floor = sizes[sizes > 0].min() / 4 if (sizes > 0).any() else 1e-3  # a part of 0 GiB: no bar, a "0"
        for bar, text, v in zip(part_bars, part_values, sizes):
            bar.set_width(max(v, floor))
            bar.set_visible(v > 0)
            text.set_x(max(v, floor) * 1.15)
            text.set_text("" if v > 0 else "0")  # the sizes are in the readout: text is slow to draw
        # the fixed axis (0.001 GiB .. 10^6 GiB) holds every part of every setting
        parts = ", ".join(f"{k} {row[k]:.1f}" for k in _KINDS)
        verdict = "fits" if total <= capacity else f"does not fit: {total / capacity:.1f}x the memory"
        cost = (f"; recomputation adds {100 * recompute_flops_overhead(MODEL_PRESETS[model][1], seq_len, recompute):.0f} % "
                "to the step's compute" if recompute != "none" else "")
        return (f"<b>{recipe}</b> ({RECIPES[recipe].description}): {parts} GiB; total {total:.1f} GiB, "
                f"{verdict} of {gpu}{cost}.")

    controls = {
        "model": W.Dropdown(options=list(MODEL_PRESETS), value="GPT-2 XL (1.6B)", description="model"),
        "batch": W.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64], value=8, description="batch"),
        "seq_len": W.SelectionSlider(options=[256, 512, 1024, 2048, 4096, 8192], value=1024, description="sequence"),
        "recipe": W.Dropdown(options=list(RECIPES), value="mixed", description="recipe"),
        "gpu": W.Dropdown(options=list(GPUS), value="80 GiB (A100/H100)", description="GPU"),
        "recompute": W.Dropdown(options=list(RECOMPUTE), value="none", description="recompute"),
    }
    return Panel(controls, update, fig, title="<b>Where training memory goes</b>: weights, gradients, fp32 master "
                 "copy, Adam's states and activations (none, selective or full recomputation), per recipe.")
