#!/usr/bin/env python
"""Is int8 faster? fp32 against every real int8/int4 path of qedu.deploy, over shapes, on this CPU.

For the digits MLP and for single square ``Linear`` layers from the MLP's width up to 4096, at
batch sizes 1 to 256, it deploys every path of :data:`qedu.deploy.PATHS` (torch fp32, torch.ao
dynamic int8, torchao W8A8 and W8, ONNX Runtime fp32, dynamic int8, static QDQ int8 and int4
MatMulNBits) and times them:

* threads pinned: ``torch.set_num_threads(T)`` and ONNX Runtime ``intra_op_num_threads = T``
  (``--threads``, default 1), ``inter_op = 1``;
* warm-up calls, then ``--rounds`` rounds; in each round every path runs a block of calls, the
  paths in a rotated order (round-robin), so that a burst of load from other processes hits all
  paths alike;
* per call, the wall time and the calling thread's CPU time (``time.thread_time``: with one
  thread both libraries compute in the caller, so it excludes the time spent waiting for a core
  on a shared machine);
* median and spread (p25-p75) over rounds, and the **ratio to fp32 of the same framework**
  (torch paths / torch fp32, ONNX Runtime paths / ORT fp32) computed round by round, then its
  median and p25-p75: ratios of runs taken seconds apart, never across runs;
* model bytes on disk; the CPU's int8 instruction sets (/proc/cpuinfo) and torch's capability.

For the digits MLP it also records each path's test accuracy and its agreement with qedu's
reference (:func:`qedu.deploy.reference`), and how far ONNX Runtime's dynamic path is from
exact int8 arithmetic on this CPU (pair saturation, :func:`qedu.deploy.ort_saturates`).

Usage: python benchmarks/deployment.py [--quick] [--threads 1] [--rounds N] [--render]
       -> benchmarks/results/deployment.{json,md}   (--quick: fewer shapes and rounds, written as
          deployment_quick.{json,md}; --render: rewrite the .md from the .json, measuring nothing)
The committed run took about 8 minutes of wall time on 2 busy cores (load 8-16); needs the deploy extra.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from qedu.data import load_digits  # noqa: E402
from qedu.deploy import PATHS, cpu_features, deploy, export_onnx, ort_saturates, reference  # noqa: E402
from qedu.models import pretrained  # noqa: E402

BASELINE = {p: ("ort_fp32" if p.startswith("ort") else "torch_fp32") for p in PATHS}


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """(p25, median, p75)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def build(name: str, folder: Path, threads: int, data) -> tuple[dict, dict, float]:
    """Every path of one model: {path: Deployed}, {path: bytes}, export seconds."""
    if name == "mlp":
        model, x_calib = pretrained("mlp"), data.x_calib
    else:
        width = int(name.split("_")[1])
        torch.manual_seed(0)
        model = nn.Linear(width, width).eval()
        x_calib = torch.randn(64, width, generator=torch.Generator().manual_seed(1))
    sub = folder / name
    sub.mkdir()
    t0 = time.perf_counter()
    onnx_file = export_onnx(model, sub / "fp32_export.onnx", x_calib[:2])
    export_s = time.perf_counter() - t0
    deployed = {p: deploy(model, p, sub, x_calib=x_calib, onnx_file=onnx_file, threads=threads) for p in PATHS}
    return deployed, {p: d.bytes_on_disk for p, d in deployed.items()}, export_s


def time_paths(deployed: dict, x: torch.Tensor, rounds: int, budget_s: float, warmup: int = 3) -> tuple[dict, int]:
    """Round-robin timing: ({path: {"wall": [ms per call, one per round], "cpu": [...]}}, rounds run).

    A block of calls lasts about 4 ms of fp32; the number of rounds is cut (to no fewer than 5)
    so that one shape takes about ``budget_s`` seconds of CPU (torchao's eager int8 matmul is slow).
    """
    paths = list(deployed)
    first = {}
    for p in paths:
        for _ in range(warmup):
            t0 = time.thread_time()
            deployed[p].run(x)
            first[p] = time.thread_time() - t0
    inner = max(1, min(200, int(0.004 / max(first["torch_fp32"], 1e-6))))
    rounds = max(5, min(rounds, int(budget_s / (inner * sum(first.values())))))
    out = {p: {"wall": [], "cpu": []} for p in paths}
    for r in range(rounds):
        order = paths[r % len(paths):] + paths[:r % len(paths)]  # rotate who goes first
        for p in order:
            fn = deployed[p].run  # the bare call (Deployed.__call__ also checks the input)
            wall, cpu = time.perf_counter(), time.thread_time()
            for _ in range(inner):
                fn(x)
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            out[p]["wall"].append(1e3 * wall / inner)
            out[p]["cpu"].append(1e3 * cpu / inner)
    return out, rounds


