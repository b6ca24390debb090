"""qedu.analysis: one-layer-at-a-time sensitivity, greedy bit allocation under a budget, multi-seed ablations."""
from __future__ import annotations

import json
import statistics

import pytest
import torch

from qedu.analysis import AblationTable, ablate, allocate_bits, layer_sensitivity, output_error
from qedu.data import load_digits
from qedu.models import evaluate, make_cnn, pretrained
from qedu.ptq import PTQConfig, model_size, quantize_model


@pytest.fixture(scope="module")
def data():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    # the lessons' model, in a cache shared by this session's test modules (trained once)
    return pretrained("mlp", seed=0, cache_dir=tmp_path_factory.getbasetemp() / "qedu-models")


# ----------------------------------------------------------------------------- sensitivity
def test_sensitivity_has_one_row_per_layer_most_sensitive_first(mlp, data):
    rows = layer_sensitivity(mlp, PTQConfig(weight_bits=2, act_bits=None), data.x_calib, data.x_calib)
    assert sorted(r["layer"] for r in rows) == ["fc1", "fc2", "fc3"]
    damages = [r["damage"] for r in rows]
    assert damages == sorted(damages, reverse=True) and all(d > 0 for d in damages)
    assert set(rows[0]) == {"layer", "metric", "float", "quantized", "damage"}


def test_sensitivity_quantizes_exactly_one_layer(mlp, data):
    config = PTQConfig(weight_bits=3, act_bits=4)
    rows = layer_sensitivity(mlp, config, data.x_calib, data.x_test, data.y_test, metric="accuracy", layers=["fc2"])
    only_fc2 = quantize_model(mlp, PTQConfig(weight_bits=3, act_bits=4, keep_float=["fc1", "fc3"]), data.x_calib)
    float_acc = evaluate(mlp, data.x_test, data.y_test)
    assert rows == [dict(layer="fc2", metric="accuracy", float=float_acc,
                         quantized=evaluate(only_fc2, data.x_test, data.y_test),
                         damage=float_acc - evaluate(only_fc2, data.x_test, data.y_test))]


def test_sensitivity_skips_kept_float_layers_and_works_on_the_cnn(data):
    cnn = make_cnn(seed=0)
    rows = layer_sensitivity(cnn, PTQConfig(weight_bits=4, act_bits=None, keep_float=["fc"]), None, data.x_calib[:64])
    assert sorted(r["layer"] for r in rows) == ["conv1", "conv2"]


def test_output_error_is_relative():
    model = torch.nn.Linear(3, 2)
    half = torch.nn.Linear(3, 2)
    half.load_state_dict({k: v / 2 for k, v in model.state_dict().items()})
    assert abs(output_error(model, half, torch.randn(10, 3)) - 0.25) < 1e-6  # y/2: error (y/2)^2 / y^2


def test_sensitivity_errors(mlp, data):
    config = PTQConfig(act_bits=None)
    with pytest.raises(ValueError, match="needs labels: pass y_eval"):
        layer_sensitivity(mlp, config, None, data.x_test, metric="accuracy")
    with pytest.raises(ValueError, match="metric='loss' is not one of"):
        layer_sensitivity(mlp, config, None, data.x_test, metric="loss")
    with pytest.raises(ValueError, match=r"\['fc7'\].*choose from \['fc1', 'fc2', 'fc3'\]"):
        layer_sensitivity(mlp, config, None, data.x_test, layers=["fc7"])
    with pytest.raises(TypeError, match="config must be a PTQConfig"):
        layer_sensitivity(mlp, 4, None, data.x_test)


# ----------------------------------------------------------------------------- bit allocation
def test_allocation_meets_the_budget_and_its_config_is_that_size(mlp, data):
    config = PTQConfig(act_bits=None)
    full = model_size(mlp, config).total_bytes  # everything at 8 bits
    assert allocate_bits(mlp, config, data.x_calib, full).bits == {"fc1": 8, "fc2": 8, "fc3": 8}
    budget = int(full * 0.55)
    a = allocate_bits(mlp, config, data.x_calib, budget, candidate_bits=(8, 4, 2))
    assert a.size_bytes <= budget and model_size(mlp, a.config).total_bytes == a.size_bytes
    assert set(a.bits.values()) <= {8, 4, 2} and any(b < 8 for b in a.bits.values())
    assert all(a.config.for_layer(n).weight_bits == b for n, b in a.bits.items())
    assert a.steps and a.steps[-1][3] == a.size_bytes


def test_allocation_beats_uniform_low_bits_on_its_own_metric(mlp, data):
    """More bytes, spent where the damage is: the output error is below all-2-bit's."""
    two = PTQConfig(weight_bits=2, act_bits=None)
    a = allocate_bits(mlp, PTQConfig(act_bits=None), data.x_calib, int(model_size(mlp, two).total_bytes * 1.4),
                      candidate_bits=(8, 4, 2))
    err_mixed = output_error(mlp, quantize_model(mlp, a.config), data.x_calib)
    assert err_mixed < output_error(mlp, quantize_model(mlp, two), data.x_calib)


