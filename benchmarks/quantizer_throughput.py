#!/usr/bin/env python
"""From-scratch fake-quantize vs torch's fused kernels on the CPU, in the same run.

Int8 fake-quantization of a large float32 tensor (16.8 M values by default, 4 M with --quick):
qedu's readable eager `fake_quantize` (input checks included), the bare from-scratch formula,
the same formula under `torch.compile` when it works here, torch's
`fake_quantize_per_tensor_affine` / `_per_channel_affine`, and a plain copy as the memory-speed
ceiling. Reports median and spread over repeats and the ratio to torch's fused kernel.

Usage: python benchmarks/quantizer_throughput.py [--quick] [--threads N]
       -> benchmarks/results/quantizer_throughput.{json,md}
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, summary, write  # noqa: E402

import torch  # noqa: E402

from qedu.formats import INT8  # noqa: E402
from qedu.quantizers import fake_quantize  # noqa: E402


def bare(x, inv_scale, scale, zero_point, qmin, qmax):
    """The from-scratch formula with no input checks: what torch's kernel computes."""
    return (torch.clamp(torch.round(x * inv_scale) + zero_point, qmin, qmax) - zero_point) * scale


def time_ms(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = 4 * 2**20 if args.quick else 16 * 2**20
    repeats = 5 if args.quick else 15
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=gen)
    scale, zp = 0.02, 3
    rows_x = x.reshape(1024, -1)  # (channels, values per channel)
    ch_scale = torch.full((1024,), scale)
    ch_zp = torch.full((1024,), zp, dtype=torch.int32)
    inv = torch.tensor(1.0 / scale, dtype=torch.float32)
    variants = {
        "copy (memory ceiling)": lambda: x.clone(),
        "torch fake_quantize_per_tensor_affine": lambda: torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127),
        "torch fake_quantize_per_channel_affine": lambda: torch.fake_quantize_per_channel_affine(rows_x, ch_scale, ch_zp, 0, -128, 127),
        "qedu fake_quantize (eager, checked)": lambda: fake_quantize(x, scale, zp, INT8),
        "from-scratch formula (eager, bare)": lambda: bare(x, inv, scale, zp, -128, 127),
    }
    compiled_note = ""
    try:
        compiled = torch.compile(bare)
        start = time.perf_counter()
        compiled(x, inv, scale, zp, -128, 127)
        compiled_note = f"compile time {time.perf_counter() - start:.1f} s"
        variants["from-scratch formula (torch.compile)"] = lambda: compiled(x, inv, scale, zp, -128, 127)
    except Exception as err:  # no compiler on this machine, or an unsupported build
        compiled_note = f"torch.compile unavailable: {type(err).__name__}: {str(err)[:120]}"
    results = {name: summary(time_ms(fn, repeats)) for name, fn in variants.items()}
    ref = results["torch fake_quantize_per_tensor_affine"]["median_ms"]
    gbps = lambda ms: x.numel() * 4 * 2 / (ms / 1e3) / 1e9  # noqa: E731 (read + write)
    rows = []
    for name, r in results.items():
        rows.append(f"| {name} | {r['median_ms']:.1f} | {r['p25_ms']:.1f}-{r['p75_ms']:.1f} | {gbps(r['median_ms']):.1f} | {ref / r['median_ms']:.2f}x |")
    m = machine()
    md = "\n".join([
        "# Int8 fake-quantize throughput (CPU)",
        "",
        f"{n:,} float32 values, {repeats} repeats after a warm-up, {args.threads} thread(s); {m['platform']}, "
        f"torch {m['torch']}, load average {m['load_average_1min']}, {m['date']}. {compiled_note}.",
        "Speed relative to torch's fused per-tensor kernel (higher is faster). Produced by "
        "`python benchmarks/quantizer_throughput.py`.",
        "",
        "| variant | median ms | p25-p75 ms | GB/s (read+write) | vs torch fused |",
        "|---|---|---|---|---|",
        *rows,
    ])
    print(md)
    write("quantizer_throughput", {"machine": m, "n": n, "threads": args.threads, "compile": compiled_note, "results": results}, md)


if __name__ == "__main__":
    main()
