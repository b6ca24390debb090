"""The small networks the lessons quantize, how to train them, and a cache of trained ones.

* :func:`make_mlp`: ``Flatten -> Linear 64->128 -> ReLU -> Linear 128->64 -> ReLU -> Linear 64->10``
  (17,226 parameters).
* :func:`make_cnn`: two ``Conv2d 3x3 -> BatchNorm2d -> ReLU`` blocks with a 2x2 max-pool
  between them and a ``Linear`` to 10 classes (9,978 parameters). The convolutions have no bias: the BatchNorm
  after each one supplies it, and folding the BatchNorm into the convolution creates it.

* :class:`TinyGPT`: a GPT-style decoder (token + position embeddings, pre-LayerNorm blocks of
  multi-head causal attention and a GELU MLP, tied output layer). ``pretrained("tinylm")``
  (:func:`load_tinylm`) is one trained on Python's documentation, byte by byte
  (:mod:`qedu.text`); its float16 weights ship with qedu and are checked against a recorded
  sha256 before they are read.

The digits models take images of shape ``(N, 1, 8, 8)`` and return logits ``(N, 10)``. Building is seeded,
:func:`train` is seeded, so the same seed gives bitwise the same trained weights (on the same
machine, torch version and thread count). :func:`pretrained` trains once and caches the weights
on disk, so a lesson gets a trained model in milliseconds.

>>> model = make_mlp(seed=0)
>>> count_params(model), tuple(model(torch.zeros(2, 1, 8, 8)).shape)
(17226, (2, 10))
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import numbers
import os
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qedu._validation import as_float_tensor, check_bool, check_int, check_module, check_seed, to_model_dtype
from qedu.data import Digits, batches, load_digits
from qedu.optim import _LeanAdam

__all__ = [
    "make_mlp", "make_cnn", "count_params", "History", "train", "predict", "evaluate", "per_class_accuracy",
    "TrainConfig", "PRETRAINED", "pretrained", "pretrained_path", "default_cache_dir", "clear_memo", "CacheWarning",
    "TinyGPT", "TINYLM_CONFIG", "TINYLM_SHA256", "WeightsMismatchError", "load_tinylm", "tinylm_path", "tinylm_info",
    "sha256_file",
]

MODEL_FORMAT_VERSION = 1  # bump when the saved file layout or the architectures change


# --------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------

def _check_widths(widths, name: str, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(widths, (numbers.Integral,)) and not isinstance(widths, bool):
        widths = (widths,)
    if not isinstance(widths, Sequence) or isinstance(widths, str):
        raise TypeError(f"{name} must be a tuple of layer widths such as (128, 64), got {widths!r}.")
    widths = tuple(check_int(w, name, 1) for w in widths)
    if not widths and not allow_empty:
        raise ValueError(f"{name} must list at least one width, got {widths!r}.")
    return widths


def _seeded_build(seed: int | None, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model with its initial weights fixed by ``seed``, leaving torch's global RNG alone."""
    if seed is None:
        return build()  # uses torch's global generator (seeded by qedu.setup)
    seed = check_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def make_mlp(hidden: Sequence[int] = (128, 64), n_classes: int = 10, *, seed: int | None = 0) -> nn.Sequential:
    """A multi-layer perceptron for 8x8 digits: ``Flatten, (Linear, ReLU) per hidden width, Linear``.

    Layers are named ``flatten, fc1, relu1, fc2, relu2, fc3`` (so ``model.fc1`` and ``model[1]``
    are the same layer). Initial weights are fixed by ``seed`` (``None``: torch's global RNG).

    >>> make_mlp(seed=0).fc3
    Linear(in_features=64, out_features=10, bias=True)
    """
    hidden = _check_widths(hidden, "hidden", allow_empty=True)
    n_classes = check_int(n_classes, "n_classes", 2)

    def build():
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]  # (N, 1, 8, 8) -> (N, 64)
        width = 64
        for i, h in enumerate(hidden, start=1):
            layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU())]
            width = h
        layers.append((f"fc{len(hidden) + 1}", nn.Linear(width, n_classes)))
        return nn.Sequential(OrderedDict(layers))

    return _seeded_build(seed, build)


