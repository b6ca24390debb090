"""qedu.evaluation: exact metrics on hand-made cases, honest latency, sizes, and the lesson 08 claims."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from qedu.data import load_digits
from qedu.evaluation import (
    Latency, logits, class_accuracy, compare_models, confidence_shift, disagreement_rate, dynamic_int8,
    flipped, int8_support, measure_latency, per_class_deltas, regression_report, serialized_bytes,
)
from qedu.granularity import PerTensor
from qedu.models import evaluate, make_mlp, per_class_accuracy, predict, pretrained
from qedu.ptq import PTQConfig, model_size, quantize_model

T = lambda *v: torch.tensor(v, dtype=torch.int64)  # noqa: E731


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return pretrained("mlp", seed=0, cache_dir=tmp_path_factory.getbasetemp() / "qedu-models")  # trained once per session


# ----------------------------------------------------------------------------- disagreement, per class
def test_disagreement_on_tiny_vectors():
    assert disagreement_rate(T(0, 1, 2, 3), T(0, 1, 2, 3)) == 0.0
    assert disagreement_rate(T(0, 1, 2, 3), T(0, 1, 0, 0)) == 0.5
    assert disagreement_rate(T(0, 1, 2), T(1, 2, 0)) == 1.0
    assert disagreement_rate([1, 2, 3, 4], [1, 2, 3, 0]) == 0.25  # lists are accepted


def test_disagreement_counts_flips_that_cancel_in_accuracy():
    y, f, q = T(0, 1, 2, 3, 4), T(0, 1, 2, 3, 0), T(0, 1, 2, 0, 4)  # one image broken, one fixed
    assert (f == y).double().mean() == (q == y).double().mean()
    assert disagreement_rate(f, q) == 0.4


def test_class_accuracy_exact_and_nan_for_absent_classes():
    acc = class_accuracy(T(0, 0, 0, 0, 1, 1), T(0, 0, 0, 1, 1, 0), n_classes=3)
    assert acc[:2].tolist() == [0.75, 0.5] and math.isnan(acc[2]) and acc.dtype == torch.float64


def test_class_accuracy_equals_models_per_class_accuracy():
    model, x = make_mlp(seed=0), torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (50,), generator=torch.Generator().manual_seed(1))
    ours, theirs = class_accuracy(y, predict(model, x)), per_class_accuracy(model, x, y)
    assert torch.allclose(ours, theirs, equal_nan=True, atol=0)


def test_per_class_deltas_exact():
    y, f, q = T(0, 0, 0, 0, 1, 1), T(0, 0, 0, 1, 1, 1), T(0, 0, 1, 1, 1, 0)
    assert per_class_deltas(y, f, q, n_classes=2).tolist() == [-0.25, -0.5]
    assert per_class_deltas(y, q, f, n_classes=2).tolist() == [0.25, 0.5]


def test_flips_list_index_label_and_kind():
    rows = flipped(T(0, 1, 2, 3), T(0, 1, 0, 3), T(0, 2, 2, 1)).rows()
    assert rows == [
        dict(index=1, label=1, float_pred=1, quant_pred=2, kind="broken"),
        dict(index=2, label=2, float_pred=0, quant_pred=2, kind="fixed"),
        dict(index=3, label=3, float_pred=3, quant_pred=1, kind="broken"),
    ]
    assert flipped(T(0, 1), T(1, 0), T(2, 2)).rows()[0]["kind"] == "changed"


def test_confidence_shift_exact():
    y = T(1)
    float_logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)  # p(true) = 0.75
    quant_logits = torch.tensor([[0.0, 0.0]], dtype=torch.float64)  # p(true) = 0.5
    assert confidence_shift(y, float_logits, quant_logits).item() == pytest.approx(-0.25, abs=1e-12)


# ----------------------------------------------------------------------------- flagging
def _one_loss(n_in_class: int, lost: int):
    """Class 0 with n inputs loses ``lost`` of them; class 1 (4 inputs) is untouched."""
    y = T(*([0] * n_in_class + [1] * 4))
    f = y.clone()
    q = y.clone()
    q[:lost] = 1
    return y, f, q


@pytest.mark.parametrize("threshold, flagged", [(0.25, ()), (0.2499, (0,)), (0.0, (0,)), (0.26, ())],
                         ids=["exactly-threshold-not-flagged", "just-below", "zero-flags-any-loss", "above"])
def test_flag_threshold_edges(threshold, flagged):
    y, f, q = _one_loss(4, 1)  # class 0 loses exactly 1 of 4 = 0.25
    assert regression_report(y, f, q, threshold=threshold, n_classes=2).flagged == flagged


def test_flag_uses_counts_not_rounded_differences():
    y, f, q = _one_loss(10, 0)
    f[:2] = 1  # float: 8 of 10 right (0.8)
    q[:3] = 1  # quantized: 7 of 10 (0.7): lost exactly 0.1
    assert 0.8 - 0.7 > 0.1  # float subtraction would wrongly flag this class ...
    assert regression_report(y, f, q, threshold=0.1, n_classes=2).flagged == ()  # ... the counts do not


def test_flag_holds_even_when_overall_accuracy_does_not_change():
    y = T(0, 0, 0, 0, 1, 1, 1, 1)
    f = T(0, 0, 0, 0, 1, 1, 0, 0)  # class 1 half wrong
    q = T(0, 0, 1, 1, 1, 1, 1, 1)  # class 1 fixed, class 0 broken: same total
    r = regression_report(y, f, q, threshold=0.05, n_classes=2)
    assert r.float_accuracy == r.quant_accuracy == 0.75 and r.accuracy_change == 0
    assert r.flagged == (0,) and r.disagreement == 0.5
    assert "FLAGGED" in r.summary() and "**lost > 5.0**" in r.to_markdown()


def test_gains_are_never_flagged():
    y, f, q = _one_loss(4, 1)
    assert regression_report(y, q, f, threshold=0.0, n_classes=2).flagged == ()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, error, fragment", [
    (lambda: disagreement_rate(torch.tensor([0.0, 1.0]), T(0, 1)), TypeError, "integer class labels"),
    (lambda: disagreement_rate(T(0, 1), T(0, 1, 2)), ValueError, "lengths"),
    (lambda: disagreement_rate(T(), T()), ValueError, "empty"),
    (lambda: disagreement_rate(torch.zeros(2, 2, dtype=torch.long), T(0, 1)), ValueError, "1-D"),
    (lambda: class_accuracy(T(0, 5), T(0, 1), n_classes=3), ValueError, "n_classes=6"),
    (lambda: regression_report(T(0), T(0), T(0), threshold=1.0), ValueError, "threshold"),
    (lambda: regression_report(T(0), T(0), T(0), threshold=float("nan")), ValueError, "threshold"),
    (lambda: confidence_shift(T(0, 1), torch.zeros(3, 2), torch.zeros(2, 2)), ValueError, "float_logits"),
    (lambda: measure_latency(3, torch.zeros(1)), TypeError, "function"),
    (lambda: measure_latency(abs, torch.zeros(1), repeats=0), ValueError, "repeats"),
    (lambda: measure_latency(abs, torch.zeros(1), warmup=-1), ValueError, "warmup"),
    (lambda: measure_latency(abs, torch.zeros(1), threads=0), ValueError, "threads"),
    (lambda: serialized_bytes([1, 2]), TypeError, "state_dict"),
], ids=["float-labels", "lengths", "empty", "2-d", "n-classes", "threshold-1", "threshold-nan", "logits-rows",
        "not-callable", "repeats", "warmup", "threads", "not-a-model"])
def test_bad_input_is_a_clear_error(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call()


# ----------------------------------------------------------------------------- latency and size
def test_latency_reports_median_and_spread_and_restores_threads_and_mode():
    model = make_mlp(seed=0).train()
    before = torch.get_num_threads()
    r = measure_latency(model, torch.zeros(7, 1, 8, 8), warmup=2, repeats=9, threads=1, name="mlp")
    assert isinstance(r, Latency) and len(r.samples_ms) == 9 and r.repeats == 9 and r.batch_size == 7
    assert r.min_ms <= r.p25_ms <= r.median_ms <= r.p75_ms <= r.max_ms  # never a claim about the time itself
    assert r.threads == 1 and torch.get_num_threads() == before and model.training
    assert "median" in str(r) and "1 thread" in str(r)


def test_latency_sets_the_thread_count_while_it_runs():
    seen = []
    measure_latency(lambda x: seen.append(torch.get_num_threads()), torch.zeros(1), warmup=0, repeats=2, threads=2)
    assert seen == [2, 2]


def test_fake_quantized_file_is_bigger_and_int8_file_smaller_than_float(mlp, digits):
    float_bytes = serialized_bytes(mlp)
    assert float_bytes > 4 * sum(p.numel() for p in mlp.parameters())
    fake = quantize_model(mlp, PTQConfig(), digits.x_calib)
    assert serialized_bytes(fake) > 1.9 * float_bytes  # float weights *and* int32 codes
    ok, reason = int8_support()
    if ok:
        int8 = dynamic_int8(mlp)
        assert serialized_bytes(int8) < float_bytes / 2.5
        assert disagreement_rate(predict(mlp, digits.x_test), predict(int8, digits.x_test)) < 0.02
    else:  # the build has no int8 kernels: the function must say so, not fail silently
        with pytest.raises(RuntimeError, match="no int8 kernels"):
            dynamic_int8(mlp)
    assert isinstance(reason, str) and reason


# ----------------------------------------------------------------------------- lesson 08's claims
def test_report_on_models_agrees_with_models_per_class_accuracy(mlp, digits):
    quant = quantize_model(mlp, PTQConfig(weight_bits=4, act_bits=4, weight_granularity=PerTensor()), digits.x_calib)
    r = compare_models(mlp, quant, digits.x_test, digits.y_test)
    assert torch.equal(r.per_class_quant, per_class_accuracy(quant, digits.x_test, digits.y_test))
    # the lesson's silent regression: overall about one point, one class more than five
    assert -0.02 < r.accuracy_change < 0 and r.flagged and r.disagreement > -r.accuracy_change
    assert r.confidence is not None and float(r.confidence.mean()) < 0


def test_lesson_08_claims_on_the_mlp(mlp, digits):
    float_acc = evaluate(mlp, digits.x_test, digits.y_test)
    variants = [quantize_model(mlp, PTQConfig(), digits.x_calib)] + ([dynamic_int8(mlp)] if int8_support()[0] else [])
    assert all(abs(evaluate(v, digits.x_test, digits.y_test) - float_acc) <= 1 / 360 + 1e-9 for v in variants)
    quant = quantize_model(mlp, PTQConfig(weight_bits=4, act_bits=4, weight_granularity=PerTensor()), digits.x_calib)
    r = compare_models(mlp, quant, digits.x_test, digits.y_test)
    top = logits(mlp, digits.x_test).softmax(1).amax(1)  # the float model's confidence
    assert (top[r.flips.index] < top.quantile(0.1)).all()  # every flip among the least sure tenth
    assert (r.confidence < -0.1).double().mean() > r.disagreement  # confidence moves on more images than flip


RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "evaluation.json"


def test_lesson_08_claims_about_the_benchmark_results():
    from qedu.analysis import AblationTable

    bench = json.loads(RESULTS.read_text())
    ablation = AblationTable.from_dict(bench["ablation"])
    for model in ("mlp", "cnn"):
        (eight,) = ablation.where(model=model, bits=8, granularity="per-tensor")
        assert abs(eight["change_mean"]) <= 0.3 and eight["disagreement_mean"] <= 0.3  # "at 8 bits nothing moves"
        for bits in (4, 3):  # "the worst class loses several times more than the total"
            (row,) = ablation.where(model=model, bits=bits, granularity="per-tensor")
            assert row["worst_class_mean"] < 3 * row["change_mean"] < 0
    gaps = AblationTable.from_dict(bench["robustness"])
    assert all(r["gap_mean"] < 0 for r in gaps.where(model="cnn", bits=4))  # "negative for all five corruptions"
    assert all(abs(r["gap_mean"]) <= 0.5 for r in gaps.where(bits=8))  # W8A8 follows float32
    sizes = {(r["case"].split()[0] + " " + r["case"].split()[1], r["variant"].split()[0]): r["file_bytes"]
             for r in bench["latency"]["rows"]}
    assert sizes["digits MLP", "fake-quant"] > 1.9 * sizes["digits MLP", "float32"]  # "twice as big as the float file"
    assert sizes["wide MLP", "int8"] < 0.26 * sizes["wide MLP", "float32"]  # "a file four times smaller"


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
from torch import nn  # noqa: E402

_L = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
ISSUE20_BAD = {
    "confidence-nan-logits": (lambda: confidence_shift(torch.tensor([0, 1]), _L, torch.tensor([[math.nan, 0.0], [0.0, 1.0]])),
                              ValueError, r"quant_logits holds NaN or inf"),
    "confidence-label-range": (lambda: confidence_shift(torch.tensor([0, 2]), _L, _L), ValueError, r"y holds labels 0..2, outside 0..1"),
    "confidence-negative-label": (lambda: confidence_shift(torch.tensor([-1, 0]), _L, _L), ValueError, r"outside 0..1"),
    "confidence-int-logits": (lambda: confidence_shift(torch.tensor([0, 1]), _L.long(), _L), TypeError, r"float_logits must hold floating-point"),
    "confidence-classes": (lambda: confidence_shift(torch.tensor([0, 1]), _L, torch.zeros(2, 3)), ValueError, r"same number of classes"),
    "logits-batch-zero": (lambda: logits(nn.Linear(2, 2), torch.ones(3, 2), batch_size=0), ValueError, r"batch_size must be between 1"),
    "logits-empty": (lambda: logits(nn.Linear(2, 2), torch.ones(0, 2)), ValueError, r"x must be a non-empty batch"),
    "logits-list": (lambda: logits(nn.Linear(2, 2), [[1.0, 2.0]]), TypeError, r"x must be a torch.Tensor"),
    "logits-shape": (lambda: logits(nn.Linear(2, 2), torch.ones(3, 5)), ValueError, r"cannot run on x of shape \(3, 5\)"),
    "logits-nan": (lambda: logits(nn.Linear(2, 2), torch.tensor([[math.nan, 0.0]])), ValueError, r"x contains 1 NaN"),
    "compare-float64-beyond": (lambda: compare_models(make_mlp(seed=0), make_mlp(seed=1), torch.full((1, 1, 8, 8), 1e39, dtype=torch.float64),
                                                      torch.tensor([0])), ValueError, r"x holds 64 finite value"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_issue20_compare_models_takes_float64_inputs():
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8)
    a = compare_models(make_mlp(seed=0), make_mlp(seed=1), x.double(), y)
    b = compare_models(make_mlp(seed=0), make_mlp(seed=1), x, y)
    assert a.disagreement == b.disagreement and torch.equal(a.confidence, b.confidence)
# ----------------------------------------------------------------------------- torch's dynamic int8: codes 0..127
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_dynamic_int8_activations_are_uint8_codes_0_to_127(mlp, digits):
    if not int8_support()[0]:
        pytest.skip("this torch build has no int8 kernels (int8_support says why)")
    from qedu.evaluation import dynamic_int8_reference

    int8 = dynamic_int8(mlp)
    x = digits.x_test.flatten(1)
    for name in ("fc1", "fc2", "fc3"):  # lesson 08: "activations are uint8 codes 0..127 (reduce_range)"
        layer = getattr(int8, name)
        with torch.no_grad():
            torch_out = layer(x)
            seven = dynamic_int8_reference(layer, x, reduce_range=True)
            eight = dynamic_int8_reference(layer, x, reduce_range=False)
        assert (torch_out - seven).abs().max() < 1e-4 * torch_out.abs().max()  # float rounding only
        assert (torch_out - eight).abs().max() > 1e-3 * torch_out.abs().max()  # 0..255 is not what torch does
        x = torch.relu(torch_out)


def test_dynamic_int8_reference_bad_input():
    from qedu.evaluation import dynamic_int8_reference

    with pytest.raises(TypeError, match="dynamic int8 Linear"):
        dynamic_int8_reference(torch.nn.Linear(2, 2), torch.zeros(1, 2))


def test_lesson_08_chance_and_calibration_claims(mlp, digits):
    from qedu.stats import bootstrap_delta, confidence_calibration, confidence_rank, mcnemar_test, worst_class_null

    quant = quantize_model(mlp, PTQConfig(weight_bits=4, act_bits=4, weight_granularity=PerTensor()), digits.x_calib)
    r = compare_models(mlp, quant, digits.x_test, digits.y_test, threshold=0.05)
    float_logits = logits(mlp, digits.x_test)
    assert (confidence_rank(float_logits)[r.flips.index] < 0.1).all()  # "every one among the least-sure tenth"
    assert len(r.flips.index) == 5 and r.flagged == (1,)  # "five images changed", "class 1 lost 5.6 points"
    assert round(100 * r.accuracy_change, 1) == -1.1 and round(100 * float(r.deltas.min()), 1) == -5.6
    float_pred, quant_pred = float_logits.argmax(1), logits(quant, digits.x_test).argmax(1)
    test = mcnemar_test(digits.y_test, float_pred, quant_pred)
    assert (test.b, test.c, test.p_value) == (4, 0, 0.125)  # "four broken and none fixed ... p = 0.125"
    ci = bootstrap_delta(digits.y_test, float_pred, quant_pred, n_resamples=2000, seed=0)
    assert ci.high < 0  # "the bootstrap interval excludes zero all the same"
    assert (1 - 4 / 360) ** 360 < 0.025  # "... about 2 %, less than the 2.5 % the upper end needs"
    counts = torch.bincount(digits.y_test, minlength=10)
    assert round(float(r.deltas.min()) * int(counts[1])) == -2 and 34 <= counts.min() and counts.max() <= 38  # "two images"
    null = worst_class_null(digits.y_test, float_pred, 5, n_trials=1000, seed=0)
    assert 0.35 < float((null <= float(r.deltas.min()) + 1e-9).double().mean()) < 0.65  # "about half of the trials"
    eces = {name: confidence_calibration(logits(m, digits.x_test), digits.y_test, n_bins=15).ece
            for name, m in [("float", mlp), ("w8a8", quantize_model(mlp, PTQConfig(), digits.x_calib)), ("w4a4", quant)]
            + ([("int8", dynamic_int8(mlp))] if int8_support()[0] else [])}
    assert all(e < 0.02 and abs(e - eces["float"]) < 0.005 for e in eces.values())  # "under 2 %, within half a point"


def test_lesson_08_claims_about_chance_in_the_benchmark_results():
    from qedu.analysis import AblationTable
    from qedu.stats import sign_flip_test

    bench = json.loads(RESULTS.read_text())
    ablation, null = AblationTable.from_dict(bench["ablation"]), bench["null"]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    churn = {m: [r for r in null["churn"] if r["model"] == m] for m in ("mlp", "cnn")}
    assert len(null["seeds"]) == 20 and all(len(v) == 20 * 19 for v in churn.values())  # "20 seeds, every ordered pair"
    beyond = {}
    for model, rows in churn.items():
        assert 1.3 <= mean(rows, "disagreement") <= 1.7  # "about one and a half per cent"
        assert -4.0 <= mean(rows, "worst_class") <= -3.0  # "their worst class differs by 3 to 4 points"
        for bits in (4, 3):
            (row,) = ablation.where(model=model, bits=bits, granularity="per-tensor")
            runs = [r for r in null["random_flips"] if (r["model"], r["bits"], r["granularity"]) == (model, bits, "per-tensor")]
            beyond[model, bits] = sum(r["p_value"] < 0.05 for r in runs)
            if bits == 4:  # "W4A4 disagrees ... under one per cent, with a worst class of 3 to 4 points"
                assert row["disagreement_mean"] < 1 < mean(rows, "disagreement")
                assert -4.05 <= row["worst_class_mean"] <= -2.75
            else:  # "loses 11 to 19 points, three to six times the churn"
                assert -19.5 <= row["worst_class_mean"] <= -10.5
                assert 2.8 <= row["worst_class_mean"] / mean(rows, "worst_class") <= 6.1
    assert beyond["mlp", 4] + beyond["cnn", 4] == 1  # "all but one of the ten 4-bit runs"
    assert beyond["mlp", 3] + beyond["cnn", 3] == 6  # "in 6 of the 10 runs"
    gaps = AblationTable.from_dict(bench["robustness"])
    assert list(gaps.seeds) == list(range(20))  # "the benchmark therefore trained 20 models"
    cnn4 = {r["corruption"]: r for r in gaps.where(model="cnn", bits=4)}
    assert sign_flip_test([-1.0] * 5) == 0.0625  # "never less than p = 0.0625 with five values"
    assert sum(min(r["gap_values"][:5]) < 0 < max(r["gap_values"][:5]) for r in cnn4.values()) >= 3  # "mixed signs"
    for name, r in cnn4.items():
        assert r["gap_mean"] < 0 and r["gap_p"] < 0.01 and r["gap_p"] == sign_flip_test(r["gap_values"])  # "p below 0.01"
        assert (r["gap_p"] < 0.05 / 20) == (name != "blur")  # "four of the five pass and blur does not"
    assert 0.008 < cnn4["blur"]["gap_p"] < 0.0095  # "blur (p ≈ 0.009)"
    spread = [v for k, r in cnn4.items() if k != "occlusion" for v in r["gap_values"]]
    assert max(spread) >= -0.3 and min(spread) <= -10  # "one model may lose nothing and another ten points"
    big = [r for k, r in cnn4.items() if k != "occlusion"]  # "about as large as the means (3 to 6 points for ...)"
    assert all(2.8 <= r["gap_std"] <= 6.2 and r["gap_std"] >= 0.9 * abs(r["gap_mean"]) for r in big)
    lat = {(r["case"].split()[1], r["variant"]): r["median_ms"] for r in bench["latency"]["rows"]
           if r["threads"] == 1 and r["batch"] == 360}
    assert 15 <= lat["CNN", "float32"] / lat["MLP", "float32"] <= 25  # "about 20 times"


def test_lesson_08_pareto_claims(mlp, digits, tmp_path_factory):
    from qedu.stats import pareto_front

    cnn = pretrained("cnn", seed=0, cache_dir=tmp_path_factory.getbasetemp() / "qedu-models")
    configs = {"MLP float32": (mlp, None), "MLP W8A8": (mlp, PTQConfig()),
               "MLP W4A4 per-tensor": (mlp, PTQConfig(weight_bits=4, act_bits=4, weight_granularity=PerTensor())),
               "CNN float32": (cnn, None), "CNN W8A8": (cnn, PTQConfig()), "CNN W4A4": (cnn, PTQConfig(weight_bits=4, act_bits=4)),
               "CNN W4A4 percentile": (cnn, PTQConfig(weight_bits=4, act_bits=4, act_method="percentile", percentile=99.9)),
               "MLP int8": (mlp, PTQConfig(weight_granularity=PerTensor(), act_bits=None))}
    points = []
    for name, (model, config) in configs.items():
        run = model if config is None else quantize_model(model, config, digits.x_calib)
        points.append(dict(name=name, accuracy=evaluate(run, digits.x_test, digits.y_test),
                           bytes=model_size(model, config).total_bytes))
    front = [p["name"] for p, on in zip(points, pareto_front(points, minimize=("bytes",))) if on]
    assert front == ["CNN W4A4"]  # "with size alone one configuration beats every other"
    best = points[5]
    assert round(best["bytes"] / 1000, 1) == 5.4  # "about 5.4 kB"
    runner_up = max(p["accuracy"] for p in points if p is not best)
    assert round((best["accuracy"] - runner_up) * len(digits.y_test)) == 1  # "by one image the most accurate"