def int_mm_probe(m: int = 256, k: int = 1024, n: int = 1024, repeats: int = 3) -> dict:
    """torch._int_mm (int8 x int8 -> int32, what torchao's W8A8 calls on CPU) against a float32 matmul."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8), torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    out = {"shape": [m, k, n]}
    for name, fn in (("int_mm_ms", lambda: torch._int_mm(a, b)), ("float_mm_ms", lambda: a.float() @ b.float())):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.thread_time()
            fn()
            times.append(1e3 * (time.thread_time() - t0))
        out[name] = round(statistics.median(times), 3)
    return out


def summarize(samples: dict) -> dict:
    rows = {}
    for p, s in samples.items():
        base = samples[BASELINE[p]]
        row = {}
        for clock in ("wall", "cpu"):
            p25, med, p75 = quantiles(s[clock])
            r25, rmed, r75 = quantiles([a / b for a, b in zip(s[clock], base[clock]) if b > 0])
            row[clock] = {"median_ms": round(med, 4), "p25_ms": round(p25, 4), "p75_ms": round(p75, 4),
                          "ratio_to_fp32": round(rmed, 3), "ratio_p25": round(r25, 3), "ratio_p75": round(r75, 3)}
        rows[p] = row
    return rows


def mlp_quality(deployed: dict, data) -> dict:
    """Accuracy, agreement with the reference, and ORT dynamic's distance from exact int8 arithmetic."""
    model = pretrained("mlp")
    with torch.no_grad():
        y_float = model(data.x_test)
    out = {}
    for p, dep in deployed.items():
        y = dep(data.x_test)
        y_ref = reference(model, p, data.x_calib)(data.x_test)
        out[p] = {"accuracy": round(float((y.argmax(1) == data.y_test).float().mean()), 4),
                  "rel_err_to_reference": float((y - y_ref).abs().max() / y_ref.abs().max()),
                  "rel_err_to_float": float((y - y_float).abs().max() / y_float.abs().max()),
                  "agreement_with_float": round(float((y.argmax(1) == y_float.argmax(1)).float().mean()), 4)}
    y = deployed["ort_dynamic"](data.x_test)
    exact = reference(model, "ort_dynamic", saturate_pairs=False)(data.x_test)
    out["ort_dynamic_vs_exact_int8"] = {
        "ort_saturates": ort_saturates(),
        "rel_err": float((y - exact).abs().max() / exact.abs().max()),
        "share_of_logits_changed": round(float(((y - exact).abs() > 1e-4 * exact.abs().max()).float().mean()), 4)}
    return out


