#!/usr/bin/env python
"""The PTQ pipeline of Nagel et al., measured over seeds: the table lesson 04 reads.

Weights only, symmetric, min/max ranges, on the trained digits MLP and CNN (seeds 0, 1, 2; the
lesson's own models are seed 0), at 4, 3 and 2 bits:

* per tensor: round to nearest (RTN), + bias correction (BC), cross-layer equalization (CLE)
  then RTN, CLE + BC  (Nagel et al. 2019: CLE and BC target per-tensor quantization);
* per channel: RTN, RTN + BC, AdaRound (Nagel et al. 2020; 500 Adam steps per layer).

Test accuracy in % (360 test images; one image = 0.28 points), and the relative output error
``sum((y - y_float)^2) / sum(y_float^2)`` of the logits on the test images. Calibration uses
the 256 calibration images only. -> ``results/ptq_pipeline.{json,md}``

Usage::

    python benchmarks/ptq_pipeline.py           # 3 seeds (~5 min on 2 busy cores)
    python benchmarks/ptq_pipeline.py --quick   # seed 0, MLP only (files get _quick)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import qedu  # noqa: E402
from _common import machine, write  # noqa: E402
from qedu.adaround import adaround_model  # noqa: E402
from qedu.bias_correction import correct_bias  # noqa: E402
from qedu.data import load_digits  # noqa: E402
from qedu.equalization import equalize  # noqa: E402
from qedu.granularity import PerChannel, PerTensor  # noqa: E402
from qedu.models import evaluate, pretrained  # noqa: E402
from qedu.ptq import PTQConfig, quantize_model  # noqa: E402

METHODS = ("per-tensor RTN", "per-tensor RTN + BC", "per-tensor CLE", "per-tensor CLE + BC",
           "per-channel RTN", "per-channel RTN + BC", "per-channel AdaRound")


def quantized_models(model, bits: int, x_calib, seed: int) -> dict:
    """Every method's quantized copy of ``model`` at ``bits`` (weights only)."""
    tensor, channel = (PTQConfig(weight_bits=bits, weight_granularity=g, act_bits=None) for g in (PerTensor(), PerChannel(0)))
    equalized = equalize(model)
    rtn_t, rtn_c, cle = quantize_model(model, tensor), quantize_model(model, channel), quantize_model(equalized, tensor)
    return {
        "per-tensor RTN": rtn_t,
        "per-tensor RTN + BC": correct_bias(model, rtn_t, x_calib),
        "per-tensor CLE": cle,
        "per-tensor CLE + BC": correct_bias(equalized, cle, x_calib),
        "per-channel RTN": rtn_c,
        "per-channel RTN + BC": correct_bias(model, rtn_c, x_calib),
        "per-channel AdaRound": adaround_model(model, bits, x_calib, seed=seed)[0],
    }


def output_error(model, reference, x) -> float:
    with torch.no_grad():
        y, y_float = model(x), reference(x)
    return float(((y - y_float) ** 2).sum() / (y_float ** 2).sum())


def _mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="seed 0, MLP only")
    args = parser.parse_args(argv)
    qedu.setup(seed=0)
    seeds, model_names = ((0,), ("mlp",)) if args.quick else ((0, 1, 2), ("mlp", "cnn"))
    data = load_digits(seed=0)
    start = time.time()
    raw = []
    for name in model_names:
        for seed in seeds:
            model = pretrained(name, seed=seed)
            float_acc = 100 * evaluate(model, data.x_test, data.y_test)
            raw.append(dict(model=name, seed=seed, bits=32, method="float", acc=float_acc, output_error=0.0))
            for bits in (4, 3, 2):
                for method, q in quantized_models(model, bits, data.x_calib, seed).items():
                    raw.append(dict(model=name, seed=seed, bits=bits, method=method,
                                    acc=100 * evaluate(q, data.x_test, data.y_test),
                                    output_error=output_error(q, model.eval(), data.x_test)))
                print(f"{name} seed {seed} W{bits} done ({time.time() - start:.0f} s)", flush=True)
    rows = []
    for name in model_names:
        for bits in (32, 4, 3, 2):
            for method in (("float",) if bits == 32 else METHODS):
                runs = [r for r in raw if (r["model"], r["bits"], r["method"]) == (name, bits, method)]
                acc, acc_std = _mean_std([r["acc"] for r in runs])
                err, err_std = _mean_std([r["output_error"] for r in runs])
                rows.append(dict(model=name, bits=bits, method=method, acc_mean=acc, acc_std=acc_std,
                                 acc_values=[r["acc"] for r in runs], output_error_mean=err, output_error_std=err_std,
                                 output_error_values=[r["output_error"] for r in runs]))
    payload = {"rows": rows, "seeds": list(seeds), "machine": machine(), "seconds": round(time.time() - start, 1)}
    lines = [f"# PTQ pipeline (Nagel et al.): weights only, test accuracy % (mean ± std over seeds {list(seeds)})", "",
             "| model | bits | " + " | ".join(METHODS) + " |", "|---|---|" + "---|" * len(METHODS)]
    for name in model_names:
        float_row = next(r for r in rows if r["model"] == name and r["bits"] == 32)
        lines.append(f"| {name} | float | {float_row['acc_mean']:.1f} ± {float_row['acc_std']:.1f} |" + " |" * (len(METHODS) - 1))
        for bits in (4, 3, 2):
            cells = [next(r for r in rows if (r["model"], r["bits"], r["method"]) == (name, bits, m)) for m in METHODS]
            lines.append(f"| {name} | {bits} | " + " | ".join(f"{c['acc_mean']:.1f} ± {c['acc_std']:.1f}" for c in cells) + " |")
    lines += ["", f"{payload['machine']['platform']}, torch {payload['machine']['torch']}, {payload['seconds']} s"]
    write("ptq_pipeline_quick" if args.quick else "ptq_pipeline", payload, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
