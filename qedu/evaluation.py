"""Evaluating a quantized model: is it faster, is it smaller, and does it still decide the same?

Top-line accuracy is one number; a quantized model can keep it and still change its mind on
many inputs, or lose one class while gaining on another (Hooker et al. 2019, 2020: compressed
models diverge on a narrow, often under-represented subset). This module measures:

* **latency**: :func:`measure_latency` -- warm-up runs, then ``repeats`` timed runs on the same
  inputs, threads pinned; the median and spread (p25, p75, min, max), never a single run;
* **size on disk**: :func:`serialized_bytes` -- ``torch.save(model.state_dict())`` into memory;
* **real int8 kernels**: :func:`dynamic_int8` (``torch.ao.quantization.quantize_dynamic`` on
  ``Linear`` layers, when this torch build has a quantized engine: :func:`int8_support`).
  Why the three variants time as they do: the *fake-quantized* model (``qedu.ptq``) does all the
  float work plus a quantize-dequantize of every activation and stores float weights and int32
  codes, so it is slower and bigger than float -- it exists to measure accuracy. The *int8* model
  stores int8 weights and multiplies in int8 with int32 accumulation, but quantizes each batch's
  activations on the fly: small layers lose to that overhead, wide layers and large batches win;
* **silent regressions**, from predictions alone::

      disagreement   = mean(quant_pred != float_pred)        # not != y: flips that cancel still count
      accuracy_c     = #(pred == y and y == c) / #(y == c)   # per class c: divide by the class count
      delta_c        = accuracy_c(quant) - accuracy_c(float)
      flagged        = {c : -delta_c > threshold}            # lost more than threshold, whatever the total did

  :func:`regression_report` puts them together with the flipped examples and the shift in
  confidence (the probability given to the true class);
* **is it more than chance?** :func:`mcnemar_test` (exact, for two models on the same inputs)
  and :func:`bootstrap_delta` (a paired confidence interval for the accuracy change) live in
  :mod:`qedu.stats` with the other tests (sign flips over seeds, a null for the worst class,
  calibration error) and are re-exported here.

>>> y = torch.tensor([0, 0, 1, 1])
>>> disagreement_rate(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 0]))
0.5
>>> per_class_deltas(y, torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 0]), n_classes=2).tolist()
[0.5, -0.5]
"""
from __future__ import annotations

import io
import numbers
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple

import numpy as np
import torch
from torch import nn

from qedu._validation import as_float_tensor, check_int, check_not_meta, run_model, to_model_dtype
from qedu.stats import bootstrap_delta, mcnemar_test  # is a difference more than chance? (module qedu.stats)

__all__ = [
    "Latency", "measure_latency", "serialized_bytes", "int8_support", "dynamic_int8", "dynamic_int8_reference",
    "logits", "disagreement_rate", "class_accuracy", "per_class_deltas", "Flips", "flipped",
    "confidence_shift", "RegressionReport", "regression_report", "compare_models", "mcnemar_test", "bootstrap_delta",
]


# ----------------------------------------------------------------------------- latency and size
@dataclass(frozen=True)
class Latency:
    """Timed runs of one function: median and spread in milliseconds, and how they were taken."""

    name: str
    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    warmup: int
    threads: int
    batch_size: int
    samples_ms: tuple = field(default=(), repr=False)

    def __str__(self) -> str:
        return (f"{self.name or 'fn'}: median {self.median_ms:.3f} ms (p25-p75 {self.p25_ms:.3f}-{self.p75_ms:.3f}, "
                f"min {self.min_ms:.3f}, max {self.max_ms:.3f}), {self.repeats} runs, {self.threads} thread(s), "
                f"batch {self.batch_size}")


