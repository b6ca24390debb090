#!/usr/bin/env python
"""Lesson 10's table: every LLM quantization method on the small language model, over calibration seeds.

The model is ``pretrained("tinylm")`` (the shipped weights); perplexity is measured on the whole
test split (``qedu.text.windows(load_text().test, 128)``), KL and top-1 flips against the float
model on the same tokens. Each method calibrates on ``--n-calib`` windows of 128 bytes from the
training split drawn with seed 0, 1, 2. Methods that use no calibration (RTN, NF4, W8A8
per-tensor and vector-wise, LLM.int8()) give the same model for every seed: they run once and
their std is 0 by construction, not by luck. Time to quantize is the median
over seeds of the CPU time of the quantization (one thread; on a shared machine the wall clock
measures the neighbours), including the calibration forward passes.

    python benchmarks/llm_quantization.py          # ~5 min on 2 busy cores
    python benchmarks/llm_quantization.py --quick  # 1 seed, 8 calibration windows (files get _quick)

-> ``benchmarks/results/llm_quantization.{json,md}``
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
from qedu.lm_eval import LMEvaluator  # noqa: E402
from qedu.llm_quant import quantize_tinylm  # noqa: E402
from qedu.models import pretrained  # noqa: E402
from qedu.text import load_text, windows  # noqa: E402
from qedu.widgets.llm import model_bits_per_weight  # noqa: E402

# (config label, method label, method name, settings, uses calibration)
CELLS = [
    ("W8A8", "per-tensor", "w8a8", dict(bits=8), False),
    ("W8A8", "SmoothQuant a=0.5", "smoothquant", dict(bits=8), True),
    ("W8A8", "int8 vector-wise", "int8", dict(bits=8), False),
    ("W8A8", "LLM.int8()", "llm_int8", dict(bits=8), False),
    ("W4 g128", "RTN", "rtn", dict(bits=4, group_size=128), False),
    ("W4 g128", "GPTQ", "gptq", dict(bits=4, group_size=128), True),
    ("W4 g128", "AWQ", "awq", dict(bits=4, group_size=128), True),
    ("W3 g128", "RTN", "rtn", dict(bits=3, group_size=128), False),
    ("W3 g128", "GPTQ", "gptq", dict(bits=3, group_size=128), True),
    ("W3 g128", "AWQ", "awq", dict(bits=3, group_size=128), True),
    ("W4 per-channel", "RTN", "rtn", dict(bits=4, group_size=None), False),
    ("W4 per-channel", "GPTQ", "gptq", dict(bits=4, group_size=None), True),
    ("W4 per-channel", "AWQ", "awq", dict(bits=4, group_size=None), True),
    ("NF4+DQ", "NF4", "nf4", dict(bits=4), False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n-calib", type=int, default=128)
    args = parser.parse_args()
    qedu.setup(seed=0, num_threads=1)
    seeds = [0] if args.quick else [0, 1, 2]
    n_calib = 8 if args.quick else args.n_calib

    model = pretrained("tinylm")
    x, y = windows(load_text().test, model.pos.num_embeddings)
    evaluator = LMEvaluator(model, x, y)
    rows = []
    for config, label, method, settings, calibrated in CELLS:
        scores, seconds = [], []
        for seed in seeds if calibrated else seeds[:1]:  # no calibration: every seed gives the same model
            result = quantize_tinylm(model, method, n_calib=n_calib, seed=seed, **settings)
            scores.append(evaluator.score(result[0]))
            seconds.append(result.cpu_seconds)  # one thread: CPU time = time on an idle machine
        ppl = [s.perplexity for s in scores]
        rows.append({
            "config": config, "method": label, "calibrated": calibrated, "settings": {k: v for k, v in settings.items()},
            "perplexity_mean": statistics.mean(ppl), "perplexity_std": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
            "perplexities": ppl, "seeds_run": seeds if calibrated else seeds[:1], "kl_mean": statistics.mean(s.kl for s in scores),
            "flips_mean": statistics.mean(s.flips for s in scores),
            "bits_per_weight": model_bits_per_weight(model, settings["bits"], settings.get("group_size"), method),
            "seconds_median": statistics.median(seconds),
        })
        print(f"{config:16s} {label:12s} ppl {rows[-1]['perplexity_mean']:.4f} ± {rows[-1]['perplexity_std']:.4f} "
              f"KL {rows[-1]['kl_mean']:.4f} flips {100 * rows[-1]['flips_mean']:.2f} % {rows[-1]['seconds_median']:.2f} s",
              flush=True)
    payload = {
        "machine": machine(), "model": "pretrained('tinylm')", "float_perplexity": evaluator.reference.perplexity,
        "test_tokens": int(x.numel()), "seeds": seeds, "n_calib": n_calib, "calib_seq_len": int(x.shape[1]), "rows": rows,
    }
    lines = [f"# LLM weight quantization of tinylm (test perplexity; float {evaluator.reference.perplexity:.4f})", "",
             f"{len(seeds)} calibration seeds x {n_calib} windows of {x.shape[1]} bytes; {x.numel():,} test tokens; "
             "time to quantize: median CPU seconds, one thread.", "",
             "| config | method | perplexity (mean ± std) | KL (nats/token) | top-1 flips | bits/weight | time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['method']} | {r['perplexity_mean']:.4f} ± {r['perplexity_std']:.4f} | "
                     f"{r['kl_mean']:.4f} | {100 * r['flips_mean']:.2f} % | {r['bits_per_weight']:.3f} | {r['seconds_median']:.2f} |")
    write("llm_quantization_quick" if args.quick else "llm_quantization", payload, "\n".join(lines))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
