#!/usr/bin/env python
"""How long GPTQ takes on every Linear of a small GPT, on one CPU thread.

Target (issue 16): GPTQ of every layer of a 1-5 M parameter GPT in under 10 s on one thread.
The weights are random (TinyGPT's GPT-2 initialisation): the cost of GPTQ depends on the
shapes, not on the values. For each model size it times, with the median of ``--repeats`` runs:

* ``inputs_s``: one forward pass that records every Linear's calibration inputs;
* ``gptq_s``: :func:`qedu.gptq.gptq_quantize` on every Linear (Hessian, Cholesky, columns),
  from those inputs (``sequential=False``);
* ``sequential_s``: :func:`qedu.layerwise.quantize_linears` with ``sequential=True``, which
  also reruns the model (stopped early) before each layer so it sees its quantized predecessors;
* ``rtn_s``: round-to-nearest of every Linear, for scale.

Usage: python benchmarks/gptq_speed.py [--quick] [--repeats N]
       -> benchmarks/results/gptq_speed.{json,md}
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402

import torch  # noqa: E402

from qedu.gptq import gptq_quantize  # noqa: E402
from qedu.layerwise import linear_inputs, quantize_linears  # noqa: E402
from qedu.models import TinyGPT  # noqa: E402
from qedu.rtn import rtn_quantize  # noqa: E402

CONFIGS = {  # name -> TinyGPT arguments
    "h256_L2 (tinylm shape)": dict(vocab_size=256, seq_len=128, hidden=256, n_layers=2, n_heads=4),
    "h256_L4": dict(vocab_size=256, seq_len=128, hidden=256, n_layers=4, n_heads=4),
    "h384_L2": dict(vocab_size=256, seq_len=128, hidden=384, n_layers=2, n_heads=6),
}


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is what one
    free core would take; the wall time includes waiting for a core."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(config: dict, n_seq: int, repeats: int, bits: int, group_size: int) -> dict:
    torch.manual_seed(0)
    model = TinyGPT(**config).eval()
    tokens = torch.randint(0, config["vocab_size"], (n_seq, config["seq_len"]), generator=torch.Generator().manual_seed(0))
    modules = dict(model.named_modules())
    xs = linear_inputs(model, tokens)

    def gptq_all():
        for name, x in xs.items():
            gptq_quantize(modules[name].weight.detach(), x, bits=bits, group_size=group_size)

    def rtn_all():
        for name in xs:
            rtn_quantize(modules[name].weight.detach(), bits, group_size)

    def sequential():
        quantize_linears(model, tokens, lambda w, x: gptq_quantize(w, x, bits=bits, group_size=group_size).weight)

    runs = {k: [] for k in ("inputs_s", "gptq_s", "sequential_s", "rtn_s")}
    cpu = {k: [] for k in runs}
    for _ in range(repeats):
        for key, fn in (("inputs_s", lambda: linear_inputs(model, tokens)), ("gptq_s", gptq_all),
                        ("sequential_s", sequential), ("rtn_s", rtn_all)):
            wall_s, cpu_s = timed(fn)
            runs[key].append(wall_s)
            cpu[key].append(cpu_s)
    linear_params = sum(modules[n].weight.numel() for n in xs)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "linear_weights": linear_params,
        "n_linears": len(xs),
        "calibration_tokens": n_seq * config["seq_len"],
        **{k: round(statistics.median(v), 3) for k, v in runs.items()},
        **{k.replace("_s", "_cpu_s"): round(statistics.median(v), 3) for k, v in cpu.items()},
        **{k.replace("_s", "_all_s"): [round(t, 3) for t in v] for k, v in runs.items()},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one repeat, the smallest model only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sequences", type=int, default=32, help="calibration sequences of 128 tokens")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    configs = dict(list(CONFIGS.items())[:1]) if args.quick else CONFIGS
    repeats = 1 if args.quick else args.repeats
    results = {name: measure(cfg, args.sequences, repeats, bits=4, group_size=128) for name, cfg in configs.items()}
    payload = {"machine": machine(), "settings": {"bits": 4, "group_size": 128, "threads": 1, "repeats": repeats,
                                                  "sequences": args.sequences}, "results": results}
    lines = [
        "# GPTQ speed on one CPU thread (W4, groups of 128)",
        "",
        f"Measured {payload['machine']['date']} on {payload['machine']['processor']} "
        f"({payload['machine']['cpu_count']} cores, load {payload['machine']['load_average_1min']}), torch "
        f"{payload['machine']['torch']}; median of {repeats} run(s); {args.sequences} x 128 calibration tokens; "
        "random weights. Target: every layer in < 10 s.",
        "",
        "Each cell: wall seconds / CPU seconds of the process (on a shared machine the CPU time is what one free",
        "core would take).",
        "",
        "| model | params | Linears | record inputs (s) | GPTQ, all Linears (s) | sequential, end to end (s) | RTN (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        cell = lambda k: f"{r[k + '_s']:.2f} / {r[k + '_cpu_s']:.2f}"
        lines.append(f"| {name} | {r['params'] / 1e6:.2f} M | {r['n_linears']} | {cell('inputs')} | {cell('gptq')} | "
                     f"{cell('sequential')} | {cell('rtn')} |")
    write("gptq_speed", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