def measure_latency(fn_or_model: Callable, inputs, warmup: int = 10, repeats: int = 50, threads: int = 1,
                    name: str = "") -> Latency:
    """Time ``fn_or_model(*inputs)``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    The same ``inputs`` go to every call (pass the same tensor to every variant you compare).
    ``torch.set_num_threads(threads)`` holds during the measurement and the previous setting is
    restored afterwards. A model runs in eval mode under ``torch.no_grad()`` (its mode is
    restored). Returns the median and spread; it never judges a time (timings belong in
    benchmarks and depend on the machine and its load).

    Args:
        fn_or_model: a function or ``nn.Module``. inputs: a tensor, or a tuple of arguments.
        warmup: calls before timing (caches, lazy initialisation), >= 0. repeats: timed calls, >= 1.
        threads: torch CPU threads during the measurement, >= 1. name: a label for the result.

    >>> r = measure_latency(nn.Linear(4, 2), torch.zeros(3, 4), warmup=1, repeats=5)
    >>> r.repeats, r.threads, r.batch_size, r.min_ms <= r.median_ms <= r.max_ms
    (5, 1, 3, True)
    """
    if not callable(fn_or_model):
        raise TypeError(f"fn_or_model must be a function or nn.Module, got {type(fn_or_model).__name__}.")
    warmup = check_int(warmup, "warmup", 0)
    repeats = check_int(repeats, "repeats", 1)
    threads = check_int(threads, "threads", 1)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    first = args[0] if args else None
    batch_size = len(first) if isinstance(first, torch.Tensor) and first.ndim else 1
    model = fn_or_model if isinstance(fn_or_model, nn.Module) else None
    was_training, old_threads = (model.training if model is not None else False), torch.get_num_threads()
    samples = []
    try:
        torch.set_num_threads(threads)
        if model is not None:
            model.eval()
        with torch.no_grad():
            for _ in range(warmup):
                fn_or_model(*args)
            for _ in range(repeats):
                start = time.perf_counter()
                fn_or_model(*args)
                samples.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(old_threads)
        if model is not None:
            model.train(was_training)
    s = sorted(samples)
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
    return Latency(name, statistics.median(s), q[0], q[2], s[0], s[-1], repeats, warmup, threads, batch_size, tuple(samples))


def serialized_bytes(model_or_state_dict) -> int:
    """Bytes of ``torch.save(state_dict)`` written to memory: the size of the model file.

    It counts what the state dict holds (a fake-quantized model keeps float weights *and* codes,
    so it is bigger than the float model) plus a little pickle overhead per tensor.

    >>> serialized_bytes(nn.Linear(256, 256)) > 256 * 256 * 4
    True
    """
    state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    if not isinstance(state, Mapping):
        raise TypeError(f"pass an nn.Module or its state_dict(), got {type(model_or_state_dict).__name__}.")
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer().nbytes


def int8_support() -> tuple[bool, str]:
    """Whether this torch build runs real int8 ``Linear`` kernels, and why (or why not).

    Tries ``quantize_dynamic`` on a tiny layer; ``torch.ao.quantization`` is deprecated (torchao
    replaces it), so the answer can change with the torch version.

    >>> ok, reason = int8_support(); isinstance(ok, bool) and isinstance(reason, str)
    True
    """
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        return False, f"torch {torch.__version__} was built without a quantized engine"
    try:
        with torch.random.fork_rng(devices=[]):  # building the probe layer must not draw from the caller's RNG
            tiny = dynamic_int8(nn.Sequential(nn.Linear(4, 4)), _checked=True)
        tiny(torch.zeros(1, 4))
    except Exception as err:  # any failure means: no int8 kernels here
        return False, f"quantize_dynamic failed on torch {torch.__version__}: {type(err).__name__}: {err}"[:300]
    return True, f"torch {torch.__version__}, quantized engine {torch.backends.quantized.engine!r}"


