"""Operating a quantized model: a canary rollout, three alarm signals, automatic rollback, an incident log.

A small in-process serving loop (no network server). The **quantized** model is the candidate;
the **float** model it replaces is the previous version and runs in the *shadow* on every
request (its answers are computed, logged and compared, never served). Traffic arrives in
batches; each request goes to the quantized model with probability ``fraction_b``::

    fraction_b = canary_fraction   for b < canary_batches     (the canary: a share of the traffic first)
               = 1                 after that                 (promoted: all traffic)
               = 0                 after a rollback           (the previous model serves everything)

Routing is deterministic: request ``j`` draws ``u_j`` from a generator seeded with ``seed`` once,
and goes to the quantized model when ``u_j < fraction_b``.

Three signals watch the quantized model's traffic, each with a written alarm rule:

* **range** (lesson 09's :class:`qedu.security.RangeMonitor`): alarm when in any layer the share
  of values the activation grid clips exceeds calibration's share by more than ``clip_tolerance``,
  or the batch's largest value is below ``underuse`` times calibration's;
* **drift** (:mod:`qedu.drift`): alarm when in any layer the PSI between calibration's histogram
  of grid codes and the histogram of the last ``drift_window`` requests the quantized model
  handled exceeds ``psi_threshold`` (PSI is biased upwards on small samples: on clean test images
  the digits MLP's W8A8 layers score a median of about 0.5 for 8 images, 0.12 for 32 and 0.04
  for 128, so the histogram pools the recent requests);
* **disagreement**: alarm when the share of requests on which the quantized model's top-1 answer
  differs from the float shadow's exceeds ``disagreement_threshold``.

**Rollback rule:** when one signal has alarmed on ``k`` consecutive batches, the loop rolls back
to the float model from the next batch on (the quantized one keeps running in the shadow, so
its signals stay visible). Every alarm, promotion and rollback is written to an incident log
(:class:`Incident` records, printable as markdown or JSON lines) with its evidence: the
signal's values against the threshold.

Streams (:func:`make_stream`) replay test images with a fault from a known batch on:
``gain`` (the sensor multiplies by 1.25 / 1.5 / 2), ``missing_div16`` (pixels 0..16 instead of
``pixel / 16``), ``fading`` (a gain falling linearly from 1 at the onset to 0.7 / 0.45 / 0.2 at
the stream's end) and ``class_mix`` (30 / 60 / 90 % of the requests show digits 8 and 9).

Speed: the models run once over the whole stream (:meth:`ServingLoop.features`: per request its
answers, its histogram of codes and its largest value per layer); :meth:`ServingLoop.track` then
sums the watched requests' rows for every batch at once (cumulative sums for the drift window),
and :meth:`ServingLoop.run` walks the batches applying the rules. A run of 100 batches takes
tens of milliseconds, so a widget can redo it for every threshold. :meth:`ServingLoop.signals`
computes the same signals for one batch plainly; the tests hold the two equal, and equal to
:class:`~qedu.security.RangeMonitor` and :class:`~qedu.drift.DriftMonitor` on the same images.

>>> Rollout(canary_fraction=0.25, canary_batches=10).fraction(3), Rollout().fraction(50)
(0.25, 1.0)
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from qedu._validation import as_float32, as_float_tensor, check_choice, check_int, check_module, check_real, check_seed
from qedu.calibration import record_activations
from qedu.drift import FLOOR, DriftMonitor, psi
from qedu.security import RangeMonitor

__all__ = ["FAULTS", "SEVERITY_LEVELS", "MIX_CLASSES", "SIGNALS", "RULES", "Stream", "make_stream", "AlarmRules",
           "Rollout", "Incident", "log_markdown", "log_jsonl", "Features", "ServingRun", "ServingLoop",
           "Outcome", "outcome"]

FAULTS = ("none", "gain", "missing_div16", "fading", "class_mix")
SEVERITY_LEVELS = {  # the fault's parameter at severity 1, 2, 3 (missing_div16 has one level: x 16)
    "gain": (1.25, 1.5, 2.0),  # the factor the sensor applies
    "fading": (0.7, 0.45, 0.2),  # the gain reached at the stream's last batch
    "class_mix": (0.3, 0.6, 0.9),  # the share of requests drawn from MIX_CLASSES
}
MIX_CLASSES = (8, 9)
SIGNALS = ("range", "drift", "disagreement")
RULES = {
    "range": "alarm when, in any layer, the share of values the grid clips exceeds calibration's by more than "
             "clip_tolerance, or the batch's largest value is below underuse x calibration's",
    "drift": "alarm when, in any layer, the PSI between calibration's histogram of grid codes and that of the "
             "last drift_window requests the quantized model handled exceeds psi_threshold (no verdict before "
             "drift_window requests)",
    "disagreement": "alarm when the share of requests on which the quantized model's top-1 differs from the float "
                    "shadow's exceeds disagreement_threshold",
    "rollback": "roll back to the previous (float) model when one signal has alarmed on k consecutive batches",
}


# ----------------------------------------------------------------------------- streams
@dataclass(frozen=True)
class Stream:
    """``n_batches * batch_size`` requests (images ``x``, labels ``y``), the fault from batch ``onset`` on."""

    x: torch.Tensor = field(repr=False)
    y: torch.Tensor = field(repr=False)
    fault: str
    severity: int
    onset: int
    batch_size: int
    seed: int

    @property
    def n_batches(self) -> int:
        return len(self.y) // self.batch_size


def make_stream(x, y, fault: str = "none", severity: int = 2, *, n_batches: int = 100, batch_size: int = 32,
                onset: int = 30, seed: int = 0) -> Stream:
    """Requests drawn with replacement from ``(x, y)`` (seeded), with ``fault`` from batch ``onset`` on.

    Args:
        x, y: images ``(N, 1, 8, 8)`` in ``[0, 1]`` and their labels (e.g. the digits test set).
        fault: one of :data:`FAULTS` (``"none"``: a clean stream). severity: 1..3 (see
            :data:`SEVERITY_LEVELS`; ignored for ``"none"`` and ``"missing_div16"``).
        n_batches, batch_size: the stream's length. onset: the first faulty batch, 0..n_batches.
        seed: fixes which images come, in which order.

    Returns:
        A :class:`Stream` holding fresh copies (the caller's ``x`` and ``y`` are not changed).

    Raises:
        ValueError / TypeError: unknown fault, severity outside 1..3, images not in ``[0, 1]``,
            labels that do not match the images, a class mix with no image of :data:`MIX_CLASSES`.

    >>> s = make_stream(torch.rand(20, 1, 8, 8), torch.arange(20) % 10, "missing_div16", n_batches=4, batch_size=2, onset=2)
    >>> s.x[:4].max() <= 1, s.x[4:].max() > 1, s.n_batches
    (tensor(True), tensor(True), 4)
    """
    fault = check_choice(fault, "fault", FAULTS)
    severity = check_int(severity, "severity", 1, 3)
    n_batches, batch_size = check_int(n_batches, "n_batches", 1), check_int(batch_size, "batch_size", 1)
    onset, seed = check_int(onset, "onset", 0, n_batches), check_seed(seed)
    x = as_float32(as_float_tensor(x, "x"), "x")  # the float32 values the models will see
    if x.ndim != 4 or bool((x < 0).any() or (x > 1).any()):
        raise ValueError(f"x must be images (N, C, H, W) in [0, 1] (digits: pixel / 16), got shape {tuple(x.shape)} "
                         f"with values in [{float(x.min()):.3g}, {float(x.max()):.3g}]; the faults are injected here.")
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() or len(y) != len(x):
        raise ValueError(f"y must be a 1-D integer tensor with one label per image ({len(x)}), got "
                         f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}.")
    g = torch.Generator().manual_seed(seed)
    n, start = n_batches * batch_size, onset * batch_size
    idx = torch.randint(0, len(x), (n,), generator=g)  # (n,) requests, with replacement
    if fault == "class_mix":
        pool = torch.nonzero(torch.isin(y, torch.tensor(MIX_CLASSES))).flatten()
        if len(pool) == 0:
            raise ValueError(f"fault='class_mix' draws digits {MIX_CLASSES}, but y holds none of them.")
        swap = torch.rand(n, generator=g) < SEVERITY_LEVELS["class_mix"][severity - 1]
        swap[:start] = False
        idx[swap] = pool[torch.randint(0, len(pool), (int(swap.sum()),), generator=g)]
    xs, ys = x[idx], y[idx].clone()  # fresh copies: the caller's images are never changed
    if fault == "gain":
        xs[start:] *= SEVERITY_LEVELS["gain"][severity - 1]
    elif fault == "missing_div16":
        xs[start:] *= 16.0  # the /16 of the preprocessing was forgotten
    elif fault == "fading" and start < n:
        level = SEVERITY_LEVELS["fading"][severity - 1]
        batch = torch.arange(start, n) // batch_size  # each request's batch index
        gain = 1 - (1 - level) * (batch - onset + 1).float() / (n_batches - onset)  # (n - start,) to level at the end
        xs[start:] *= gain.view(-1, 1, 1, 1)
    return Stream(xs, ys, fault, severity, onset, batch_size, seed)


# ----------------------------------------------------------------------------- rules, rollout, the incident log
@dataclass(frozen=True)
class AlarmRules:
    """The thresholds of the three signals (see :data:`RULES`) and ``k``, the batches an alarm must hold."""

    clip_tolerance: float = 0.01
    underuse: float = 0.25
    psi_threshold: float = 0.1
    disagreement_threshold: float = 0.1
    k: int = 3
    drift_window: int = 128

    def __post_init__(self):
        check_real(self.clip_tolerance, "clip_tolerance", 0, 1, lo_open=True, hi_open=True, example="0.01")
        check_real(self.underuse, "underuse", 0, 1, hi_open=True, example="0.25")
        check_real(self.psi_threshold, "psi_threshold", 0, lo_open=True, example="0.25")
        check_real(self.disagreement_threshold, "disagreement_threshold", 0, 1, hi_open=True, example="0.1")
        check_int(self.k, "k", 1)
        check_int(self.drift_window, "drift_window", 1)


@dataclass(frozen=True)
class Rollout:
    """The canary: ``canary_fraction`` of the requests for ``canary_batches`` batches, then all of them."""

    canary_fraction: float = 0.25
    canary_batches: int = 40
    seed: int = 0

    def __post_init__(self):
        check_real(self.canary_fraction, "canary_fraction", 0, 1, lo_open=True, example="0.25")
        check_int(self.canary_batches, "canary_batches", 0)
        check_seed(self.seed)

    def fraction(self, batch: int) -> float:
        """The share of batch ``batch``'s requests routed to the quantized model (before any rollback)."""
        return float(self.canary_fraction) if batch < self.canary_batches else 1.0


@dataclass(frozen=True)
class Incident:
    """One entry of the log: at ``batch``, ``event`` ("alarm", "promoted" or "rollback") of ``signal``,
    what it means (``action``) and the ``evidence`` (signal values against the threshold)."""

    batch: int
    event: str
    signal: str
    action: str
    evidence: dict

    def to_dict(self) -> dict:
        return asdict(self)


def log_markdown(incidents) -> str:
    """The incident log as a markdown table.

    >>> print(log_markdown([Incident(3, "alarm", "drift", "watch", {"psi": 0.4, "threshold": 0.25})]))
    | batch | event | signal | action | evidence |
    |---|---|---|---|---|
    | 3 | alarm | drift | watch | psi=0.4, threshold=0.25 |
    """
    rows = ["| batch | event | signal | action | evidence |", "|---|---|---|---|---|"]
    for r in incidents:
        evidence = ", ".join(f"{k}={_fmt(v)}" for k, v in r.evidence.items())
        rows.append(f"| {r.batch} | {r.event} | {r.signal} | {r.action} | {evidence} |")
    return "\n".join(rows)


def log_jsonl(incidents) -> str:
    """The incident log as JSON lines (one record per line)."""
    return "\n".join(json.dumps(r.to_dict(), sort_keys=True) for r in incidents)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(e) for e in v) + "]"
    return str(v)


