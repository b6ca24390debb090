"""Tests for the shipped language model: qedu.models.TinyGPT, load_tinylm / pretrained("tinylm")."""
import json
import math
import shutil

import pytest
import torch

from qedu.lm_eval import log_probs, nll_from_log_probs
from qedu.models import (TINYLM_CONFIG, TINYLM_SHA256, TinyGPT, WeightsMismatchError, count_params, load_tinylm,
                         pretrained, sha256_file, tinylm_info, tinylm_path)
from qedu.text import load_text, windows


@pytest.fixture(scope="module")
def model():
    return load_tinylm()


def test_tinygpt_still_importable_from_memory():
    from qedu.memory import TinyGPT as FromMemory

    assert FromMemory is TinyGPT


def test_recorded_hash_matches_the_shipped_file_and_the_code():
    info = tinylm_info()
    assert info["sha256"] == TINYLM_SHA256 == sha256_file(tinylm_path())
    assert info["bytes"] == tinylm_path().stat().st_size
    assert info["config"] == dict(TINYLM_CONFIG)


def test_pretrained_tinylm_is_the_shipped_model(model):
    again = pretrained("tinylm")
    assert again is not model and not again.training
    assert count_params(again) == tinylm_info()["n_params"]
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert a.dtype == torch.float32 and torch.equal(a, b), k


def test_each_call_returns_an_independent_model(model):
    other = load_tinylm()
    with torch.no_grad():
        other.tok.weight.zero_()
    assert load_tinylm().tok.weight.abs().sum() > 0 and model.tok.weight.abs().sum() > 0


def test_test_split_perplexity_equals_the_recorded_figure(model):
    recorded = tinylm_info()["test"]
    x, y = windows(load_text().test, TINYLM_CONFIG["seq_len"])
    assert x.numel() == recorded["tokens"]
    nll = nll_from_log_probs(log_probs(model, x), y)
    assert math.exp(nll) == pytest.approx(recorded["perplexity"], rel=1e-4)
    assert recorded["perplexity"] < recorded["unigram_perplexity"] / 2  # clearly better than byte frequencies


def test_a_tampered_file_is_refused(tmp_path):
    bad = tmp_path / "tinylm.safetensors"
    shutil.copy(tinylm_path(), bad)
    data = bytearray(bad.read_bytes())
    data[-10] ^= 0x01  # one bit of one weight
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsMismatchError, match="refusing to load.*sha256"):
        load_tinylm(bad)
    good = tmp_path / "copy.safetensors"
    shutil.copy(tinylm_path(), good)
    assert torch.equal(load_tinylm(good).tok.weight, load_tinylm().tok.weight)


def test_a_replaced_file_with_the_old_memo_is_refused(tmp_path):
    """The in-memory copy is keyed by the file's signature: changing the file re-checks the hash."""
    path = tmp_path / "tinylm.safetensors"
    shutil.copy(tinylm_path(), path)
    load_tinylm(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data) + b"")
    with pytest.raises(WeightsMismatchError):
        load_tinylm(path)


def test_wrong_architecture_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({k: v.half() for k, v in TinyGPT(256, 16, 32, 1, 2).state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="does not hold the weights of TinyGPT"):
        load_tinylm(path, sha256=sha256_file(path))


@pytest.mark.parametrize("kwargs", [dict(seed=1), dict(epochs=3), dict(retrain=True), dict(return_history=True)],
                         ids=["seed", "epochs", "retrain", "history"])
def test_training_arguments_do_not_apply_to_tinylm(kwargs):
    with pytest.raises(ValueError, match="tinylm.*do not apply"):
        pretrained("tinylm", **kwargs)


def test_missing_file_and_bad_hash_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_tinylm"):
        load_tinylm(tmp_path / "nothing.safetensors")
    with pytest.raises(TypeError, match="sha256"):
        load_tinylm(sha256=123)


def test_training_record_is_complete():
    info = tinylm_info()
    assert info["training"]["threads"] == 1 and info["training"]["seconds"] > 0
    assert info["final_val_loss"] == info["training"]["curve"][-1]["val_loss"]
    assert 1_000_000 <= info["n_params"] <= 5_000_000 and info["bytes"] < 5_000_000
    json.dumps(info)
