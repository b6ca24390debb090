"""A second, harder task: predict the next letter of a Unicode character's name.

Digits is a gentle benchmark: an 8-bit or even 4-bit model loses almost nothing, and accuracy
on 360 test images moves in steps of 0.28 points. This task is harder and measures finer:

* **text**: the names of the 7,952 characters from U+0020 to U+2FFF in the Unicode 3.2
  database that ships inside every Python (``unicodedata.ucd_3_2_0``, frozen for IDNA), e.g.
  ``LATIN SMALL LETTER A WITH GRAVE``. Offline, and identical on every Python version.
* **task**: from the previous ``context`` characters (``^`` pads the start of a name) predict
  the next one among 38 symbols (A-Z, 1-9, space, hyphen, ``$`` = end of name);
* **score**: cross-entropy in **bits per character** (continuous, so small quantization damage
  shows) as well as top-1 accuracy. Names, not characters, are split into train and test, so
  the test names are unseen words.
* **model**: :func:`make_char_mlp`, one-hot context -> Linear -> ReLU -> Linear -> ReLU -> Linear
  (the first Linear is the character embedding), so :mod:`qedu.ptq` quantizes it unchanged.

>>> task = load_names_task(seed=0)
>>> task
NamesTask(train=171588, calib=512, test=42872, vocab=38, context=6, seed=0)
>>> [(decode(task.x_train[i]), task.vocab[int(task.y_train[i])]) for i in (0, 4, 5)]
[('^^^^^^', 'S'), ('^^SPAC', 'E'), ('^SPACE', '$')]
"""
from __future__ import annotations

import functools
import hashlib
import math
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qedu._validation import check_int, check_module

__all__ = ["VOCAB", "NamesTask", "load_names_task", "decode", "OneHot", "make_char_mlp", "bits_per_char",
           "trained_char_mlp"]

VOCAB = "$ -123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # '$' ends a name; padding ('^') is index len(VOCAB)
_PAD = len(VOCAB)  # the padding symbol gets its own one-hot slot
_INDEX = {c: i for i, c in enumerate(VOCAB)}


@functools.lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    ucd = unicodedata.ucd_3_2_0  # the Unicode 3.2 database, frozen inside every Python 3
    return tuple(n for n in (ucd.name(chr(i), "") for i in range(0x20, 0x3000)) if n)


