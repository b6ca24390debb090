#!/usr/bin/env python
"""FP8 training recipes and QLoRA on the small language model: lesson 12's tables.

Parts (one results file, ``results/low_precision_training.{json,md}``; ``--quick`` writes
``low_precision_training_quick``):

* ``fp8``: a small TinyGPT (the tinylm architecture at hidden 128, sequence 64) trained from
  scratch on ``qedu.text`` for 60 steps, over 3 seeds, in fp32, bf16 (``torch.autocast``
  on the CPU) and with every linear layer's three matmuls in simulated fp8
  (``qedu.fp8_training.convert_to_float8``): tensorwise, rowwise, delayed (history 16), mxfp8
  and unscaled (a plain cast, no scale). Loss curves (mean over seeds), final validation loss,
  and overflow / underflow shares per tensor role (seed 0).
* ``spike``: a loss spike -- from step ``SPIKE_START`` for 10 steps, every other step's loss
  (so every gradient) is multiplied by ``SPIKE``. Delayed scaling with an amax history of 1
  against 16, and tensorwise (current) scaling: overflowed gradient values per step.
* ``qlora``: the shipped tinylm fine-tuned for 60 steps on a second domain, the Python
  standard library's own source (``inspect.getsource`` of fixed modules): full fine-tuning in fp32,
  in bf16 with fp32 master weights and AdamW states (mixed precision) and in pure bf16 (no fp32
  copy; bf16 matmuls simulated by :class:`Bf16Matmuls`, since this CPU's bf16 matmul is ~60x
  slower than fp32), LoRA on the float base and QLoRA (NF4 + double quantization base), rank 8,
  alpha 16, on qkv, proj, fc1, fc2; seed 0 for all. Perplexity on held-out stdlib source (new
  domain) and on the pydoc test split (old domain: forgetting), training losses, trainable
  parameters, memory estimated with ``qedu.memory.training_memory`` and measured as bytes of the
  CPU tensors after training.

Runs on ONE thread (the machine is shared). Usage::

    python benchmarks/low_precision_training.py           # ~10 min on one busy core (60 steps per run)
    python benchmarks/low_precision_training.py --quick   # a smoke test
    python benchmarks/low_precision_training.py --parts qlora   # re-run one part, keep the others
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

from _common import RESULTS, machine, write  # noqa: E402
from qedu.fp8_training import ROLES, Float8Linear, convert_to_float8  # noqa: E402
from qedu.lm_eval import perplexity  # noqa: E402
from qedu.lora import LoRALinear, add_lora, trainable_parameters  # noqa: E402
from qedu.memory import training_memory  # noqa: E402
from qedu.models import TinyGPT, load_tinylm  # noqa: E402
from qedu.nf4 import nf4_bits_per_parameter  # noqa: E402
from qedu.text import encode, load_text, random_windows, windows  # noqa: E402

SMALL = dict(vocab_size=256, seq_len=64, hidden=128, n_layers=2, n_heads=4, fused_attention=True)
BATCH, LR = 8, 3e-3
FP8_RECIPES = ("fp32", "bf16", "tensorwise", "rowwise", "delayed", "mxfp8", "unscaled")
SPIKE, SPIKE_LEN = 1000.0, 10
STDLIB_MODULES = ("textwrap", "string", "heapq", "bisect", "fractions", "shlex", "difflib", "calendar",
                  "queue", "statistics", "colorsys", "fnmatch")
LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")


def _stats_totals(model) -> dict:
    """Sum of every Float8Linear's counts: role -> [count, overflow, underflow]."""
    out = {r: [0, 0, 0] for r in ROLES}
    for m in model.modules():
        if isinstance(m, Float8Linear):
            for r in ROLES:
                out[r][0] += m.stats.count[r]
                out[r][1] += m.stats.overflow[r]
                out[r][2] += m.stats.underflow[r]
    return out


