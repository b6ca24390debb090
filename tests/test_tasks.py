"""qedu.tasks: the Unicode-names task is offline, deterministic, split by name, and quantizable."""
from __future__ import annotations

import dataclasses
import hashlib
import math

import pytest
import torch

from qedu.models import evaluate, train
from qedu.ptq import PTQConfig, quantize_model
from qedu.tasks import VOCAB, OneHot, bits_per_char, decode, load_names_task, make_char_mlp


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


def test_task_is_deterministic_and_fresh():
    a, b = load_names_task(seed=0), load_names_task(seed=0)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("x_train", "y_train", "x_test", "x_calib"))
    a.x_train[0, 0] = 5  # fresh copies: changing one changes nobody else
    assert load_names_task(seed=0).x_train[0, 0] != 5
    assert not torch.equal(load_names_task(seed=1).y_test[:500], b.y_test[:500])
    # the Unicode 3.2 names are frozen inside Python: same data on every version
    assert _digest(b.y_train) == _digest(load_names_task(seed=0).y_train)
    assert (len(b.y_train), len(b.y_test)) == (171588, 42872)


def test_windows_follow_the_names_and_test_names_are_unseen():
    task = load_names_task(seed=0, context=3)
    assert task.x_train.shape[1] == 3 and int(task.x_train.max()) == len(VOCAB)  # padding index
    assert set(task.y_train.tolist()) <= set(range(len(VOCAB)))

    def names(y):
        return set("".join(VOCAB[i] for i in y.tolist()).split("$"))  # the labels spell the names out

    assert not (names(task.y_train) & names(task.y_test)) - {''}
    assert {tuple(r) for r in task.x_calib.tolist()} <= {tuple(r) for r in task.x_train.tolist()}
    assert decode(task.x_train[0]) == "^^^"


def test_one_hot_and_model_shapes():
    x = torch.tensor([[0, len(VOCAB)], [3, 1]])
    h = OneHot()(x.float())  # predict() casts inputs to float: indices must survive
    assert h.shape == (2, 2 * (len(VOCAB) + 1)) and h.sum().item() == 4
    assert make_char_mlp(context=2, hidden=(16,), seed=0)(x).shape == (2, len(VOCAB))


def test_a_briefly_trained_model_learns_and_quantizes():
    task = load_names_task(seed=0)
    small = dataclasses.replace(task, x_train=task.x_train[:8000], y_train=task.y_train[:8000],
                                x_test=task.x_test[:3000], y_test=task.y_test[:3000])
    model = make_char_mlp(hidden=(32, 32), seed=0)
    train(model, small, epochs=2, lr=3e-3, batch_size=256, seed=0)
    bpc = bits_per_char(model, small.x_test, small.y_test)
    assert bpc < math.log2(len(VOCAB)) - 1  # well below guessing uniformly
    q8 = quantize_model(model, PTQConfig(weight_bits=8, act_bits=8), small.x_calib.float())
    assert abs(bits_per_char(q8, small.x_test, small.y_test) - bpc) < 0.02
    assert evaluate(q8, small.x_test.float(), small.y_test) > 0.3


def test_bad_arguments():
    with pytest.raises(ValueError, match="context must be between 1 and 32"):
        load_names_task(context=0)
    with pytest.raises(ValueError, match="test_fraction must be a float"):
        load_names_task(test_fraction=1.5)


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
from qedu.tasks import NamesTask, trained_char_mlp  # noqa: E402


def _tiny_task(start: int) -> NamesTask:
    full = load_names_task(seed=0)
    sl = slice(start, start + 256)
    return dataclasses.replace(full, x_train=full.x_train[sl].clone(), y_train=full.y_train[sl].clone())


def test_issue20_trained_char_mlp_cache_key_includes_the_task():
    """Before: (seed=123, epochs=1, task=A) then (..., task=B) returned the model trained on A."""
    task_a, task_b = _tiny_task(0), _tiny_task(5000)
    a = trained_char_mlp(seed=123, epochs=1, task=task_a)
    b = trained_char_mlp(seed=123, epochs=1, task=task_b)
    a_again = trained_char_mlp(seed=123, epochs=1, task=_tiny_task(0))  # equal content: served from the cache
    assert not torch.equal(a.fc1.weight, b.fc1.weight)
    assert torch.equal(a.fc1.weight, a_again.fc1.weight) and a is not a_again


ISSUE20_BAD = {
    "bpc-empty": (lambda: bits_per_char(make_char_mlp(seed=0), torch.zeros(0, 6, dtype=torch.long), torch.zeros(0, dtype=torch.long)),
                  ValueError, r"x and y must hold the same number \(>= 1\)"),
    "bpc-lengths": (lambda: bits_per_char(make_char_mlp(seed=0), torch.zeros(3, 6, dtype=torch.long), torch.zeros(2, dtype=torch.long)),
                    ValueError, r"same number"),
    "bpc-list": (lambda: bits_per_char(make_char_mlp(seed=0), [[0] * 6], torch.zeros(1, dtype=torch.long)), TypeError, r"x must be a torch.Tensor"),
    "bpc-batch-zero": (lambda: bits_per_char(make_char_mlp(seed=0), torch.zeros(1, 6, dtype=torch.long), torch.zeros(1, dtype=torch.long), 0),
                       ValueError, r"batch_size must be between 1"),
    "trained-task-str": (lambda: trained_char_mlp(task="names"), TypeError, r"task must be a NamesTask"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