def make_cnn(channels: Sequence[int] = (16, 32), n_classes: int = 10, *, seed: int | None = 0) -> nn.Sequential:
    """A small CNN for 8x8 digits: blocks of ``Conv2d 3x3 (no bias), BatchNorm2d, ReLU``, a 2x2
    max-pool after the first block, then ``Flatten, Linear``.

    Layers are named ``conv1, bn1, relu1, pool, conv2, bn2, relu2, flatten, fc``. Shapes:
    ``(N, 1, 8, 8) -> conv1 (N, 16, 8, 8) -> pool (N, 16, 4, 4) -> conv2 (N, 32, 4, 4)
    -> flatten (N, 512) -> fc (N, 10)``. Initial weights are fixed by ``seed``.

    >>> count_params(make_cnn(seed=0))
    9978
    """
    channels = _check_widths(channels, "channels", allow_empty=False)
    n_classes = check_int(n_classes, "n_classes", 2)

    def build():
        layers: list[tuple[str, nn.Module]] = []
        c_in = 1
        for i, c in enumerate(channels, start=1):
            layers += [
                (f"conv{i}", nn.Conv2d(c_in, c, kernel_size=3, padding=1, bias=False)),  # keeps H x W
                (f"bn{i}", nn.BatchNorm2d(c)),
                (f"relu{i}", nn.ReLU()),
            ]
            if i == 1:
                layers.append(("pool", nn.MaxPool2d(2)))  # (N, C, 8, 8) -> (N, C, 4, 4)
            c_in = c
        layers += [
            ("flatten", nn.Flatten()),  # (N, C, 4, 4) -> (N, C * 16)
            ("fc", nn.Linear(c_in * 16, n_classes)),
        ]
        return nn.Sequential(OrderedDict(layers))

    return _seeded_build(seed, build)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics are buffers, not counted).

    >>> count_params(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------
# A small GPT (the language model of lesson 10; lesson 7 measures its training memory)
# --------------------------------------------------------------------------------------------

class _Block(nn.Module):
    """One GPT layer, written out so every stored activation is visible (pre-norm, GELU MLP).

    With ``fused_attention`` the attention runs as one ``F.scaled_dot_product_attention`` call
    (FlashAttention-style kernels on GPUs): same result, but no ``s x s`` matrix is stored.
    """

    def __init__(self, hidden: int, n_heads: int, dropout: float, fused_attention: bool = False):
        super().__init__()
        self.n_heads, self.fused_attention = n_heads, fused_attention
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.fc1, self.fc2 = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(h, dim=2)  # 3 x (b, s, h)
        q, k, v = (t.view(b, s, self.n_heads, h // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (b, a, s, h/a)
        if self.fused_attention:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.drop.p if self.training else 0.0, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(h // self.n_heads)  # (b, a, s, s)
            causal = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
            y = self.drop(att.masked_fill(causal, float("-inf")).softmax(dim=-1)) @ v
        y = y.transpose(1, 2).reshape(b, s, h)  # (b, a, s, h/a) -> (b, s, h)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class TinyGPT(nn.Module):
    """A small GPT: token + position embeddings, ``n_layers`` blocks, final norm, tied output layer.

    Weights start as in GPT-2 (normal, std 0.02; zero biases). Initial values come from torch's
    global generator (seed it, e.g. with ``qedu.setup``). ``fused_attention=True`` computes
    attention with ``F.scaled_dot_product_attention`` instead of writing it out (same result
    up to rounding; stores no ``s x s`` attention matrix, so activation memory drops).

    >>> model = TinyGPT(vocab_size=16, seq_len=8, hidden=32, n_layers=2, n_heads=4)
    >>> tuple(model(torch.zeros(3, 8, dtype=torch.long)).shape), sum(p.numel() for p in model.parameters())
    ((3, 8, 16), 26240)
    """

    def __init__(self, vocab_size: int = 256, seq_len: int = 64, hidden: int = 128, n_layers: int = 2,
                 n_heads: int = 4, dropout: float = 0.0, fused_attention: bool = False):
        super().__init__()
        fused_attention = check_bool(fused_attention, "fused_attention")
        if check_int(hidden, "hidden", 1) % check_int(n_heads, "n_heads", 1):
            raise ValueError(f"hidden ({hidden}) must be a multiple of n_heads ({n_heads}).")
        self.tok = nn.Embedding(check_int(vocab_size, "vocab_size", 2), hidden)
        self.pos = nn.Embedding(check_int(seq_len, "seq_len", 1), hidden)
        n_layers = check_int(n_layers, "n_layers", 1)
        self.blocks = nn.ModuleList(_Block(hidden, n_heads, dropout, fused_attention) for _ in range(n_layers))
        self.ln = nn.LayerNorm(hidden)
        for m in self.modules():  # GPT-2's initialisation: small weights, so the first loss is ~ln(vocab)
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))  # (b, s, h)
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.tok.weight.T  # (b, s, vocab): the output layer shares the embedding


_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"mlp": make_mlp, "cnn": make_cnn}


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------

@dataclass
class History:
    """What :func:`train` measured after each epoch: ``train_loss[i]``, ``test_acc[i]`` (0..1),
    ``epoch_seconds[i]`` for epoch ``i + 1``."""

    train_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)

    @property
    def final_test_acc(self) -> float:
        """Test accuracy after the last epoch (``nan`` before any epoch ran)."""
        return self.test_acc[-1] if self.test_acc else math.nan

    @property
    def seconds(self) -> float:
        """Total training time in seconds."""
        return float(sum(self.epoch_seconds))

    def __repr__(self) -> str:
        return f"History(epochs={len(self.test_acc)}, final_test_acc={self.final_test_acc:.4f}, seconds={self.seconds:.2f})"


