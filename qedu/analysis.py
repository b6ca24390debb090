"""Analysis helpers: which layers are sensitive, how to spend a size budget, and multi-seed ablations.

* :func:`layer_sensitivity` quantizes **one layer at a time** (the rest stay float) and ranks
  layers by the damage: accuracy drop, or the relative error of the model's outputs.
* :func:`allocate_bits` gives each layer a weight bit-width under a size budget, greedily
  lowering the layer whose next step down costs the least damage per byte saved.
* :func:`ablate` runs ``fn(**factors, seed=s)`` over every combination of factors and several
  seeds, and returns an :class:`AblationTable` of mean and standard deviation (no pandas).

Measure sensitivity on data you may tune on (the calibration images), not on the test set:
choosing layers by their test accuracy leaks the test set into the model.

>>> table = ablate(lambda bits, seed: bits + seed, {"bits": [2, 4]}, seeds=[0, 1, 2])
>>> print(table.to_markdown())
| bits | value |
|---|---|
| 2 | 3.00 ± 1.00 |
| 4 | 5.00 ± 1.00 |
"""
from __future__ import annotations

import dataclasses
import itertools
import numbers
import statistics
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from qedu._validation import as_float_tensor, check_int, check_module, run_model, to_model_dtype
from qedu.models import evaluate
from qedu.ptq import PTQConfig, fold_batchnorm, model_size, quantizable_layers, quantize_model

__all__ = ["output_error", "layer_sensitivity", "BitAllocation", "allocate_bits", "AblationTable", "ablate"]

METRICS = ("accuracy", "output_error")


# ----------------------------------------------------------------------------- sensitivity
def output_error(reference: nn.Module, model: nn.Module, x) -> float:
    """Relative squared error of ``model``'s outputs against ``reference``'s on ``x``:
    ``sum((y - y_ref)^2) / sum(y_ref^2)`` (0 means identical). Needs no labels.

    Both models run in eval mode without gradients; their train/eval modes are restored. ``x`` is
    cast to each model's dtype (float64 accepted if it fits).

    Raises:
        TypeError / ValueError: a model that is not an ``nn.Module``; ``x`` empty, non-finite or
            shaped so that a model cannot run on it.

    >>> m = nn.Linear(2, 1)
    >>> output_error(m, m, torch.ones(3, 2))
    0.0
    """
    reference, model = check_module(reference, "reference"), check_module(model, "model")
    x = as_float_tensor(x, "x")
    modes = reference.training, model.training
    try:  # eval mode for the measurement, then the callers' modes back
        reference.eval()
        model.eval()
        with torch.no_grad():
            y_ref = run_model(reference, to_model_dtype(x, reference, "x"), "x").double()
            y = run_model(model, to_model_dtype(x, model, "x"), "x").double()
    finally:
        reference.train(modes[0])
        model.train(modes[1])
    return float(((y - y_ref) ** 2).sum() / (y_ref**2).sum().clamp_min(1e-30))


def _check_metric(metric, y_eval):
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not one of {METRICS}; 'output_error' needs no labels.")
    if metric == "accuracy" and y_eval is None:
        raise ValueError("metric='accuracy' needs labels: pass y_eval, or use metric='output_error'.")


def _layers(model: nn.Module, config: PTQConfig, layers) -> list[str]:
    names = quantizable_layers(fold_batchnorm(model) if config.fold_bn else model)
    available = [n for n in names if n not in config.keep_float]
    if layers is None:
        return available
    layers = [layers] if isinstance(layers, str) else list(layers)
    unknown = [n for n in layers if n not in available]
    if unknown:
        raise ValueError(f"layers holds {unknown}, which are not quantizable layers of this model (or are kept "
                         f"float); choose from {available}.")
    return layers


def _damage(model, quantized, metric, x_eval, y_eval, float_score) -> tuple[float, float]:
    """(score of the quantized model, damage = how much worse than float)."""
    if metric == "accuracy":
        score = evaluate(quantized, x_eval, y_eval)
        return score, float_score - score
    score = output_error(model, quantized, x_eval)
    return score, score