# ----------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class Features:
    """What the models say about every request of a stream, computed once: ``quant_pred``,
    ``float_pred``, and per layer the counts of each grid code (``hist``, ``(n, bins)``) and the
    largest input value (``maxima``)."""

    stream: Stream = field(repr=False)
    quant_pred: torch.Tensor = field(repr=False)
    float_pred: torch.Tensor = field(repr=False)
    hist: dict = field(repr=False)
    maxima: dict = field(repr=False)
    loop: object = field(default=None, repr=False, compare=False)  # the ServingLoop that computed them
    tracks: dict = field(default_factory=dict, repr=False, compare=False)  # run()'s cache: routing -> track


@dataclass
class ServingRun:
    """One run of the loop. Per batch: ``share`` of requests the quantized model served, accuracy of
    what was ``served``, of the float shadow (``float_acc``) and of the quantized model on every request
    (``quant_acc``); each signal's ``values`` and ``alarms`` (its value relative to the rule, > 1 alarms).
    ``rollback`` is the batch whose alarm triggered it (``None``: never), ``incidents`` the log."""

    stream: Stream = field(repr=False)
    rules: AlarmRules
    rollout: Rollout
    share: list
    served: list
    float_acc: list
    quant_acc: list
    values: dict
    alarms: dict
    rollback: int | None
    incidents: list = field(repr=False)

    @property
    def accuracy(self) -> float:
        """Accuracy of everything served (batches all have the same size)."""
        return sum(self.served) / len(self.served)

    def first_alarm(self, signal: str, after: int = 0) -> int | None:
        """The first batch ``>= after`` on which ``signal`` alarmed, or ``None``."""
        return next((b for b, a in enumerate(self.alarms[signal]) if a and b >= after), None)

    def false_alarms(self, signal: str) -> int:
        """Batches before the fault's onset on which ``signal`` alarmed (all of them on a clean stream)."""
        end = self.stream.n_batches if self.stream.fault == "none" else self.stream.onset
        return sum(self.alarms[signal][:end])


