"""Lessons 08 and 09's widgets: evaluate a quantized model live, and poison its calibration live.

Pure functions do the work, widgets only draw:

* :class:`EvaluationLab` quantizes one model per (bits, granularity, method), corrupts the test
  set per (corruption, severity), and returns a :class:`~qedu.evaluation.RegressionReport` and
  the accuracy-vs-severity curves; everything is cached, so moving back is only a redraw.
  :func:`evaluation_explorer` draws it (lesson 08).
* :func:`calibration_sets` builds the good and bad calibration sets of lesson 09;
  :func:`calibration_outcome` quantizes on one of them (optionally poisoned) and returns the
  :class:`~qedu.security.CalibrationReport` and what a :class:`~qedu.security.RangeMonitor`
  says about clean test data. :func:`calibration_explorer` draws it.
"""
from __future__ import annotations

from typing import NamedTuple

import ipywidgets as W
import numpy as np
import torch

from qedu.data import calibration_subset, load_digits
from qedu.evaluation import RegressionReport, logits, regression_report
from qedu.granularity import PerChannel, PerTensor
from qedu.models import pretrained
from qedu.ptq import PTQConfig, quantize_model
from qedu.robustness import CORRUPTIONS, SEVERITIES, corrupt
from qedu.security import CalibrationReport, RangeMonitor, calibration_report, poison_calibration
from qedu.widgets import LiveFigure, Panel, plain_log_ticks

__all__ = ["EvaluationLab", "LabResult", "evaluation_explorer", "calibration_sets", "CalibrationOutcome",
           "calibration_outcome", "calibration_explorer", "THRESHOLD"]

THRESHOLD = 0.05  # a class that loses more than 5 points is flagged
GRANULARITIES = {"per-channel": PerChannel(0), "per-tensor": PerTensor()}
METHODS = ("minmax", "percentile", "mse")


def lab_config(bits: int, granularity: str, method: str) -> PTQConfig:
    """Weights and activations at ``bits``; ``method`` picks both ranges (percentile: 99.9th)."""
    return PTQConfig(weight_bits=bits, act_bits=bits, weight_granularity=GRANULARITIES[granularity],
                     weight_method="minmax" if method == "percentile" else method, act_method=method, percentile=99.9)


class LabResult(NamedTuple):
    """One setting: the regression report on the (corrupted) test set and accuracy per severity."""

    report: RegressionReport
    float_curve: list
    quant_curve: list


class EvaluationLab:
    """A float model, its test set and caches of quantized models, corrupted images and logits.

    >>> lab = EvaluationLab(pretrained("mlp", seed=0), load_digits(seed=0))
    >>> r = lab.result(8, "per-channel", "minmax", "blur", 2)
    >>> round(r.float_curve[0], 3), len(r.quant_curve)
    (0.972, 6)
    """

    def __init__(self, model, data, seed: int = 0):
        self.model, self.data, self.seed = model, data, seed
        self._models: dict = {}
        self._images: dict = {}
        self._logits: dict = {}

    def quantized(self, bits: int, granularity: str, method: str):
        key = (bits, granularity, method)
        if key not in self._models:
            self._models[key] = quantize_model(self.model, lab_config(bits, granularity, method), self.data.x_calib)
        return self._models[key]

    def images(self, corruption: str, severity: int) -> torch.Tensor:
        key = ("none", 0) if corruption == "none" or severity == 0 else (corruption, severity)
        if key not in self._images:
            x = self.data.x_test
            self._images[key] = x if key[0] == "none" else corrupt(x, corruption, severity, self.seed)
        return self._images[key]

    def _logits_for(self, setting, corruption, severity) -> torch.Tensor:
        key = (setting, corruption, 0 if corruption == "none" else severity)
        if key not in self._logits:
            model = self.model if setting is None else self.quantized(*setting)
            self._logits[key] = logits(model, self.images(corruption, severity))
        return self._logits[key]

    def result(self, bits: int, granularity: str, method: str, corruption: str, severity: int) -> LabResult:
        setting, y = (bits, granularity, method), self.data.y_test
        float_logits = self._logits_for(None, corruption, severity)
        quant_logits = self._logits_for(setting, corruption, severity)
        report = regression_report(y, float_logits.argmax(1), quant_logits.argmax(1), threshold=THRESHOLD,
                                   float_logits=float_logits, quant_logits=quant_logits)
        curves = ([], [])
        if corruption != "none":
            for s in SEVERITIES:
                for curve, which in zip(curves, (None, setting)):
                    curve.append(float((self._logits_for(which, corruption, s).argmax(1) == y).double().mean()))
        return LabResult(report, *curves)