def layer_sensitivity(model: nn.Module, config: PTQConfig, x_calib, x_eval, y_eval=None, *,
                      metric: str = "output_error", layers=None) -> list[dict]:
    """Quantize one layer at a time with ``config`` (all others float) and rank the layers by damage.

    Args:
        model: the float model (not changed).
        config: how to quantize a layer; its ``keep_float`` layers are skipped.
        x_calib: calibration inputs (for quantized activations).
        x_eval, y_eval: where to measure; ``y_eval`` only for ``metric="accuracy"``.
        metric: ``"output_error"`` (relative squared error of the outputs, no labels) or
            ``"accuracy"`` (damage = float accuracy - quantized accuracy).
        layers: which layers to try (default: every quantizable one).

    Returns:
        One dict per layer, most sensitive first: ``layer``, ``metric``, ``float`` (the float
        model's score), ``quantized`` (the score with only this layer quantized), ``damage``.

    Raises:
        TypeError / ValueError: ``model`` not an ``nn.Module``, ``config`` not a PTQConfig, an
            unknown metric or layer, and as :func:`qedu.ptq.quantize_model` and :func:`output_error`.

    >>> from qedu.models import make_mlp
    >>> x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> rows = layer_sensitivity(make_mlp(seed=0), PTQConfig(weight_bits=2, act_bits=None), None, x)
    >>> [r["layer"] for r in rows]
    ['fc3', 'fc2', 'fc1']
    """
    model = check_module(model)
    if not isinstance(config, PTQConfig):
        raise TypeError(f"config must be a PTQConfig, got {type(config).__name__}.")
    _check_metric(metric, y_eval)
    names = _layers(model, config, layers)
    all_names = _layers(model, config, None)
    float_score = evaluate(model, x_eval, y_eval) if metric == "accuracy" else 0.0
    rows = []
    for name in names:
        only = dataclasses.replace(config, keep_float=tuple(set(config.keep_float) | (set(all_names) - {name})))
        quantized = quantize_model(model, only, x_calib)
        score, damage = _damage(model, quantized, metric, x_eval, y_eval, float_score)
        rows.append(dict(layer=name, metric=metric, float=float_score, quantized=score, damage=damage))
    return sorted(rows, key=lambda r: -r["damage"])


# ----------------------------------------------------------------------------- bit allocation
@dataclass(frozen=True)
class BitAllocation:
    """What :func:`allocate_bits` chose: ``bits`` per layer, the resulting ``config`` and its
    ``size_bytes`` (within ``budget_bytes``), and the ``steps`` taken (layer, from, to, size after)."""

    bits: dict
    config: PTQConfig
    size_bytes: int
    budget_bytes: int
    steps: tuple = field(default=(), repr=False)


