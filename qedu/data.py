"""The digits data set every lesson trains and quantizes on: small, bundled, offline.

scikit-learn ships 1,797 hand-written digits as 8x8 images with pixel values 0..16. qedu never
downloads anything: :func:`load_digits` splits those bundled images into

* ``train`` (1,437 images for ``test_size=0.2``): the model learns from these;
* ``calib``: a class-balanced subset **of the training images** (never test images) that a
  quantizer looks at to choose its ranges, as calibration does in real deployments;
* ``test`` (360 images): only ever used to measure accuracy.

Images come as float32 tensors of shape ``(N, 1, 8, 8)`` scaled to ``[0, 1]``
(``x = pixel / 16``); labels as int64 tensors of shape ``(N,)``.

>>> data = load_digits(seed=0)
>>> data
Digits(train=1437, calib=256, test=360, classes=10, seed=0)
>>> tuple(data.x_train.shape), data.x_train.dtype, data.y_train.dtype
((1437, 1, 8, 8), torch.float32, torch.int64)
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from qedu._validation import check_int, check_seed

__all__ = ["Digits", "load_digits", "calibration_indices", "calibration_subset", "batches"]

_PIXEL_MAX = 16.0  # digits pixels are integers 0..16


@dataclass(frozen=True, repr=False)
class Digits:
    """The digits split into train / calibration / test tensors (see :func:`load_digits`).

    ``x_*`` are float32 ``(N, 1, 8, 8)`` in ``[0, 1]``; ``y_*`` are int64 ``(N,)`` labels 0..9.
    ``x_calib``/``y_calib`` are a subset of the training images. Every call to
    :func:`load_digits` returns fresh tensors, so changing one in place affects nobody else.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_calib: torch.Tensor
    y_calib: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    seed: int = 0

    @property
    def n_classes(self) -> int:
        """Number of classes (10)."""
        return len(self.class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Human-readable class names: ``('0', '1', ..., '9')``."""
        return tuple(str(c) for c in range(10))

    def __repr__(self) -> str:
        return (
            f"Digits(train={len(self.y_train)}, calib={len(self.y_calib)}, test={len(self.y_test)}, "
            f"classes={self.n_classes}, seed={self.seed})"
        )


def _digits_file() -> Path | None:
    """Where scikit-learn keeps its bundled digits (``sklearn/datasets/data/digits.csv.gz``), found
    without importing scikit-learn: importing it (with SciPy) costs a kernel about 75 MiB."""
    spec = importlib.util.find_spec("sklearn")  # a top-level package: found, not imported
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """The bundled images ``(1797, 1, 8, 8)`` float32 in [0, 1] and labels int64, read-only.

    Reads the file as ``sklearn.datasets.load_digits`` does (gzip, then ``np.loadtxt``): the same
    numbers (tests/test_data.py compares them), without importing scikit-learn.
    """
    path = _digits_file()
    if path is None:  # an unusual install: let scikit-learn find its file
        from sklearn.datasets import load_digits as _sk_load_digits  # bundled file, no download

        bunch = _sk_load_digits()
        data, target = bunch.data, bunch.target
    else:
        with gzip.open(path, mode="rt", encoding="utf-8") as f:
            table = np.loadtxt(f, delimiter=",")
        data, target = table[:, :-1], table[:, -1].astype(int)
    x = (data.astype(np.float32) / _PIXEL_MAX).reshape(-1, 1, 8, 8)  # (N, 64) -> (N, 1, 8, 8)
    y = target.astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of ``n_draws`` to take from each class: the floor of its share, then one more for
    the classes with the largest remainders (ties broken with ``rng``). scikit-learn's algorithm
    (``sklearn.utils.extmath._approximate_mode``), step for step, so the split is the same."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def _stratified_split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices with every class in both parts in proportion: what
    ``sklearn.model_selection.train_test_split(np.arange(len(y)), test_size=test_size, stratify=y,
    random_state=seed)`` returns (its StratifiedShuffleSplit, step for step; tests/test_data.py
    compares the two), without importing scikit-learn."""
    rng = np.random.RandomState(seed)
    n_test = math.ceil(test_size * len(y))
    n_train = len(y) - n_test
    _, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(class_counts)):
        members = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(members[: n_i[i]])
        test.extend(members[n_i[i]: n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _check_test_size(test_size, n_total: int, n_classes: int) -> float:
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real):
        raise TypeError(f"test_size must be a fraction such as 0.2, got {type(test_size).__name__} {test_size!r}.")
    test_size = float(test_size)
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be a fraction strictly between 0 and 1 (e.g. 0.2), got {test_size}.")
    n_test = math.ceil(test_size * n_total)
    if n_test < n_classes or n_total - n_test < n_classes:
        raise ValueError(
            f"test_size={test_size} leaves {n_test} test and {n_total - n_test} training images; a stratified "
            f"split needs at least {n_classes} in each. Use a value such as 0.2."
        )
    return test_size


@functools.lru_cache(maxsize=32)
def _split_indices(seed: int, test_size: float, n_calib: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into the raw data: (train, test, calib-within-train), cached per configuration."""
    _, y = _raw_digits()
    idx_train, idx_test = _stratified_split(y, test_size, seed)
    idx_calib = _pick(
        torch.from_numpy(y[idx_train]), n_calib, seed=seed, balanced=True, classes=None, n_name="n_calib"
    ).numpy()
    for a in (idx_train, idx_test, idx_calib):
        a.setflags(write=False)  # cached: nobody may change them
    return idx_train, idx_test, idx_calib


def load_digits(seed: int = 0, test_size: float = 0.2, n_calib: int = 256) -> Digits:
    """Split scikit-learn's bundled 8x8 digits into train, calibration and test tensors.

    The train/test split is stratified (every class keeps its share in both parts) and fixed by
    ``seed``. The calibration set is a class-balanced, seeded subset of the *training* images:
    it never contains a test image, so calibrating on it cannot leak test information.
    Images are ``x = pixel / 16`` in ``[0, 1]``, float32, shape ``(N, 1, 8, 8)``.

    Args:
        seed: fixes the split and the calibration subset (0 .. 2**32-1).
        test_size: fraction of the 1,797 images held out for testing (0.2 gives 360).
        n_calib: number of calibration images drawn from the training images.

    Returns:
        A frozen :class:`Digits`. Its tensors are fresh copies on every call: change them
        freely, the next call is unaffected. Only the first call reads the bundled file.

    Raises:
        TypeError / ValueError: for a seed that is not an int in 0..2**32-1, a test_size that is
            not a fraction in (0, 1), or an n_calib that is not an int between 1 and what the
            training images can supply class-balanced.

    >>> d = load_digits(seed=1, n_calib=20)
    >>> len(d.y_train), len(d.y_test), torch.bincount(d.y_calib).tolist()
    (1437, 360, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    """
    seed = check_seed(seed)
    x, y = _raw_digits()
    n_classes = int(y.max()) + 1
    test_size = _check_test_size(test_size, len(y), n_classes)
    n_calib = check_int(n_calib, "n_calib", 1)
    idx_train, idx_test, idx_calib = _split_indices(seed, test_size, n_calib)
    x_train, y_train = torch.from_numpy(x[idx_train]), torch.from_numpy(y[idx_train])  # numpy fancy indexing copies
    return Digits(
        x_train=x_train,
        y_train=y_train,
        x_calib=torch.from_numpy(x[idx_train[idx_calib]]),
        y_calib=torch.from_numpy(y[idx_train[idx_calib]]),
        x_test=torch.from_numpy(x[idx_test]),
        y_test=torch.from_numpy(y[idx_test]),
        seed=seed,
    )


def _as_labels(y, name: str = "y") -> torch.Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a 1-D integer torch.Tensor of labels, got {type(y).__name__}.")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}; use {name}.long().")
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per sample), got shape {tuple(y.shape)}.")
    return y


def _check_xy(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of samples, got {type(x).__name__}.")
    y = _as_labels(y)
    if x.ndim == 0 or len(x) != len(y):
        raise ValueError(
            f"x and y must hold the same number of samples, got x of shape {tuple(x.shape)} and {len(y)} labels."
        )
    return x, y


def calibration_indices(
    y, n: int, *, seed: int, balanced: bool = True, classes: Sequence[int] | None = None
) -> torch.Tensor:
    """Indices of ``n`` samples picked from labels ``y`` (the rules of :func:`calibration_subset`).

    Returns an int64 tensor of ``n`` distinct indices into ``y``, in a seeded random order.

    >>> calibration_indices(torch.tensor([0, 0, 1, 1, 2, 2]), 3, seed=0).sort().values.tolist()
    [1, 2, 5]
    """
    return _pick(y, n, seed=seed, balanced=balanced, classes=classes, n_name="n")


def _pick(y, n, *, seed, balanced, classes, n_name) -> torch.Tensor:
    y = _as_labels(y)
    n = check_int(n, n_name, 1)
    seed = check_seed(seed)
    if not isinstance(balanced, bool):
        raise TypeError(f"balanced must be True or False, got {balanced!r}.")
    present = sorted(int(c) for c in torch.unique(y))
    if classes is None:
        chosen = present
    else:
        if isinstance(classes, (numbers.Integral, np.integer)) and not isinstance(classes, bool):
            classes = [classes]
        chosen = sorted({check_int(c, "classes", 0) for c in classes})
        missing = [c for c in chosen if c not in present]
        if not chosen or missing:
            raise ValueError(
                f"classes={list(classes)} asks for class(es) {missing or 'none'} that y does not contain; "
                f"choose from {present}."
            )
    g = torch.Generator().manual_seed(seed)
    pools = {c: torch.nonzero(y == c).flatten() for c in chosen}
    available = sum(len(p) for p in pools.values())
    if n > available:
        raise ValueError(
            f"{n_name}={n} is more than the {available} samples of classes {chosen}; pass {n_name} <= {available}."
        )
    if balanced:
        per_class = torch.full((len(chosen),), n // len(chosen), dtype=torch.int64)
        per_class[torch.randperm(len(chosen), generator=g)[: n % len(chosen)]] += 1  # spread the remainder
        picked = []
        for k, c in zip(per_class.tolist(), chosen):
            if k > len(pools[c]):
                smallest = min(len(p) for p in pools.values())
                raise ValueError(
                    f"{n_name}={n} balanced over {len(chosen)} classes needs {k} samples of class {c}, which has "
                    f"only {len(pools[c])}; pass {n_name} <= {smallest * len(chosen)} or balanced=False."
                )
            picked.append(pools[c][torch.randperm(len(pools[c]), generator=g)[:k]])
        idx = torch.cat(picked)
    else:
        pool = torch.cat(list(pools.values()))
        idx = pool[torch.randperm(len(pool), generator=g)[:n]]
    return idx[torch.randperm(len(idx), generator=g)]  # mix the classes: observers see them in random order


def calibration_subset(
    x, y, n: int, *, seed: int, balanced: bool = True, classes: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``n`` samples of ``(x, y)`` to calibrate a quantizer on.

    With ``balanced=True`` every chosen class gets ``n // n_classes`` samples (the remainder goes
    to classes picked by ``seed``); with ``balanced=False`` the ``n`` samples are drawn uniformly,
    so class shares follow ``y``. ``classes`` restricts the pick to some classes: a deliberately
    bad calibration set, e.g. ``classes=[1]`` calibrates on ones only. Samples are distinct and
    come in a seeded random order.

    Args:
        x: samples, first dimension ``N``. y: int labels of shape ``(N,)``.
        n: how many samples to pick (1 .. the number available).
        seed: fixes the pick. balanced: split ``n`` evenly over the classes.
        classes: labels to draw from (default: every label in ``y``).

    Returns:
        ``(x_sub, y_sub)``: new tensors (copies), ``n`` samples.

    Raises:
        TypeError / ValueError: n < 1 or more than available, classes not in ``y``, x and y of
            different lengths, non-integer labels.

    >>> x, y = torch.arange(6.0), torch.tensor([0, 0, 1, 1, 2, 2])
    >>> x_sub, y_sub = calibration_subset(x, y, 3, seed=0)
    >>> sorted(y_sub.tolist())
    [0, 1, 2]
    >>> calibration_subset(x, y, 2, seed=0, classes=[2])[1].tolist()
    [2, 2]
    """
    x, y = _check_xy(x, y)
    idx = calibration_indices(y, n, seed=seed, balanced=balanced, classes=classes)
    return x[idx], y[idx]


def batches(
    x, y, batch_size: int, *, shuffle: bool = False, seed: int | None = None, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x_batch, y_batch)`` pairs covering ``(x, y)`` once; the last batch may be smaller.

    With ``shuffle=True`` the order is a random permutation drawn from ``generator`` (advance one
    generator across epochs to get a new order each epoch) or, if none is given, from a fresh
    generator seeded with ``seed``. The same seed gives the same batches. Unshuffled batches
    are views of ``x`` and ``y``; shuffled ones are copies.

    Raises:
        ValueError: batch_size < 1, ``shuffle=True`` with neither seed nor generator.

    >>> x, y = torch.arange(5.0), torch.arange(5)
    >>> [yb.tolist() for _, yb in batches(x, y, 2)]
    [[0, 1], [2, 3], [4]]
    >>> [yb.tolist() for _, yb in batches(x, y, 2, shuffle=True, seed=0)]
    [[4, 0], [1, 3], [2]]
    """
    x, y = _check_xy(x, y)
    batch_size = check_int(batch_size, "batch_size", 1)
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be True or False, got {shuffle!r}.")
    if shuffle:
        if generator is None:
            if seed is None:
                raise ValueError("shuffle=True needs randomness you can repeat: pass seed=0 (or a torch.Generator).")
            generator = torch.Generator().manual_seed(check_seed(seed))
        elif not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}.")
        order = torch.randperm(len(y), generator=generator)  # drawn now, so the call fixes the order
        return ((x[order[i : i + batch_size]], y[order[i : i + batch_size]]) for i in range(0, len(y), batch_size))
    return ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size))
