#!/usr/bin/env python
"""Real mixed-precision training steps of a small GPT: time per step and peak memory per recipe.

Recipes (each runs in a fresh process, so its peak memory is its own; on the CPU the process is
forked from the parent after ``import torch``, so it does not pay for the import again):

* ``fp32``        plain float32 training;
* ``tf32``        float32 weights, matmuls on TF32 tensor cores (CUDA only);
* ``bf16_autocast``  ``torch.autocast(dtype=torch.bfloat16)``: fp32 weights, bf16 matmuls;
* ``fp16_autocast_gradscaler``  ``torch.autocast(dtype=torch.float16)`` + ``torch.amp.GradScaler``;
* ``bf16_pure``   the whole model and Adam's states in bfloat16, no fp32 copy.

Each recipe: ``warmup`` untimed steps, then ``repeats`` timed steps (one step = forward, loss,
backward, Adam step, zero_grad); the report gives the median and the 25th-75th percentile
spread. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU it is how far
the process's peak resident set size (``ru_maxrss``) rose above its level before the model was
built (the parent first runs every recipe once on a tiny model, so one-time library set-up is
not counted), which also counts allocator caching: read it as a rough size, not an exact one.

With ``--accuracy`` it instead trains qedu's digits MLP over several seeds (lessons 06 and 07
show the table; it takes minutes, too long for a lesson): fp32 Adam vs 8-bit Adam (dynamic
map, blocks of 256 and 2048, with and without bitsandbytes' rule that tensors under 4096
elements keep fp32 states) vs linear 8-bit Adam; and, on the loss divided by 2**k (as a large
batch or gradient accumulation shrinks it, Adam's eps divided too), fp32 vs simulated fp16 with
and without loss scaling (dynamic with GradScaler's defaults, and growing every 10 steps) vs bf16.

Usage::

    python benchmarks/mixed_precision.py            # normal run, a few minutes on a CPU without bf16 units
    python benchmarks/mixed_precision.py --quick    # CI-sized, < 60 s on a 2-core CPU
    python benchmarks/mixed_precision.py --accuracy # digits accuracy over 5 seeds, ~15-25 minutes
    python benchmarks/mixed_precision.py --device cuda --fused-attention  # attention by one fused kernel

Writes ``benchmarks/results/mixed_precision_<device>[_fused][_quick].json`` and ``.md``, or
``benchmarks/results/training_recipes_digits.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

RECIPES = ["fp32", "tf32", "bf16_autocast", "fp16_autocast_gradscaler", "bf16_pure"]
SIZES = {  # TinyGPT configuration and batch per (device, quick)
    ("cpu", True): dict(vocab_size=256, seq_len=64, hidden=64, n_layers=2, n_heads=4, batch=8, warmup=2, repeats=8),
    ("cpu", False): dict(vocab_size=512, seq_len=128, hidden=128, n_layers=4, n_heads=4, batch=8, warmup=2, repeats=10),
    ("cuda", True): dict(vocab_size=8192, seq_len=512, hidden=512, n_layers=4, n_heads=8, batch=16, warmup=3, repeats=10),
    ("cuda", False): dict(vocab_size=32768, seq_len=1024, hidden=768, n_layers=12, n_heads=12, batch=16, warmup=5, repeats=20),
}


def _rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def run_recipe(recipe: str, device: str, size: dict, threads: int, seed: int = 0) -> dict:
    """Time ``size['repeats']`` training steps of ``recipe``; runs inside a worker process."""
    import torch
    import torch.nn.functional as F

    from qedu.memory import TinyGPT

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cuda = device == "cuda"
    if recipe == "tf32" and not cuda:
        return {"recipe": recipe, "skipped": "TF32 is a CUDA tensor-core mode; the CPU has no TF32"}
    torch.backends.cuda.matmul.allow_tf32 = recipe == "tf32"
    torch.backends.cudnn.allow_tf32 = recipe == "tf32"
    g = torch.Generator().manual_seed(seed)
    V, s, b = size["vocab_size"], size["seq_len"], size["batch"]
    tokens = torch.randint(V, (b, s + 1), generator=g).to(device)  # random tokens: time and memory only
    idx, targets = tokens[:, :-1], tokens[:, 1:]
    rss_before = _rss_bytes()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    model = TinyGPT(V, s, size["hidden"], size["n_layers"], size["n_heads"],
                    fused_attention=size.get("attention") == "fused").to(device)
    if recipe == "bf16_pure":
        model = model.to(torch.bfloat16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast_dtype = {"bf16_autocast": torch.bfloat16, "fp16_autocast_gradscaler": torch.float16}.get(recipe)
    scaler = torch.amp.GradScaler(device, enabled=recipe == "fp16_autocast_gradscaler")

    def step() -> float:
        with torch.autocast(device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(idx)
        loss = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    losses, times = [], []
    for i in range(size["warmup"] + size["repeats"]):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        losses.append(step())  # float() waits for the GPU
        if cuda:
            torch.cuda.synchronize()
        if i >= size["warmup"]:
            times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    out = {
        "recipe": recipe,
        "median_ms": statistics.median(times), "p25_ms": q[0], "p75_ms": q[2],
        "min_ms": min(times), "max_ms": max(times), "n_steps": len(times),
        "tokens_per_s": b * s / (statistics.median(times) / 1e3),
        "first_loss": losses[0], "last_loss": losses[-1],
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    if cuda:
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        out["memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        out["peak_memory_bytes"] = _rss_bytes() - rss_before
        out["memory_kind"] = ("CPU: rise of the peak resident set size (ru_maxrss) of a process forked after a "
                              "warm-up; includes allocator caching, a rough size")
    if recipe == "fp16_autocast_gradscaler":
        out["final_loss_scale"] = scaler.get_scale()
    return out


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"]
    return ", ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


_ATTENTION = {"explicit": "attention written out (stores the s x s probabilities)",
              "fused": "fused attention (F.scaled_dot_product_attention: no s x s matrix stored)"}


def to_markdown(report: dict) -> str:
    env, size = report["environment"], report["size"]
    lines = [
        f"# Mixed-precision training steps: {env['device_name']} ({report['device']})",
        "",
        f"torch {env['torch']}, {env['threads']} thread(s), Python {env['python']}, {env['platform']}"
        + (f"; CPU features: {env['cpu_features']}" if report["device"] == "cpu" else ""),
        f"TinyGPT: {size['n_layers']} layers, hidden {size['hidden']}, {size['n_heads']} heads, vocab {size['vocab_size']}, "
        f"sequence {size['seq_len']}, batch {size['batch']} ({report['n_params']:,} parameters), "
        f"{_ATTENTION[size.get('attention', 'explicit')]}; "
        f"{size['warmup']} warm-up + {size['repeats']} timed steps per recipe"
        + (" (--quick)" if report["quick"] else "") + ".",
        f"Peak memory: {report['memory_kind']}.",
        "",
        "| recipe | median ms/step | p25-p75 ms | tokens/s | vs fp32 | peak memory MiB | note |",
        "|---|---|---|---|---|---|---|",
    ]
    base = next((r["median_ms"] for r in report["results"] if r["recipe"] == "fp32" and "median_ms" in r), None)
    for r in report["results"]:
        if "skipped" in r:
            lines.append(f"| {r['recipe']} | - | - | - | - | - | {r['skipped']} |")
            continue
        note = r.get("note", "")
        speed = f"{base / r['median_ms']:.2f}x" if base else "-"
        lines.append(f"| {r['recipe']} | {r['median_ms']:.1f} | {r['p25_ms']:.1f}-{r['p75_ms']:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {speed} | {r['peak_memory_bytes'] / 2**20:.1f} | {note} |")
    lines += ["", "`vs fp32` > 1 means faster than fp32. Speed depends on the hardware: "
              "CPUs without AMX/AVX512-BF16 emulate bf16 and fp16 matmuls and run them slower than fp32."]
    return "\n".join(lines) + "\n"


def accuracy_tables(seeds=(0, 1, 2, 3, 4), epochs: int = 30) -> dict:
    """Final test accuracy of the digits MLP per recipe and seed (see the module docstring)."""
    import torch

    from qedu.data import load_digits
    from qedu.floats import BF16, FP16
    from qedu.loss_scaling import DynamicLossScaler
    from qedu.mixed_precision import Precision, train_simulated
    from qedu.models import make_mlp
    from qedu.optim import train_adam

    torch.set_num_threads(1)
    rows = []

    def add(table, name, fn):
        accs, extra, start = [], [], time.perf_counter()
        for seed in seeds:
            acc, info = fn(seed)
            accs.append(acc)
            extra.append(info)
        rows.append({"table": table, "recipe": name, "accuracies": accs, "mean": statistics.mean(accs),
                     "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "per_seed": extra,
                     "seconds": time.perf_counter() - start})
        print(f"{table:14s} {name:44s} {statistics.mean(accs):.4f} +- {rows[-1]['std']:.4f}  "
              f"({rows[-1]['seconds']:.0f} s)", flush=True)

    # (states, block size, min_8bit_size): tensors with fewer elements keep fp32 states. 4096 is
    # bitsandbytes' default; blocks of 2048 with that exemption is the rule of Dettmers et al. 2022.
    for states, block, small in (("fp32", 256, 0), ("dynamic", 256, 0), ("dynamic", 2048, 0), ("linear", 256, 0),
                                 ("dynamic", 2048, 4096), ("dynamic", 256, 4096)):
        def adam(seed, states=states, block=block, small=small):
            run = train_adam(make_mlp(seed=seed), load_digits(seed=seed), states=states, block_size=block,
                             epochs=epochs, seed=seed, min_8bit_size=small)
            return run.final_test_acc, {"bytes_per_param": run.bytes_per_param,
                                        "max_v_zeroed": max(run.v_zeroed), "max_train_loss": max(run.train_loss)}
        name = "fp32 Adam" if states == "fp32" else f"8-bit Adam, {states} map, blocks of {block}"
        add("adam_states", name + (f", tensors < {small} elements in fp32" if small else ""), adam)

    # "dynamic": GradScaler's defaults (start 2**16, grow after 2000 clean steps: in 1,350 steps the
    # scale never moves); "dynamic10": the same scaler growing after 10 clean steps, so it finds its
    # scale by trial and error within the run (lesson 06 shows one such run step by step)
    for k, fmt_name, scale in ((0, "fp32", None), (0, "fp16", None), (16, "fp16", None), (16, "fp16", "dynamic"),
                               (16, "fp16", "dynamic10"), (16, "bf16", None), (20, "fp16", None),
                               (20, "fp16", "dynamic"), (20, "fp16", "dynamic10")):
        fmt = {"fp32": None, "fp16": FP16, "bf16": BF16}[fmt_name]

        def mixed(seed, k=k, fmt=fmt, scale=scale):
            scaler = DynamicLossScaler(growth_interval=10) if scale == "dynamic10" else scale
            run = train_simulated(make_mlp(seed=seed), load_digits(seed=seed), Precision(fmt, fmt), epochs=epochs,
                                  seed=seed, loss_divisor=2.0**k, loss_scale=scaler, backend="torch")
            return run.final_test_acc, {"lost_fraction": run.total_stats().lost_fraction,
                                        "skipped_steps": sum(run.skipped),
                                        "min_scale": min(run.scales), "max_scale": max(run.scales)}
        scaling = {None: "no loss scaling", "dynamic": "dynamic loss scaling (GradScaler defaults)",
                   "dynamic10": "dynamic loss scaling, growth_interval=10"}[scale]
        add("loss_scaling", f"loss / 2^{k}: {fmt_name}" + ("" if fmt is None else f", {scaling}"), mixed)
    return {"seeds": list(seeds), "epochs": epochs, "rows": rows}


def accuracy_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Digits MLP: training recipes over seeds {report['seeds']} ({report['epochs']} epochs)", "",
             f"Computed by `python benchmarks/mixed_precision.py --accuracy` (torch {env['torch']}, "
             f"{env['device_name']}); final test accuracy, mean +- std over seeds. fp16/bf16 are simulated "
             "bit-exactly by qedu.mixed_precision (compute and gradients rounded), with fp32 master weights.", ""]
    for table, title in (("adam_states", "Adam's states"), ("loss_scaling", "Loss scaling")):
        lines += [f"## {title}", "", "| recipe | accuracy % (mean +- std) | per seed | notes |", "|---|---|---|---|"]
        for r in (r for r in report["rows"] if r["table"] == table):
            per_seed = ", ".join(f"{100 * a:.1f}" for a in r["accuracies"])
            info = r["per_seed"][0]
            if table == "adam_states":
                note = f"{info['bytes_per_param']:.2f} B/param of state"
            else:
                note = (f"{100 * statistics.mean(i['lost_fraction'] for i in r['per_seed']):.1f} % of nonzero grads lost, "
                        f"{statistics.mean(i['skipped_steps'] for i in r['per_seed']):.0f} skipped steps")
                if "min_scale" in info:
                    lo = min(i["min_scale"] for i in r["per_seed"])
                    hi = max(i["max_scale"] for i in r["per_seed"])
                    note += f", scale 2^{math.log2(lo):.0f} to 2^{math.log2(hi):.0f}" if hi > 1 else ""
            lines.append(f"| {r['recipe']} | {100 * r['mean']:.2f} +- {100 * r['std']:.2f} | {per_seed} | {note} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized run (< 60 s on a 2-core CPU)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steady timings)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--accuracy", action="store_true", help="digits accuracy tables over 5 seeds instead of speed")
    parser.add_argument("--fused-attention", action="store_true",
                        help="TinyGPT with F.scaled_dot_product_attention (no s x s matrix stored); results file *_fused")
    args = parser.parse_args(argv)

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU; torch.cuda.is_available() is False.")
    if args.accuracy:
        report = accuracy_tables()
        report["environment"] = {"device_name": _device_name("cpu"), "torch": torch.__version__, "threads": 1}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "training_recipes_digits.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "training_recipes_digits.md").write_text(accuracy_markdown(report) + "\n")
        print(accuracy_markdown(report))
        return 0
    size = dict(SIZES[(device, args.quick)], attention="fused" if args.fused_attention else "explicit")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # CPU: fork after `import torch` (cheap); CUDA must not be forked once initialised: spawn.
    context = multiprocessing.get_context("fork" if device == "cpu" and sys.platform == "linux" else "spawn")
    if context.get_start_method() == "fork":
        # One-time library set-up (oneDNN/MKL buffers, thread pools) happens in the parent, so the
        # forked children's memory growth is the recipe's own and not that set-up.
        tiny = dict(size, vocab_size=16, seq_len=8, hidden=16, n_layers=1, n_heads=2, batch=2, warmup=1, repeats=1)
        for recipe in ("fp32", "bf16_autocast", "fp16_autocast_gradscaler", "bf16_pure"):
            run_recipe(recipe, device, tiny, args.threads)
    results = []
    for recipe in RECIPES:
        start = time.perf_counter()
        if recipe == "tf32" and device != "cuda":
            results.append({"recipe": recipe, "skipped": "TF32 is a CUDA tensor-core mode; the CPU has no TF32"})
            continue
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:  # a fresh process per recipe
            try:
                results.append(pool.submit(run_recipe, recipe, device, size, args.threads).result())
            except Exception as err:  # report it in the table rather than losing the other recipes
                results.append({"recipe": recipe, "skipped": f"failed: {type(err).__name__}: {err}"[:200]})
        print(f"{recipe:26s} {time.perf_counter() - start:5.1f} s", flush=True)
    if device == "cpu":
        for r in results:
            if r["recipe"] == "fp16_autocast_gradscaler" and "median_ms" in r:
                r["note"] = "CPU autocast supports fp16 (torch >= 2.x); GradScaler('cpu') works"
    ran = next(r for r in results if "n_params" in r)
    report = {
        "device": device, "quick": args.quick, "size": size, "n_params": ran["n_params"],
        "memory_kind": ran["memory_kind"],
        "environment": {"device_name": _device_name(device), "torch": torch.__version__, "threads": args.threads,
                        "python": platform.python_version(), "platform": platform.platform(terse=True),
                        "cpu_features": _cpu_flags(), "cpu_count": os.cpu_count()},
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"mixed_precision_{device}{'_fused' if args.fused_attention else ''}{'_quick' if args.quick else ''}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(report))
    print(to_markdown(report))
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
