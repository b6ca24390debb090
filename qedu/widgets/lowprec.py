"""Lesson 12's widgets: block-scaled 4-bit formats on real weights, and FP8 training runs.

* :func:`format_error` (pure): one 4-bit format applied to a weight matrix, its relative error
  and its storage in bits per value, scales included.
* :func:`block_format_explorer`: block size x scale rule -> the error of fp4 without a scale,
  MXFP4, NVFP4, int4 (symmetric, per group) and NF4 on the same weights, one bar each.
* :func:`fp8_run_explorer`: precomputed training runs (``benchmarks/low_precision_training.py``,
  read with :func:`qedu.results.load_results`): a recipe's loss curve against fp32 and its
  overflow / underflow shares per tensor role.
"""
from __future__ import annotations

import html

import ipywidgets as W
import numpy as np
import torch

from qedu.widgets import LiveFigure, Panel, plain_log_ticks

__all__ = ["FORMATS", "BLOCK_SIZES", "format_error", "block_format_explorer", "fp8_run_explorer"]

FORMATS = ("fp4, no scale", "MXFP4", "NVFP4", "int4", "NF4")
BLOCK_SIZES = (16, 32, 64, 128)


def _int4_symmetric(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """Symmetric int4 per block along the last dimension: ``q = clamp(round(w / s), -8, 7)``, ``s = amax / 7``."""
    blocks = w.reshape(*w.shape[:-1], -1, block_size)  # (..., K) -> (..., K/B, B)
    scale = blocks.abs().amax(dim=-1, keepdim=True) / 7
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.round(blocks / scale).clamp(-8, 7) * scale).reshape(w.shape)


def format_error(weight: torch.Tensor, fmt: str, block_size: int = 32, rule: str = "floor") -> tuple[float, float]:
    """``(relative RMS error, bits per value)`` of ``weight`` stored in ``fmt``.

    ``relative error = ||w_hat - w|| / ||w||``. Bits per value count the scales: MXFP4
    ``4 + 8/B`` (E8M0), NVFP4 ``4 + 8/16 + 32/n`` (E4M3 per 16, fp32 per tensor; ``block_size``
    does not apply), int4 ``4 + 16/B`` (an fp16 scale per block), NF4 ``4 + 8/B + 32/(256 B)``
    (double quantization), fp4 without a scale 4.

    Raises:
        ValueError: unknown ``fmt``, or a last dimension that ``block_size`` does not divide.

    >>> w = torch.linspace(-1, 1, 64).reshape(2, 32)
    >>> err, bits = format_error(w, "MXFP4", 32); round(err, 4), bits
    (0.0965, 4.25)
    """
    from qedu.floats import FP4_E2M1, cast
    from qedu.mx import bits_per_value, mx_dequantize, mx_quantize, nvfp4_dequantize, nvfp4_quantize
    from qedu.nf4 import nf4_bits_per_parameter, nf4_fake_quantize

    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}.")
    w = weight.detach().float()
    if w.shape[-1] % block_size:
        raise ValueError(f"block_size={block_size} must divide the weight's last dimension {w.shape[-1]}.")
    if fmt == "fp4, no scale":
        w_hat, bits = cast(w.clamp(-FP4_E2M1.max, FP4_E2M1.max), FP4_E2M1), 4.0
    elif fmt == "MXFP4":
        w_hat, bits = mx_dequantize(mx_quantize(w, "fp4_e2m1", block_size, rule)), bits_per_value("fp4_e2m1", block_size)
    elif fmt == "NVFP4":
        pts = float(w.abs().max()) / (448 * 6)
        w_hat = nvfp4_dequantize(nvfp4_quantize(w, per_tensor_scale=pts))
        bits = bits_per_value("fp4_e2m1", 16, tensor_bits=32, n_values=w.numel())
    elif fmt == "int4":
        w_hat, bits = _int4_symmetric(w, block_size), 4 + 16 / block_size
    else:
        w_hat, bits = nf4_fake_quantize(w, block_size=block_size), nf4_bits_per_parameter(block_size)
    return float((w_hat - w).norm() / w.norm()), float(bits)