def evaluation_explorer(name: str = "mlp", seed: int = 0) -> Panel:
    """Bits, granularity, calibration method, corruption and severity -> float vs quantized
    accuracy, per-class changes (flagged classes in red), disagreement and robustness curves."""
    lab = EvaluationLab(pretrained(name, seed=seed), load_digits(seed=0), seed=0)
    fig = LiveFigure(1, 2, figsize=(8.6, 3.1), gridspec_kw={"width_ratios": [1.6, 1]})
    ax_d, ax_c = fig.axes
    classes = np.arange(10)
    bars = ax_d.bar(classes, np.zeros(10), color="C0")
    ax_d.axhline(0, color="0.3", lw=0.8)
    ax_d.axhline(-100 * THRESHOLD, color="C3", ls="--", lw=1)
    ax_d.set(xticks=classes, ylim=(-32, 12), xlabel="digit", ylabel="accuracy change (points)")
    # a bar beyond the axis is cut at its edge and its value written there (the worst class can lose
    # 90 points; a fixed axis keeps every update a cheap redraw of the bars alone)
    cut_marks = [ax_d.text(c, 0, "", ha="center", fontsize=7, color="white", fontweight="bold", in_layout=False)
                 for c in classes]
    title = ax_d.text(0.5, 1.02, "", transform=ax_d.transAxes, ha="center", va="bottom", fontsize=9)
    sev = np.array(SEVERITIES)
    # float32 wide and light underneath, quantized thin on top: where they coincide both stay visible
    (line_f,) = ax_c.plot(sev, np.full(6, np.nan), "o-", color="0.7", lw=5, ms=9, label="float32")
    (line_q,) = ax_c.plot(sev, np.full(6, np.nan), "s-", color="C0", lw=1.5, ms=4, label="quantized")
    (marker,) = ax_c.plot([], [], "o", ms=12, mfc="none", mec="C3", clip_on=False, in_layout=False)  # whole at 100 %
    note = ax_c.text(2.5, 50, "", ha="center", va="center", fontsize=9, color="0.4")
    ax_c.set(xlim=(-0.3, 5.3), ylim=(0, 102), xlabel="severity", ylabel="test accuracy (%)")
    ax_c.legend(loc="lower left", fontsize=8, frameon=False)
    fig.animate(*bars, *cut_marks, title, line_f, line_q, marker, note)

    def update(bits, granularity, method, corruption, severity) -> str:
        r = lab.result(bits, granularity, method, corruption, severity)
        rep = r.report
        deltas = 100 * rep.deltas.numpy()
        low, high = ax_d.get_ylim()
        for c, (bar, mark, d) in enumerate(zip(bars, cut_marks, deltas)):
            d = 0.0 if np.isnan(d) else float(d)
            bar.set_height(min(max(d, low), high))
            bar.set_color("C3" if c in rep.flagged else "C0")
            cut = d < low or d > high
            mark.set_text(f"{d:.0f}\u2193" if d < low else f"{d:.0f}\u2191" if d > high else "")  # cut: value + arrow
            mark.set_position((c, low + 1 if d < low else high - 4))
            mark.set_visible(cut)
        where = "clean test set" if corruption == "none" else f"{corruption}, severity {severity}"
        title.set_text(f"per-class change, {where} (red: lost > {100 * THRESHOLD:.0f} points)")
        if corruption == "none":
            line_f.set_ydata(np.full(6, np.nan))
            line_q.set_ydata(np.full(6, np.nan))
            marker.set_data([], [])
            note.set_text("pick a corruption\nto see its curve")
        else:
            line_f.set_ydata(100 * np.array(r.float_curve))
            line_q.set_ydata(100 * np.array(r.quant_curve))
            marker.set_data([severity], [100 * r.quant_curve[severity]])
            note.set_text("")
        both = 100 * np.array([*r.float_curve, *r.quant_curve]) if corruption != "none" else np.array([0.0, 100.0])
        assert 0 <= both.min() and both.max() <= 100  # accuracies: the fixed 0..102 axis holds every point
        flagged = ", ".join(str(c) for c in rep.flagged) or "none"
        return (f"<b>W{bits}A{bits} {granularity} {method}</b>, {where}: float {100 * rep.float_accuracy:.1f} % &rarr; "
                f"quantized <b>{100 * rep.quant_accuracy:.1f} %</b> ({100 * rep.accuracy_change:+.1f} points) &middot; "
                f"predictions changed on <b>{100 * rep.disagreement:.1f} %</b> of images ({len(rep.flips.index)}) "
                f"&middot; flagged classes: <b>{flagged}</b> &middot; worst class {float(np.nanmin(deltas)):+.1f} points")

    controls = {
        "bits": W.Dropdown(options=[8, 6, 4, 3, 2], value=4, description="bits (W=A)"),
        "granularity": W.Dropdown(options=list(GRANULARITIES), value="per-tensor", description="weights"),
        "method": W.Dropdown(options=list(METHODS), value="minmax", description="ranges"),
        "corruption": W.Dropdown(options=["none", *CORRUPTIONS], value="none", description="corruption"),
        "severity": W.IntSlider(value=3, min=1, max=5, description="severity", continuous_update=False),
    }

    def inactive(corruption, **_):
        return {"severity": "pick a corruption first"} if corruption == "none" else {}

    return Panel(controls, update, fig, inactive=inactive,
                 title=f"<b>Evaluate the quantized {name.upper()}</b>: accuracy hides what the per-class changes "
                       "and the disagreement show.")