def dynamic_int8(model: nn.Module, *, _checked: bool = False) -> nn.Module:
    """A copy of ``model`` whose ``Linear`` layers run torch's int8 kernels (dynamic quantization).

    Weights are stored as int8 (per tensor); each batch's activations are quantized on the fly
    from their own min/max to **uint8 codes 0..127**, not 0..255: torch's dynamic ``Linear``
    calls its kernel with ``reduce_range=True`` (one bit kept spare so that the x86 multiply-add
    instruction, which sums pairs of uint8 x int8 products into 16 bits, cannot overflow);
    :func:`dynamic_int8_reference` reproduces it. Codes are multiplied in int8 with int32
    accumulation and dequantized. Other layers (convolutions) stay float. Raises
    ``RuntimeError`` with the reason if the build has no int8 kernels (see :func:`int8_support`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    if not _checked:
        ok, reason = int8_support()
        if not ok:
            raise RuntimeError(f"no int8 kernels in this torch build: {reason}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8).eval()


def dynamic_int8_reference(layer: nn.Module, x: torch.Tensor, *, reduce_range: bool = True) -> torch.Tensor:
    """What one of torch's dynamic int8 ``Linear`` layers computes, from scratch::

        lo, hi  = min(x.min(), 0), max(x.max(), 0)         # this batch's range, widened to hold 0
        qmax    = 127 if reduce_range else 255             # uint8 codes 0..qmax
        s_x     = (hi - lo) / qmax;  z_x = clamp(round(-lo / s_x), 0, qmax)
        q_x     = clamp(round(x / s_x) + z_x, 0, qmax)
        y       = s_x * s_w * ((q_x - z_x) @ (q_w - z_w)^T) + bias

    With ``reduce_range=True`` it matches torch to float rounding (``tests/test_evaluation.py``);
    with ``False`` (the full 0..255) it does not: that is how the lesson shows which one torch uses.

    Args:
        layer: a layer of :func:`dynamic_int8`'s model (``torch.ao.nn.quantized.dynamic.Linear``).
        x: its float input, ``(N, in_features)``. reduce_range: 7-bit (torch's x86 default) or 8-bit codes.
    """
    if not (callable(getattr(layer, "weight", None)) and callable(getattr(layer, "bias", None))):
        raise TypeError(f"layer must be a dynamic int8 Linear from dynamic_int8(model), got {type(layer).__name__}.")
    if not isinstance(reduce_range, bool):
        raise TypeError(f"reduce_range must be True or False, got {reduce_range!r}.")
    x = torch.as_tensor(x, dtype=torch.float32)
    w = layer.weight()  # a quantized qint8 tensor, one scale per tensor
    q_w, s_w, z_w = w.int_repr().float(), float(w.q_scale()), int(w.q_zero_point())
    qmax = 127 if reduce_range else 255
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    s_x = (hi - lo) / qmax if hi > lo else 1.0
    z_x = min(max(round(-lo / s_x), 0), qmax)
    q_x = torch.clamp(torch.round(x / s_x) + z_x, 0, qmax)
    y = (s_x * s_w) * ((q_x - z_x) @ (q_w - z_w).T)  # integer products, exact in float32 at this size
    bias = layer.bias()
    return y if bias is None else y + bias


# ----------------------------------------------------------------------------- predictions
def logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """``model(x)`` in eval mode without gradients, float32 ``(N, n_classes)``; the mode is restored.

    Floating-point ``x`` is cast to the model's dtype (float64 accepted if it fits, as
    :func:`qedu.models.predict` does); integer ``x`` (token ids) passes unchanged.

    Raises:
        TypeError / ValueError: ``model`` not an ``nn.Module``; ``x`` not a tensor, empty, a
            single number, non-finite, or shaped so the model cannot run; ``batch_size < 1``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of inputs, got {type(x).__name__}.")
    check_not_meta(x, "x")
    batch_size = check_int(batch_size, "batch_size", 1)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch of inputs, got shape {tuple(x.shape)}.")
    if x.is_floating_point():
        x = to_model_dtype(as_float_tensor(x, "x"), model, "x")  # refuses NaN/inf, converts float64
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([run_model(model, x[i:i + batch_size], "x").float() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def _labels(v, name: str) -> torch.Tensor:
    """``v`` as a 1-D int64 tensor of labels, or a clear error."""
    t = torch.as_tensor(np.asarray(v)) if isinstance(v, (list, tuple, np.ndarray)) else v
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a 1-D integer tensor of class labels, got {type(v).__name__}.")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class labels, got dtype {t.dtype}; use {name}.argmax(1) for logits.")
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per input), got shape {tuple(t.shape)}.")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty; pass at least one prediction.")
    return t.long()


