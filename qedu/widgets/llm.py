"""Lesson 10's widget: quantize the small language model's weights and see what changes.

Three parts, each readable alone:

* **state**: :func:`llm_controls`, the choices (method, bits, group size, calibration sequences);
* **computation**: :func:`llm_result`, pure: quantize ``pretrained("tinylm")`` with one setting
  (:func:`qedu.llm_quant.quantize_tinylm`) and score it against the float model on a fixed
  batch of test text (:class:`qedu.lm_eval.LMEvaluator`): perplexity, KL, top-1 flips, bits
  per weight and every layer's relative output error;
* **drawing**: :func:`llm_explorer`, a bar per layer (its error, log scale) and a readout.

Each setting is computed once (a few seconds for GPTQ, under a second for RTN; a busy sign shows
meanwhile) and cached, so returning to a setting redraws in milliseconds.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import ipywidgets as W
import numpy as np

from qedu.lm_eval import LMEvaluator, LMScores
from qedu.llm_quant import linear_layers, quantize_tinylm
from qedu.text import load_text, windows
from qedu.widgets import LiveFigure, Panel, plain_log_ticks

__all__ = ["LLMResult", "llm_result", "model_bits_per_weight", "llm_controls", "llm_explorer", "evaluation_batch"]

GROUP_SIZES = {"32": 32, "64": 64, "128": 128, "per-channel": None}
WIDGET_METHODS = ("rtn", "gptq", "awq", "nf4")  # the weight-only methods (NF4 has its own format: bits and group size unused)


def evaluation_batch(n_windows: int = 16, seq_len: int = 128):
    """The first ``n_windows`` windows of the test split: ``(inputs, targets)``."""
    return windows(load_text().test, seq_len, n_windows)


def model_bits_per_weight(model, bits: int, group_size: int | None, method: str = "rtn") -> float:
    """Storage per weight of the quantized linear layers, weighted by their sizes.

    Group-wise integer formats: ``bits + 16/g`` (fp16 scale) ``+ bits/g`` (zero point), as
    :func:`qedu.rtn.bits_per_weight`; NF4 with double quantization: its own count.
    """
    from qedu.rtn import bits_per_weight

    if method == "nf4":
        from qedu.nf4 import nf4_bits_per_parameter

        return float(nf4_bits_per_parameter())
    int8 = method in ("int8", "llm_int8", "w8a8", "smoothquant")  # int8 codes, one float32 absmax per output row (outlier columns not counted)
    total = n = 0
    for name in linear_layers(model):
        w = model.get_submodule(name).weight
        total += w.numel() * (bits_per_weight(8, None, w.shape[1], symmetric=True, scale_bits=32)
                              if method in ("int8", "llm_int8")
                              else 8 + 32 / w.numel() if int8  # one float32 scale per tensor
                              else bits_per_weight(bits, group_size, w.shape[1]))
        n += w.numel()
    return total / n


@dataclass(frozen=True)
class LLMResult:
    """One setting's scores, storage and per-layer errors (see :func:`llm_result`)."""

    scores: LMScores
    bits_per_weight: float
    layer_errors: dict
    seconds: float


def llm_result(model, evaluator: LMEvaluator, method: str, bits: int, group_size: int | None, n_calib: int,
               seed: int = 0) -> LLMResult:
    """Quantize ``model``'s linear layers with ``method`` and score the result on ``evaluator``'s batch."""
    result = quantize_tinylm(model, method, bits=bits, group_size=group_size, n_calib=n_calib, seed=seed)
    quantized, errors = result
    return LLMResult(evaluator.score(quantized), model_bits_per_weight(model, bits, group_size, method), dict(errors),
                     result.seconds)


def llm_controls(methods=None) -> dict:
    """The widget's controls: method, bits, group size and number of calibration sequences."""
    methods = list(WIDGET_METHODS) if methods is None else list(methods)
    return {
        "method": W.Dropdown(options=methods, value=methods[0], description="method"),
        "bits": W.Dropdown(options=[8, 4, 3], value=4, description="bits"),
        "group_size": W.Dropdown(options=list(GROUP_SIZES), value="128", description="group size"),
        "n_calib": W.Dropdown(options=[4, 16, 64], value=16, description="calib. seqs"),
    }


def llm_explorer(model=None, n_windows: int = 16, methods=None) -> Panel:
    """Method x bits x group size x calibration sequences -> perplexity, KL, flips, bits/weight, per-layer error.

    Args:
        model: the float language model (default ``pretrained("tinylm")``).
        n_windows: test windows of 128 bytes to score on. methods: the methods offered.
    """
    from qedu.models import pretrained

    model = pretrained("tinylm") if model is None else model
    evaluator = LMEvaluator(model, *evaluation_batch(n_windows, model.pos.num_embeddings))
    names = linear_layers(model)
    cache: dict = {}
    busy = W.HTML()

    fig = LiveFigure(1, 1, figsize=(8.4, 3.0))
    ax = fig.axes
    x = np.arange(len(names))
    bars = ax.bar(x, np.full(len(names), 1e-3), color=["C0", "C1", "C2", "C3"] * (len(names) // 4))
    ax.set_yscale("log")
    ax.set_ylim(1e-6, 1.0)
    plain_log_ticks(ax.yaxis)
    ax.set_xticks(x, [n.replace("blocks.", "") for n in names], rotation=60, fontsize=7)
    ax.set_ylabel("relative output error")
    title = ax.text(0.5, 1.02, "", transform=ax.transAxes, ha="center", va="bottom", fontsize=10)
    fig.animate(*bars, title)

    def update(method, bits, group_size, n_calib) -> str:
        if method == "nf4":  # one fixed format, no calibration: every such setting is the same model
            bits, group_size, n_calib = 4, "64", 0
        key = (method, bits, group_size, n_calib)
        if key not in cache:
            busy.value = f"<i>&#9203; quantizing with {html.escape(method)} (first time for this setting)...</i>"
            try:
                cache[key] = llm_result(model, evaluator, method, bits, GROUP_SIZES[group_size], max(n_calib, 1))
            finally:
                busy.value = ""
        r = cache[key]
        for bar, name in zip(bars, names):
            bar.set_height(max(r.layer_errors[name], 1.1e-6))
        s, ref = r.scores, evaluator.reference
        short = "NF4 + DQ" if method == "nf4" else f"{method} W{bits} g{group_size}"
        setting = ("NF4, blocks of 64, double-quantized absmax (no calibration; bits and group size do not apply)"
                   if method == "nf4" else f"{method}, {bits} bits, group {group_size}, {n_calib} calibration sequences")
        title.set_text(f"{short}: perplexity {s.perplexity:.3f} (float {ref.perplexity:.3f})")
        return (f"<b>{html.escape(setting)}</b>: "
                f"perplexity <b>{s.perplexity:.3f}</b> (float {ref.perplexity:.3f}) &middot; KL {s.kl:.4f} nats/token "
                f"&middot; top-1 flips {100 * s.flips:.2f} % &middot; {r.bits_per_weight:.3f} bits/weight "
                f"&middot; quantized in {r.seconds:.2f} s")

    panel = Panel(llm_controls(methods), update, fig,
                  title="<b>Quantizing the weights of a small language model</b>: choose a method and a format; "
                        "each setting is quantized once, then cached.")
    panel.children = (*panel.children, busy)
    panel.cache, panel.busy, panel.evaluator = cache, busy, evaluator
    return panel