# ----------------------------------------------------------------------------- lesson 09
def calibration_sets(data, seed: int = 0) -> dict:
    """Good and bad calibration sets, all drawn from the training images (never the test set).

    >>> sorted(len(v) for v in calibration_sets(load_digits(seed=0)).values())
    [1, 16, 64, 256, 256, 256]
    """
    return {
        "balanced, 256 images": data.x_calib,
        "16 images": calibration_subset(data.x_calib, data.y_calib, 16, seed=seed)[0],
        "1 image": calibration_subset(data.x_calib, data.y_calib, 1, seed=seed)[0],
        "digit 1 only, 64 images": calibration_subset(data.x_train, data.y_train, 64, seed=seed, classes=[1])[0],
        "noisy (gaussian_noise 3)": corrupt(data.x_calib, "gaussian_noise", 3, seed),
        "faded (contrast 3)": corrupt(data.x_calib, "contrast", 3, seed),
    }


class CalibrationOutcome(NamedTuple):
    """A calibration set's report, and the monitor's verdict on the clean test set."""

    report: CalibrationReport
    monitor_alarm: bool
    monitor_summary: str


def calibration_outcome(model, x_calib, data, *, poison: dict | None = None, factor: float = 20.0,
                        method: str = "minmax", bits: int = 4, seed: int = 0) -> CalibrationOutcome:
    """Poison ``x_calib`` (``poison``: the keyword arguments of :func:`poison_calibration`, e.g.
    ``{"n": 1}``; ``None``: no poison), quantize ``model`` (8-bit weights, ``bits``-bit activations
    by ``method``), measure it on the test set and run a :class:`RangeMonitor` over the test set."""
    x = poison_calibration(x_calib, **(poison or {"n": 0}), factor=factor, seed=seed)
    config = PTQConfig(weight_bits=8, act_bits=bits, act_method=method, percentile=99.9)
    report = calibration_report(model, config, x, data.x_test, data.y_test)
    check = RangeMonitor(report.quantized, x).check(data.x_test)
    return CalibrationOutcome(report, check.alarm, check.summary())


POISON = {"none": dict(n=0), "1 image": dict(n=1), "1 %": dict(fraction=0.01), "5 %": dict(fraction=0.05),
          "20 %": dict(fraction=0.2)}