def test_allocation_errors(mlp, data):
    with pytest.raises(ValueError, match=r"budget_bytes=1,000 is below [\d,]+ bytes, the size with every layer at 2 bits"):
        allocate_bits(mlp, PTQConfig(act_bits=None), data.x_calib, 1000)
    with pytest.raises(ValueError, match="candidate_bits must be between 2 and 16"):
        allocate_bits(mlp, PTQConfig(act_bits=None), data.x_calib, 10_000, candidate_bits=(8, 1))
    with pytest.raises(ValueError, match="needs inputs"):
        allocate_bits(mlp, PTQConfig(act_bits=None), None, 10_000)


# ----------------------------------------------------------------------------- ablation
def _fn(bits, method, seed):
    return {"acc": bits * 10 + seed + (1 if method == "mse" else 0), "size": bits}


def test_ablate_means_and_stds():
    table = ablate(_fn, {"bits": [8, 4], "method": ["minmax", "mse"]}, seeds=[0, 1, 5])
    assert table.factors == ("bits", "method") and table.metrics == ("acc", "size") and len(table.rows) == 4
    row = table.where(bits=4, method="mse")[0]
    assert row["acc_values"] == [41.0, 42.0, 46.0]
    assert row["acc_mean"] == statistics.fmean([41, 42, 46]) and row["acc_std"] == statistics.stdev([41, 42, 46])
    assert table.get("size", bits=8, method="minmax") == (8.0, 0.0)
    assert table.get(bits=8, method="minmax")[0] == 82.0  # first metric by default


def test_ablation_table_prints_and_round_trips_through_json():
    table = ablate(_fn, {"bits": [8, 4], "method": ["minmax", "mse"]}, seeds=[0, 1])
    md = table.to_markdown(digits=1)
    assert md.splitlines()[0] == "| bits | method | acc | size |" and "| 4 | mse | 41.5 ± 0.7 | 4.0 ± 0.0 |" in md
    pivot = table.pivot("bits", "method", "acc", digits=1)
    assert pivot.splitlines()[0] == "| bits \\ method | minmax | mse |" and "| 8 | 80.5 ± 0.7 | 81.5 ± 0.7 |" in pivot
    back = AblationTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert back.to_markdown() == table.to_markdown() and back.rows == table.rows
    single = ablate(lambda x, seed: x, {"x": [1.5]}, seeds=[0])
    assert single.get(x=1.5) == (1.5, 0.0)


def test_ablate_errors_name_the_problem():
    with pytest.raises(TypeError, match=r"fn returned str 'high' for 'value' at \{'bits': 8\}, seed=0"):
        ablate(lambda bits, seed: "high", {"bits": [8]}, seeds=[0])
    with pytest.raises(ValueError, match="factors must be a non-empty dict"):
        ablate(_fn, {}, seeds=[0])
    with pytest.raises(ValueError, match=r"factors\['bits'\] must be a non-empty list"):
        ablate(_fn, {"bits": []}, seeds=[0])
    with pytest.raises(ValueError, match="seeds is empty"):
        ablate(_fn, {"bits": [8], "method": ["mse"]}, seeds=[])
    with pytest.raises(ValueError, match="return the same keys"):
        ablate(lambda b, seed: {"a": 1} if seed else {"b": 1}, {"b": [1]}, seeds=[0, 1])
    table = ablate(_fn, {"bits": [8], "method": ["mse"]}, seeds=[0])
    with pytest.raises(ValueError, match="are not factors of this table"):
        table.where(bit=8)
    with pytest.raises(ValueError, match="fixed value for every other factor"):
        table.pivot("bits", "seed")


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
from torch import nn  # noqa: E402

from qedu.models import make_mlp  # noqa: E402


def test_issue20_output_error_and_layer_sensitivity_restore_the_training_mode():
    reference, model = make_mlp(seed=0).train(), make_mlp(seed=1).train()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    output_error(reference, model, x)
    assert reference.training and model.training
    layer_sensitivity(reference, PTQConfig(weight_bits=4, act_bits=None), None, x)
    assert reference.training
    eval_model = make_mlp(seed=0).eval()
    output_error(eval_model, eval_model, x)
    assert not eval_model.training


def test_issue20_output_error_casts_float64_inputs():
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert output_error(make_mlp(seed=0), make_mlp(seed=1), x.double()) == output_error(make_mlp(seed=0), make_mlp(seed=1), x)


ISSUE20_BAD = {
    "output-error-reference-str": (lambda: output_error("mlp", nn.Linear(2, 2), torch.ones(1, 2)), TypeError, r"reference must be a torch.nn.Module"),
    "output-error-shape": (lambda: output_error(nn.Linear(2, 2), nn.Linear(2, 2), torch.ones(1, 3)), ValueError, r"cannot run on x of shape \(1, 3\)"),
    "sensitivity-model-str": (lambda: layer_sensitivity("mlp", PTQConfig(), None, torch.ones(1, 2)), TypeError, r"model must be a torch.nn.Module"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