def _check_positive_float(value, name: str, *, allow_zero: bool = False, example: str = "1e-3") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number such as {example}, got {type(value).__name__} {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound} (e.g. {example}), got {value}.")
    return value


def _check_data(data) -> Digits:
    needed = ("x_train", "y_train", "x_test", "y_test")
    if not all(hasattr(data, a) for a in needed):
        raise TypeError(f"data must be a Digits from qedu.data.load_digits(), got {type(data).__name__}.")
    return data


def train(
    model: nn.Module,
    data: Digits,
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    weight_decay: float = 0.0,
    callback: Callable[[int, dict], None] | None = None,
) -> History:
    """Train ``model`` in place on ``data.x_train`` with Adam and cross-entropy; return a :class:`History`.

    Each epoch visits the training images once in an order drawn from a ``torch.Generator``
    seeded with ``seed``; together with a seeded model (``make_mlp(seed=...)``) the trained
    weights are bitwise reproducible. After each epoch the test accuracy is measured and
    ``callback(epoch, metrics)`` is called (``epoch`` counts from 1; ``metrics`` has
    ``train_loss``, ``test_acc``, ``seconds``), e.g. to live-plot. The test set only monitors:
    it never influences the weights. The model is left in eval mode.

    Raises:
        TypeError / ValueError: for a model that is not an ``nn.Module``, data that is not a
            :class:`~qedu.data.Digits`, or epochs/batch_size < 1, lr <= 0, weight_decay < 0.

    >>> data = load_digits(seed=0)
    >>> train(make_mlp(seed=0), data, epochs=1).test_acc[0] > 0.5
    True
    """
    model = check_module(model)
    data = _check_data(data)
    epochs = check_int(epochs, "epochs", 1)
    lr = _check_positive_float(lr, "lr")
    batch_size = check_int(batch_size, "batch_size", 1)
    seed = check_seed(seed)
    weight_decay = _check_positive_float(weight_decay, "weight_decay", allow_zero=True, example="1e-4")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function callback(epoch, metrics), got {type(callback).__name__}.")

    generator = torch.Generator().manual_seed(seed)  # one generator: a new order every epoch
    optimizer = _LeanAdam(model.parameters(), lr=lr, weight_decay=weight_decay)  # torch.optim.Adam's update
    history = History()
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        total_loss = 0.0
        for xb, yb in batches(data.x_train, data.y_train, batch_size, shuffle=True, generator=generator):
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(yb)
        seconds = time.perf_counter() - start  # training time only, not the evaluation below
        history.train_loss.append(total_loss / len(data.y_train))
        history.test_acc.append(evaluate(model, data.x_test, data.y_test))
        history.epoch_seconds.append(seconds)
        if callback is not None:
            callback(epoch, {"train_loss": history.train_loss[-1], "test_acc": history.test_acc[-1], "seconds": seconds})
    model.eval()
    return history


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels ``argmax(model(x))`` as an int64 tensor of shape ``(N,)``.

    Runs in eval mode without gradients and restores the model's train/eval mode afterwards.
    ``x`` is moved to the device and floating dtype of the model's parameters (so a ``.half()``
    model takes float32 images; float64 values must fit the model's dtype).

    Raises:
        TypeError / ValueError: ``model`` not an ``nn.Module``, ``x`` not a tensor, floating ``x``
            holding NaN/inf or values beyond the model's dtype, ``batch_size < 1``.

    >>> predict(make_mlp(seed=0), torch.zeros(3, 1, 8, 8)).shape
    torch.Size([3])
    """
    model = check_module(model)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of images (N, 1, 8, 8), got {type(x).__name__}.")
    batch_size = check_int(batch_size, "batch_size", 1)
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is not None:
        x = x.to(device=param.device)
        if x.is_floating_point():  # NaN/inf would give meaningless labels without a word; float64 must fit
            x = to_model_dtype(as_float_tensor(x, "x", allow_empty=True), model, "x")
        else:
            x = x.to(param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            preds = [model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(preds).cpu() if preds else torch.zeros(0, dtype=torch.int64)


def _check_labels(y, n: int) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point():
        raise TypeError(f"y must be a 1-D integer tensor of labels, got {type(y).__name__} {getattr(y, 'shape', '')}.")
    if len(y) != n:
        raise ValueError(f"x has {n} images but y has {len(y)} labels; pass matching x and y.")
    if n == 0:
        raise ValueError("x and y are empty; accuracy needs at least one image.")
    return y


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Accuracy of ``model`` on ``(x, y)`` as a fraction in [0, 1] (0.971 means 97.1 %).

    Eval mode, no gradients; the model's mode is restored. One digits test image is 1/360.

    >>> evaluate(make_mlp(seed=0), torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    0.25
    """
    pred = predict(model, x, batch_size)
    y = _check_labels(y, len(pred))
    return float((pred == y.cpu()).double().mean())