class ServingLoop:
    """Serve ``quantized`` with ``float_model`` in the shadow; watch, and roll back (module docstring).

    Args:
        float_model: the previous model (serves after a rollback; the shadow before).
        quantized: a model from :func:`qedu.ptq.quantize_model` with quantized activations.
        x_calib: the images it was calibrated on (the monitors' reference).
    """

    def __init__(self, float_model: nn.Module, quantized: nn.Module, x_calib):
        self.float_model, self.quantized = check_module(float_model, "float_model"), check_module(quantized, "quantized")
        self.range_monitor = RangeMonitor(quantized, x_calib)  # baseline clip rates, calibration maxima
        self.drift_monitor = DriftMonitor(quantized, x_calib)  # reference histograms of codes
        self.grids = self.range_monitor.grids

    def features(self, stream: Stream) -> Features:
        """Run both models once over the whole stream; per request, its answers and its code histograms."""
        if not isinstance(stream, Stream):
            raise TypeError(f"stream must come from make_stream(...), got {type(stream).__name__}.")
        acts = record_activations(self.quantized, stream.x, names=list(self.grids), batch_size=4096)
        quant_pred, float_pred = _predict(self.quantized, stream.x), _predict(self.float_model, stream.x)
        hist, maxima = {}, {}
        for name, g in self.grids.items():
            a = acts[name].flatten(1).float()  # (n, features) each request's input to this layer
            codes = torch.round(a * (1.0 / g.scale)) + float(g.zero_point)  # as qedu.drift.code_histogram
            bins = g.fmt.qmax - g.fmt.qmin + 3
            codes = (codes.clamp(g.fmt.qmin - 1, g.fmt.qmax + 1) - (g.fmt.qmin - 1)).long()  # 0 = clipped low
            rows = codes + bins * torch.arange(len(a)).unsqueeze(1)  # (n, features): one block of bins per request
            counts = torch.bincount(rows.flatten(), minlength=bins * len(a)).view(len(a), bins)
            hist[name] = counts.float()  # exact: float32 holds integers up to 2**24
            maxima[name] = a.amax(1)
        return Features(stream, quant_pred, float_pred, hist, maxima, self)

    def signals(self, features: Features, requests: torch.Tensor, window: torch.Tensor | None = None) -> dict:
        """The three signals on one batch's watched ``requests`` (indices into the stream), written
        plainly; drift on ``window`` (default: the same requests). The loop computes the same numbers
        for every batch at once (:meth:`track`); the tests hold the two equal.

        Returns the evidence per signal: ``range`` (largest clip excess over calibration, smallest
        range ratio), ``drift`` (largest PSI), ``disagreement`` (share of differing answers).
        """
        window = requests if window is None else window
        excess, ratio, worst_psi = -math.inf, math.inf, 0.0
        for name in self.grids:
            h = features.hist[name][requests].double().sum(0)  # (bins,) the batch's histogram of codes
            excess = max(excess, float(h[0] + h[-1]) / float(h.sum()) - self.range_monitor.baseline[name])
            ratio = min(ratio, float(features.maxima[name][requests].max()) / self.range_monitor.calib_max[name])
            worst_psi = max(worst_psi, psi(self.drift_monitor.reference[name], features.hist[name][window].double().sum(0)))
        disagree = float((features.quant_pred[requests] != features.float_pred[requests]).double().mean())
        return {"range": dict(max_clip_excess=excess, min_range_ratio=ratio), "drift": dict(max_psi=worst_psi),
                "disagreement": dict(rate=disagree)}

    def track(self, features: Features, watched: torch.Tensor, drift_window: int) -> dict:
        """:meth:`signals` for every batch at once, given which requests the quantized model handled.

        Args:
            watched: ``(n,)`` bool, True for each request the quantized model handled (served or shadowed).
            drift_window: how many of the latest watched requests the drift histogram pools.

        Returns ``(n_batches,)`` tensors: ``watched`` (count per batch), ``excess``, ``ratio``, ``psi``,
        ``window`` (requests in the drift histogram) and ``disagree`` (NaN where no request was watched).
        """
        s = features.stream
        nb, bs = s.n_batches, s.batch_size
        m = watched.view(nb, bs)
        n_w = m.sum(1).double()  # (nb,)
        total = torch.cumsum(watched.long(), 0).view(nb, bs)[:, -1]  # watched requests up to each batch's end
        lo = (total - drift_window).clamp(min=0)
        order = torch.nonzero(watched).flatten()  # the watched requests, in arrival order
        excess = torch.full((nb,), -math.inf, dtype=torch.float64)
        ratio = torch.full((nb,), math.inf, dtype=torch.float64)
        worst = torch.zeros(nb, dtype=torch.float64)
        for name in self.grids:
            hist = features.hist[name].double()  # (n, bins) counts
            per_batch = (hist.view(nb, bs, -1) * m.unsqueeze(2)).sum(1)  # (nb, bins) each batch's watched histogram
            clip = (per_batch[:, 0] + per_batch[:, -1]) / per_batch.sum(1)
            excess = torch.maximum(excess, clip - self.range_monitor.baseline[name])
            top = torch.where(m, features.maxima[name].view(nb, bs).double(), -math.inf).amax(1)
            ratio = torch.minimum(ratio, top / self.range_monitor.calib_max[name])
            cum = torch.cat([torch.zeros(1, hist.shape[1], dtype=torch.float64), torch.cumsum(hist[order], 0)])
            pooled = cum[total] - cum[lo]  # (nb, bins) the last drift_window watched requests
            worst = torch.maximum(worst, _psi_rows(self.drift_monitor.reference[name], pooled))
        disagree = ((features.quant_pred != features.float_pred) & watched).view(nb, bs).sum(1) / n_w
        none = n_w == 0
        return {"watched": n_w, "excess": excess.masked_fill(none, math.nan),
                "ratio": ratio.masked_fill(none, math.nan), "psi": worst.masked_fill(none, math.nan),
                "window": (total - lo).double(), "disagree": disagree.masked_fill(none, math.nan)}

    @staticmethod
    def _values(track: dict, rules: AlarmRules) -> dict:
        """Each signal's value / threshold per batch (> 1: alarm; NaN: no verdict)."""
        ratio = track["ratio"]
        if rules.underuse > 0:
            under = torch.where(ratio > 0, rules.underuse / ratio, torch.full_like(ratio, math.inf))
        else:
            under = torch.zeros_like(ratio)  # the under-use rule is off
        under = under.masked_fill(torch.isnan(ratio), math.nan)
        full = track["window"] >= rules.drift_window  # no verdict on drift before the window is full
        return {"range": torch.maximum(track["excess"] / rules.clip_tolerance, under),
                "drift": torch.where(full, track["psi"] / rules.psi_threshold, torch.full_like(ratio, math.nan)),
                "disagreement": track["disagree"] / rules.disagreement_threshold}

    @staticmethod
    def _evidence(track: dict, b: int, name: str, rules: AlarmRules) -> dict:
        if name == "range":
            return dict(max_clip_excess=float(track["excess"][b]), clip_tolerance=rules.clip_tolerance,
                        min_range_ratio=float(track["ratio"][b]), underuse=rules.underuse)
        if name == "drift":
            return dict(max_psi=float(track["psi"][b]), psi_threshold=rules.psi_threshold,
                        requests=int(track["window"][b]))
        return dict(rate=float(track["disagree"][b]), disagreement_threshold=rules.disagreement_threshold)

    def run(self, stream_or_features, rules: AlarmRules = AlarmRules(), rollout: Rollout = Rollout(), *,
            rollback: bool = True) -> ServingRun:
        """Serve the stream batch by batch; ``rollback=False`` gives the counterfactual (alarms, no action).

        Accepts a :class:`Stream` or its :class:`Features` (reuse them to run many rules fast).
        """
        f = stream_or_features if isinstance(stream_or_features, Features) else self.features(stream_or_features)
        if f.loop is not self:
            raise ValueError("these Features were computed by another ServingLoop (other grids, other models); "
                             "compute them with this loop: loop.features(stream).")
        if not isinstance(rules, AlarmRules) or not isinstance(rollout, Rollout):
            raise TypeError(f"rules must be an AlarmRules(...) and rollout a Rollout(...), got "
                            f"{type(rules).__name__} and {type(rollout).__name__}.")
        s = f.stream
        nb, bs = s.n_batches, s.batch_size
        u = torch.rand(len(s.y), generator=torch.Generator().manual_seed(rollout.seed))  # one draw per request
        fraction = torch.tensor([rollout.fraction(b) for b in range(nb)]).repeat_interleave(bs)
        routed = u < fraction  # (n,) the routing without any rollback
        key = (rollout.canary_fraction, rollout.canary_batches, rollout.seed, rules.drift_window)
        if (key, None) not in f.tracks:  # the signals depend on the routing, not on the thresholds
            f.tracks[key, None] = self.track(f, routed, rules.drift_window)
        track = f.tracks[key, None]
        values = self._values(track, rules)
        alarms = {n: (values[n] > 1).tolist() for n in SIGNALS}  # NaN (no verdict) is no alarm
        incidents, streak, rolled = [], dict.fromkeys(SIGNALS, 0), None
        for b in range(nb):  # the loop: watch, log, and roll back when an alarm has held k batches
            for name in SIGNALS:
                streak[name] = streak[name] + 1 if alarms[name][b] else 0
                if streak[name] == 1:
                    incidents.append(Incident(b, "alarm", name, f"watching: alarm must hold {rules.k} batch(es)",
                                              self._evidence(track, b, name, rules)))
            fired = [n for n in SIGNALS if streak[n] >= rules.k]
            if fired and rollback:
                rolled, name = b, fired[0]
                history = [round(float(v), 4) for v in values[name][b - rules.k + 1:b + 1]]
                incidents.append(Incident(b, "rollback", name, "quantized model withdrawn; the float model serves "
                                          f"from batch {b + 1}", {**self._evidence(track, b, name, rules),
                                                                  "k": rules.k, "value_over_threshold": history}))
                break
            if b + 1 == rollout.canary_batches and rollout.canary_fraction < 1:
                incidents.append(Incident(b, "promoted", "-", f"canary passed; all traffic from batch {b + 1}",
                                          {"canary_batches": rollout.canary_batches,
                                           "canary_fraction": rollout.canary_fraction}))
        served_by_quant = routed.clone()
        if rolled is not None:
            served_by_quant[(rolled + 1) * bs:] = False
            watched = routed.clone()
            watched[(rolled + 1) * bs:] = True  # after the rollback the quantized model runs in the shadow
            if (key, rolled) not in f.tracks:
                f.tracks[key, rolled] = self.track(f, watched, rules.drift_window)
            track = f.tracks[key, rolled]
            values = self._values(track, rules)
            alarms = {n: (values[n] > 1).tolist() for n in SIGNALS}
        correct_q, correct_f = (f.quant_pred == s.y).view(nb, bs), (f.float_pred == s.y).view(nb, bs)
        served = torch.where(served_by_quant.view(nb, bs), correct_q, correct_f)
        return ServingRun(s, rules, rollout, served_by_quant.view(nb, bs).double().mean(1).tolist(),
                          served.double().mean(1).tolist(), correct_f.double().mean(1).tolist(),
                          correct_q.double().mean(1).tolist(), {n: values[n].tolist() for n in SIGNALS}, alarms,
                          rolled, incidents)


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Top-1 answers in eval mode without gradients; the model's mode is restored."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x).argmax(1)
    finally:
        model.train(was)


