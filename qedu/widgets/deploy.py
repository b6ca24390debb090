"""Lesson 11's widget: a deployment simulator (canary, three alarm signals, automatic rollback).

* :class:`DeploymentLab` (the computation): the digits MLP and its W8A8 copy in a
  :class:`~qedu.serving.ServingLoop`; :meth:`DeploymentLab.simulate` serves one faulty stream with
  and without rollback. The models' answers on each stream are cached, so moving a threshold
  only re-runs the loop (milliseconds).
* :func:`deployment_simulator` (the state and the drawing): fault, severity, canary share, the
  thresholds and ``k`` -> accuracy over time (served, float shadow, no-rollback counterfactual),
  each signal against its threshold with its alarms, the rollback moment and the incident log.
"""
from __future__ import annotations

import html
from collections import OrderedDict
from typing import NamedTuple

import ipywidgets as W
import numpy as np
from matplotlib.ticker import NullLocator

from qedu.data import load_digits
from qedu.models import pretrained
from qedu.ptq import PTQConfig, quantize_model
from qedu.serving import SIGNALS, AlarmRules, Rollout, ServingLoop, ServingRun, make_stream
from qedu.widgets import LiveFigure, Panel

__all__ = ["DeploymentLab", "Simulation", "deployment_simulator", "FAULT_LABELS"]

FAULT_LABELS = {"none": "none (clean)", "gain": "sensor gain", "missing_div16": "forgotten /16",
                "fading": "gradual fading", "class_mix": "class mix (8s and 9s)"}
NO_SEVERITY = ("none", "missing_div16")
STREAM = dict(n_batches=100, batch_size=32, onset=30)
CANARY_BATCHES = 40
KEEP = 6  # streams whose model answers stay cached
YMIN = 60.0  # the accuracy axis's floor
SMOOTH = 5  # accuracy is drawn as the mean of the last 5 batches (160 requests)
COLORS = {"range": "C3", "drift": "C2", "disagreement": "C4"}


class Simulation(NamedTuple):
    """One stream served with rollback (``run``) and without (``counterfactual``)."""

    run: ServingRun
    counterfactual: ServingRun


class DeploymentLab:
    """The float digits MLP, its W8A8 copy and a cache of the models' answers per stream.

    >>> lab = DeploymentLab()
    >>> sim = lab.simulate("missing_div16", 2, 0.25, 0.1, 0.1, 0.01, 3, seed=0)
    >>> sim.run.rollback, sim.counterfactual.rollback
    (32, None)
    """

    def __init__(self, model=None, data=None, config: PTQConfig = PTQConfig()):
        self.data = load_digits(seed=0) if data is None else data
        self.model = pretrained("mlp", seed=0) if model is None else model
        self.config = config
        self.loop = ServingLoop(self.model, quantize_model(self.model, config, self.data.x_calib), self.data.x_calib)
        self._features: OrderedDict = OrderedDict()  # the last few streams' features (about 10 MB each)

    def features(self, fault: str, severity: int, seed: int):
        key = (fault, 2 if fault in NO_SEVERITY else severity, seed)
        if key not in self._features:
            stream = make_stream(self.data.x_test, self.data.y_test, key[0], key[1], **STREAM, seed=seed)
            self._features[key] = self.loop.features(stream)
            while len(self._features) > KEEP:
                self._features.popitem(last=False)
        self._features.move_to_end(key)
        return self._features[key]

    def simulate(self, fault: str, severity: int, canary: float, psi_threshold: float, disagreement: float,
                 clip_tolerance: float, k: int, seed: int = 0) -> Simulation:
        f = self.features(fault, severity, seed)
        rules = AlarmRules(clip_tolerance=clip_tolerance, psi_threshold=psi_threshold,
                           disagreement_threshold=disagreement, k=k)
        rollout = Rollout(canary_fraction=canary, canary_batches=CANARY_BATCHES, seed=seed)
        return Simulation(self.loop.run(f, rules, rollout), self.loop.run(f, rules, rollout, rollback=False))


