#!/usr/bin/env python
"""Post-training quantization, measured over several seeds: the tables lessons 03 and 04 print.

Parts (each writes its own results file, so one can be rerun alone):

* ``ablation``: the trained digits MLP and CNN (``qedu.models.pretrained``, one model per seed)
  quantized at 8/4/3/2 bits, per tensor vs per channel, min/max vs MSE vs percentile clipping,
  weights only (W) vs weights and activations at the same bits (W+A). Test accuracy in %.
  Plus the harder task (``qedu.tasks``: next letter of Unicode names, bits per character).
  -> ``results/ptq_ablation.{json,md}``
* ``calibration``: activations only (weights 8 bit): calibration method x number of
  calibration images, and one corrupted calibration image (pixels x 20) vs none.
  -> ``results/ptq_calibration.{json,md}``
* ``widget``: median update time of lesson 04's accuracy widget (``qedu.widgets.ptq``) over a
  scripted sweep of its controls, first visits (computed) and repeats (cached) separately.
  -> ``results/ptq_widget.{json,md}``

Usage::

    python benchmarks/ptq.py                 # everything, 3 seeds (~5-10 min on 2 busy cores)
    python benchmarks/ptq.py --parts widget  # one part
    python benchmarks/ptq.py --quick         # 1 seed, MLP only: a smoke test (files get _quick)
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


import qedu  # noqa: E402
from qedu.analysis import AblationTable, ablate  # noqa: E402
from qedu.data import load_digits  # noqa: E402
from qedu.granularity import PerChannel, PerTensor  # noqa: E402
from qedu.models import evaluate, pretrained  # noqa: E402
from qedu.ptq import PTQConfig, quantize_model  # noqa: E402
from qedu.widgets.ptq import calibration_images, with_corrupted_image  # noqa: E402

GRANULARITY = {"per-tensor": PerTensor(), "per-channel": PerChannel(0)}
PERCENTILE = 99.9
_MODELS: dict = {}


def model_for(name: str, seed: int):
    """Trained models, cached in memory here and on disk by qedu (the default cache folder)."""
    if (name, seed) not in _MODELS:
        if name == "names":
            from qedu.tasks import trained_char_mlp

            _MODELS[name, seed] = trained_char_mlp(seed=seed)
        else:
            _MODELS[name, seed] = pretrained(name, seed=seed)
    return _MODELS[name, seed]


def config_for(scheme: str, bits: int, granularity: str, method: str) -> PTQConfig:
    return PTQConfig(weight_bits=bits, weight_granularity=GRANULARITY[granularity], weight_method=method,
                     act_bits=bits if scheme == "W+A" else None, act_method=method, percentile=PERCENTILE)


# ----------------------------------------------------------------------------- part 1: ablation
def digits_run(model: str, scheme: str, bits: int, granularity: str, method: str, seed: int) -> dict:
    data = load_digits(seed=0)
    net = model_for(model, seed)
    float_acc = evaluate(net, data.x_test, data.y_test)
    if bits == 32:
        return {"acc": 100 * float_acc, "drop": 0.0}
    q = quantize_model(net, config_for(scheme, bits, granularity, method), data.x_calib)
    acc = evaluate(q, data.x_test, data.y_test)
    return {"acc": 100 * acc, "drop": 100 * (float_acc - acc)}


def names_run(scheme: str, bits: int, granularity: str, method: str, seed: int) -> dict:
    from qedu.tasks import bits_per_char, load_names_task

    task = load_names_task(seed=seed)
    net = model_for("names", seed)
    if bits == 32:
        q = net
    else:
        q = quantize_model(net, config_for(scheme, bits, granularity, method), task.x_calib.float())
    return {"bpc": bits_per_char(q, task.x_test, task.y_test), "acc": 100 * evaluate(q, task.x_test.float(), task.y_test)}


def part_ablation(seeds, models) -> dict:
    factors = {"model": models, "scheme": ["W", "W+A"], "bits": [8, 4, 3, 2],
               "granularity": list(GRANULARITY), "method": ["minmax", "mse", "percentile"]}
    start = time.perf_counter()
    float_table = ablate(lambda model, seed: digits_run(model, "W", 32, "per-tensor", "minmax", seed), {"model": models}, seeds)
    table = ablate(digits_run, factors, seeds)
    out = {"digits": table.to_dict(), "digits_float": float_table.to_dict(),
           "digits_seconds": time.perf_counter() - start}
    if "cnn" in models:  # the harder task rides along with the full run
        start = time.perf_counter()
        names_factors = {"scheme": ["W", "W+A"], "bits": [8, 4, 3, 2], "granularity": list(GRANULARITY),
                         "method": ["minmax", "mse"]}
        float_run = lambda task, seed: names_run("W", 32, "per-tensor", "minmax", seed)  # noqa: E731
        out["names_float"] = ablate(float_run, {"task": ["names"]}, seeds).to_dict()
        out["names"] = ablate(names_run, names_factors, seeds).to_dict()
        out["names_seconds"] = time.perf_counter() - start
    return out


def ablation_markdown(result: dict) -> str:
    digits = AblationTable.from_dict(result["digits"])
    floats = AblationTable.from_dict(result["digits_float"])
    lines = ["## Digits: test accuracy (%), mean ± std over seeds", ""]
    for model in dict.fromkeys(r["model"] for r in digits.rows):
        mean, std = floats.get("acc", model=model)
        lines += [f"### {model} (float32: {mean:.1f} ± {std:.1f})", ""]
        for scheme in ("W", "W+A"):
            for method in ("minmax", "mse", "percentile"):
                lines += [f"**{scheme}, {method}**", "",
                          digits.pivot("bits", "granularity", "acc", digits=1, model=model, scheme=scheme, method=method), ""]
    if "names" in result:
        names = AblationTable.from_dict(result["names"])
        nf = AblationTable.from_dict(result["names_float"])
        mean, std = nf.get("bpc", task="names")
        lines += ["## Unicode names (qedu.tasks): bits per character (lower is better), mean ± std", "",
                  f"float32: {mean:.3f} ± {std:.3f} bits/char, top-1 {nf.get('acc', task='names')[0]:.1f} %", ""]
        for scheme in ("W", "W+A"):
            for method in ("minmax", "mse"):
                lines += [f"**{scheme}, {method}**", "",
                          names.pivot("bits", "granularity", "bpc", digits=3, scheme=scheme, method=method), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- part 2: calibration
def calibration_run(model: str, act_bits: int, method: str, n_calib: int, outlier: str, seed: int) -> dict:
    data = load_digits(seed=0)
    x = calibration_images(data, n_calib, seed=seed)
    if outlier == "one corrupted image":
        x = with_corrupted_image(x)
    config = PTQConfig(weight_bits=8, act_bits=act_bits, act_method=method, percentile=PERCENTILE)
    q = quantize_model(model_for(model, seed), config, x)
    return {"acc": 100 * evaluate(q, data.x_test, data.y_test)}


def part_calibration(seeds, models) -> dict:
    methods = ["minmax", "percentile", "mse", "kl"]
    samples = ablate(calibration_run, {"model": models, "act_bits": [4], "method": methods,
                                       "n_calib": [1, 2, 8, 32, 256], "outlier": ["none"]}, seeds)
    outliers = ablate(calibration_run, {"model": models, "act_bits": [8, 4], "method": methods, "n_calib": [256],
                                        "outlier": ["none", "one corrupted image"]}, seeds)
    return {"samples": samples.to_dict(), "outliers": outliers.to_dict()}


def calibration_markdown(result: dict) -> str:
    samples = AblationTable.from_dict(result["samples"])
    outliers = AblationTable.from_dict(result["outliers"])
    lines = ["## Calibration: test accuracy (%) with 8-bit weights, mean ± std over seeds", ""]
    for model in dict.fromkeys(r["model"] for r in samples.rows):
        lines += [f"### {model}: A4, number of calibration images", "",
                  samples.pivot("n_calib", "method", digits=1, model=model, act_bits=4, outlier="none"), ""]
        for bits in (8, 4):
            lines += [f"### {model}: A{bits}, 256 calibration images, one of them corrupted (x 20) or not", "",
                      outliers.pivot("method", "outlier", digits=1, model=model, act_bits=bits, n_calib=256), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- part 3: widget
SWEEP = [  # (control, value): a learner's session with lesson 04's widget
    ("weight_bits", 4), ("weight_bits", 3), ("weight_bits", 2), ("granularity", "per-tensor"),
    ("granularity", "per-channel"), ("method", "mse"), ("act_bits", 4), ("act_bits", 8), ("method", "percentile"),
    ("keep_8bit", "fc1"), ("keep_8bit", "fc3"), ("keep_8bit", "none"), ("weight_bits", 4), ("method", "minmax"),
    ("weight_bits", 8), ("act_bits", "none"),
]


CALIBRATION_SWEEP = [  # lesson 03's widget
    ("outlier", True), ("method", "percentile"), ("method", "mse"), ("method", "kl"), ("n_calib", 8), ("bits", 3),
    ("layer", "fc3"), ("method", "minmax"), ("outlier", False), ("n_calib", 256), ("bits", 4), ("layer", "fc2"),
]


def _time_panel(build, sweep, repeats: int) -> dict:
    start = time.perf_counter()
    panel = build()
    build_ms = (time.perf_counter() - start) * 1e3
    first, again = [], []
    for round_ in range(repeats):
        for name, value in sweep:
            panel.controls[name].value = value
            assert panel.error is None, panel.message.value
            (first if round_ == 0 else again).append(panel.last_update_ms)
    return {"build_ms": build_ms, "first_visit_ms": first, "cached_ms": again,
            "first_visit_median_ms": statistics.median(first), "cached_median_ms": statistics.median(again),
            "all_median_ms": statistics.median(first + again), "max_ms": max(first + again)}


def part_widget(repeats: int = 3) -> dict:
    from qedu.widgets.ptq import calibration_explorer, ptq_explorer

    return {"ptq_explorer": _time_panel(ptq_explorer, SWEEP, repeats),
            "calibration_explorer": _time_panel(calibration_explorer, CALIBRATION_SWEEP, repeats)}


def widget_markdown(result: dict) -> str:
    lines = []
    for name, lesson in (("ptq_explorer", "Lesson 04 accuracy widget"), ("calibration_explorer", "Lesson 03 calibration widget")):
        r = result[name]
        lines += [
            f"## {lesson} (`qedu.widgets.ptq.{name}`): time per control change", "",
            "| measure | ms |", "|---|---|",
            f"| build (loads the model, first draw) | {r['build_ms']:.0f} |",
            f"| median, first visit of a setting (quantize + calibrate + evaluate + draw) | {r['first_visit_median_ms']:.0f} |",
            f"| median, setting seen before (cached numbers, draw only) | {r['cached_median_ms']:.0f} |",
            f"| median, all {len(r['first_visit_ms']) + len(r['cached_ms'])} changes | {r['all_median_ms']:.0f} |",
            f"| slowest change | {r['max_ms']:.0f} |", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def machine() -> dict:
    info = qedu.environment_report()
    info["date"] = datetime.datetime.now().isoformat(timespec="seconds")
    return info


def write(stem: str, result: dict, markdown: str, quick: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem += "_quick" if quick else ""
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    env = result["machine"]
    header = (f"# {stem}\n\nGenerated by `python benchmarks/ptq.py{' --quick' if quick else ''}` on {env['date']}: "
              f"{env['platform']}, {env['cpu_count']} CPUs, torch {env['torch']} with {env['torch_threads']} thread(s); "
              + (f"seeds {result['seeds']}. Percentile methods keep the {PERCENTILE}th percentile. " if result["seeds"] else "")
              + f"Wall time {result['seconds']:.0f} s.\n\n")
    (RESULTS / f"{stem}.md").write_text(header + markdown)
    print(f"wrote {RESULTS / stem}.json and .md")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["ablation", "calibration", "widget"],
                        choices=["ablation", "calibration", "widget"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    qedu.setup(seed=0)  # one thread: the fastest and steadiest on small models
    seeds = [0] if args.quick else list(range(args.seeds))
    models = ["mlp"] if args.quick else ["mlp", "cnn"]
    parts = {
        "ablation": ("ptq_ablation", lambda: part_ablation(seeds, models), ablation_markdown),
        "calibration": ("ptq_calibration", lambda: part_calibration(seeds, models), calibration_markdown),
        "widget": ("ptq_widget", part_widget, widget_markdown),
    }
    for part in args.parts:
        stem, run, to_markdown = parts[part]
        start = time.perf_counter()
        result = run()
        result.update(seeds=seeds if part != "widget" else None, machine=machine(), seconds=time.perf_counter() - start)
        write(stem, result, to_markdown(result), args.quick)


if __name__ == "__main__":
    main()