def per_class_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """Accuracy per class as a float64 tensor of shape ``(n_classes,)``; ``nan`` for absent classes.

    >>> per_class_accuracy(make_mlp(seed=0), torch.zeros(2, 1, 8, 8), torch.tensor([0, 0]), n_classes=2)
    tensor([0., nan], dtype=torch.float64)
    """
    pred = predict(model, x)
    y = _check_labels(y, len(pred)).cpu()
    n_classes = check_int(n_classes, "n_classes", 1)
    if int(y.max()) >= n_classes or int(y.min()) < 0:
        raise ValueError(f"y holds labels {int(y.min())}..{int(y.max())}, outside 0..{n_classes - 1}; check n_classes.")
    total = torch.bincount(y, minlength=n_classes).double()
    correct = torch.bincount(y[pred == y], minlength=n_classes).double()
    return correct / total  # 0/0 -> nan for classes with no samples


# --------------------------------------------------------------------------------------------
# Pretrained models, cached on disk
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    """How :func:`pretrained` trains an architecture (the arguments it passes to :func:`train`)."""

    epochs: int
    lr: float
    batch_size: int
    weight_decay: float = 0.0


PRETRAINED: dict[str, TrainConfig] = {
    "mlp": TrainConfig(epochs=30, lr=1e-3, batch_size=32),
    "cnn": TrainConfig(epochs=30, lr=1e-3, batch_size=64),
}


class CacheWarning(UserWarning):
    """The model cache could not be read or written; qedu retrained and carried on."""


_MEMO: dict[str, tuple] = {}  # path -> (file signature, state_dict, History); see pretrained()
_WARNED_DIRS: set[str] = set()


def clear_memo() -> None:
    """Forget the trained weights :func:`pretrained` keeps in memory (the disk cache stays)."""
    _MEMO.clear()