def markdown(payload: dict) -> str:
    m, cpu = payload["machine"], payload["cpu"]
    flags = ", ".join(f for f, on in (cpu["flags"] or {}).items() if on) or "unknown"
    clock = payload["clock"]
    lines = [
        f"# Real int8 kernels against fp32 on a CPU{' (quick run)' if payload['quick'] else ''}",
        "",
        f"Measured {m['date']} on {cpu['model_name'] or m['processor']} ({m['cpu_count']} cores), "
        f"torch {m['torch']} (CPU capability {cpu['torch_cpu_capability']}), onnxruntime {payload['versions']['onnxruntime']}, "
        f"torchao {payload['versions']['torchao']}. Instruction sets: {flags}; "
        f"**int8 dot product (VNNI/AMX): {'yes' if cpu['int8_dot_product'] else 'no'}**.",
        f"Threads: torch {payload['threads']}, ONNX Runtime intra-op {payload['threads']}. "
        f"Load average (1 min) {payload['load_average']['before']} before and {payload['load_average']['after']} after "
        f"the run{' -- a shared, busy machine: absolute times are inflated, ratios (taken round by round) much less' if max(payload['load_average'].values()) > 2 * m['cpu_count'] / 2 else ''}.",
        f"Each cell: median per call over {min(r['rounds'] for r in payload['latency'])} to {payload['rounds']} round-robin rounds ({clock} time: "
        + ("the calling thread's CPU time, which leaves out waiting for a core" if clock == "cpu" else "wall clock")
        + "), and in brackets the ratio to fp32 of the same framework (torch paths / torch fp32, ONNX Runtime "
        "paths / ORT fp32), median of the per-round ratios [p25-p75]. Below 1: faster than fp32.",
        "",
    ]
    paths = payload["paths"]
    lines += ["| model | batch | " + " | ".join(paths) + " |", "|---|---|" + "---|" * len(paths)]
    for row in payload["latency"]:
        cells = []
        for p in paths:
            c = row["paths"][p][clock]
            cells.append(f"{c['median_ms']:.3g} ms" + ("" if p.endswith("fp32") else
                         f" (x{c['ratio_to_fp32']:.2f} [{c['ratio_p25']:.2f}-{c['ratio_p75']:.2f}])"))
        lines.append(f"| {row['model']} | {row['batch']} | " + " | ".join(cells) + " |")
    lines += ["", "Bytes on disk:", "", "| model | " + " | ".join(paths) + " |", "|---|" + "---|" * len(paths)]
    for name, sizes in payload["bytes_on_disk"].items():
        lines.append(f"| {name} | " + " | ".join(f"{sizes[p]:,}" for p in paths) + " |")
    int8 = [p for p in paths if not p.endswith("fp32")]
    lines += ["", "Verdict per shape: **faster** when the ratio's p75 is below 0.9, **slower** when its p25 is above 1.1, "
              "else `~` (within the noise or within 10%):", "",
              "| model | batch | " + " | ".join(int8) + " |", "|---|---|" + "---|" * len(int8)]
    for r in payload["latency"]:
        cells = []
        for p in int8:
            c = r["paths"][p][clock]
            cells.append("**faster**" if c["ratio_p75"] < 0.9 else "slower" if c["ratio_p25"] > 1.1 else "~")
        lines.append(f"| {r['model']} | {r['batch']} | " + " | ".join(cells) + " |")
    lines.append("")
    q = payload.get("mlp_quality")
    if q:
        lines += ["Digits MLP, 360 test images:", "", "| path | accuracy | max rel. error to qedu's reference | to float | agrees with float |",
                  "|---|---|---|---|---|"]
        for p in paths:
            lines.append(f"| {p} | {q[p]['accuracy']:.4f} | {q[p]['rel_err_to_reference']:.1e} | {q[p]['rel_err_to_float']:.1e} "
                         f"| {q[p]['agreement_with_float']:.4f} |")
        s = q["ort_dynamic_vs_exact_int8"]
        lines += ["", f"ONNX Runtime dynamic int8 against exact int8 arithmetic on this CPU: max relative error {s['rel_err']:.1e}, "
                  f"{100 * s['share_of_logits_changed']:.1f}% of logits changed (pair saturation: {s['ort_saturates']})."]
    best = {}
    for r in payload["latency"]:
        for p in paths:
            if not p.endswith("fp32"):
                c = r["paths"][p][clock]["ratio_to_fp32"]
                if p not in best or c < best[p][0]:
                    best[p] = (c, f"{r['model']} b{r['batch']}")
    probe = payload["int_mm_probe"]
    lines += ["", "Best ratio of each path (and where): " + ", ".join(f"{p} x{c:.2f} ({w})" for p, (c, w) in best.items()) + ".",
              "", "Why:", "",
              "* Every int8 path with int8 activations quantizes each batch's activations (static: at least the input) and "
              "dequantizes the output: a fixed cost that a narrow layer or a batch of 1 cannot amortize, so small shapes "
              "are slower or no faster than fp32.",
              "* Without VNNI (this CPU " + ("has it" if cpu["int8_dot_product"] else "has none") + "), x86 int8 kernels multiply "
              "with `vpmaddubsw` + `vpmaddwd` (two instructions and a saturating int16 step) instead of one `vpdpbusd`; "
              "the gain over fp32's FMA is then bounded (the reports cited in issue 17: pytorch#62804, onnxruntime#6695; "
              "also onnxruntime#13872, no speed-up from dynamic quantization on an AMD EPYC). A VNNI or AMX CPU is expected to "
              "do better: run this script there (not measured here).",
              "* The saturating int16 step is also why ONNX Runtime's u8 x s8 results differ from exact int8 arithmetic on "
              "such CPUs (above); ONNX Runtime's documentation suggests `reduce_range=True` (7-bit weights) there. torch's "
              "dynamic path avoids it by keeping activations to 7 bits (0..127).",
              "* torchao runs eagerly here (no `torch.compile`): its weight-only path converts the int8 weight to float at "
              "every call, and its W8A8 path calls `torch._int_mm`, which on this CPU took "
              f"{probe['int_mm_ms']:.3g} ms for a {'x'.join(map(str, probe['shape']))} product against "
              f"{probe['float_mm_ms']:.3g} ms in float32. torchao's CPU speed comes with `torch.compile` and VNNI/AMX.",
              "* The int4 path (MatMulNBits, default `accuracy_level`) keeps float activations and unpacks 4-bit blocks: "
              "it saves bytes on disk, not time, on this CPU. (`accuracy_level=4` would quantize the activations to int8 "
              "too; not measured here.)",
              "", "Re-run on a quiet machine: `python benchmarks/deployment.py` (full, a few minutes) or `--quick`."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and rounds (about a minute)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", default=None, help="results name (default deployment, or deployment_quick with --quick)")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the committed .json")
    args = parser.parse_args(argv)
    name = args.out or ("deployment_quick" if args.quick else "deployment")
    if args.render:
        from qedu.results import load_results

        payload = load_results(name)
        write(name, payload, markdown(payload))
        return
    import onnxruntime
    import torchao

    torch.set_num_threads(args.threads)
    load_before = round(os.getloadavg()[0], 2)
    widths = (128, 1024) if args.quick else (128, 512, 1024, 4096)
    batches = (1, 256) if args.quick else (1, 16, 256)
    rounds = args.rounds or (8 if args.quick else 15)
    data = load_digits()
    payload = {"quick": args.quick, "threads": args.threads, "rounds": rounds, "clock": "cpu" if args.threads == 1 else "wall",
               "paths": list(PATHS), "cpu": cpu_features(),
               "versions": {"onnxruntime": onnxruntime.__version__, "torchao": torchao.__version__, "torch": torch.__version__},
               "latency": [], "bytes_on_disk": {}, "export_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in ["mlp"] + [f"linear_{w}" for w in widths]:
            deployed, sizes, export_s = build(model_name, Path(tmp), args.threads, data)
            payload["bytes_on_disk"][model_name], payload["export_s"][model_name] = sizes, round(export_s, 2)
            if model_name == "mlp":
                payload["mlp_quality"] = mlp_quality(deployed, data)
            for batch in batches:
                if model_name == "mlp":
                    x = data.x_test[torch.arange(batch) % len(data.x_test)]
                else:
                    x = torch.randn(batch, int(model_name.split("_")[1]), generator=torch.Generator().manual_seed(batch))
                samples, ran = time_paths(deployed, x, rounds, budget_s=20 if args.quick else 40)
                payload["latency"].append({"model": model_name, "batch": batch, "rounds": ran, "paths": summarize(samples)})
                med = {p: payload["latency"][-1]["paths"][p][payload["clock"]]["ratio_to_fp32"] for p in PATHS}
                print(f"{model_name} b{batch}: " + ", ".join(f"{p} x{v:.2f}" for p, v in med.items()), flush=True)
            del deployed
    payload["int_mm_probe"] = int_mm_probe()
    payload["load_average"] = {"before": load_before, "after": round(os.getloadavg()[0], 2)}
    payload["machine"] = machine()
    write(name, payload, markdown(payload))


if __name__ == "__main__":
    main()
