"""Tests for qedu.data: the digits split, calibration subsets and batching."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qedu.data import Digits, _split_indices, batches, calibration_indices, calibration_subset, load_digits


@pytest.fixture(scope="module")
def data() -> Digits:
    return load_digits(seed=0)


# ---------------------------------------------------------------------------------- load_digits

def test_shapes_dtypes_and_sizes(data):
    assert (len(data.y_train), len(data.y_calib), len(data.y_test)) == (1437, 256, 360)
    for x, y in [(data.x_train, data.y_train), (data.x_calib, data.y_calib), (data.x_test, data.y_test)]:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), 1, 8, 8) and y.shape == (len(y),)
    assert data.n_classes == 10
    assert data.class_names == tuple("0123456789")
    assert repr(data) == "Digits(train=1437, calib=256, test=360, classes=10, seed=0)"


@pytest.mark.parametrize("seed", [0, 1, 7, 12345, 2**32 - 1])
@pytest.mark.parametrize("test_size", [0.2, 0.05, 1 / 3, 0.5, 0.9])
def test_split_and_pixels_are_scikit_learns_without_importing_it(seed, test_size):
    """qedu reads the bundled digits and splits them itself (importing scikit-learn and SciPy costs a
    kernel ~75 MiB); the numbers must be exactly what sklearn's load_digits and train_test_split give."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    from qedu.data import _raw_digits, _stratified_split

    x, y = _raw_digits()
    bunch = sk_load_digits()
    assert np.array_equal(x, (bunch.data.astype(np.float32) / 16).reshape(-1, 1, 8, 8)) and np.array_equal(y, bunch.target)
    ours = _stratified_split(y, test_size, seed)
    theirs = train_test_split(np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_loading_the_digits_does_not_import_scikit_learn():
    import subprocess
    import sys

    code = ("import sys, qedu.data, qedu.widgets.welcome as w; qedu.data.load_digits(seed=0); w.bits_demo(); "
            "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pixels_are_sixteenths_in_unit_range(data):
    x = torch.cat([data.x_train, data.x_test])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x * 16, (x * 16).round())  # pixel / 16 exactly
    assert set(torch.cat([data.y_train, data.y_test]).tolist()) == set(range(10))


def test_split_is_stratified(data):
    train_counts = torch.bincount(data.y_train, minlength=10)
    test_counts = torch.bincount(data.y_test, minlength=10)
    total = train_counts + test_counts
    assert int(total.sum()) == 1797
    assert torch.all((test_counts.double() - 0.2 * total.double()).abs() <= 1)


def test_train_and_test_do_not_overlap_and_cover_everything():
    idx_train, idx_test, idx_calib = _split_indices(0, 0.2, 256)
    assert not set(idx_train) & set(idx_test)
    assert sorted(set(idx_train) | set(idx_test)) == list(range(1797))
    assert len(set(idx_calib)) == 256 and idx_calib.max() < len(idx_train)


def test_calibration_set_is_a_balanced_subset_of_train(data):
    idx_calib = torch.tensor(_split_indices(0, 0.2, 256)[2])
    assert torch.equal(data.x_calib, data.x_train[idx_calib])
    assert torch.equal(data.y_calib, data.y_train[idx_calib])
    counts = torch.bincount(data.y_calib, minlength=10)
    assert int(counts.max() - counts.min()) <= 1 and int(counts.sum()) == 256


def test_calibration_images_are_never_test_images():
    for seed in range(3):
        idx_train, idx_test, idx_calib = _split_indices(seed, 0.2, 256)
        assert not set(idx_train[idx_calib]) & set(idx_test)


def test_same_seed_same_split_different_seed_different_split(data):
    again = load_digits(seed=0)
    for name in ("x_train", "y_train", "x_calib", "y_calib", "x_test", "y_test"):
        assert torch.equal(getattr(data, name), getattr(again, name)), name
    other = load_digits(seed=1)
    assert not torch.equal(data.y_test, other.y_test)
    assert set(_split_indices(0, 0.2, 256)[1]) != set(_split_indices(1, 0.2, 256)[1])


def test_returned_tensors_are_fresh_copies():
    first = load_digits(seed=0)
    first.x_train.zero_()
    first.x_calib.fill_(7.0)
    first.y_test.zero_()
    second = load_digits(seed=0)
    assert float(second.x_train.max()) == 1.0 and float(second.x_calib.max()) == 1.0
    assert int(second.y_test.max()) == 9


def test_digits_is_frozen(data):
    with pytest.raises(AttributeError):
        data.x_train = torch.zeros(1)


@pytest.mark.parametrize("test_size, n_test", [(0.2, 360), (0.5, 899), (0.1, 180)])
def test_test_size(test_size, n_test):
    d = load_digits(seed=0, test_size=test_size, n_calib=10)
    assert len(d.y_test) == n_test and len(d.y_train) == 1797 - n_test


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=2**32), ValueError, "seed"),
        (dict(seed=1.0), TypeError, "pass 1"),
        (dict(seed="0"), TypeError, "seed"),
        (dict(test_size=0), ValueError, "test_size"),
        (dict(test_size=1.0), ValueError, "test_size"),
        (dict(test_size=1e-4), ValueError, "stratified"),
        (dict(test_size="0.2"), TypeError, "test_size"),
        (dict(n_calib=0), ValueError, "n_calib"),
        (dict(n_calib=2.5), TypeError, "n_calib"),
        (dict(n_calib=1437), ValueError, "n_calib"),
    ],
    ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__,
)
def test_load_digits_rejects_bad_input(kwargs, error, words):
    with pytest.raises(error, match=words):
        load_digits(**kwargs)


