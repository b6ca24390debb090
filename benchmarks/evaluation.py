#!/usr/bin/env python
"""Lesson 08's measured tables: latency and size, a multi-seed regression ablation, robustness
gaps over seeds, and the update time of lessons 08-09's widgets.

Parts (all written to ``results/evaluation.{json,md}``; ``--quick`` writes ``evaluation_quick``):

* ``latency``: float32 vs qedu's fake-quantized W8A8 vs torch's real int8 kernels
  (``quantize_dynamic``, Linear layers only) for the digits MLP and CNN and a wide MLP
  (1024-1024-1024, random weights: the size where int8 kernels pay off), at batch 1 and a large
  batch, with 1 and 2 threads; median and spread of ``repeats`` timed runs after ``warmup``
  runs, all variants on the same input tensor. Plus file size (``torch.save`` of the state dict)
  and qedu's arithmetic size (``qedu.ptq.model_size``: what integer storage needs).
* ``ablation``: MLP and CNN, seeds 0-4 (one trained model per seed), W=A at 8/4/3 bits, per-channel
  and per-tensor weights, min/max ranges: accuracy change, disagreement, worst class change and
  the number of classes that lost more than 5 points (``qedu.analysis.ablate``, mean ± std).
* ``robustness``: the same models at W8A8 and W4A4 (per-channel): accuracy gap to float under
  each corruption at severity 3, mean ± std over 20 seeds (0-19: five seeds cannot make a sign
  test significant, see ``qedu.stats.sign_flip_test``), with the sign-flip p-value per row.
* ``null``: what chance alone does to the regression metrics. Float-vs-float churn: every
  ordered pair of float models trained with different seeds (0-19), compared as if one were the
  "quantized" version of the other; and, for every row of ``ablation``, random flips of the
  same count as the quantized model's flips (``qedu.stats.worst_class_null``, 1000 trials).
* ``widgets``: ``panel.last_update_ms`` of ``evaluation_explorer`` and ``calibration_explorer``
  over a sweep of every control (first pass: cache misses; second pass: cached).

Usage::

    python benchmarks/evaluation.py                  # everything (~5-8 min on 2 busy cores)
    python benchmarks/evaluation.py --parts latency  # one part (the others are kept from the file)
    python benchmarks/evaluation.py --quick          # 2 seeds, few repeats: a smoke test
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import qedu  # noqa: E402
from _common import RESULTS, machine, write  # noqa: E402
from qedu.analysis import AblationTable, ablate  # noqa: E402
from qedu.data import load_digits  # noqa: E402
from qedu.evaluation import (  # noqa: E402
    compare_models, dynamic_int8, int8_support, logits, measure_latency, serialized_bytes,
)
from qedu.granularity import PerChannel, PerTensor  # noqa: E402
from qedu.models import evaluate, pretrained  # noqa: E402
from qedu.ptq import PTQConfig, model_size, quantize_model  # noqa: E402
from qedu.robustness import CORRUPTIONS, corrupt  # noqa: E402
from qedu.stats import sign_flip_test, worst_class_null  # noqa: E402

GRANULARITY = {"per-channel": PerChannel(0), "per-tensor": PerTensor()}
_MODELS: dict = {}


def model_for(name: str, seed: int):
    if (name, seed) not in _MODELS:
        _MODELS[name, seed] = pretrained(name, seed=seed)
    return _MODELS[name, seed]


def wide_mlp(width: int = 1024) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10)).eval()


# ----------------------------------------------------------------------------- part 1: latency and size
def part_latency(repeats: int, warmup: int) -> dict:
    data = load_digits(seed=0)
    ok, reason = int8_support()
    rows = []
    cases = {
        "digits MLP (17k params)": (model_for("mlp", 0), data.x_calib, data.x_test, (1, 360)),
        "digits CNN (10k params)": (model_for("cnn", 0), data.x_calib, data.x_test, (1, 360)),
        "wide MLP 1024 (2.1M params)": (wide_mlp(), torch.rand(256, 1024), torch.rand(64, 1024), (1, 64)),
    }
    for case, (model, x_calib, x, batches) in cases.items():
        config = PTQConfig()  # W8A8 per-channel weights, min/max
        variants = {"float32": model, "fake-quant W8A8 (qedu)": quantize_model(model, config, x_calib)}
        if ok:
            variants["int8 dynamic (torch kernels)"] = dynamic_int8(model)
        arithmetic = {"float32": model_size(model).total_bytes, "fake-quant W8A8 (qedu)": model_size(model, config).total_bytes}
        for name, variant in variants.items():
            for batch in batches:
                for threads in (1, 2):
                    lat = measure_latency(variant, x[:batch], warmup=warmup, repeats=repeats, threads=threads, name=name)
                    rows.append(dict(case=case, variant=name, batch=batch, threads=threads, median_ms=lat.median_ms,
                                     p25_ms=lat.p25_ms, p75_ms=lat.p75_ms, min_ms=lat.min_ms, max_ms=lat.max_ms,
                                     repeats=repeats, file_bytes=serialized_bytes(variant),
                                     integer_bytes=arithmetic.get(name)))
    return {"int8_support": ok, "int8_reason": reason, "rows": rows}


def latency_markdown(result: dict) -> str:
    lines = [f"int8 kernels: {result['int8_support']} ({result['int8_reason']})", "",
             "2-thread rows on a shared 2-core machine stall whenever another process holds a core "
             "(medians of tens of ms where 1 thread takes a fraction of one): compare the 1-thread rows.", "",
             "| model | variant | batch | threads | median ms | p25-p75 ms | min-max ms | file bytes | integer storage bytes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        integer = f"{r['integer_bytes']:,}" if r["integer_bytes"] else "-"
        lines.append(f"| {r['case']} | {r['variant']} | {r['batch']} | {r['threads']} | {r['median_ms']:.3f} | "
                     f"{r['p25_ms']:.3f}-{r['p75_ms']:.3f} | {r['min_ms']:.3f}-{r['max_ms']:.3f} | {r['file_bytes']:,} | {integer} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- part 2: regression ablation
def regression_run(model: str, bits: int, granularity: str, seed: int) -> dict:
    data = load_digits(seed=0)
    net = model_for(model, seed)
    config = PTQConfig(weight_bits=bits, act_bits=bits, weight_granularity=GRANULARITY[granularity])
    r = compare_models(net, quantize_model(net, config, data.x_calib), data.x_test, data.y_test, threshold=0.05)
    return {"float_acc": 100 * r.float_accuracy, "quant_acc": 100 * r.quant_accuracy, "change": 100 * r.accuracy_change,
            "disagreement": 100 * r.disagreement, "worst_class": 100 * float(r.deltas.min()), "flagged": len(r.flagged)}


def robustness_run(model: str, bits: int, corruption: str, seed: int) -> dict:
    data = load_digits(seed=0)
    net = model_for(model, seed)
    quant = quantize_model(net, PTQConfig(weight_bits=bits, act_bits=bits), data.x_calib)
    x = corrupt(data.x_test, corruption, 3, seed=seed)
    f, q = evaluate(net, x, data.y_test), evaluate(quant, x, data.y_test)
    return {"float_acc": 100 * f, "quant_acc": 100 * q, "gap": 100 * (q - f)}


def robustness_pvalues(table: dict) -> dict:
    """Add ``gap_p``, the sign-flip p-value of the per-seed gaps, to every row."""
    for row in table["rows"]:
        row["gap_p"] = sign_flip_test(row["gap_values"])
    return table


# ----------------------------------------------------------------------------- part 3b: what chance does
def part_null(ablation: dict, seeds: list, trials: int) -> dict:
    """Float-vs-float churn over seed pairs, and random flips of each quantized model's flip count."""
    data = load_digits(seed=0)
    churn = []
    for model in ("mlp", "cnn"):
        for a in seeds:
            for b in seeds:
                if a != b:
                    r = compare_models(model_for(model, a), model_for(model, b), data.x_test, data.y_test, threshold=0.05)
                    churn.append({"model": model, "reference_seed": a, "other_seed": b, "change": 100 * r.accuracy_change,
                                  "disagreement": 100 * r.disagreement, "worst_class": 100 * float(r.deltas.min()),
                                  "flagged": len(r.flagged)})
    flips = []
    for row in ablation["rows"]:
        for seed, disagreement, worst in zip(ablation["seeds"], row["disagreement_values"], row["worst_class_values"]):
            net = model_for(row["model"], seed)
            pred = logits(net, data.x_test).argmax(1)  # the float model's predictions
            n_flips = round(disagreement / 100 * len(data.y_test))
            null = 100 * worst_class_null(data.y_test, pred, n_flips, n_trials=trials, seed=seed)
            flips.append({"model": row["model"], "bits": row["bits"], "granularity": row["granularity"], "seed": seed,
                          "n_flips": n_flips, "worst_class": worst, "null_median": float(null.median()),
                          "null_p05": float(torch.quantile(null, 0.05)),
                          "p_value": float((null <= worst + 1e-9).double().mean())})
    return {"seeds": seeds, "trials": trials, "churn": churn, "random_flips": flips}