def block_format_explorer(weight: torch.Tensor | None = None, name: str = "blocks.0.fc1.weight") -> Panel:
    """Block size x scale rule -> relative error and bits per value of five 4-bit formats on one weight.

    Args:
        weight: a 2-D weight (default: the shipped tinylm's ``name``).
    """
    if weight is None:  # one tensor of the checked file, without building the whole model
        from qedu.models import TINYLM_SHA256, _tinylm_state, tinylm_path

        state = _tinylm_state(tinylm_path(), TINYLM_SHA256)
        if name not in state:
            raise ValueError(f"name must be one of the shipped tinylm's weights, such as 'blocks.0.fc1.weight'; got {name!r}.")
        weight = state[name].to(torch.float32)
    cache: dict = {}
    fig = LiveFigure(1, 1, figsize=(8.0, 3.0))
    ax = fig.axes
    x = np.arange(len(FORMATS))
    bars = ax.bar(x, np.full(len(FORMATS), 0.1), color=["C7", "C0", "C1", "C2", "C3"])
    ax.set_yscale("log")
    ax.set_ylim(0.01, 1.5)
    plain_log_ticks(ax.yaxis)
    ax.set_ylabel("relative RMS error")
    labels = [ax.text(i, 0.012, "", ha="center", va="bottom", fontsize=8) for i in x]
    ax.set_xticks(x, FORMATS)
    title = ax.text(0.5, 1.02, "", transform=ax.transAxes, ha="center", va="bottom", fontsize=10)
    fig.animate(*bars, *labels, title)

    def update(block_size, rule) -> str:
        rows = []
        for i, fmt in enumerate(FORMATS):
            key = (fmt, block_size if fmt not in ("fp4, no scale", "NVFP4") else 0, rule if fmt == "MXFP4" else "")
            if key not in cache:
                cache[key] = format_error(weight, fmt, block_size, rule)
            err, bits = cache[key]
            bars[i].set_height(max(err, 0.011))
            labels[i].set_text(f"{bits:.3f} bits")
            rows.append(f"{html.escape(fmt)} <b>{err:.4f}</b> ({bits:.3f} bits)")
        title.set_text(f"{name} {tuple(weight.shape)}: blocks of {block_size}, MX rule {rule}")
        return " &middot; ".join(rows)

    controls = {
        "block_size": W.Dropdown(options=list(BLOCK_SIZES), value=32, description="block size"),
        "rule": W.Dropdown(options=["floor", "ceil", "even", "rceil"], value="floor", description="MX scale rule"),
    }
    panel = Panel(controls, update, fig,
                  title="<b>4-bit formats on real weights</b>: error and bits per value (scales included). "
                        "NVFP4's blocks are always 16; the rule applies to MXFP4 only.")
    panel.cache, panel.weight = cache, weight
    return panel


def fp8_run_explorer(results: dict | None = None) -> Panel:
    """A recipe's loss curve (mean and range over seeds) against fp32, and its overflow/underflow per role.

    Args:
        results: ``load_results("low_precision_training")`` (the default).
    """
    if results is None:
        from qedu.results import load_results

        results = load_results("low_precision_training")
    recipes = results["fp8"]["recipes"]
    roles = list(next(iter(r["overflow_share"] for r in recipes.values() if r["overflow_share"])))
    fig = LiveFigure(1, 2, figsize=(9.0, 3.2))
    ax_loss, ax_role = fig.axes
    steps = np.arange(1, len(recipes["fp32"]["loss_mean"]) + 1)
    ax_loss.plot(steps, recipes["fp32"]["loss_mean"], color="k", lw=1, label="fp32")
    (line,) = ax_loss.plot(steps, recipes["fp32"]["loss_mean"], color="C3", lw=1.5, label="recipe")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (mean of seeds)")
    ax_loss.legend(loc="upper right", fontsize=8)
    y = np.arange(len(roles))
    over = ax_role.barh(y - 0.2, np.full(len(roles), 1e-7), height=0.4, color="C3", label="overflow")
    under = ax_role.barh(y + 0.2, np.full(len(roles), 1e-7), height=0.4, color="C0", label="underflow")
    ax_role.set_xscale("log")
    ax_role.set_xlim(1e-7, 1.0)
    plain_log_ticks(ax_role.xaxis)
    ax_role.set_yticks(y, [r.replace("_", " ") for r in roles], fontsize=7)
    ax_role.set_xlabel("share of values (seed 0)")
    ax_role.legend(loc="lower right", fontsize=8)
    fig.animate(line, *over, *under)

    def update(recipe) -> str:
        r = recipes[recipe]
        line.set_ydata(r["loss_mean"])
        for i, role in enumerate(roles):
            over[i].set_width(max(r["overflow_share"].get(role, 0.0), 1e-7))
            under[i].set_width(max(r["underflow_share"].get(role, 0.0), 1e-7))
        counted = "" if r["overflow_share"] else " &middot; no overflow / underflow to count: this recipe casts nothing to fp8"
        return (f"<b>{html.escape(recipe)}</b>: validation loss {r['val_loss_mean']:.3f} "
                f"(fp32 {recipes['fp32']['val_loss_mean']:.3f}); per seed {', '.join(f'{v:.3f}' for v in r['val_loss'])}{counted}")

    controls = {"recipe": W.Dropdown(options=list(recipes), value="tensorwise", description="recipe")}
    return Panel(controls, update, fig, title="<b>FP8 training runs</b> (precomputed by benchmarks/low_precision_training.py)")