# ---------------------------------------------------------------------------- calibration_subset

def test_calibration_subset_balanced_and_copies(data):
    x, y = calibration_subset(data.x_train, data.y_train, 50, seed=3)
    assert x.shape == (50, 1, 8, 8)
    assert torch.bincount(y, minlength=10).tolist() == [5] * 10
    x.zero_()
    assert float(data.x_train.max()) == 1.0  # a copy, not a view


def test_calibration_subset_spreads_the_remainder(data):
    _, y = calibration_subset(data.x_train, data.y_train, 23, seed=0)
    counts = torch.bincount(y, minlength=10)
    assert int(counts.sum()) == 23 and sorted(counts.tolist()) == [2] * 7 + [3] * 3


def test_calibration_subset_only_some_classes(data):
    _, y = calibration_subset(data.x_train, data.y_train, 30, seed=0, classes=[1, 7])
    assert torch.bincount(y, minlength=10).tolist() == [0, 15, 0, 0, 0, 0, 0, 15, 0, 0]
    _, y = calibration_subset(data.x_train, data.y_train, 5, seed=0, classes=3)
    assert y.tolist() == [3] * 5


def test_calibration_subset_unbalanced_follows_the_data():
    y = torch.tensor([0] * 90 + [1] * 10)
    _, picked = calibration_subset(torch.arange(100.0), y, 100, seed=0, balanced=False)
    assert torch.bincount(picked).tolist() == [90, 10]
    with pytest.raises(ValueError, match="balanced=False"):
        calibration_subset(torch.arange(100.0), y, 40, seed=0)


def test_calibration_subset_is_deterministic(data):
    a = calibration_indices(data.y_train, 40, seed=5)
    assert torch.equal(a, calibration_indices(data.y_train, 40, seed=5))
    assert not torch.equal(a, calibration_indices(data.y_train, 40, seed=6))


def test_calibration_subset_accepts_numpy():
    x, y = calibration_subset(np.arange(4.0), np.array([0, 1, 0, 1]), 2, seed=0)
    assert sorted(y.tolist()) == [0, 1] and isinstance(x, torch.Tensor)