@dataclass(frozen=True, repr=False)
class NamesTask:
    """Contexts ``x_*`` (int64, ``(N, context)``, values ``0..len(VOCAB)``, ``len(VOCAB)`` = pad)
    and next-symbol labels ``y_*`` (int64, ``(N,)``). ``x_calib`` is a subset of ``x_train``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_calib: torch.Tensor
    y_calib: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    context: int
    seed: int

    @property
    def vocab(self) -> str:
        return VOCAB

    def __repr__(self) -> str:
        return (f"NamesTask(train={len(self.y_train)}, calib={len(self.y_calib)}, test={len(self.y_test)}, "
                f"vocab={len(VOCAB)}, context={self.context}, seed={self.seed})")


def _windows(names, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for name in names:
        codes = [_PAD] * context + [_INDEX[c] for c in name + "$"]
        for t in range(context, len(codes)):
            xs.append(codes[t - context:t])  # the previous `context` symbols
            ys.append(codes[t])
    return torch.tensor(xs, dtype=torch.int64), torch.tensor(ys, dtype=torch.int64)


@functools.lru_cache(maxsize=4)
def _build(seed: int, context: int, test_fraction: float, n_calib: int):
    names = _names()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(names), generator=g).tolist()
    n_test = round(test_fraction * len(names))
    test = [names[i] for i in sorted(order[:n_test])]
    train = [names[i] for i in sorted(order[n_test:])]
    x_train, y_train = _windows(train, context)
    x_test, y_test = _windows(test, context)
    calib = torch.randperm(len(y_train), generator=g)[:n_calib]
    return x_train, y_train, x_train[calib], y_train[calib], x_test, y_test


def load_names_task(seed: int = 0, context: int = 6, test_fraction: float = 0.2, n_calib: int = 512) -> NamesTask:
    """Split the Unicode 3.2 character names into train/test *names* and cut them into windows.

    Args:
        seed: fixes which names are test names and the calibration subset.
        context: how many previous symbols the model sees (1..32).
        test_fraction: share of names held out (0 < f < 1).
        n_calib: calibration windows drawn from the training windows.

    Returns:
        A :class:`NamesTask` of fresh tensors.
    """
    seed = check_int(seed, "seed", 0, 2**32 - 1)
    context = check_int(context, "context", 1, 32)
    if not isinstance(test_fraction, float) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be a float in (0, 1), e.g. 0.2, got {test_fraction!r}.")
    n_calib = check_int(n_calib, "n_calib", 1, 100_000)
    tensors = [t.clone() for t in _build(seed, context, test_fraction, n_calib)]
    return NamesTask(*tensors, context=context, seed=seed)


def decode(x: torch.Tensor) -> str:
    """Symbols of one context window (``^`` for padding).

    >>> decode(torch.tensor([38, 38, 19]))
    '^^H'
    """
    return "".join("^" if int(i) == _PAD else VOCAB[int(i)] for i in x)


class OneHot(nn.Module):
    """``(N, context)`` symbol indices -> ``(N, context * (len(VOCAB) + 1))`` one-hot floats.

    Accepts float input holding whole numbers (``qedu.models.predict`` casts inputs to the
    model's dtype)."""

    def forward(self, x):
        idx = x.round().long()  # (N, context)
        return F.one_hot(idx, len(VOCAB) + 1).float().flatten(1)  # (N, context, V+1) -> (N, context*(V+1))


def make_char_mlp(context: int = 6, hidden: tuple = (128, 128), *, seed: int = 0) -> nn.Sequential:
    """``OneHot -> fc1 -> relu1 -> fc2 -> relu2 -> fc3`` predicting the next of ``len(VOCAB)`` symbols.

    >>> make_char_mlp(seed=0)(torch.zeros(2, 6, dtype=torch.long)).shape
    torch.Size([2, 38])
    """
    context = check_int(context, "context", 1, 32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_int(seed, "seed", 0, 2**32 - 1))
        layers: list = [("onehot", OneHot())]
        width = context * (len(VOCAB) + 1)
        for i, h in enumerate(hidden, start=1):
            layers += [(f"fc{i}", nn.Linear(width, check_int(h, "hidden", 1))), (f"relu{i}", nn.ReLU())]
            width = h
        layers.append((f"fc{len(hidden) + 1}", nn.Linear(width, len(VOCAB))))
        return nn.Sequential(OrderedDict(layers))


def bits_per_char(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 8192) -> float:
    """Mean cross-entropy of the next symbol in bits (``log2``); lower is better.

    Runs in eval mode without gradients; the model's mode is restored.

    Raises:
        TypeError / ValueError: ``model`` not an ``nn.Module``, ``x``/``y`` not tensors of the same
            non-zero length (``y`` integer labels), ``batch_size < 1``.

    >>> round(bits_per_char(make_char_mlp(seed=0), torch.zeros(4, 6, dtype=torch.long), torch.zeros(4, dtype=torch.long)), 1)
    5.3
    """
    model = check_module(model)
    batch_size = check_int(batch_size, "batch_size", 1)
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (e.g. task.{name}_test), got {type(t).__name__}.")
    if y.ndim != 1 or y.is_floating_point() or len(y) == 0 or x.ndim == 0 or len(x) != len(y):
        raise ValueError(f"x and y must hold the same number (>= 1) of windows and integer labels, got x of shape "
                         f"{tuple(x.shape)} and y of shape {tuple(y.shape)} ({y.dtype}); pass e.g. task.x_test, task.y_test.")
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for i in range(0, len(y), batch_size):
                logits = model(x[i:i + batch_size].float())
                total += float(F.cross_entropy(logits, y[i:i + batch_size], reduction="sum"))
    finally:
        model.train(was_training)
    return total / len(y) / math.log(2)


_TRAINED: dict = {}


def _fingerprint(task: NamesTask) -> str:
    """A digest of what training reads from ``task`` (its training windows and labels)."""
    h = hashlib.sha256()
    for t in (task.x_train, task.y_train):
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def trained_char_mlp(seed: int = 0, epochs: int = 3, *, task: NamesTask | None = None) -> nn.Module:
    """A :func:`make_char_mlp` trained on :func:`load_names_task` with :func:`qedu.models.train`
    (Adam, lr 3e-3, batches of 256): about 1.24 bits per character and 75 % top-1 after 3
    epochs, 3-10 s on one CPU thread. Kept in memory per ``(seed, epochs, task)`` -- every
    argument that changes the weights is in the key (a given ``task`` by a fingerprint of its
    training tensors); returns a new model object in eval mode each call. The model's context
    length is the task's.

    Raises:
        TypeError / ValueError: bad ``seed`` or ``epochs``; ``task`` not a :class:`NamesTask`.
    """
    from qedu.models import train

    seed = check_int(seed, "seed", 0, 2**32 - 1)
    epochs = check_int(epochs, "epochs", 1)
    if task is not None and not isinstance(task, NamesTask):
        raise TypeError(f"task must be a NamesTask from load_names_task(), or None, got {type(task).__name__}.")
    key = (seed, epochs, None if task is None else _fingerprint(task))
    model = make_char_mlp(context=6 if task is None else task.context, seed=seed)
    if key not in _TRAINED:
        task = load_names_task(seed=seed) if task is None else task
        train(model, task, epochs=epochs, lr=3e-3, batch_size=256, seed=seed)
        _TRAINED[key] = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(_TRAINED[key])
    return model.eval()