def default_cache_dir() -> Path:
    """Where qedu caches trained models: ``$QEDU_CACHE_DIR`` if set, else the platform's cache
    folder: ``$XDG_CACHE_HOME/qedu`` or ``~/.cache/qedu`` (Linux), ``~/Library/Caches/qedu``
    (macOS), ``%LOCALAPPDATA%\\qedu\\Cache`` (Windows)."""
    env = os.environ.get("QEDU_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        return (Path(base) if base else Path.home() / "AppData" / "Local") / "qedu" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "qedu"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec ignores relative paths
    return base / "qedu"


def _resolve(name, seed, epochs, data_seed) -> tuple[str, int, int, TrainConfig]:
    if not isinstance(name, str) or name.lower() not in PRETRAINED:
        raise ValueError(f"name must be one of {sorted(PRETRAINED) + ['tinylm']}, got {name!r}.")
    name = name.lower()
    seed = check_seed(seed)
    data_seed = check_seed(data_seed, "data_seed")
    config = PRETRAINED[name]
    if epochs is not None:
        config = TrainConfig(check_int(epochs, "epochs", 1), config.lr, config.batch_size, config.weight_decay)
    return name, seed, data_seed, config


def _config_json(name: str, seed: int, data_seed: int, config: TrainConfig) -> str:
    return json.dumps(
        {
            "format": MODEL_FORMAT_VERSION,
            "name": name,
            "architecture": repr(_ARCHITECTURES[name](seed=0)),  # any change to the layers changes the key
            "epochs": config.epochs,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "weight_decay": config.weight_decay,
            "seed": seed,
            "data_seed": data_seed,
            "torch": ".".join(torch.__version__.split(".")[:2]),
        },
        sort_keys=True,
    )


def pretrained_path(
    name: str = "mlp", seed: int = 0, *, epochs: int | None = None, data_seed: int = 0, cache_dir=None
) -> Path:
    """The file :func:`pretrained` reads and writes for this configuration.

    Its name holds a hash of the configuration (architecture, epochs, lr, batch size, seeds,
    torch major.minor, qedu's model-format version): change any of them and it is another file.

    >>> pretrained_path("cnn", seed=2, cache_dir="/tmp/c").name.startswith("cnn-seed2-")
    True
    """
    name, seed, data_seed, config = _resolve(name, seed, epochs, data_seed)
    digest = hashlib.sha256(_config_json(name, seed, data_seed, config).encode()).hexdigest()[:16]
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a folder path (a str or pathlib.Path) or None, got "
                        f"{type(cache_dir).__name__} {cache_dir!r}.")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "models" / f"{name}-seed{seed}-{digest}.pt"