def calibration_explorer(seed: int = 0) -> Panel:
    """Calibration set, poisoning, calibration method and activation bits -> each layer's scale
    (relative to min/max on the clean balanced set), the share of clean test activations
    clipped, accuracy, and the verdict of a :class:`~qedu.security.RangeMonitor` on clean data."""
    model, data = pretrained("mlp", seed=seed), load_digits(seed=0)
    sets = calibration_sets(data, seed)
    cache: dict = {}

    def outcome(*key):
        if key not in cache:
            name, poison, factor, method, bits = key
            cache[key] = calibration_outcome(model, sets[name], data, poison=POISON[poison], factor=factor,
                                             method=method, bits=bits, seed=seed)
        return cache[key]

    fig = LiveFigure(1, 2, figsize=(8.6, 3.0))
    ax_s, ax_c = fig.axes
    layers = ["fc1", "fc2", "fc3"]
    pos = np.arange(len(layers))
    s_bars = ax_s.bar(pos, np.ones(3), color="C0")
    ax_s.axhline(1, color="0.3", lw=0.8)
    ax_s.set(xticks=pos, xticklabels=layers, yscale="log", ylim=(0.2, 50),
             ylabel="scale / clean min/max scale", title="scale of each layer's input grid")
    plain_log_ticks(ax_s.yaxis)
    c_bars = ax_c.bar(pos, np.ones(3), color="C3")
    # a log axis from 0.01 % to 100 % shows 0.2 % and 40 % alike, and never moves (a zero is written)
    ax_c.set(xticks=pos, xticklabels=layers, yscale="log", ylim=(0.01, 100), ylabel="% of test values clipped",
             title="clipping on clean test images")
    plain_log_ticks(ax_c.yaxis)
    c_values = [ax_c.text(i, 0.0, "", ha="center", va="bottom", fontsize=8) for i in pos]
    fig.animate(*s_bars, *c_bars, *c_values)

    def update(calibration_set, poison, factor, method, bits) -> str:
        clean = outcome("balanced, 256 images", "none", 20.0, "minmax", bits).report
        out = outcome(calibration_set, poison, factor, method, bits)
        r = out.report
        ratios = [r.scales[name] / clean.scales[name] for name in layers]
        for bar, ratio in zip(s_bars, ratios):
            bar.set_height(ratio)
        # (the scale axis, 0.2 .. 50 times the clean scale, holds every set and poison the widget offers)
        clipped = [100 * r.clip_rates[name] for name in layers]
        for bar, text, pct in zip(c_bars, c_values, clipped):
            bar.set_height(max(pct, 1e-6))  # below the axis when 0: the "0" written on the axis says so
            text.set_position((text.get_position()[0], min(max(pct, 0.012), 60)))
            text.set_text("" if pct else "0")  # the values are in the readout: text is slow to draw
        verdict = "<span style='color:#b00020'>ALARM</span>" if out.monitor_alarm else "no alarm"
        poisoned = "none" if poison == "none" else f"{poison} (x{factor:g})"
        clip_text = ", ".join(f"{name} {pct:.2g} %" for name, pct in zip(layers, clipped))
        return (f"<b>{calibration_set}</b>, poisoned: {poisoned}, A{bits} {method}: clean test values clipped: "
                f"{clip_text} &middot; test accuracy "
                f"<b>{100 * r.accuracy:.1f} %</b> (clean set, min/max: {100 * clean.accuracy:.1f} %) &middot; "
                f"monitor on the clean test set: {verdict}<br><small>{out.monitor_summary}</small>")

    controls = {
        "calibration_set": W.Dropdown(options=list(sets), value="balanced, 256 images", description="calib set"),
        "poison": W.SelectionSlider(options=list(POISON), value="none", description="poisoned", continuous_update=False),
        "factor": W.Dropdown(options=[20.0, 5.0, 0.1], value=20.0, description="poison x"),
        "method": W.Dropdown(options=["minmax", "percentile", "mse"], value="minmax", description="ranges"),
        "bits": W.Dropdown(options=[8, 4], value=4, description="act bits"),
    }

    def inactive(poison, **_):
        return {"factor": "poison some images first"} if poison == "none" else {}

    return Panel(controls, update, fig, inactive=inactive,
                 title="<b>Calibration data decides the grid</b>: pick a calibration set, poison a few images, "
                       "and watch the scales, the clipping and the accuracy.")
