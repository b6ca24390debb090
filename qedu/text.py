"""The text the small language model reads: Python's own documentation, as bytes, offline.

Every Python installation ships ``pydoc_data.topics``: 79 topics of the language reference
(about 466 KB of English with code) that ``help()`` prints. Its wording changes from one
Python release to the next, so qedu ships a copy (``qedu/corpus/pydoc_topics.json``, taken from
CPython 3.11.7, PSF documentation licence) and never downloads text: :func:`load_text` joins the
topics in sorted order, encodes them as UTF-8, checks the recorded sha256, and splits the
**bytes** into fixed, deterministic parts.

* Tokens are bytes: the vocabulary is the 256 byte values (no tokenizer to train or ship).
* The byte stream is cut into chunks of ``chunk_bytes`` (4,096). Chunk ``i`` goes to
  ``test`` if ``i % 20 == 19``, to ``val`` if ``i % 20 == 9``, else to ``train`` (90 / 5 / 5 %).
  Interleaving keeps every part a mix of all topics; chunks keep sentences whole.

:func:`windows` cuts a split into non-overlapping ``(inputs, targets)`` rows for evaluation,
:func:`random_windows` draws training rows with a seeded generator.

>>> text = load_text()
>>> text
Text(train=421061, val=24576, test=20480, vocab=256)
>>> decode(text.train[:20])
'The "assert" stateme'
"""
from __future__ import annotations

import functools
import hashlib
import json
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qedu._validation import check_int

__all__ = ["Text", "CORPUS", "VOCAB_SIZE", "load_text", "encode", "decode", "windows", "random_windows"]

VOCAB_SIZE = 256  # one token per byte value
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True, repr=False)
class Text:
    """The three byte splits as int64 tensors of token ids in ``0..255`` (see :func:`load_text`)."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor

    def split(self, name: str) -> torch.Tensor:
        """The tokens of split ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {name!r}.")
        return getattr(self, name)

    def __repr__(self) -> str:
        return f"Text(train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, vocab={VOCAB_SIZE})"


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as an int64 tensor of token ids.

    >>> encode("hé")
    tensor([104, 195, 169])
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}.")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate such as "\ud800" has no UTF-8 bytes
        raise ValueError(f"text holds {text[err.start:err.end]!r} at position {err.start}, which UTF-8 cannot encode "
                         "(a lone surrogate); remove it, e.g. text.encode('utf-8', 'replace').decode().") from None
    return torch.tensor(list(data), dtype=torch.int64)


def decode(tokens) -> str:
    """The text of a sequence of byte tokens (invalid UTF-8 is shown as U+FFFD).

    >>> decode(torch.tensor([104, 195, 169]))
    'hé'
    """
    if isinstance(tokens, torch.Tensor):
        if tokens.is_floating_point() or tokens.is_complex() or tokens.ndim > 1:
            raise TypeError(f"tokens must be a 1-D integer tensor of byte values, got {tokens.dtype} {tuple(tokens.shape)}.")
        tokens = tokens.tolist()
    if isinstance(tokens, (str, bytes)) or not all(isinstance(t, (numbers.Integral, np.integer))
                                                   and not isinstance(t, bool) for t in tokens):
        raise TypeError(f"tokens must be integers in 0..255 (a rounded 104.7 would be another byte), got {tokens!r:.80}.")
    try:
        data = bytes(int(t) for t in tokens)
    except ValueError as err:
        raise ValueError(f"tokens must be integers in 0..255, got {tokens!r:.80}: {err}") from None
    return data.decode("utf-8", errors="replace")


CORPUS = Path(__file__).resolve().parent / "corpus" / "pydoc_topics.json"


@functools.lru_cache(maxsize=1)
def _corpus_bytes() -> bytes:
    record = json.loads(CORPUS.read_text(encoding="utf-8"))
    topics = record["topics"]
    data = "".join(topics[name] for name in sorted(topics)).encode("utf-8")
    if hashlib.sha256(data).hexdigest() != record["sha256_of_joined_utf8"]:
        raise ValueError(f"{CORPUS} does not match its recorded sha256; reinstall qedu.")
    return data