def null_markdown(result: dict) -> str:
    lines = ["Float-vs-float churn: every ordered pair of float models trained with different seeds "
             f"({len(result['seeds'])} seeds), mean ± std (median) in points:", "",
             "| model | pairs | accuracy change | disagreement | worst class | flagged classes |", "|---|---|---|---|---|---|"]
    for model in ("mlp", "cnn"):
        rows = [r for r in result["churn"] if r["model"] == model]
        cells = []
        for k in ("change", "disagreement", "worst_class", "flagged"):
            v = torch.tensor([r[k] for r in rows], dtype=torch.float64)
            cells.append(f"{v.mean():.1f} ± {v.std():.1f} ({v.median():.1f})")
        lines.append(f"| {model} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += ["", f"Random flips of the same count ({result['trials']} trials each): the quantized model's worst "
              "class against the worst class of random flips (p: share of trials at least as bad):", "",
              "| model | bits | granularity | seed | flips | worst class | null median | null 5th pct | p |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["random_flips"]:
        lines.append(f"| {r['model']} | {r['bits']} | {r['granularity']} | {r['seed']} | {r['n_flips']} | "
                     f"{r['worst_class']:.1f} | {r['null_median']:.1f} | {r['null_p05']:.1f} | {r['p_value']:.3f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- part 4: widgets
def part_widgets() -> dict:
    from widgets import measure

    from qedu.widgets.evaluation import calibration_explorer, evaluation_explorer

    out = {}
    for name, builder in (("08 evaluation_explorer", evaluation_explorer), ("09 calibration_explorer", calibration_explorer)):
        start = time.perf_counter()
        all_ms, warm_ms = measure(builder)
        cold = all_ms[: len(all_ms) // 2]
        out[name] = {"build_s": round(time.perf_counter() - start, 1), "first_pass_median_ms": statistics.median(cold),
                     "first_pass_max_ms": max(cold), "cached_median_ms": statistics.median(warm_ms),
                     "cached_max_ms": max(warm_ms), "moves": len(all_ms)}
    return out


def widgets_markdown(result: dict) -> str:
    lines = ["| widget | moves | first pass median / max ms | cached median / max ms | build + sweep s |", "|---|---|---|---|---|"]
    for name, r in result.items():
        lines.append(f"| {name} | {r['moves']} | {r['first_pass_median_ms']:.0f} / {r['first_pass_max_ms']:.0f} | "
                     f"{r['cached_median_ms']:.0f} / {r['cached_max_ms']:.0f} | {r['build_s']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["latency", "ablation", "robustness", "null", "widgets"],
                        choices=["latency", "ablation", "robustness", "null", "widgets"])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    qedu.setup(seed=0)  # one thread, as the lessons
    stem = "evaluation_quick" if args.quick else "evaluation"
    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    many_seeds = [0, 1, 2] if args.quick else list(range(20))
    path = RESULTS / f"{stem}.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.pop("machine", None), result.pop("seconds", None)  # older layout: one machine for all parts
    parts = {
        "latency": lambda: part_latency(repeats=20 if args.quick else 200, warmup=5 if args.quick else 20),
        "ablation": lambda: ablate(regression_run, {"model": ["mlp", "cnn"], "bits": [8, 4, 3],
                                                    "granularity": list(GRANULARITY)}, seeds).to_dict(),
        "robustness": lambda: robustness_pvalues(ablate(robustness_run, {"model": ["mlp", "cnn"], "bits": [8, 4],
                                                                         "corruption": list(CORRUPTIONS)},
                                                        many_seeds).to_dict()),
        "null": lambda: part_null(result["ablation"], many_seeds, trials=200 if args.quick else 1000),
        "widgets": part_widgets,
    }
    runs = result.setdefault("runs", {})  # each part keeps the machine, date and load it was measured under
    for name in args.parts:
        start = time.perf_counter()
        result[name] = parts[name]()
        runs[name] = {"machine": machine(), "seconds": round(time.perf_counter() - start, 1),
                      "seeds": many_seeds if name in ("robustness", "null") else seeds}
    md = [f"# {stem}", "", f"Generated by `python benchmarks/evaluation.py{' --quick' if args.quick else ''}`; "
          "lessons and ablations use 1 thread. Each part was run:", ""]
    for name, run in runs.items():
        env = run["machine"]
        md.append(f"* {name}: {env['date']}, {env['platform']}, {env['cpu_count']} CPUs, torch {env['torch']}, "
                  f"load {env['load_average_1min']}, seeds {run['seeds']}, {run['seconds']} s")
    md.append("")
    if "latency" in result:
        md += ["## Latency and size (same input tensor for every variant)", "", latency_markdown(result["latency"]), ""]
    if "ablation" in result:
        table = AblationTable.from_dict(result["ablation"])
        md += ["## Silent regressions: W=A bits, min/max, mean ± std over seeds (points)", "",
               table.to_markdown(digits=1), ""]
    if "robustness" in result:
        table = AblationTable.from_dict(result["robustness"])
        p_values = [f"{r['model']} {r['bits']} bits {r['corruption']}: p = {r['gap_p']:.4f}" for r in table.rows
                    if "gap_p" in r]
        md += ["## Robustness: accuracy gap to float at severity 3, mean ± std over seeds (points)", "",
               table.to_markdown(digits=1), "", "Sign-flip test of the per-seed gaps (two-sided):", "",
               "; ".join(p_values), ""]
    if "null" in result:
        md += ["## What chance does: float-vs-float churn and random flips", "", null_markdown(result["null"]), ""]
    if "widgets" in result:
        md += ["## Widget update time (kernel side, ms)", "", widgets_markdown(result["widgets"]), ""]
    write(stem, result, "\n".join(md))


if __name__ == "__main__":
    main()
