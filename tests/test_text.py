"""Tests for qedu.text: the byte-level data of the small language model."""
import json
import sys

import pytest
import torch

from qedu.text import CORPUS, VOCAB_SIZE, decode, encode, load_text, random_windows, windows


def test_splits_are_fixed_disjoint_and_cover_the_text():
    text = load_text()
    topics = json.loads(CORPUS.read_text(encoding="utf-8"))["topics"]
    data = "".join(topics[k] for k in sorted(topics)).encode()
    assert len(text.train) + len(text.val) + len(text.test) == len(data)
    chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    assert bytes(text.test.tolist()) == b"".join(chunks[19::20])
    assert bytes(text.val.tolist()) == b"".join(chunks[9::20])
    assert load_text() is text  # cached: the same tensors
    assert int(text.train.max()) < VOCAB_SIZE and int(text.train.min()) >= 0


def test_encode_decode_round_trip():
    s = 'def f(x):\n    return "é" * x'
    assert decode(encode(s)) == s
    assert encode(s).dtype == torch.int64


def test_windows_shift_by_one():
    tokens = load_text().test
    x, y = windows(tokens, 128)
    assert x.shape == y.shape == ((len(tokens) - 1) // 128, 128)
    assert torch.equal(x.flatten()[1:], y.flatten()[:-1])
    assert torch.equal(windows(tokens, 128, n_windows=3)[0], x[:3])


def test_random_windows_are_seeded_slices():
    tokens = load_text().val
    a = random_windows(tokens, 16, 4, torch.Generator().manual_seed(1))
    b = random_windows(tokens, 16, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0][:, 1:], a[1][:, :-1])


@pytest.mark.parametrize("call, error, match", [
    (lambda: windows(torch.arange(5), 8), ValueError, "too few"),
    (lambda: windows(torch.rand(10), 2), TypeError, "1-D integer"),
    (lambda: windows(torch.arange(10), 0), ValueError, "seq_len"),
    (lambda: random_windows(torch.arange(10), 4, 2, None), TypeError, "generator"),
    (lambda: load_text().split("dev"), ValueError, "split must be one of"),
    (lambda: encode(b"x"), TypeError, "str"),
    (lambda: decode([300]), ValueError, "0..255"),
], ids=["short", "float", "seq_len", "generator", "split", "encode-bytes", "decode-range"])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_the_copy_is_this_pythons_pydoc_text_where_the_version_matches():
    """The shipped copy came from CPython 3.11.7; on that version it equals pydoc_data.topics."""
    from pydoc_data.topics import topics

    record = json.loads(CORPUS.read_text(encoding="utf-8"))
    assert "3.11.7" in record["source"] and "PSF" in record["license"]
    if sys.version.split()[0] == "3.11.7":
        assert record["topics"] == topics
    else:
        assert set(record["topics"]) & set(topics)  # same kind of text, other wording