def allocate_bits(model: nn.Module, config: PTQConfig, x_calib, budget_bytes: int, *,
                  candidate_bits: Sequence[int] = (8, 6, 4, 3, 2), x_eval=None, y_eval=None,
                  metric: str = "output_error") -> BitAllocation:
    """Mixed precision under a size budget: greedy by sensitivity.

    1. Every layer starts at the largest candidate bit-width.
    2. The damage of each layer at each bit-width is measured alone (:func:`layer_sensitivity`);
       damages are assumed to add up.
    3. While the model is larger than ``budget_bytes``: among the layers that can still go one
       candidate lower, lower the one with the smallest ``extra damage / bytes saved``.
    4. The last step may undershoot the budget: while some layer can go one candidate higher
       and still fit, raise the one with the largest ``damage saved / bytes spent``.

    Measures on ``x_eval`` (default: ``x_calib``, so no test data is used to decide).

    Returns:
        a :class:`BitAllocation`; ``config`` is ``config`` with ``weight_bits`` overrides.

    Raises:
        ValueError: the budget is below what the lowest candidate for every layer needs (the
            message gives that size), or bad candidates/metric.

    >>> from qedu.models import make_mlp
    >>> x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> a = allocate_bits(make_mlp(seed=0), PTQConfig(act_bits=None), None, 12_000, x_eval=x)
    >>> a.bits, a.size_bytes
    ({'fc1': 4, 'fc2': 4, 'fc3': 8}, 10448)
    """
    if not isinstance(config, PTQConfig):
        raise TypeError(f"config must be a PTQConfig, got {type(config).__name__}.")
    budget_bytes = check_int(budget_bytes, "budget_bytes", 1)
    candidates = sorted({check_int(b, "candidate_bits", 2, 16) for b in candidate_bits}, reverse=True)
    if not candidates:
        raise ValueError("candidate_bits is empty; pass bit-widths such as (8, 4, 2).")
    x_eval = x_calib if x_eval is None else x_eval
    if x_eval is None:
        raise ValueError("allocate_bits needs inputs to measure on: pass x_calib or x_eval.")
    _check_metric(metric, y_eval)
    names = _layers(model, config, None)
    damage = {}
    for bits in candidates:
        per_bits = dataclasses.replace(config, weight_bits=bits, overrides=())
        for row in layer_sensitivity(model, per_bits, x_calib, x_eval, y_eval, metric=metric):
            damage[row["layer"], bits] = row["damage"]

    def config_for(bits: dict) -> PTQConfig:
        overrides = dict(dict(config.overrides))
        for name, b in bits.items():
            overrides[name] = {**dict(overrides.get(name, ())), "weight_bits": b}
        return dataclasses.replace(config, overrides=overrides)

    bits = {name: candidates[0] for name in names}
    smallest = model_size(model, config_for({n: candidates[-1] for n in names})).total_bytes
    if budget_bytes < smallest:
        raise ValueError(f"budget_bytes={budget_bytes:,} is below {smallest:,} bytes, the size with every layer at "
                         f"{candidates[-1]} bits; raise the budget, add a lower bit-width or quantize kept-float layers.")
    size = model_size(model, config_for(bits)).total_bytes
    steps = []
    while size > budget_bytes:
        best = None
        for name in names:
            i = candidates.index(bits[name])
            if i + 1 == len(candidates):
                continue
            lower = candidates[i + 1]
            saved = size - model_size(model, config_for({**bits, name: lower})).total_bytes
            cost = (damage[name, lower] - damage[name, bits[name]]) / max(saved, 1)
            if best is None or cost < best[0]:
                best = (cost, name, lower)
        _, name, lower = best
        steps.append((name, bits[name], lower, None))
        bits[name] = lower
        size = model_size(model, config_for(bits)).total_bytes
        steps[-1] = steps[-1][:3] + (size,)
    while True:  # 4. spend what the last step left over: raise the layer that gains most per byte
        best = None
        for name in names:
            i = candidates.index(bits[name])
            if i == 0:
                continue
            higher = candidates[i - 1]
            new_size = model_size(model, config_for({**bits, name: higher})).total_bytes
            if new_size > budget_bytes:
                continue
            gain = (damage[name, bits[name]] - damage[name, higher]) / max(new_size - size, 1)
            if best is None or gain > best[0]:
                best = (gain, name, higher, new_size)
        if best is None:
            break
        _, name, higher, size = best
        steps.append((name, bits[name], higher, size))
        bits[name] = higher
    return BitAllocation(dict(bits), config_for(bits), size, budget_bytes, tuple(steps))


