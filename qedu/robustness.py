"""Corrupted test images: does the quantized model break sooner than the float one?

Test accuracy is measured on clean images. Deployed models see noise, blur, misaligned or
faded images, and quantization can make a model more fragile there even when the clean
accuracy is unchanged (the grid that was fine for clean activations may clip or round away
what a corrupted input needs). Five corruptions of 8x8 images in ``[0, 1]``, each at
severities 1..5 (0 = clean), in the spirit of ImageNet-C (Hendrycks & Dietterich 2019)::

    gaussian_noise   x + sigma * N(0, 1)                  sigma  0.1  0.2  0.3  0.4  0.5
    blur             Gaussian blur, 5x5 kernel            sigma  0.5  0.6  0.7  0.8  1.0 px
    shift            translate in a random direction      by     0.2  0.4  0.6  0.8  1.0 px (bilinear)
    contrast         mean + c * (x - mean), per image     c      0.8  0.6  0.45 0.35 0.25
    occlusion        a k x k patch of ink erased (set 0)  k      1    2    3    4    5 px

The levels were chosen so that the float digits MLP goes from about 96 % at severity 1 to
about 40-60 % at severity 5 (an 8x8 digit moved by one pixel is already hard to read).

Every result is clamped to ``[0, 1]``. Randomness (noise, shift direction, patch position)
comes from a ``torch.Generator`` seeded with ``seed``: the same seed gives identical tensors.

>>> x = torch.full((2, 1, 8, 8), 0.5)
>>> torch.equal(corrupt(x, "gaussian_noise", 3, seed=1), corrupt(x, "gaussian_noise", 3, seed=1))
True
>>> corrupt(x, "contrast", 5).unique().tolist()
[0.5]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from qedu._validation import as_float_tensor, check_int
from qedu.models import evaluate

__all__ = ["CORRUPTIONS", "SEVERITIES", "LEVELS", "corrupt", "RobustnessTable", "robustness_table"]

LEVELS = {  # the corruption's parameter at severity 1..5
    "gaussian_noise": (0.1, 0.2, 0.3, 0.4, 0.5),
    "blur": (0.5, 0.6, 0.7, 0.8, 1.0),
    "shift": (0.2, 0.4, 0.6, 0.8, 1.0),
    "contrast": (0.8, 0.6, 0.45, 0.35, 0.25),
    "occlusion": (1, 2, 3, 4, 5),
}
CORRUPTIONS = tuple(LEVELS)
SEVERITIES = tuple(range(6))


def _check_images(x) -> torch.Tensor:
    x = as_float_tensor(x, "x")
    if x.ndim != 4:
        raise ValueError(f"x must be a batch of images of shape (N, C, H, W), e.g. (360, 1, 8, 8), got {tuple(x.shape)}.")
    if bool((x < 0).any() or (x > 1).any()):
        raise ValueError(f"x must hold pixels in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]; "
                         "divide by the maximum pixel value first (digits: x = pixel / 16).")
    return x


def _check_corruption(corruption) -> str:
    if corruption not in LEVELS:
        raise ValueError(f"corruption={corruption!r} is unknown; choose one of {', '.join(map(repr, CORRUPTIONS))}.")
    return corruption


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = torch.arange(-2, 3, dtype=torch.float32)
    k1 = torch.exp(-(r**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 5, 5)  # (C, 1, 5, 5): one kernel per channel
    return F.conv2d(x, kernel, padding=2, groups=x.shape[1])  # zero padding: the background is 0


def _shift(x: torch.Tensor, pixels: float, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    angle = torch.rand(n, generator=g) * 2 * math.pi  # (N,) one direction per image
    dx, dy = pixels * torch.cos(angle), pixels * torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2], theta[:, 1, 2] = -2 * dx / w, -2 * dy / h  # pixels -> normalised [-1, 1] coordinates
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _occlude(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    k_h, k_w = min(k, h), min(k, w)
    top = torch.randint(0, h - k_h + 1, (n,), generator=g)  # (N,)
    left = torch.randint(0, w - k_w + 1, (n,), generator=g)
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + k_h)  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + k_w)  # (N, W)
    patch = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (N, 1, H, W)
    return x.masked_fill(patch, 0.0)


def corrupt(x, corruption: str, severity: int, seed: int = 0) -> torch.Tensor:
    """A corrupted copy of the images ``x`` (``(N, C, H, W)`` in ``[0, 1]``); ``x`` is not changed.

    Args:
        x: images in ``[0, 1]``. corruption: one of :data:`CORRUPTIONS`.
        severity: 0 (a copy of ``x``) to 5; see the table in the module docstring.
        seed: fixes the random parts (noise, shift direction, patch position).

    Returns:
        float32 tensor of ``x``'s shape in ``[0, 1]``.

    Raises:
        ValueError: unknown corruption (the message lists them), severity outside 0..5, images
            that are not 4-D, empty, non-finite or outside [0, 1].

    >>> corrupt(torch.ones(1, 1, 4, 4), "occlusion", 2, seed=0).sum().item()
    12.0
    """
    corruption = _check_corruption(corruption)
    severity = check_int(severity, "severity", 0, 5)
    seed = check_int(seed, "seed", 0)
    x = _check_images(x).to(torch.float32)
    if severity == 0:
        return x.clone()
    p = LEVELS[corruption][severity - 1]
    g = torch.Generator().manual_seed(seed)
    if corruption == "gaussian_noise":
        out = x + p * torch.randn(x.shape, generator=g)
    elif corruption == "blur":
        out = _blur(x, p)
    elif corruption == "shift":
        out = _shift(x, p, g)
    elif corruption == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
        out = mean + p * (x - mean)
    else:
        out = _occlude(x, p, g)
    return out.clamp(0.0, 1.0)


@dataclass
class RobustnessTable:
    """Accuracy of each model on each corrupted test set; ``rows`` are dicts
    ``corruption, severity, model, accuracy, gap`` (``gap`` = accuracy minus the reference model's)."""

    rows: list
    reference: str

    def curve(self, model: str, corruption: str, key: str = "accuracy") -> list[float]:
        """``key`` ("accuracy" or "gap") of ``model`` at severities 0..5 of ``corruption``."""
        found = sorted((r["severity"], r[key]) for r in self.rows if r["model"] == model and r["corruption"] == corruption)
        if not found:
            models = sorted({r["model"] for r in self.rows})
            raise ValueError(f"no rows for model={model!r}, corruption={corruption!r}; models are {models}.")
        return [v for _, v in found]

    def to_markdown(self, severity: int = 3) -> str:
        """Accuracy (%) per corruption at one severity, each model's gap to the reference in brackets."""
        models = list(dict.fromkeys(r["model"] for r in self.rows))
        corruptions = list(dict.fromkeys(r["corruption"] for r in self.rows))
        lines = ["| corruption (severity %d) | " % severity + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
        for c in corruptions:
            cells = []
            for m in models:
                r = [r for r in self.rows if r["model"] == m and r["corruption"] == c and r["severity"] == severity][0]
                cells.append(f"{100 * r['accuracy']:.1f}" + ("" if m == self.reference else f" ({100 * r['gap']:+.1f})"))
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def robustness_table(models: Mapping, x, y, *, corruptions: Sequence[str] = CORRUPTIONS,
                     severities: Sequence[int] = SEVERITIES, seed: int = 0, reference: str | None = None) -> RobustnessTable:
    """Test every model on every corrupted copy of ``(x, y)``; every model sees the same images.

    Args:
        models: ``{name: model}``; ``reference`` (default: the first) is the float model the gaps
            are measured against.
        corruptions, severities: what to try. seed: the corruptions' seed.

    >>> from qedu.models import make_mlp
    >>> t = robustness_table({"a": make_mlp(seed=0)}, torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long),
    ...                      corruptions=["blur"], severities=[0, 5])
    >>> len(t.rows), t.rows[0]["gap"]
    (2, 0.0)
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty dict {name: model}, e.g. {'float32': model, 'W4A4': quantized}.")
    reference = next(iter(models)) if reference is None else reference
    if reference not in models:
        raise ValueError(f"reference={reference!r} is not one of the models {list(models)}.")
    corruptions = [_check_corruption(c) for c in corruptions]
    severities = [check_int(s, "severity", 0, 5) for s in severities]
    rows = []
    for c in corruptions:
        for s in severities:
            xc = corrupt(x, c, s, seed)  # once per (corruption, severity): the same images for every model
            acc = {name: evaluate(m, xc, y) for name, m in models.items()}
            rows += [dict(corruption=c, severity=s, model=name, accuracy=a, gap=a - acc[reference]) for name, a in acc.items()]
    return RobustnessTable(rows, reference)