def _psi_rows(expected, actual) -> torch.Tensor:
    """:func:`qedu.drift.psi` of ``expected`` against each row of ``actual`` (same formula, same floor)."""
    e = (expected / expected.sum()).clamp(min=FLOOR)
    a = (actual / actual.sum(1, keepdim=True)).clamp(min=FLOOR)  # (rows, bins)
    return ((a - e) * torch.log(a / e)).sum(1)


# ----------------------------------------------------------------------------- what a run achieved
@dataclass(frozen=True)
class Outcome:
    """One stream served twice, with and without rollback. Delays are in batches from the onset
    (``None``: never); accuracies are over the batches from the onset on (the whole stream if clean)."""

    fault: str
    severity: int
    seed: int
    rollback: int | None
    rollback_delay: int | None
    first_alarm_delay: dict
    false_alarms: dict
    false_rollback: bool
    served_accuracy: float
    no_rollback_accuracy: float
    float_accuracy: float

    @property
    def saved(self) -> float:
        """Accuracy the rollback saved: served minus what would have been served without it."""
        return self.served_accuracy - self.no_rollback_accuracy


def outcome(loop: ServingLoop, stream: Stream, rules: AlarmRules = AlarmRules(), rollout: Rollout = Rollout()) -> Outcome:
    """Serve ``stream`` with rollback and without (the counterfactual); summarise detection and accuracy.

    A rollback before the onset (or on a clean stream) is a *false rollback*, and its delay is ``None``.

    Returns:
        An :class:`Outcome`; ``outcome(...).saved`` is the accuracy the rollback saved.

    Raises:
        TypeError: ``loop`` is not a :class:`ServingLoop` (or ``stream``, ``rules``, ``rollout`` of the wrong type).
    """
    if not isinstance(loop, ServingLoop):
        raise TypeError(f"loop must be a ServingLoop, got {type(loop).__name__}.")
    f = loop.features(stream)
    run, counterfactual = loop.run(f, rules, rollout), loop.run(f, rules, rollout, rollback=False)
    clean = stream.fault == "none"
    start = 0 if clean else stream.onset
    rb = run.rollback

    def after(series):
        return sum(series[start:]) / len(series[start:]) if start < stream.n_batches else math.nan

    first = {}  # when each signal first alarmed after the onset (in the counterfactual: rollback does not stop it)
    for n in SIGNALS:
        b = None if clean else counterfactual.first_alarm(n, stream.onset)
        first[n] = None if b is None else b - stream.onset
    return Outcome(stream.fault, stream.severity, stream.seed, rb,
                   None if rb is None or clean or rb < stream.onset else rb - stream.onset, first,
                   {n: counterfactual.false_alarms(n) for n in SIGNALS}, rb is not None and (clean or rb < stream.onset),
                   after(run.served), after(counterfactual.served), after(run.float_acc))
