"""Train the small language model qedu ships (``qedu.models.pretrained("tinylm")``) and write its files.

    python scripts/train_tinylm.py            # ~7 CPU-minutes on one thread
    python scripts/train_tinylm.py --steps 5 --out /tmp/tinylm   # a smoke run

Writes ``<out>/tinylm.safetensors`` (the weights, stored as float16 as LLM checkpoints are) and
``<out>/tinylm.json`` (sha256 of the weights file, architecture, training settings, training
time, validation loss during training, and the test-split perplexity of the saved model).
After a real run, copy the printed sha256 into ``qedu.models.TINYLM_SHA256``: the loader
refuses any file whose hash differs.

The run is seeded (initial weights, batch order) and single-threaded, so the same machine,
torch version and seed give bitwise the same weights.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from qedu.lm_eval import log_probs, nll_from_log_probs
from qedu.models import TINYLM_CONFIG, TinyGPT, load_tinylm
from qedu.text import load_text, random_windows, windows

ROOT = Path(__file__).resolve().parent.parent


def val_loss(model, tokens, seq_len) -> float:
    x, y = windows(tokens, seq_len)
    return nll_from_log_probs(log_probs(model, x), y)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to lr / 10."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=350)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=35)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "qedu" / "weights")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the machine is shared; one thread is also what makes the run reproducible
    text = load_text()
    cfg = dict(TINYLM_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = TinyGPT(**cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"TinyGPT {cfg}: {n_params:,} parameters; train {len(text.train):,} bytes")

    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and not n.startswith("pos")]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim == 2 and not n.startswith("pos"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(args.seed)
    curve = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        model.train()
        x, y = random_windows(text.train, cfg["seq_len"], args.batch, generator)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())  # (b * s, V) vs (b * s,)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            v = val_loss(model, text.val, cfg["seq_len"])
            curve.append({"step": step + 1, "train_loss": round(loss.item(), 4), "val_loss": round(v, 4),
                          "seconds": round(time.perf_counter() - start, 1)})
            print(curve[-1], flush=True)
    seconds = time.perf_counter() - start  # wall clock, includes the periodic validation passes
    cpu_seconds = time.process_time() - cpu_start  # CPU time of this process: what the run cost on a shared machine

    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "tinylm.safetensors"
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "qedu-tinylm-1"})
    sha = hashlib.sha256(path.read_bytes()).hexdigest()

    loaded = load_tinylm(path, sha256=sha)  # the saved float16 weights, through the real loader
    x, y = windows(text.test, cfg["seq_len"])
    test_nll = nll_from_log_probs(log_probs(loaded, x), y)
    counts = torch.bincount(text.train, minlength=256).double() + 1  # add-one unigram baseline
    unigram_nll = float(-(counts / counts.sum()).log()[text.test].mean())
    record = {
        "file": path.name,
        "sha256": sha,
        "bytes": path.stat().st_size,
        "dtype": "float16",
        "config": cfg,
        "n_params": n_params,
        "data": "qedu/corpus/pydoc_topics.json (CPython 3.11.7 pydoc_data.topics), bytes, qedu.text.load_text() (90/5/5 split of 4 KB chunks)",
        "training": {"seed": args.seed, "steps": args.steps, "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
                     "weight_decay": args.weight_decay, "optimizer": "AdamW(0.9, 0.95), cosine to lr/10, clip 1.0",
                     "threads": 1, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
                     "load_average_1min_at_end": round(os.getloadavg()[0], 2), "curve": curve},
        "final_val_loss": curve[-1]["val_loss"],
        "test": {"windows": int(x.shape[0]), "seq_len": cfg["seq_len"], "tokens": int(x.numel()),
                 "nll": round(test_nll, 6), "perplexity": round(math.exp(test_nll), 6),
                 "unigram_perplexity": round(math.exp(unigram_nll), 4)},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "processor": platform.machine()},
    }
    (args.out / "tinylm.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"final validation loss {record['final_val_loss']:.4f}; test perplexity {math.exp(test_nll):.4f} "
          f"(unigram {math.exp(unigram_nll):.2f}); {seconds:.0f} s wall, {cpu_seconds:.0f} s CPU; {record['bytes']:,} bytes; sha256 {sha}")


if __name__ == "__main__":
    main()