def train_small(recipe: str, seed: int, steps: int, text, val, *, history_len: int = 16, spike_start: int | None = None):
    """Train a fresh small TinyGPT with ``recipe``; return (losses, val_loss, stats totals, grad overflow per step)."""
    torch.manual_seed(seed)
    model = TinyGPT(**SMALL)
    if recipe not in ("fp32", "bf16"):
        model = convert_to_float8(model, recipe, history_len=history_len)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    losses, grad_overflow = [], []
    for step in range(steps):
        x, y = random_windows(text.train, SMALL["seq_len"], BATCH, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe == "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, 256), y.reshape(-1))
        spike = spike_start is not None and spike_start <= step < spike_start + SPIKE_LEN and (step - spike_start) % 2 == 0
        before = _stats_totals(model)
        opt.zero_grad(set_to_none=True)
        (loss * (SPIKE if spike else 1.0)).backward()
        after = _stats_totals(model)
        grad_overflow.append(sum(after[r][1] - before[r][1] for r in ROLES if r.startswith("grad")))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
    model.eval()
    with torch.no_grad():
        val_loss = math.log(perplexity(model, *val))
    return losses, val_loss, _stats_totals(model), grad_overflow


def fp8_part(seeds, steps, text) -> dict:
    val = windows(text.val, SMALL["seq_len"], n_windows=64)
    out = {"config": {**SMALL, "batch": BATCH, "lr": LR, "steps": steps, "seeds": list(seeds),
                      "optimizer": "AdamW(0.9, 0.95), weight decay 0.1, clip 1.0"}, "recipes": {}}
    for recipe in FP8_RECIPES:
        t0 = time.process_time()
        runs = [train_small(recipe, s, steps, text, val) for s in seeds]
        curves = torch.tensor([r[0] for r in runs])  # (seeds, steps)
        finals = [r[1] for r in runs]
        stats = runs[0][2]
        out["recipes"][recipe] = {
            "loss_mean": [round(v, 4) for v in curves.mean(0).tolist()],
            "loss_min": [round(v, 4) for v in curves.min(0).values.tolist()],
            "loss_max": [round(v, 4) for v in curves.max(0).values.tolist()],
            "val_loss": [round(v, 4) for v in finals],
            "val_loss_mean": round(sum(finals) / len(finals), 4),
            "overflow_share": {r: c[1] / c[0] for r, c in stats.items() if c[0]},
            "underflow_share": {r: c[2] / c[0] for r, c in stats.items() if c[0]},
            "cpu_seconds": round(time.process_time() - t0, 1),
        }
        print(f"{recipe:10s} val loss {out['recipes'][recipe]['val_loss_mean']:.3f}  ({out['recipes'][recipe]['cpu_seconds']} s)", flush=True)
    return out


def spike_part(steps, spike_start, text) -> dict:
    val = windows(text.val, SMALL["seq_len"], n_windows=32)
    out = {"spike": SPIKE, "spike_start": spike_start, "spike_len": SPIKE_LEN, "runs": {}}
    for name, recipe, h in (("delayed_h1", "delayed", 1), ("delayed_h16", "delayed", 16), ("tensorwise", "tensorwise", 16)):
        losses, val_loss, stats, grad_overflow = train_small(recipe, 0, steps, text, val, history_len=h, spike_start=spike_start)
        spike_steps = [spike_start + k for k in range(0, SPIKE_LEN, 2)]
        out["runs"][name] = {"loss": [round(v, 4) for v in losses], "val_loss": round(val_loss, 4),
                             "grad_overflow_per_step": grad_overflow,
                             "grad_overflow_in_spike": sum(grad_overflow[s] for s in spike_steps),
                             "spike_steps_with_overflow": sum(grad_overflow[s] > 0 for s in spike_steps)}
        print(f"spike {name:12s} overflowed gradient values during the spike: {out['runs'][name]['grad_overflow_in_spike']}", flush=True)
    return out


def stdlib_tokens() -> tuple[torch.Tensor, torch.Tensor, str]:
    """The source of ``STDLIB_MODULES``, joined; 4 KB chunks, every 10th to the test part."""
    import importlib

    src = "\n\n".join(inspect.getsource(importlib.import_module(m)) for m in STDLIB_MODULES)
    data = encode(src)
    chunks = data.split(4096)
    train = torch.cat([c for i, c in enumerate(chunks) if i % 10 != 9])
    test = torch.cat([c for i, c in enumerate(chunks) if i % 10 == 9])
    return train, test, sys.version.split()[0]


def _tensor_bytes(model, opt, master=()) -> dict:
    """Bytes of the CPU tensors: weights (parameters + buffers), gradients, fp32 master copies, optimizer states."""
    weights = sum(t.nbytes for t in model.parameters()) + sum(b.nbytes for b in model.buffers())
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    copies = sum(t.nbytes for t in master)
    states = sum(t.nbytes for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor) and t.ndim > 0)
    return {"weights": weights, "grads": grads, "master": copies, "optimizer": states,
            "total": weights + grads + copies + states}


