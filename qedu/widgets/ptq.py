"""Lessons 03 and 04's widgets: calibrate activations live, and quantize a whole model live.

Pure functions do the work and widgets only draw: :func:`calibrate_activations` (one
calibration method on one calibration set -> ranges and accuracy) behind
:func:`calibration_explorer`, and :func:`ptq_result` (one :class:`~qedu.ptq.PTQConfig` ->
accuracy, per-class accuracy, bytes) behind :func:`ptq_explorer`. Both cache their results per
setting, so moving back to a setting only redraws.

>>> x = torch.ones(3, 1, 8, 8)
>>> with_corrupted_image(x, factor=20.0)[:, 0, 0, 0].tolist()
[20.0, 1.0, 1.0]
"""
from __future__ import annotations

from typing import NamedTuple

import ipywidgets as W
import numpy as np
import torch
from matplotlib.collections import LineCollection

from qedu.calibration import ClippingError, clipping_error, record_activations
from qedu.data import calibration_subset, load_digits
from qedu.formats import IntFormat
from qedu.granularity import PerChannel, PerTensor
from qedu.models import evaluate, per_class_accuracy, pretrained
from qedu.ptq import PTQConfig, SizeReport, calibrate, model_size, prepare, quantizable_layers, quantize_model
from qedu.widgets import LiveFigure, Panel, plain_log_ticks, plural

__all__ = ["calibration_images", "with_corrupted_image", "CalibrationResult", "calibrate_activations",
           "calibration_explorer", "PTQResult", "ptq_result", "ptq_explorer", "GRANULARITIES"]

CAL_METHODS = ("minmax", "percentile", "mse", "kl")
N_CALIB = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PERCENTILES = (99.0, 99.9, 99.99)
GRANULARITIES = {"per-channel": PerChannel(0), "per-tensor": PerTensor()}