def _signature(path: Path):
    """(mtime, size) of the file, or None if it does not exist: tells whether it changed."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _load(path: Path, config_json: str, model: nn.Module) -> History:
    """Load weights into ``model``; raise if the file is not exactly what this config would save."""
    payload = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain types only
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT_VERSION:
        raise ValueError("not a qedu model file of the current format")
    if payload.get("config") != config_json:
        raise ValueError("saved for another configuration")
    state = payload["state_dict"]
    model.load_state_dict(state, strict=True)  # raises on missing/unexpected keys or wrong shapes
    if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise ValueError("weights are not finite")
    h = payload["history"]
    return History([float(v) for v in h["train_loss"]], [float(v) for v in h["test_acc"]], [float(v) for v in h["epoch_seconds"]])


def _short_reason(err: Exception) -> str:
    """One informative line of a load error (torch's weights-only refusals are long)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.strip().startswith(boilerplate)]
    line = lines[0].removeprefix("WeightsUnpickler error:").strip() if lines else type(err).__name__
    if "Weights only load failed" in str(err):
        line = f"torch.load(weights_only=True) refused it: {line}"
    return line[:200]


def _save(path: Path, payload: dict):
    """Write ``payload`` atomically (temporary file, then rename); return the file signature,
    or None (with a one-time warning) if the folder cannot be written."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp", delete=False) as f:
            tmp = f.name
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
        return _signature(path)
    except OSError as err:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        folder = str(path.parent)
        if folder not in _WARNED_DIRS:
            _WARNED_DIRS.add(folder)
            warnings.warn(
                f"qedu cannot save trained models in {folder} ({err}); models will be retrained in each new "
                f"session. Set the environment variable QEDU_CACHE_DIR to a writable folder to cache them.",
                CacheWarning,
                stacklevel=3,
            )
        return None


def pretrained(
    name: str = "mlp",
    seed: int = 0,
    *,
    epochs: int | None = None,
    data_seed: int = 0,
    cache_dir=None,
    retrain: bool = False,
    return_history: bool = False,
):
    """A trained ``"mlp"`` or ``"cnn"`` in eval mode, trained once and then loaded from a cache;
    or ``"tinylm"``, the small language model whose weights ship with qedu (:func:`load_tinylm`).

    The model is built and trained with ``seed`` (init and shuffling) on
    ``load_digits(seed=data_seed)``'s training images, with the settings in ``PRETRAINED[name]``
    (``epochs`` overrides the epoch count). Evaluate it on that same split's test set: the
    default ``data_seed=0`` matches ``load_digits()``.

    The weights are cached in ``pretrained_path(...)`` under ``cache_dir`` (default
    :func:`default_cache_dir`): saved atomically, loaded with ``torch.load(weights_only=True)``
    (never an arbitrary pickle). A missing, corrupt or mismatched file is retrained and
    overwritten (with a :class:`CacheWarning` for a bad file); an unwritable folder gives one
    :class:`CacheWarning` and the model is still returned. Weights are also kept in memory, so
    repeated calls are fast. Every call returns a new model object: change it freely.

    Args:
        name: ``"mlp"`` or ``"cnn"``. seed: training seed. epochs: override the epoch count.
        data_seed: the split to train on. cache_dir: folder for the cache.
        retrain: train again even if cached (and overwrite the cache).
        return_history: also return the :class:`History` of the training run.

    Returns:
        The model, or ``(model, history)`` with ``return_history=True``.

    Raises:
        ValueError / TypeError: unknown name (the message lists the valid ones), bad seeds or
            epochs; for ``"tinylm"``, any training argument.
        WeightsMismatchError: the shipped ``"tinylm"`` weights file does not match its sha256.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     model = pretrained("mlp", epochs=1, cache_dir=folder)
    >>> model.training, count_params(model)
    (False, 17226)
    """
    if isinstance(name, str) and name.lower() == "tinylm":  # shipped weights: nothing to train or cache
        changed = {k: v for k, v in dict(seed=seed, epochs=epochs, data_seed=data_seed, retrain=retrain,
                                         return_history=return_history).items() if v not in (0, None, False)}
        if changed:
            raise ValueError(f"pretrained('tinylm') loads the weights that ship with qedu; {sorted(changed)} do not apply. "
                             "Call pretrained('tinylm') alone; tinylm_info() has its training record.")
        return load_tinylm()
    name, seed, data_seed, config = _resolve(name, seed, epochs, data_seed)
    if not isinstance(retrain, bool):
        raise TypeError(f"retrain must be True or False, got {retrain!r}.")
    config_json = _config_json(name, seed, data_seed, config)
    path = pretrained_path(name, seed, epochs=config.epochs, data_seed=data_seed, cache_dir=cache_dir)
    key = str(path)
    model = _ARCHITECTURES[name](seed=seed)
    history = None
    if not retrain:
        signature = _signature(path)
        memo = _MEMO.get(key)
        if memo is not None and memo[0] == signature:  # the file is unchanged since we read or wrote it
            model.load_state_dict(memo[1])
            history = memo[2]
        elif signature is not None:
            try:
                history = _load(path, config_json, model)
                _MEMO[key] = (signature, copy.deepcopy(model.state_dict()), history)
            except Exception as err:  # any unreadable file means: retrain, never crash
                reason = _short_reason(err)
                warnings.warn(f"qedu's cached model {path} is unusable ({reason}); retraining it.", CacheWarning, stacklevel=2)
                model = _ARCHITECTURES[name](seed=seed)  # a failed load may have half-filled the weights
                history = None
    if history is None:
        data = load_digits(seed=data_seed)
        history = train(
            model, data, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=seed,
            weight_decay=config.weight_decay,
        )
        state = copy.deepcopy(model.state_dict())
        payload = {
            "format": MODEL_FORMAT_VERSION,
            "config": config_json,
            "state_dict": state,
            "history": {"train_loss": history.train_loss, "test_acc": history.test_acc, "epoch_seconds": history.epoch_seconds},
        }
        _MEMO[key] = (_save(path, payload), state, history)
    model.eval()
    if return_history:
        return model, copy.deepcopy(history)
    return model


# --------------------------------------------------------------------------------------------
# The small language model, whose weights ship with qedu (trained by scripts/train_tinylm.py)
# --------------------------------------------------------------------------------------------

TINYLM_CONFIG = MappingProxyType(  # read-only; TinyGPT(**TINYLM_CONFIG) builds the architecture
    {"vocab_size": 256, "seq_len": 128, "hidden": 256, "n_layers": 2, "n_heads": 4, "fused_attention": True}
)
TINYLM_SHA256 = "e88723e3af6e7969871af50c6e8f33eede6fba2d50b363ffa0360b94adc3f32f"  # sha256 of qedu/weights/tinylm.safetensors


class WeightsMismatchError(ValueError):
    """A weights file is not the one qedu recorded (its sha256 differs): it is refused, never loaded."""


def tinylm_path() -> Path:
    """The weights file that ships with qedu: ``qedu/weights/tinylm.safetensors``."""
    return Path(__file__).resolve().parent / "weights" / "tinylm.safetensors"


def tinylm_info() -> dict:
    """What ``scripts/train_tinylm.py`` recorded: sha256, config, training time, test perplexity...

    >>> tinylm_info()["sha256"] == TINYLM_SHA256
    True
    """
    return json.loads(tinylm_path().with_suffix(".json").read_text())


def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_TINYLM_MEMO: dict[str, tuple] = {}  # path -> (file signature, sha256 checked, state_dict)


def _tinylm_state(path: Path, expected: str) -> dict[str, torch.Tensor]:
    """The file's float16 tensors, read once per file version after its sha256 is checked (see
    :func:`load_tinylm`). Kept in float16, as stored: half the memory of float32 (3.4 MB), and
    converting to float32 later is exact."""
    key, signature = str(path.resolve()), _signature(path)
    memo = _TINYLM_MEMO.get(key)
    if memo is None or memo[0] != signature or memo[1] != expected:
        actual = sha256_file(path)
        if actual != expected.lower():
            raise WeightsMismatchError(
                f"refusing to load {path}: its sha256 is {actual}, but the recorded one is {expected}. The file was "
                "changed or damaged; reinstall qedu (or retrain with scripts/train_tinylm.py and record the new hash)."
            )
        from safetensors.torch import load_file

        _TINYLM_MEMO[key] = memo = (signature, expected, load_file(str(path)))
    return memo[2]


def load_tinylm(path=None, *, sha256: str | None = None) -> TinyGPT:
    """The small byte-level GPT qedu ships, in eval mode, weights checked before they are read.

    The file's sha256 must equal ``sha256`` (default :data:`TINYLM_SHA256`, recorded when the
    weights were trained); otherwise a :class:`WeightsMismatchError` is raised and nothing is
    loaded. The file is read with ``safetensors`` (tensors only, no pickle). The float16
    weights are converted to float32, the dtype every lesson computes in. Each call returns a
    new model: change it freely.

    Args:
        path: a ``.safetensors`` file (default :func:`tinylm_path`). sha256: the expected hash.

    Raises:
        FileNotFoundError: no file at ``path``. WeightsMismatchError: the hash differs.
        ValueError: the file holds other tensor names or shapes than ``TinyGPT(**TINYLM_CONFIG)``.

    >>> model = load_tinylm()
    >>> model.training, count_params(model)
    (False, 1678336)
    """
    path = Path(path) if path is not None else tinylm_path()
    expected = TINYLM_SHA256 if sha256 is None else sha256
    if not isinstance(expected, str):
        raise TypeError(f"sha256 must be a hex string, got {type(expected).__name__}.")
    if not path.is_file():
        raise FileNotFoundError(f"no tinylm weights at {path}; reinstall qedu, or run scripts/train_tinylm.py --out {path.parent}.")
    state = _tinylm_state(path, expected)
    model = _seeded_build(0, lambda: TinyGPT(**TINYLM_CONFIG))
    try:
        model.load_state_dict(state, strict=True)  # copies the float16 values into float32 parameters: exact
    except RuntimeError as err:
        raise ValueError(f"{path} does not hold the weights of TinyGPT(**TINYLM_CONFIG): {str(err).splitlines()[0]}") from None
    return model.eval()