# ----------------------------------------------------------------------------- ablations
@dataclass
class AblationTable:
    """Mean and standard deviation over seeds for every combination of factors.

    ``rows`` are dicts: one key per factor, then ``<metric>_mean``, ``<metric>_std`` (sample
    standard deviation, 0 for one seed) and ``<metric>_values`` (one per seed) per metric.
    """

    factors: tuple
    metrics: tuple
    seeds: tuple
    rows: list

    def where(self, **fixed) -> list[dict]:
        """The rows whose factors equal ``fixed``, e.g. ``table.where(bits=4)``."""
        unknown = [k for k in fixed if k not in self.factors]
        if unknown:
            raise ValueError(f"{unknown} are not factors of this table; its factors are {list(self.factors)}.")
        return [r for r in self.rows if all(r[k] == v for k, v in fixed.items())]

    def get(self, metric: str | None = None, **fixed) -> tuple[float, float]:
        """``(mean, std)`` of the one row matching ``fixed`` (every factor given)."""
        metric = self._metric(metric)
        rows = self.where(**fixed)
        if len(rows) != 1:
            raise ValueError(f"{fixed} matches {len(rows)} rows; give a value for every factor {list(self.factors)}.")
        return rows[0][f"{metric}_mean"], rows[0][f"{metric}_std"]

    def _metric(self, metric):
        if metric is None:
            return self.metrics[0]
        if metric not in self.metrics:
            raise ValueError(f"metric={metric!r} is not in this table; it has {list(self.metrics)}.")
        return metric

    @staticmethod
    def _cell(mean: float, std: float, scale: float, digits: int) -> str:
        return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"

    def to_markdown(self, *, scale: float = 1.0, digits: int = 2, rows: list | None = None) -> str:
        """A markdown table: factor columns, then ``mean ± std`` per metric (values times ``scale``)."""
        rows = self.rows if rows is None else rows
        head = list(self.factors) + list(self.metrics)
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [str(r[f]) for f in self.factors]
            cells += [self._cell(r[f"{m}_mean"], r[f"{m}_std"], scale, digits) for m in self.metrics]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def pivot(self, row: str, col: str, metric: str | None = None, *, scale: float = 1.0, digits: int = 2,
              **fixed) -> str:
        """A markdown table with ``row`` values down, ``col`` values across, other factors ``fixed``."""
        metric = self._metric(metric)
        free = [f for f in self.factors if f not in fixed and f not in (row, col)]
        if free or row not in self.factors or col not in self.factors:
            raise ValueError(f"pivot needs row and col among the factors {list(self.factors)} and a fixed value for "
                             f"every other factor; missing: {free}.")
        rows = self.where(**fixed)
        row_vals = list(dict.fromkeys(r[row] for r in rows))
        col_vals = list(dict.fromkeys(r[col] for r in rows))
        lines = [f"| {row} \\ {col} | " + " | ".join(map(str, col_vals)) + " |", "|" + "---|" * (len(col_vals) + 1)]
        for rv in row_vals:
            cells = []
            for cv in col_vals:
                match = [r for r in rows if r[row] == rv and r[col] == cv]
                cells.append(self._cell(match[0][f"{metric}_mean"], match[0][f"{metric}_std"], scale, digits) if match else "")
            lines.append(f"| {rv} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain JSON-able data; :meth:`from_dict` reads it back."""
        return {"factors": list(self.factors), "metrics": list(self.metrics), "seeds": list(self.seeds), "rows": self.rows}

    @classmethod
    def from_dict(cls, data: Mapping) -> AblationTable:
        return cls(tuple(data["factors"]), tuple(data["metrics"]), tuple(data["seeds"]), [dict(r) for r in data["rows"]])

    def __repr__(self) -> str:
        return f"AblationTable(factors={list(self.factors)}, metrics={list(self.metrics)}, seeds={list(self.seeds)}, rows={len(self.rows)})"


def _as_metrics(value, where: str) -> dict:
    if isinstance(value, Mapping):
        out = dict(value)
    else:
        out = {"value": value}
    for k, v in out.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"fn returned {type(v).__name__} {v!r} for {k!r} at {where}; return a number or a dict "
                            "of numbers.")
        out[k] = float(v)
    return out


def ablate(fn: Callable[..., float | Mapping[str, float]], factors: Mapping[str, Sequence], seeds: Sequence[int]) -> AblationTable:
    """Run ``fn(**combination, seed=s)`` for every combination of ``factors`` and every seed.

    Args:
        fn: returns a number, or a dict of named numbers (several metrics).
        factors: ``{name: [values]}``; combinations run in the order of ``itertools.product``.
        seeds: the seeds, e.g. ``range(3)``.

    Returns:
        An :class:`AblationTable` with mean ± std over seeds per combination.

    Raises:
        TypeError / ValueError: ``fn`` not callable, empty factors or seeds, ``fn`` returning
            something that is not a number (the message names the combination), or a dict whose
            keys change between calls.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a function fn(**factors, seed=...), got {type(fn).__name__}.")
    if not isinstance(factors, Mapping) or not factors:
        raise ValueError(f"factors must be a non-empty dict such as {{'bits': [8, 4]}}, got {factors!r}.")
    for name, values in factors.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"factors[{name!r}] must be a non-empty list of values, got {values!r}.")
    seeds = tuple(check_int(s, "seeds", 0) for s in seeds)
    if not seeds:
        raise ValueError("seeds is empty; pass e.g. seeds=range(3).")
    names, metrics, rows = tuple(factors), None, []
    for combo in itertools.product(*factors.values()):
        kwargs = dict(zip(names, combo))
        results = [_as_metrics(fn(**kwargs, seed=s), f"{kwargs}, seed={s}") for s in seeds]
        keys = tuple(results[0])
        if metrics is None:
            metrics = keys
        if any(tuple(r) != metrics for r in results):
            raise ValueError(f"fn returned metrics {[tuple(r) for r in results]} at {kwargs}; return the same keys "
                             f"{list(metrics)} every time.")
        row = dict(kwargs)
        for m in metrics:
            values = [r[m] for r in results]
            row[f"{m}_mean"] = statistics.fmean(values)
            row[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"{m}_values"] = values
        rows.append(row)
    return AblationTable(names, metrics, seeds, rows)