def _smooth(values) -> np.ndarray:
    """Trailing mean over the last SMOOTH batches (fewer at the start), in percent."""
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    n = np.minimum(np.arange(1, len(v) + 1), SMOOTH)
    return 100 * (c[1:] - c[np.arange(1, len(v) + 1) - n]) / n


def _evidence_text(evidence: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in evidence.items())


def _log_html(incidents, limit: int = 8) -> str:
    rows = "".join(f"<tr><td>{i.batch}</td><td>{i.event}</td><td>{i.signal}</td><td>{html.escape(i.action)}</td>"
                   f"<td>{html.escape(_evidence_text(i.evidence))}</td></tr>" for i in incidents[:limit])
    more = f"<br><small>... and {len(incidents) - limit} more entries</small>" if len(incidents) > limit else ""
    if not incidents:
        return "<small>incident log: empty</small>"
    return ("<small><table><tr><th>batch</th><th>event</th><th>signal</th><th>action</th><th>evidence</th></tr>"
            f"{rows}</table></small>{more}")


def deployment_simulator(seed: int = 0) -> Panel:
    """Fault, severity, canary share, thresholds and k -> accuracy over time, alarms and rollback."""
    lab = DeploymentLab()
    n = STREAM["n_batches"]
    batches = np.arange(n)
    fig = LiveFigure(3, 1, figsize=(8.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [1.3, 1, 0.45]})
    ax_a, ax_s, ax_r = fig.axes
    (l_cf,) = ax_a.plot(batches, np.full(n, np.nan), color="C1", lw=1.2, ls="--", label="no rollback (counterfactual)")
    (l_float,) = ax_a.plot(batches, np.full(n, np.nan), color="0.6", lw=4, alpha=0.6, label="float shadow")
    (l_served,) = ax_a.plot(batches, np.full(n, np.nan), color="C0", lw=1.6, label="served")
    ax_a.set(ylim=(YMIN, 101), ylabel=f"accuracy (%),\nlast {SMOOTH} batches")
    ax_a.legend(loc="lower left", fontsize=8, frameon=False, ncol=3)
    lines = {name: ax_s.plot(batches, np.full(n, np.nan), color=COLORS[name], lw=1.3)[0] for name in SIGNALS}
    ax_s.axhline(1, color="0.2", lw=0.8, ls=":")
    ax_s.set(yscale="log", ylim=(1e-2, 1e3), ylabel="signal / threshold\n(> 1: alarm)")
    ax_s.set_yticks([0.01, 0.1, 1, 10, 100, 1000], ["0.01", "0.1", "1", "10", "100", "1000"])
    ax_s.yaxis.set_minor_locator(NullLocator())
    marks = {name: ax_r.plot([], [], "|", color=COLORS[name], ms=8, mew=1.5)[0] for name in SIGNALS}
    ax_r.set(ylim=(-0.6, 2.6), xlim=(0, n - 1), xlabel="batch (32 requests each)")
    ax_r.set_yticks(range(3), SIGNALS)
    for tick, name in zip(ax_r.get_yticklabels(), SIGNALS):
        tick.set_color(COLORS[name])
    ax_r.grid(False)
    ax_r.set_title("alarms", fontsize=8, loc="left", pad=2)
    for ax in (ax_a, ax_s, ax_r):
        ax.axvline(CANARY_BATCHES - 0.5, color="0.5", lw=0.8, ls="-.")
    ax_a.text(CANARY_BATCHES - 0.5, 100.5, " canary ends", fontsize=7, color="0.4", va="top")
    onset = [ax.axvline(STREAM["onset"] - 0.5, color="0.3", lw=1, ls="--") for ax in (ax_a, ax_s, ax_r)]
    rollback = [ax.axvline(np.nan, color="C3", lw=2) for ax in (ax_a, ax_s, ax_r)]
    label = ax_a.text(0, YMIN + 5, "", color="C3", fontsize=8, va="bottom")
    title = ax_a.text(0.5, 1.02, "", transform=ax_a.transAxes, ha="center", va="bottom", fontsize=9)
    fig.animate(l_cf, l_float, l_served, *lines.values(), *marks.values(), *onset, *rollback, label, title)

    def update(fault, severity, canary, psi_threshold, disagreement, clip_tolerance, k) -> str:
        sim = lab.simulate(fault, severity, canary, psi_threshold, disagreement, clip_tolerance, k, seed)
        run, cf = sim
        for line, acc in ((l_served, run.served), (l_float, run.float_acc), (l_cf, cf.served)):
            line.set_ydata(np.maximum(_smooth(acc), YMIN))  # the lowest stretch (if any) runs along the axis
        for name in SIGNALS:
            v = np.clip(np.asarray(run.values[name], dtype=float), 1e-2, 1e3)  # NaN (no verdict) leaves a gap
            lines[name].set_ydata(v)
            hit = np.flatnonzero(run.alarms[name])
            marks[name].set_data(hit, np.full(len(hit), float(SIGNALS.index(name))))
        for line in onset:
            line.set_visible(fault != "none")
        at = np.nan if run.rollback is None else run.rollback + 0.5
        for line in rollback:
            line.set_xdata([at, at])
        label.set_text("" if run.rollback is None else f" rollback after batch {run.rollback}")
        label.set_x(0 if run.rollback is None else run.rollback + 0.5)
        what = FAULT_LABELS[fault] + ("" if fault in NO_SEVERITY else f", severity {severity}")
        title.set_text(f"{what} from batch {STREAM['onset']}" if fault != "none" else "clean stream")
        start = 0 if fault == "none" else STREAM["onset"]
        served, no_rb = 100 * np.mean(run.served[start:]), 100 * np.mean(cf.served[start:])
        fl = 100 * np.mean(run.float_acc[start:])
        false = {s: cf.false_alarms(s) for s in SIGNALS}
        if run.rollback is None:
            verdict = "no rollback"
        elif fault == "none" or run.rollback < STREAM["onset"]:
            verdict = f"<b style='color:#b00020'>false rollback</b> after batch {run.rollback}"
        else:
            verdict = f"<b>rolled back</b> after batch {run.rollback} ({run.rollback - STREAM['onset']} batches after the onset)"
        span = "the stream" if fault == "none" else f"batches {start}-{n - 1}"
        return (f"{verdict} &middot; accuracy over {span}: served <b>{served:.1f} %</b>, without rollback "
                f"{no_rb:.1f} % (saved {served - no_rb:+.1f} points), float shadow {fl:.1f} % &middot; "
                + ("false alarms (batches): " if fault == "none" else "false alarms before the onset (batches): ")
                + ", ".join(f"{s} {false[s]}" for s in SIGNALS)
                + "<br>" + _log_html(run.incidents))

    controls = {
        "fault": W.Dropdown(options=[(v, k) for k, v in FAULT_LABELS.items()], value="gain", description="fault"),
        "severity": W.IntSlider(value=2, min=1, max=3, description="severity", continuous_update=False),
        "canary": W.Dropdown(options=[0.1, 0.25, 0.5, 1.0], value=0.25, description="canary share"),
        "psi_threshold": W.Dropdown(options=[0.02, 0.05, 0.1, 0.25, 1.0], value=0.1, description="PSI >"),
        "disagreement": W.Dropdown(options=[0.02, 0.05, 0.1, 0.2], value=0.1, description="disagree >"),
        "clip_tolerance": W.Dropdown(options=[0.001, 0.01, 0.05, 0.2], value=0.01, description="clip tol."),
        "k": W.IntSlider(value=3, min=1, max=8, description="k batches", continuous_update=False),
    }

    def inactive(fault, **_):
        if fault == "none":
            return {"severity": "a clean stream has no severity"}
        if fault == "missing_div16":
            return {"severity": "a forgotten /16 has one size: x 16"}
        return {}

    return Panel(controls, update, fig, inactive=inactive,
                 title="<b>Deploy the quantized model</b>: a canary, three alarm signals and an automatic rollback. "
                       "Inject a fault and move the thresholds.")