@pytest.mark.parametrize(
    "n, kwargs, error, words",
    [
        (0, {}, ValueError, "n must be between 1"),
        (7, {}, ValueError, "n=7 is more than the 6"),
        (2, dict(classes=[5]), ValueError, r"choose from \[0, 1, 2\]"),
        (2, dict(classes=[]), ValueError, "classes"),
        (2, dict(balanced="yes"), TypeError, "balanced"),
        (2, dict(seed=-3), ValueError, "seed"),
        (1.0, {}, TypeError, "n must be an int"),
    ],
    ids=["n=0", "n>available", "absent class", "no classes", "balanced str", "bad seed", "float n"],
)
def test_calibration_subset_rejects_bad_input(n, kwargs, error, words):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(error, match=words):
        calibration_subset(torch.arange(6.0), torch.tensor([0, 0, 1, 1, 2, 2]), n, **kwargs)


def test_calibration_subset_rejects_mismatched_or_bad_labels():
    with pytest.raises(ValueError, match="same number of samples"):
        calibration_subset(torch.zeros(5), torch.zeros(4, dtype=torch.int64), 2, seed=0)
    with pytest.raises(TypeError, match=r"y.long\(\)"):
        calibration_subset(torch.zeros(4), torch.zeros(4), 2, seed=0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        calibration_subset([0, 1], torch.zeros(2, dtype=torch.int64), 1, seed=0)


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=60),
    frac=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**32 - 1),
    balanced=st.booleans(),
)
def test_calibration_indices_property(labels, frac, seed, balanced):
    y = torch.tensor(labels)
    counts = torch.bincount(y)
    present = counts[counts > 0]
    limit = int(present.min()) * len(present) if balanced else len(y)
    n = max(1, int(frac * limit))
    idx = calibration_indices(y, n, seed=seed, balanced=balanced)
    assert len(idx) == n and len(set(idx.tolist())) == n and 0 <= int(idx.min()) and int(idx.max()) < len(y)
    if balanced:
        picked = torch.bincount(y[idx], minlength=len(counts))[counts > 0]
        assert int(picked.max() - picked.min()) <= 1


# ------------------------------------------------------------------------------------- batches

def test_batches_cover_everything_once():
    x, y = torch.arange(10.0), torch.arange(10)
    got = list(batches(x, y, 4))
    assert [len(b[1]) for b in got] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in got]), y)
    shuffled = list(batches(x, y, 3, shuffle=True, seed=1))
    ys = torch.cat([b[1] for b in shuffled])
    assert sorted(ys.tolist()) == list(range(10)) and not torch.equal(ys, y)
    assert torch.equal(torch.cat([b[0] for b in shuffled]), ys.float())  # pairs stay together


def test_batches_are_deterministic_by_seed():
    x, y = torch.arange(50.0), torch.arange(50)
    order = lambda **kw: torch.cat([b for _, b in batches(x, y, 8, shuffle=True, **kw)])
    assert torch.equal(order(seed=3), order(seed=3))
    assert not torch.equal(order(seed=3), order(seed=4))
    g = torch.Generator().manual_seed(3)
    first, second = order(generator=g), order(generator=g)
    assert torch.equal(first, order(seed=3)) and not torch.equal(first, second)  # a new order each epoch


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=2, shuffle=True), ValueError, "seed=0"),
        (dict(batch_size=2, shuffle=1, seed=0), TypeError, "shuffle"),
        (dict(batch_size=2, shuffle=True, generator=0), TypeError, "generator"),
    ],
    ids=["batch_size=0", "shuffle without seed", "shuffle not bool", "bad generator"],
)
def test_batches_reject_bad_input_at_call_time(kwargs, error, words):
    with pytest.raises(error, match=words):
        batches(torch.zeros(4), torch.zeros(4, dtype=torch.int64), **kwargs)  # no next() needed