def calibration_images(data, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` class-balanced calibration images from ``data.x_calib`` (all of them if ``n`` is its size)."""
    if n == len(data.x_calib):
        return data.x_calib.clone()
    return calibration_subset(data.x_calib, data.y_calib, n, seed=seed)[0]


def with_corrupted_image(x: torch.Tensor, factor: float = 20.0) -> torch.Tensor:
    """A copy of ``x`` whose first image is multiplied by ``factor`` (a saturated sensor, a bad
    conversion): one outlier image among the calibration images."""
    x = x.clone()
    x[0] = x[0] * factor
    return x


# ----------------------------------------------------------------------------- lesson 03: calibration
class CalibrationResult(NamedTuple):
    """What one calibration run chose and how well the model did with it."""

    accuracy: float  # test accuracy with 8-bit weights and these activation ranges
    ranges: dict  # layer -> (lo, hi): the clipping range its observer chose
    grids: dict  # layer -> (scale, zero_point)


def calibrate_activations(model, x_calib, x_test, y_test, method: str, bits: int,
                          percentile: float = 99.9) -> CalibrationResult:
    """Quantize ``model`` to 8-bit weights and ``bits``-bit activations calibrated by ``method``
    on ``x_calib``; return each layer's chosen range and the test accuracy. (The observers see
    the activations of the model with 8-bit weights, as :func:`qedu.ptq.calibrate` runs it.)"""
    config = PTQConfig(weight_bits=8, act_bits=bits, act_method=method, percentile=percentile)
    prepared = calibrate(prepare(model, config), x_calib)
    layers = {name: prepared.get_submodule(name) for name in quantizable_layers(prepared)}
    ranges = {n: tuple(float(v) for v in m.act.observer.clipping_range()) for n, m in layers.items()}
    grids = {n: (float(m.act.scale), int(m.act.zero_point)) for n, m in layers.items()}
    return CalibrationResult(evaluate(prepared, x_test, y_test), ranges, grids)


def calibration_explorer(model=None, data=None) -> Panel:
    """Method, percentile, number of calibration images, bits, one corrupted image, layer ->
    the layer's activation histogram with the chosen range, its clipping vs rounding error on
    test activations, and the model's test accuracy.

    Args:
        model: a float model (default ``pretrained("mlp", seed=0)``). data: a
            :class:`~qedu.data.Digits` (default ``load_digits(seed=0)``).
    """
    model = pretrained("mlp", seed=0) if model is None else model
    data = load_digits(seed=0) if data is None else data
    layers = quantizable_layers(model)
    float_acc = evaluate(model, data.x_test, data.y_test)
    test_acts = record_activations(model, data.x_test)  # layer -> its inputs on the test set
    subsets = {n: calibration_images(data, n) for n in N_CALIB}
    results: dict = {}

    def result(method, percentile, n_calib, bits, outlier) -> tuple[CalibrationResult, dict]:
        key = (method, percentile if method == "percentile" else None, n_calib, bits, outlier)
        if key not in results:
            x = with_corrupted_image(subsets[n_calib]) if outlier else subsets[n_calib]
            results[key] = (calibrate_activations(model, x, data.x_test, data.y_test, method, bits, percentile),
                            record_activations(model, x))
        return results[key]

    fig = LiveFigure(1, 2, figsize=(8.4, 3.0), gridspec_kw={"width_ratios": [2.2, 1]})
    ax_h, ax_e = fig.axes
    hist = ax_h.stairs([1.0], [0.0, 1.0], fill=True, color="0.7", baseline=0.5)
    ends = [ax_h.axvline(0.0, color="C3", ls="--", lw=1.2) for _ in range(2)]
    levels = LineCollection([], colors="C0", linewidths=0.6, alpha=0.5, transform=ax_h.get_xaxis_transform())
    ax_h.add_collection(levels)
    ax_h.set_yscale("log")
    ax_h.set_xlabel("value")  # what the colours mean is in the panel's title: text is slow to draw
    error_bars = ax_e.bar(["clipping", "rounding"], [1.0, 1.0], color=["C3", "C0"])
    ax_e.set_yscale("log")
    ax_e.set_ylim(1e-7, 10)
    # each bar's value written on it: a zero (nothing clipped) has no bar on a log axis, and a value
    # below 1e-7 would be cut off
    bar_values = [ax_e.text(i, 2e-7, "", ha="center", va="bottom", fontsize=8) for i in range(2)]
    plain_log_ticks(ax_h.yaxis)
    plain_log_ticks(ax_e.yaxis)
    ax_h.set_title(" ", fontsize=10)  # reserve room for the titles update() writes
    ax_e.set_title(" ", fontsize=10)
    # Drawn on every update, over a cached background of what never changes (the error plot's axes, labels):
    fig.animate(ax_h.xaxis, ax_h.yaxis, hist, *ends, levels, ax_h.title, *error_bars, *bar_values, ax_e.title)

    def update(method, percentile, n_calib, bits, outlier, layer) -> str:
        res, calib_acts = result(method, percentile, n_calib, bits, outlier)
        lo, hi = res.ranges[layer]
        scale, zero_point = res.grids[layer]
        values = calib_acts[layer].flatten().numpy()
        right = max(float(test_acts[layer].max()), hi) * 1.05
        counts, edges = np.histogram(values, bins=80, range=(0.0, right))
        hist.set_data(np.maximum(counts, 0.5), edges)  # empty bins sit on the baseline of the log axis
        ax_h.set_xlim(0, right)
        ax_h.set_ylim(0.5, counts.max() * 2)
        grid = (np.arange(2**bits) - zero_point) * scale  # the representable values
        for line, v in zip(ends, (grid[0], grid[-1])):
            line.set_xdata([v, v])
        levels.set_segments([[(v, 0.0), (v, 0.12)] for v in grid] if bits <= 5 else [])
        off = " (off the right edge)" if values.max() > right else ""
        ax_h.set_title(f"{method}: range [{grid[0]:.2f}, {grid[-1]:.2f}], data max {values.max():.2f}{off}", fontsize=10)
        err: ClippingError = clipping_error(test_acts[layer], lo, hi, IntFormat(bits, signed=False))
        for bar, text, v in zip(error_bars, bar_values, (err.clipping, err.rounding)):
            bar.set_height(max(v, 1e-12))
            # written only where the bar cannot be seen (the values are in the readout: text is slow to draw)
            text.set_text("0\n(none)" if v == 0 else f"{v:.1e}\n(below the axis)" if v < 1e-7 else "")
            text.set_y(2e-7 if v < 1e-6 else v * 1.3)
            text.set_va("bottom")
        ax_e.set_title(f"MSE on {layer}'s test inputs", fontsize=10)
        return (f"<b>A{bits} {method}{f' {percentile}' if method == 'percentile' else ''}, {plural(n_calib, 'calibration image')}"
                f"{', one corrupted' if outlier else ''}</b>: test accuracy <b>{100 * res.accuracy:.1f} %</b> "
                f"(float {100 * float_acc:.1f} %, 8-bit weights) &middot; {layer}: clipped {100 * err.clipped_fraction:.2f} % "
                f"of test values, clipping MSE {err.clipping:.1e}, rounding MSE {err.rounding:.1e}")

    controls = {
        "method": W.Dropdown(options=list(CAL_METHODS), value="minmax", description="method"),
        "percentile": W.Dropdown(options=list(PERCENTILES), value=99.9, description="percentile"),
        "n_calib": W.SelectionSlider(options=list(N_CALIB), value=256, description="images", continuous_update=False),
        "bits": W.IntSlider(value=4, min=2, max=8, description="bits", continuous_update=False),
        "outlier": W.Checkbox(value=False, description="one corrupted image"),
        "layer": W.Dropdown(options=layers, value=layers[min(1, len(layers) - 1)], description="layer"),
    }
    def inactive(method, **_):
        return {} if method == "percentile" else {"percentile": "used by the percentile method only"}

    return Panel(controls, update, fig, inactive=inactive, title="<b>Calibrate the activations</b>: how each method sets the range, "
                 "and what it costs the model. Grey: the values the observer saw; "
                 "<span style='color:#d62728'>red</span>: the grid's ends; <span style='color:#1f77b4'>blue</span>: "
                 "its levels (up to 5 bits).")


# ----------------------------------------------------------------------------- lesson 04: PTQ
class PTQResult(NamedTuple):
    """One configuration's test accuracy, per-class accuracy and size."""

    accuracy: float
    per_class: torch.Tensor
    size: SizeReport


def ptq_result(model, data, config: PTQConfig) -> PTQResult:
    """Quantize ``model`` with ``config`` (calibrating on ``data.x_calib``) and measure it on the test set.

    >>> from qedu.models import make_mlp
    >>> r = ptq_result(make_mlp(seed=0), load_digits(seed=0), PTQConfig())  # an untrained MLP: about 10 %
    >>> tuple(r.per_class.shape), r.size.total_bytes
    ((10,), 18664)
    """
    q = quantize_model(model, config, data.x_calib)
    per_class = per_class_accuracy(q, data.x_test, data.y_test)
    return PTQResult(evaluate(q, data.x_test, data.y_test), per_class, model_size(model, config))


def _keep_options(layers: list[str]) -> dict:
    options = {"none": ()}
    for name in layers:
        options[name] = (name,)
    if len(layers) > 2:
        options[f"{layers[0]} + {layers[-1]}"] = (layers[0], layers[-1])
    return options


def ptq_explorer(name: str = "mlp", seed: int = 0, *, model=None, data=None) -> Panel:
    """Weight bits, activation bits, granularity, clipping method and layers kept at 8 bits ->
    test accuracy, per-class accuracy bars and model size, computed live (cached per setting).

    Args:
        name: ``"mlp"`` or ``"cnn"`` (``pretrained(name, seed)``, on ``load_digits(seed=0)``).
        model, data: use this float model / :class:`~qedu.data.Digits` instead.
    """
    model = pretrained(name, seed=seed) if model is None else model
    data = load_digits(seed=0) if data is None else data
    layers = quantizable_layers(model)
    keep_options = _keep_options(layers)
    float_acc = evaluate(model, data.x_test, data.y_test)
    float_per_class = per_class_accuracy(model, data.x_test, data.y_test).numpy()
    float_bytes = model_size(model).total_bytes
    cache: dict = {}

    fig = LiveFigure(1, 2, figsize=(8.4, 3.0), gridspec_kw={"width_ratios": [2.6, 1]})
    ax_c, ax_s = fig.axes
    classes = np.arange(len(float_per_class))
    ax_c.bar(classes - 0.2, 100 * float_per_class, width=0.4, color="0.7", label="float32")
    q_bars = ax_c.bar(classes + 0.2, 100 * float_per_class, width=0.4, color="C0", label="quantized")
    ax_c.set_xticks(classes)
    ax_c.set_ylim(0, 122)
    ax_c.set_yticks(range(0, 101, 20))
    ax_c.set_xlabel("digit")
    ax_c.set_ylabel("test accuracy per class (%)")
    ax_c.legend(loc="upper center", ncol=2, fontsize=8, frameon=False)
    title = ax_c.text(0.5, 1.02, "", transform=ax_c.transAxes, ha="center", va="bottom", fontsize=10)
    ax_s.bar([0], [float_bytes / 1024], color="0.7")
    (s_bar,) = ax_s.bar([1], [float_bytes / 1024], color="C0")
    s_text = ax_s.text(1, float_bytes / 1024 * 1.02, "", ha="center", va="bottom", fontsize=9)
    ax_s.set_xticks([0, 1], ["float32", "quantized"])
    ax_s.set_ylim(0, float_bytes / 1024 * 1.2)
    ax_s.set_ylabel("size (KiB)")
    fig.animate(*q_bars, title, s_bar, s_text)

    def update(weight_bits, act_bits, granularity, method, keep_8bit) -> str:
        keep = keep_options[keep_8bit]
        config = PTQConfig(weight_bits=weight_bits, weight_granularity=GRANULARITIES[granularity],
                           weight_method=method, act_bits=None if act_bits == "none" else act_bits, act_method=method,
                           percentile=99.9, overrides={n: {"weight_bits": 8, "act_bits": None if act_bits == "none" else 8}
                                                       for n in keep})
        if config not in cache:
            cache[config] = ptq_result(model, data, config)
        r = cache[config]
        for bar, acc in zip(q_bars, r.per_class.numpy()):
            bar.set_height(100 * acc)
        title.set_text(f"{config.name}: {100 * r.accuracy:.1f} % (float {100 * float_acc:.1f} %)")
        kib = r.size.total_bytes / 1024
        s_bar.set_height(kib)
        s_text.set_position((1, kib * 1.02))
        s_text.set_text(f"{kib:.1f} KiB")
        worst = int(np.nanargmin(r.per_class.numpy() - float_per_class))
        return (f"<b>{config.name}</b>: test accuracy <b>{100 * r.accuracy:.1f} %</b> (float32 {100 * float_acc:.1f} %, "
                f"change {100 * (r.accuracy - float_acc):+.1f} points) &middot; hardest hit: digit {worst} "
                f"({100 * float_per_class[worst]:.0f} % &rarr; {100 * float(r.per_class[worst]):.0f} %) &middot; "
                f"size {r.size.total_bytes:,} bytes, {r.size.compression:.1f}x smaller than float32")

    controls = {
        "weight_bits": W.IntSlider(value=8, min=2, max=8, description="weight bits", continuous_update=False),
        "act_bits": W.Dropdown(options=["none", 8, 6, 4, 3, 2], value=8, description="act bits"),
        "granularity": W.Dropdown(options=list(GRANULARITIES), value="per-channel", description="weights"),
        "method": W.Dropdown(options=["minmax", "mse", "percentile"], value="minmax", description="clipping"),
        "keep_8bit": W.Dropdown(options=list(keep_options), value="none", description="keep 8-bit"),
    }
    def inactive(weight_bits, act_bits, **_):
        if weight_bits == 8 and act_bits in (8, "none"):
            return {"keep_8bit": "every layer is already at 8 bits (or float); it matters below 8 bits"}
        return {}

    return Panel(controls, update, fig, inactive=inactive, title=f"<b>Post-training quantization of the {name.upper()}</b>: "
                 "move a control, the model is quantized, calibrated and tested again.")