class Bf16Matmuls(TorchFunctionMode):
    """Inside it, every matmul (``F.linear``, ``@``) with a bf16 operand runs as a GPU runs a bf16 GEMM:
    bf16 operands, fp32 products and sums, the result rounded to bf16.

    It computes with fp32 kernels (a product of two bf16 numbers is exact in fp32), because this CPU
    has no fast bf16 matmul: ``torch.mm`` in bf16 is ~60x slower than in fp32 here. Autograd
    differentiates the fp32 matmul and the casts, so the backward matmuls see bf16 operands too and
    their results (the gradients) are rounded to bf16. Everything else (layer norm, attention, GELU)
    runs in torch's own bf16 kernels.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in ("linear", "matmul") and any(
                isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args):
            args = tuple(a.float() if isinstance(a, torch.Tensor) else a for a in args)
            return func(*args, **kwargs).bfloat16()
        return func(*args, **kwargs)


# name -> (what is stored in which precision, qedu.memory recipe of the trained parameters)
QLORA_METHODS = {
    "full_fp32": ("fp32 weights, gradients, matmuls and AdamW states", "fp32"),
    "full_bf16": ("bf16 weights, gradients and matmuls; fp32 master weights and AdamW states", "mixed"),
    "full_bf16_pure": ("bf16 weights, gradients, matmuls and AdamW states; no fp32 copy", "bf16_pure"),
    "lora": ("frozen fp32 base; fp32 adapters, gradients and AdamW states", "fp32"),
    "qlora": ("frozen NF4 base (double quantization); fp32 adapters, gradients and AdamW states", "fp32"),
}


def qlora_part(steps, text) -> dict:
    train, test, pyver = stdlib_tokens()
    s = 128
    new = windows(test, s, n_windows=32)
    old = windows(text.test, s, n_windows=32)
    base = load_tinylm()
    out = {"python": pyver, "modules": list(STDLIB_MODULES), "train_tokens": len(train), "test_tokens": len(test),
           "steps": steps, "batch": BATCH, "seq_len": s, "r": 8, "alpha": 16, "targets": list(LORA_TARGETS), "methods": {}}
    with torch.no_grad():
        out["before"] = {"new_ppl": round(perplexity(base, *new), 3), "old_ppl": round(perplexity(base, *old), 3)}
    print("before:", out["before"], flush=True)
    for name, (precision, recipe) in QLORA_METHODS.items():
        torch.manual_seed(0)
        bf16 = name.startswith("full_bf16")
        if name.startswith("full"):
            model, lr = load_tinylm().train(), 3e-4
            if bf16:
                model = model.to(torch.bfloat16)
        else:
            model = add_lora(load_tinylm(), lambda n: n.endswith(LORA_TARGETS), r=8, alpha=16,
                             base_format="nf4" if name == "qlora" else "float").train()
            lr = 3e-3
        params = [p for p in model.parameters() if p.requires_grad]
        # mixed precision: AdamW updates fp32 master copies, and the bf16 weights are them rounded after each step
        master = [p.detach().float().requires_grad_() for p in params] if name == "full_bf16" else []
        opt = torch.optim.AdamW(master or params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        gen = torch.Generator().manual_seed(0)
        t0, losses = time.process_time(), []
        for _ in range(steps):
            x, y = random_windows(train, s, BATCH, gen)
            with Bf16Matmuls() if bf16 else contextlib.nullcontext():
                logits = model(x)
            loss = F.cross_entropy(logits.float().reshape(-1, 256), y.reshape(-1))
            model.zero_grad(set_to_none=False)
            loss.backward()
            for m, p in zip(master, params):
                m.grad = p.grad.float()  # fp32 gradient copies, only for the update
            torch.nn.utils.clip_grad_norm_(master or params, 1.0)
            opt.step()
            with torch.no_grad():
                for m, p in zip(master, params):
                    p.copy_(m)  # round the updated master weights to bf16
                    m.grad = None
            losses.append(float(loss))
        seconds = time.process_time() - t0
        model.eval()
        trainable, total = trainable_parameters(model)
        measured = _tensor_bytes(model, opt, master)
        nf4 = sum(m.lora_B.shape[0] * m.lora_A.shape[1] for m in model.modules() if isinstance(m, LoRALinear)) if name == "qlora" else 0
        est = training_memory(trainable, recipe)  # weights, grads, master copies and AdamW states of what trains
        frozen_bytes = nf4 * nf4_bits_per_parameter() / 8 + (total - trainable - nf4) * 4  # NF4 + DQ bases, the rest fp32
        with torch.no_grad(), Bf16Matmuls() if bf16 else contextlib.nullcontext():
            row = {"precision": precision, "memory_recipe": recipe,
                   "new_ppl": round(perplexity(model, *new), 3), "old_ppl": round(perplexity(model, *old), 3),
                   "trainable": trainable, "total": total, "loss": [round(v, 4) for v in losses],
                   "measured_bytes": measured,
                   "estimated_bytes": round(est.weights + est.grads + est.master + est.optimizer + frozen_bytes),
                   "cpu_seconds": round(seconds, 1)}
        out["methods"][name] = row
        print(name, {k: v for k, v in row.items() if k != "loss"}, flush=True)
    return out


def markdown(res: dict) -> str:
    fp8, spike, ql = res["fp8"], res["spike"], res["qlora"]
    c = fp8["config"]
    lines = ["# Low-precision training (lesson 12)", "",
             f"Machine: {res['machine']['processor']}, torch {res['machine']['torch']}, {res['machine']['torch_threads']} thread; "
             f"{res['seconds']:.0f} s. `python benchmarks/low_precision_training.py`.", ""]
    for part, run in res.get("reruns", {}).items():
        lines += [f"Part `{part}` re-run on {run['date']} ({run['seconds']:.0f} s, load {run['load_average_1min']}): "
                  f"`python benchmarks/low_precision_training.py --parts {part}`.", ""]
    lines += [
             f"## FP8 recipes: small TinyGPT (hidden {c['hidden']}, {c['n_layers']} layers, seq {c['seq_len']}), "
             f"{c['steps']} steps, batch {c['batch']}, seeds {c['seeds']}", "",
             "| recipe | val loss (mean) | val loss per seed | final train loss (mean) | worst overflow share (role) | worst underflow share (role) |",
             "|---|---|---|---|---|---|"]
    for name, r in fp8["recipes"].items():
        ov = max(r["overflow_share"].items(), key=lambda kv: kv[1]) if r["overflow_share"] else ("-", 0)
        un = max(r["underflow_share"].items(), key=lambda kv: kv[1]) if r["underflow_share"] else ("-", 0)
        lines.append(f"| {name} | {r['val_loss_mean']:.3f} | {', '.join(f'{v:.3f}' for v in r['val_loss'])} | "
                     f"{r['loss_mean'][-1]:.3f} | {ov[1]:.2e} ({ov[0]}) | {un[1]:.2e} ({un[0]}) |")
    lines += ["", f"## A loss spike: every other step's loss x{spike['spike']:g} for {spike['spike_len']} steps from step "
              f"{spike['spike_start']} (seed 0)", "",
              "| scaling | overflowed gradient values in the spike | spike steps with overflow | val loss |", "|---|---|---|---|"]
    for name, r in spike["runs"].items():
        lines.append(f"| {name} | {r['grad_overflow_in_spike']} | {r['spike_steps_with_overflow']} of {spike['spike_len'] // 2} | {r['val_loss']:.3f} |")
    lines += ["", f"## QLoRA: tinylm fine-tuned on Python {ql['python']} stdlib source ({ql['train_tokens']} bytes), "
              f"{ql['steps']} steps, batch {ql['batch']}, seq {ql['seq_len']}; LoRA r={ql['r']}, alpha={ql['alpha']} on {', '.join(ql['targets'])}", "",
              f"Before fine-tuning: new-domain perplexity {ql['before']['new_ppl']:.3f}, old-domain {ql['before']['old_ppl']:.3f}.", "",
              "| method | new-domain ppl | old-domain ppl (forgetting) | final train loss | trainable params | total params | "
              "measured bytes (weights+grads+master+Adam) | estimated bytes | CPU s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, r in ql["methods"].items():
        lines.append(f"| {name} | {r['new_ppl']:.3f} | {r['old_ppl']:.3f} | {r['loss'][-1]:.3f} | {r['trainable']:,} | {r['total']:,} | "
                     f"{r['measured_bytes']['total']:,} | {r['estimated_bytes']:,} | {r['cpu_seconds']} |")
    lines += [""] + [f"* {name}: {r['precision']}." for name, r in ql["methods"].items() if "precision" in r]
    return "\n".join(lines)


PARTS = ("fp8", "spike", "qlora")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, few steps: a smoke test")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="run only these parts; the others are kept from the results file already there")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    text = load_text()
    seeds = (0,) if args.quick else (0, 1, 2)
    steps = 6 if args.quick else 60
    name = "low_precision_training_quick" if args.quick else "low_precision_training"
    partial = set(args.parts) != set(PARTS)
    res = json.loads((RESULTS / f"{name}.json").read_text()) if partial else {"machine": machine()}
    for part in args.parts:
        t0 = time.time()
        if part == "fp8":
            res["fp8"] = fp8_part(seeds, steps, text)
        elif part == "spike":
            res["spike"] = spike_part(14 if args.quick else 60, 2 if args.quick else 30, text)
        else:
            res["qlora"] = qlora_part(3 if args.quick else 60, text)
        if partial:  # when and where this part was re-run
            res.setdefault("reruns", {})[part] = {**machine(), "seconds": round(time.time() - t0, 1)}
    if not partial:
        res["seconds"] = round(time.time() - start, 1)
        res.pop("reruns", None)
    write(name, res, markdown(res))


if __name__ == "__main__":
    main()