def _same_length(**tensors) -> None:
    lengths = {k: len(v) for k, v in tensors.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the label tensors must have one entry per input, got lengths {lengths}.")


def disagreement_rate(float_pred, quant_pred) -> float:
    """Share of inputs where the quantized model's prediction differs from the float model's.

    Compared with the float model, not the labels: a flip from right to wrong and one from wrong
    to right cancel in accuracy but both count here.

    >>> disagreement_rate(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4]))
    0.25
    """
    float_pred, quant_pred = _labels(float_pred, "float_pred"), _labels(quant_pred, "quant_pred")
    _same_length(float_pred=float_pred, quant_pred=quant_pred)
    return float((float_pred != quant_pred).double().mean())


def _n_classes(n_classes, *labels) -> int:
    n_classes = check_int(n_classes, "n_classes", 1)
    top = max(int(t.max()) for t in labels)
    if top >= n_classes or min(int(t.min()) for t in labels) < 0:
        raise ValueError(f"labels range up to {top}, outside 0..{n_classes - 1}; pass n_classes={top + 1} or more.")
    return n_classes


def class_accuracy(y, pred, n_classes: int = 10) -> torch.Tensor:
    """Accuracy per true class: ``#(pred == y == c) / #(y == c)``, float64, ``nan`` for absent classes.

    The predictions-only twin of :func:`qedu.models.per_class_accuracy` (which runs a model).

    >>> class_accuracy(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), n_classes=3).tolist()
    [0.5, 1.0, nan]
    """
    y, pred = _labels(y, "y"), _labels(pred, "pred")
    _same_length(y=y, pred=pred)
    n_classes = _n_classes(n_classes, y, pred)
    total = torch.bincount(y, minlength=n_classes).double()
    correct = torch.bincount(y[pred == y], minlength=n_classes).double()
    return correct / total  # 0 / 0 -> nan: a class with no inputs has no accuracy


def per_class_deltas(y, float_pred, quant_pred, n_classes: int = 10) -> torch.Tensor:
    """``class_accuracy(quant) - class_accuracy(float)`` per class (negative: the class lost).

    >>> per_class_deltas(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 2).tolist()
    [0.0, -0.5]
    """
    y, float_pred, quant_pred = _labels(y, "y"), _labels(float_pred, "float_pred"), _labels(quant_pred, "quant_pred")
    _same_length(y=y, float_pred=float_pred, quant_pred=quant_pred)
    return class_accuracy(y, quant_pred, n_classes) - class_accuracy(y, float_pred, n_classes)


class Flips(NamedTuple):
    """The inputs whose prediction changed: ``index`` into the test set, true ``label``, both predictions."""

    index: torch.Tensor
    label: torch.Tensor
    float_pred: torch.Tensor
    quant_pred: torch.Tensor

    def rows(self) -> list[dict]:
        """One dict per flip, with ``"kind"``: ``broken`` (was right), ``fixed`` (is right) or ``changed``."""
        out = []
        for i, t, f, q in zip(*(v.tolist() for v in self)):
            kind = "broken" if f == t else "fixed" if q == t else "changed"
            out.append(dict(index=i, label=t, float_pred=f, quant_pred=q, kind=kind))
        return out


def flipped(y, float_pred, quant_pred) -> Flips:
    """The inputs where the two models disagree.

    >>> flipped(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]), torch.tensor([0, 2, 2])).rows()[0]
    {'index': 1, 'label': 1, 'float_pred': 1, 'quant_pred': 2, 'kind': 'broken'}
    """
    y, float_pred, quant_pred = _labels(y, "y"), _labels(float_pred, "float_pred"), _labels(quant_pred, "quant_pred")
    _same_length(y=y, float_pred=float_pred, quant_pred=quant_pred)
    idx = torch.nonzero(float_pred != quant_pred).flatten()
    return Flips(idx, y[idx], float_pred[idx], quant_pred[idx])


def confidence_shift(y, float_logits: torch.Tensor, quant_logits: torch.Tensor) -> torch.Tensor:
    """Per input, the change in the probability given to the true class: ``softmax(quant)[y] - softmax(float)[y]``.

    Raises:
        TypeError / ValueError: labels that are not 1-D integers in ``0 .. n_classes - 1``, logits
            that are not ``(N, n_classes)`` float tensors or hold NaN/inf.

    >>> confidence_shift(torch.tensor([0]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]])).tolist()
    [0.0]
    """
    y = _labels(y, "y")
    for name, t in (("float_logits", float_logits), ("quant_logits", quant_logits)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or len(t) != len(y):
            raise ValueError(f"{name} must be a (N, n_classes) tensor with N = {len(y)} rows, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}.")
        if not t.is_floating_point():
            raise TypeError(f"{name} must hold floating-point logits, got dtype {t.dtype}.")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or inf; softmax of them is NaN. Check the model that produced them.")
    if float_logits.shape[1] != quant_logits.shape[1]:
        raise ValueError(f"float_logits and quant_logits must have the same number of classes, got "
                         f"{float_logits.shape[1]} and {quant_logits.shape[1]}.")
    if int(y.min()) < 0 or int(y.max()) >= float_logits.shape[1]:
        raise ValueError(f"y holds labels {int(y.min())}..{int(y.max())}, outside 0..{float_logits.shape[1] - 1} "
                         "(the logits' columns); pass the labels that belong to these logits.")
    pick = lambda z: z.double().softmax(dim=1).gather(1, y[:, None]).squeeze(1)  # noqa: E731  (N,)
    return pick(quant_logits) - pick(float_logits)


# ----------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class RegressionReport:
    """Everything :func:`regression_report` found; ``flagged`` are classes that lost more than ``threshold``."""

    float_accuracy: float
    quant_accuracy: float
    disagreement: float
    per_class_float: torch.Tensor
    per_class_quant: torch.Tensor
    class_counts: torch.Tensor
    threshold: float
    flagged: tuple
    flips: Flips
    confidence: torch.Tensor | None = None

    @property
    def deltas(self) -> torch.Tensor:
        """Per-class accuracy change (quantized minus float)."""
        return self.per_class_quant - self.per_class_float

    @property
    def accuracy_change(self) -> float:
        return self.quant_accuracy - self.float_accuracy

    def summary(self) -> str:
        """One paragraph: accuracy change, disagreement, flips, flagged classes."""
        kinds = [r["kind"] for r in self.flips.rows()]
        text = (f"accuracy {100 * self.float_accuracy:.1f} % -> {100 * self.quant_accuracy:.1f} % "
                f"({100 * self.accuracy_change:+.1f} points); predictions changed on {100 * self.disagreement:.1f} % "
                f"of inputs ({len(kinds)}: {kinds.count('broken')} broken, {kinds.count('fixed')} fixed, "
                f"{kinds.count('changed')} wrong either way)")
        if self.confidence is not None:
            text += f"; true-class probability {float(self.confidence.mean()):+.3f} on average"
        if self.flagged:
            lost = ", ".join(f"{c} ({100 * float(self.deltas[c]):+.1f})" for c in self.flagged)
            text += f". FLAGGED: classes that lost more than {100 * self.threshold:.1f} points: {lost}"
        else:
            text += f". No class lost more than {100 * self.threshold:.1f} points."
        return text

    def to_markdown(self) -> str:
        """A per-class table: count, float and quantized accuracy, change, flag."""
        lines = ["| class | inputs | float % | quantized % | change (points) | flag |", "|---|---|---|---|---|---|"]
        for c in range(len(self.class_counts)):
            flag = "**lost > {:.1f}**".format(100 * self.threshold) if c in self.flagged else ""
            lines.append(f"| {c} | {int(self.class_counts[c])} | {100 * float(self.per_class_float[c]):.1f} | "
                         f"{100 * float(self.per_class_quant[c]):.1f} | {100 * float(self.deltas[c]):+.1f} | {flag} |")
        return "\n".join(lines)


def regression_report(y, float_pred, quant_pred, *, threshold: float = 0.05, n_classes: int = 10,
                      float_logits: torch.Tensor | None = None, quant_logits: torch.Tensor | None = None) -> RegressionReport:
    """Per-class accuracy, disagreement, flips and the classes that lost more than ``threshold``.

    A class is flagged when ``accuracy_float - accuracy_quant > threshold`` (strictly; losing
    exactly ``threshold`` is not flagged). The loss is computed from counts
    (``(correct_float - correct_quant) / n``) so that float rounding cannot move a class across
    the line. Flags are raised whatever the overall accuracy does: that is the point.

    Args:
        y, float_pred, quant_pred: 1-D integer labels and the two models' predictions.
        threshold: the largest accepted loss per class, a fraction in [0, 1) (0.05 = 5 points).
        n_classes: number of classes. float_logits, quant_logits: optional, for the confidence shift.

    >>> r = regression_report(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 0]), n_classes=2)
    >>> r.flagged, r.quant_accuracy, r.disagreement
    ((1,), 0.75, 0.25)
    """
    y, float_pred, quant_pred = _labels(y, "y"), _labels(float_pred, "float_pred"), _labels(quant_pred, "quant_pred")
    _same_length(y=y, float_pred=float_pred, quant_pred=quant_pred)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a fraction in [0, 1), e.g. 0.05 for 5 points, got {threshold!r}.")
    n_classes = _n_classes(n_classes, y, float_pred, quant_pred)
    counts = torch.bincount(y, minlength=n_classes)
    right_f = torch.bincount(y[float_pred == y], minlength=n_classes)
    right_q = torch.bincount(y[quant_pred == y], minlength=n_classes)
    lost = (right_f - right_q).double() / counts.clamp(min=1)  # exact ratios of small integers
    flagged = tuple(int(c) for c in torch.nonzero((counts > 0) & (lost > threshold + 1e-12)).flatten())
    confidence = None
    if float_logits is not None and quant_logits is not None:
        confidence = confidence_shift(y, float_logits, quant_logits)
    return RegressionReport(
        float_accuracy=float((float_pred == y).double().mean()), quant_accuracy=float((quant_pred == y).double().mean()),
        disagreement=disagreement_rate(float_pred, quant_pred), per_class_float=class_accuracy(y, float_pred, n_classes),
        per_class_quant=class_accuracy(y, quant_pred, n_classes), class_counts=counts, threshold=float(threshold),
        flagged=flagged, flips=flipped(y, float_pred, quant_pred), confidence=confidence)


def compare_models(float_model: nn.Module, quant_model: nn.Module, x: torch.Tensor, y, *, threshold: float = 0.05,
                   n_classes: int = 10) -> RegressionReport:
    """:func:`regression_report` for two models on the same inputs (each model runs once).

    Each model gets ``x`` in its own dtype (see :func:`logits`: float64 is accepted if it fits).

    Raises:
        TypeError / ValueError: as :func:`logits` and :func:`regression_report`.
    """
    float_logits, quant_logits = logits(float_model, x), logits(quant_model, x)
    return regression_report(y, float_logits.argmax(1), quant_logits.argmax(1), threshold=threshold,
                             n_classes=n_classes, float_logits=float_logits, quant_logits=quant_logits)
