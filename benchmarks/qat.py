#!/usr/bin/env python
"""Quantization-aware training vs post-training quantization, over several seeds: lesson 05's table.

Parts (one results file, ``results/qat.{json,md}``; ``--quick`` writes ``qat_quick``):

* ``weights``: the trained digits MLP (``qedu.models.pretrained("mlp", seed)``, one model and one
  training seed per seed) with weights at 4, 3, 2 bits and ternary (-1, 0, 1), per channel:
  PTQ with min/max scales, PTQ with MSE clipping (= LSQ before training), QAT with min/max scales
  and LSQ, 3 epochs each. Test accuracy (%) after 1 and 3 epochs, training seconds.
* ``activations``: the same with activations quantized too (W4A4, W3A3, W2A2): PTQ min/max and
  MSE (``qedu.ptq``) vs LSQ weights + LSQ or PACT activations, 3 epochs.
* ``cost``: seconds per epoch of ordinary float training vs QAT (min/max, LSQ) on the same model.
* ``widget``: lesson 05's widget (``qedu.widgets.qat.qat_trainer``): milliseconds per change of
  the bits control (first visit computes PTQ, later visits redraw) and seconds per training epoch.

Usage::

    python benchmarks/qat.py            # 5 seeds (~3-5 min on 2 busy cores)
    python benchmarks/qat.py --quick    # 1 seed, a smoke test
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import qedu  # noqa: E402
from _common import machine, summary, write  # noqa: E402
from qedu.analysis import ablate  # noqa: E402
from qedu.data import load_digits  # noqa: E402
from qedu.models import evaluate, pretrained, train  # noqa: E402
from qedu.ptq import PTQConfig, quantize_model  # noqa: E402
from qedu.qat import QATConfig, convert, prepare_qat, train_qat  # noqa: E402
from qedu.widgets.qat import BITS, qat_trainer, run_method, start_accuracy  # noqa: E402

EPOCHS = 3
DATA = load_digits(seed=0)
_MODELS: dict = {}


def model_for(seed: int):
    if seed not in _MODELS:
        _MODELS[seed] = pretrained("mlp", seed=seed)  # the lessons' cache: trained once per seed
    return _MODELS[seed]


def acc(model) -> float:
    return 100 * evaluate(model, DATA.x_test, DATA.y_test)


# ----------------------------------------------------------------------------- part 1: weights
def weights_run(bits: str, method: str, seed: int) -> dict:
    model = model_for(seed)
    if method == "float32":
        a = acc(model)
        return {"acc": a, "acc_1epoch": a, "train_s": 0.0}
    if method in ("PTQ min/max", "PTQ MSE"):
        a = 100 * start_accuracy(model, DATA, bits, "PTQ" if method == "PTQ min/max" else "LSQ")
        return {"acc": a, "acc_1epoch": a, "train_s": 0.0}
    run = run_method(model, DATA, bits, method, EPOCHS, seed=seed)
    return {"acc": 100 * run.final_acc, "acc_1epoch": 100 * run.test_acc[0], "train_s": sum(run.epoch_seconds)}


# ----------------------------------------------------------------------------- part 2: activations too
def activations_run(bits: int, method: str, seed: int) -> dict:
    model = model_for(seed)
    if method.startswith("PTQ"):
        kind = "minmax" if method == "PTQ min/max" else "mse"
        config = PTQConfig(weight_bits=bits, act_bits=bits, weight_method=kind, act_method=kind)
        return {"acc": acc(quantize_model(model, config, DATA.x_calib)), "train_s": 0.0}
    config = QATConfig(weight_bits=bits, method="lsq", act_bits=bits, act_method="pact" if "PACT" in method else "lsq")
    prepared = prepare_qat(model, config, DATA.x_calib)
    history = train_qat(prepared, DATA, epochs=EPOCHS, seed=seed, progress=False)
    return {"acc": acc(convert(prepared)), "train_s": sum(history.epoch_seconds)}


# ----------------------------------------------------------------------------- part 3: cost per epoch
def cost(seeds) -> dict:
    out = {"float": [], "QAT-minmax": [], "LSQ": [], "LSQ W+A (LSQ acts)": []}
    for seed in seeds:
        model = model_for(seed)
        out["float"] += train(copy.deepcopy(model).train(), DATA, epochs=EPOCHS, seed=seed).epoch_seconds
        for name, config in (("QAT-minmax", QATConfig(weight_bits=2, method="minmax")), ("LSQ", QATConfig(weight_bits=2)),
                             ("LSQ W+A (LSQ acts)", QATConfig(weight_bits=2, act_bits=2))):
            prepared = prepare_qat(model, config, DATA.x_calib)
            out[name] += train_qat(prepared, DATA, epochs=EPOCHS, seed=seed, progress=False).epoch_seconds
    return {k: {"median_s": round(statistics.median(v), 4), "min_s": round(min(v), 4), "max_s": round(max(v), 4),
                "n": len(v)} for k, v in out.items()}


# ----------------------------------------------------------------------------- part 4: the widget
def widget() -> dict:
    panel = qat_trainer()
    sweep = ["4 bits", "3 bits", "ternary", "2 bits"]
    first, repeat = [], []
    for bits in sweep:  # first visits: PTQ is computed
        panel.controls["bits"].value = bits
        first.append(panel.last_update_ms)
    for _ in range(5):  # later visits: cached, redraw only
        for bits in sweep:
            panel.controls["bits"].value = bits
            repeat.append(panel.last_update_ms)
    epochs = []
    for method in ("QAT-minmax", "LSQ"):
        panel.controls["method"].value = method
        panel.train_button.click()
        epochs += list(panel.runs[panel.values["bits"], method, panel.values["epochs"]].epoch_seconds)
    return {"bits_change_first_visit": summary(first), "bits_change_repeat": summary(repeat),
            "train_epoch_s": {"median_s": round(statistics.median(epochs), 4), "n": len(epochs)}}


# ----------------------------------------------------------------------------- main
def markdown(payload: dict) -> str:
    from qedu.analysis import AblationTable

    w = AblationTable.from_dict(payload["weights"])
    a = AblationTable.from_dict(payload["activations"])
    m = payload["machine"]
    lines = [
        "# qat", "",
        f"Generated by `python benchmarks/qat.py` on {m['date']}: {m['platform']}, {m['cpu_count']} CPUs, "
        f"torch {m['torch']} with {m['torch_threads']} thread(s), load average {m['load_average_1min']}, "
        f"seeds {payload['seeds']}, {EPOCHS} epochs of QAT (Adam, lr 1e-3, batch 32). Wall time {payload['wall_s']:.0f} s.",
        "", "The digits MLP (`pretrained('mlp', seed)`), weights per channel, symmetric. Test accuracy in %, mean ± std "
        "over seeds (one test image = 0.28 points).", "",
        "## Weights only: accuracy after 3 epochs", "", w.pivot("bits", "method", "acc", digits=1), "",
        "## Weights only: accuracy after 1 epoch", "", w.pivot("bits", "method", "acc_1epoch", digits=1), "",
        "## Weights only: training seconds (3 epochs)", "", w.pivot("bits", "method", "train_s", digits=2), "",
        "## Weights and activations at the same bits: accuracy after 3 epochs", "",
        a.pivot("bits", "method", "acc", digits=1), "",
        "## Seconds per training epoch (median over seeds and epochs)", "",
        "| training | median s | min s | max s |", "|---|---|---|---|",
    ]
    lines += [f"| {k} | {v['median_s']:.3f} | {v['min_s']:.3f} | {v['max_s']:.3f} |" for k, v in payload["cost"].items()]
    wd = payload["widget"]
    lines += ["", "## Widget (`qedu.widgets.qat.qat_trainer`)", "",
              f"- bits change, first visit (PTQ computed): median {wd['bits_change_first_visit']['median_ms']} ms",
              f"- bits change, later visits (redraw only): median {wd['bits_change_repeat']['median_ms']} ms "
              f"(p75 {wd['bits_change_repeat']['p75_ms']} ms)",
              f"- one training epoch inside the widget: median {wd['train_epoch_s']['median_s']:.3f} s (plus one redraw)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, results in qat_quick.*")
    args = parser.parse_args(argv)
    qedu.setup(seed=0)  # one thread: steady timings
    seeds = [0] if args.quick else [0, 1, 2, 3, 4]
    start = time.perf_counter()
    weights = ablate(weights_run, {"bits": list(BITS), "method": ["float32", "PTQ min/max", "PTQ MSE", "QAT-minmax", "LSQ"]},
                     seeds)
    print(f"weights done ({time.perf_counter() - start:.0f} s)", flush=True)
    activations = ablate(activations_run, {"bits": [4, 3, 2], "method": ["PTQ min/max", "PTQ MSE", "LSQ", "LSQ + PACT"]},
                         seeds)
    print(f"activations done ({time.perf_counter() - start:.0f} s)", flush=True)
    payload = {"machine": machine(), "seeds": seeds, "epochs": EPOCHS, "weights": weights.to_dict(),
               "activations": activations.to_dict(), "cost": cost(seeds[:3]), "widget": widget()}
    payload["wall_s"] = round(time.perf_counter() - start, 1)
    write("qat_quick" if args.quick else "qat", payload, markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