@functools.lru_cache(maxsize=4)
def _load(chunk_bytes: int) -> Text:
    data = _corpus_bytes()
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in _SPLITS}
    for i, chunk in enumerate(tokens.split(chunk_bytes)):
        name = "test" if i % 20 == 19 else "val" if i % 20 == 9 else "train"
        parts[name].append(chunk)
    return Text(*(torch.cat(parts[name]) for name in _SPLITS))


def load_text(chunk_bytes: int = 4096) -> Text:
    """Python's documentation topics as byte tokens, split 90 / 5 / 5 into train / val / test.

    The split is fixed (no seed) and the same on every Python version (the text is qedu's copy). The tensors are
    shared between calls; do not modify them in place (slice or clone them).

    Args:
        chunk_bytes: size of the chunks dealt to the splits (>= 256, and small enough for 20
            chunks, so that every split gets one: at most 23,305 bytes).

    Returns:
        A :class:`Text` with ``train``, ``val`` and ``test`` int64 tensors.

    >>> load_text().test.max() < 256
    tensor(True)
    """
    return _load(check_int(chunk_bytes, "chunk_bytes", 256, len(_corpus_bytes()) // 20))


def _check_tokens(tokens) -> torch.Tensor:
    if (not isinstance(tokens, torch.Tensor) or tokens.ndim != 1 or tokens.is_floating_point() or tokens.is_complex()
            or tokens.dtype == torch.bool):
        raise TypeError(f"tokens must be a 1-D integer tensor (e.g. load_text().test), got {type(tokens).__name__} "
                        f"{tuple(getattr(tokens, 'shape', ()))}.")
    return tokens


def windows(tokens: torch.Tensor, seq_len: int, n_windows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping evaluation rows: ``inputs[i] = tokens[i*s : i*s+s]``, ``targets[i]`` shifted by one.

    Each row predicts ``s`` next tokens; the leftover tail shorter than ``s + 1`` is dropped.

    Args:
        tokens: 1-D int tensor. seq_len: ``s`` (>= 1). n_windows: keep only the first ones.

    Returns:
        ``(inputs, targets)``, two int64 tensors of shape ``(n_windows, seq_len)``.

    Raises:
        ValueError: if ``tokens`` is too short for one window.

    >>> x, y = windows(torch.arange(10), 4)
    >>> x.tolist(), y.tolist()
    ([[0, 1, 2, 3], [4, 5, 6, 7]], [[1, 2, 3, 4], [5, 6, 7, 8]])
    """
    tokens = _check_tokens(tokens)
    seq_len = check_int(seq_len, "seq_len", 1)
    n = (len(tokens) - 1) // seq_len
    if n_windows is not None:
        n = min(n, check_int(n_windows, "n_windows", 1))
    if n < 1:
        raise ValueError(f"tokens has {len(tokens)} tokens, too few for one window of seq_len={seq_len} (+1); "
                         "pass a longer split or a shorter seq_len.")
    x = tokens[: n * seq_len].view(n, seq_len)  # (n * s,) -> (n, s)
    y = tokens[1 : n * seq_len + 1].view(n, seq_len)
    return x.clone(), y.clone()


def random_windows(tokens: torch.Tensor, seq_len: int, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` training rows starting at random offsets drawn from ``generator``.

    >>> x, y = random_windows(torch.arange(100), 8, 2, torch.Generator().manual_seed(0))
    >>> x.shape, bool((y == x + 1).all())
    (torch.Size([2, 8]), True)
    """
    tokens = _check_tokens(tokens)
    seq_len = check_int(seq_len, "seq_len", 1)
    batch = check_int(batch, "batch", 1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), got {type(generator).__name__}.")
    if len(tokens) < seq_len + 1:
        raise ValueError(f"tokens has {len(tokens)} tokens, too few for seq_len={seq_len}; pass a shorter seq_len.")
    start = torch.randint(0, len(tokens) - seq_len, (batch,), generator=generator)  # (batch,)
    offsets = start[:, None] + torch.arange(seq_len + 1)  # (batch, s + 1)
    rows = tokens[offsets]
    return rows[:, :-1], rows[:, 1:]
