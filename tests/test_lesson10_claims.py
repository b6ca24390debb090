"""What lesson 10's prose says about the shipped model, its outliers and the measured table.

If the model is retrained or the benchmark re-run and the numbers move, these fail and the
lesson's prose must be updated.
"""
import pytest
import torch

from qedu.llm_quant import calibration_tokens, layer_inputs
from qedu.models import pretrained, tinylm_info, tinylm_path
from qedu.outliers import outlier_table
from qedu.rtn import rtn_quantize
from qedu.text import load_text, windows


@pytest.fixture(scope="module")
def model():
    return pretrained("tinylm")


def test_model_facts():
    info = tinylm_info()
    assert round(info["test"]["perplexity"], 1) == 5.6 and round(info["test"]["unigram_perplexity"]) == 26
    assert round(info["n_params"] / 1e6, 1) == 1.7
    t = info["training"]
    assert round(t["steps"] * t["batch"] * info["config"]["seq_len"] / 1e6, 1) == 1.4  # "saw 1.4 M bytes"
    assert round(tinylm_path().stat().st_size / 1e6, 1) == 3.4  # "3.4 MB"


def test_outlier_measurement(model):
    rows = {r.name: r for r in outlier_table(model, windows(load_text().test, 128, 32)[0])}
    linear = [r for n, r in rows.items() if not n.startswith("residual")]
    for r in linear:
        assert r.ratio < 3, r  # "no channel's maximum is even 3x the median channel's"
        if not r.name.endswith("fc2"):
            assert r.max < 5 and r.n_outlier_channels == 0, r  # qkv, proj, fc1 inputs "stay below 5"
    fc2 = rows["blocks.0.fc2"]
    assert round(fc2.max, 1) == 7.5 and fc2.n_outlier_channels == 15 and round(fc2.ratio) == 2
    assert rows["blocks.1.fc2"].max < 6  # only the first block's fc2 reaches 6
    for name in ("residual.block0", "residual.block1"):
        r = rows[name]
        assert 17 < r.max < 22 and r.n_outlier_channels > 240 and round(r.ratio) == 2, r


def test_smaller_groups_give_smaller_errors(model):
    x = layer_inputs(model, "blocks.0.fc1", calibration_tokens(16, seed=0))
    w = model.blocks[0].fc1.weight.detach()
    ref = x @ w.T
    for bits in (4, 3):
        errs = [float((x @ rtn_quantize(w, bits, g).T - ref).pow(2).sum() / ref.pow(2).sum()) for g in (32, 64, 128, None)]
        assert errs == sorted(errs), (bits, errs)
