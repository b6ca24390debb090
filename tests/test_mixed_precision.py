"""qedu.mixed_precision: simulated low-precision layers, gradient statistics, the training loop."""
from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qedu.data import load_digits
from qedu.floats import BF16, FP4_E2M1, FP8_E4M3, FP8_E5M2, FP16, cast
from qedu.loss_scaling import StaticLossScaler
from qedu.mixed_precision import GradStats, Precision, simulate, train_simulated
from qedu.models import make_cnn, make_mlp, train


@functools.lru_cache(maxsize=1)
def _small_data():
    """The digits with 320 training images: 10 steps per epoch at batch 32."""
    data = load_digits(seed=0)
    return dataclasses.replace(data, x_train=data.x_train[:320], y_train=data.y_train[:320])


def _params_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_fp32_precision_equals_qedu_models_train_bit_for_bit():
    data = _small_data()
    run = train_simulated(make_mlp(seed=0), data, Precision(None, None), epochs=2)
    reference = make_mlp(seed=0)
    history = train(reference, data, epochs=2)
    assert run.test_acc == history.test_acc
    assert _params_equal(run.model, reference)


@pytest.mark.parametrize("precision", [
    Precision(FP16, FP16), Precision(BF16, BF16, master_weights=False), Precision(FP8_E4M3, FP8_E5M2),
], ids=lambda p: p.name)
def test_qedu_cast_and_torch_cast_give_the_same_run(precision):
    kwargs = dict(epochs=1, loss_divisor=2.0**12)
    a = train_simulated(make_mlp(seed=0), _small_data(), precision, backend="qedu", **kwargs)
    b = train_simulated(make_mlp(seed=0), _small_data(), precision, backend="torch", **kwargs)
    assert _params_equal(a.model, b.model)
    assert a.losses == b.losses and a.grad_stats == b.grad_stats


def test_forward_rounds_inputs_weights_and_output():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    sim = simulate(layer, Precision(FP8_E4M3, FP8_E5M2))
    x = torch.randn(4, 5) * 3
    expected = cast(F.linear(cast(x, FP8_E4M3), cast(layer.weight, FP8_E4M3), cast(layer.bias, FP8_E4M3)), FP8_E4M3)
    assert torch.equal(sim(x), expected)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    simc = simulate(conv, Precision(BF16, BF16))
    xc = torch.randn(2, 2, 5, 5)
    expected = cast(F.conv2d(cast(xc, BF16), cast(conv.weight, BF16), cast(conv.bias, BF16), padding=1), BF16)
    assert torch.equal(simc(xc), expected)


def test_backward_rounds_gradients_and_counts_them():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    sim = simulate(layer, Precision(None, FP16))  # fp32 forward, fp16 gradients
    x = torch.randn(8, 6)
    upstream = torch.randn(8, 4) * 1e-6  # many values below fp16's normal range, some below its subnormals
    upstream[0] = 1e5  # and some above its max
    sim(x).backward(upstream)
    g_out = cast(upstream, FP16)  # what the layer's output gradient becomes
    w_grad = cast(g_out.T @ x, FP16)
    b_grad = cast(g_out.sum(0), FP16)
    params = dict(sim.named_parameters())
    assert torch.equal(params["net.parametrizations.weight.original"].grad, w_grad)
    assert torch.equal(params["net.parametrizations.bias.original"].grad, b_grad)
    assert sim.stats[".output"] == GradStats.count(upstream, g_out, FP16)
    assert sim.stats[".output"].underflow > 0 and sim.stats[".output"].overflow == 4
    assert sim.stats[".weight"] == GradStats.count(g_out.T @ x, w_grad, FP16)


def test_grad_stats_count_by_hand():
    before = torch.tensor([0.0, 1e-9, -1e-9, 1e-6, 3e-5, 1.0, 1e5, -1e6, float("inf")])
    s = GradStats.count(before, cast(before, FP16), FP16)
    # zero: 0.0; underflow: +-1e-9; subnormal: 1e-6, 3e-5 (below 2**-14 = 6.1e-5); overflow: 1e5, -1e6, inf
    assert s == GradStats(n=9, zero=1, underflow=2, subnormal=2, overflow=3)
    sat = torch.tensor([500.0, -1000.0, 448.0, 1e-4])
    s8 = GradStats.count(sat, cast(sat, FP8_E4M3, saturate=True), FP8_E4M3)
    assert s8 == GradStats(n=4, zero=0, underflow=1, subnormal=0, overflow=2)  # 448 itself is not an overflow
    assert (s + s8).n == 13 and s.underflow_fraction == 2 / 9


def test_caller_model_is_not_changed():
    model = make_cnn(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = train_simulated(model, _small_data(), Precision(BF16, BF16, master_weights=False), epochs=1, backend="torch")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert run.model.net is not model


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_without_master_weights_the_stored_weights_are_in_the_format(rounding):
    run = train_simulated(make_mlp(seed=0), _small_data(), Precision(BF16, BF16, False, rounding), epochs=1, backend="torch")
    masters = [p for n, p in run.model.named_parameters() if n.endswith("original")]
    assert masters and all(torch.equal(p, cast(p, BF16)) for p in masters)
    with_master = train_simulated(make_mlp(seed=0), _small_data(), Precision(BF16, BF16), epochs=1, backend="torch")
    assert not all(torch.equal(p, cast(p, BF16)) for n, p in with_master.model.named_parameters())


def test_dividing_the_loss_leaves_fp32_training_unchanged():
    """The honest loss-scaling construction: loss / 2**k with Adam's eps / 2**k is the same fp32 run."""
    a = train_simulated(make_mlp(seed=0), _small_data(), Precision(None, None), epochs=1)
    b = train_simulated(make_mlp(seed=0), _small_data(), Precision(None, None), epochs=1, loss_divisor=2.0**20)
    assert _params_equal(a.model, b.model)


def test_small_gradients_underflow_in_fp16_and_loss_scaling_rescues_them():
    data = _small_data()
    kw = dict(epochs=1, loss_divisor=2.0**20, backend="torch")
    plain = train_simulated(make_mlp(seed=0), data, Precision(FP16, FP16), **kw)
    scaled = train_simulated(make_mlp(seed=0), data, Precision(FP16, FP16), loss_scale="dynamic", **kw)
    bf16 = train_simulated(make_mlp(seed=0), data, Precision(BF16, BF16), **kw)
    # the last layer's output gradients (dloss/dlogits / 2**20) vanish; the layers below then get zeros
    assert plain.total_stats("fc3.output").lost_fraction > 0.5
    assert plain.total_stats("output").zero_fraction > 0.9
    assert scaled.total_stats("output").lost_fraction < 0.01
    assert bf16.total_stats().underflow == 0  # bf16 has fp32's exponent range
    assert scaled.scales[0] == 2.0**16 and not any(scaled.skipped)
    # with the scale equal to the divisor the scaled fp16 run is the unscaled problem's fp16 run
    same = train_simulated(make_mlp(seed=0), data, Precision(FP16, FP16), epochs=1, loss_divisor=2.0**16,
                           loss_scale=2.0**16, backend="torch")
    ref = train_simulated(make_mlp(seed=0), data, Precision(FP16, FP16), epochs=1, backend="torch")
    assert _params_equal(same.model, ref.model)


def test_too_large_a_static_scale_skips_every_step():
    run = train_simulated(make_mlp(seed=0), _small_data(), Precision(FP16, FP16), epochs=1,
                          loss_scale=StaticLossScaler(2.0**40), backend="torch")
    assert run.skipped_fraction == 1.0
    assert run.total_stats("output").overflow > 0
    untouched = simulate(make_mlp(seed=0), Precision(FP16, FP16))
    assert _params_equal(run.model, untouched)


def test_precision_and_simulate_reject_bad_input():
    with pytest.raises(TypeError, match="compute must be a FloatFormat"):
        Precision("fp16")
    with pytest.raises(ValueError, match="weight_rounding"):
        Precision(BF16, BF16, False, "up")
    with pytest.raises(ValueError, match="backend='torch'"):
        simulate(make_mlp(seed=0), Precision(FP4_E2M1, None), backend="torch")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        simulate("mlp", Precision())
    with pytest.raises(TypeError, match="loss_scale"):
        train_simulated(make_mlp(seed=0), _small_data(), Precision(), loss_scale="big")


def test_stochastic_rounding_keeps_the_small_updates_round_to_nearest_loses():
    """Lessons 06-07: bf16 weights without an fp32 copy at lr 1e-4. Round-to-nearest swamps most
    updates (the weights barely move); stochastic rounding moves them as far as fp32 masters do."""
    data = dataclasses.replace(_small_data(), x_train=load_digits(seed=0).x_train[:640], y_train=load_digits(seed=0).y_train[:640])
    init = [p.detach().clone() for p in make_mlp(seed=0).parameters()]
    moved = {}
    for name, precision in [("master", Precision(BF16, BF16)), ("nearest", Precision(BF16, BF16, False, "nearest")),
                            ("stochastic", Precision(BF16, BF16, False, "stochastic"))]:
        run = train_simulated(make_mlp(seed=0), data, precision, epochs=2, lr=1e-4, backend="torch")
        moved[name] = sum(float((p.detach() - q).abs().sum()) for p, q in zip(run.model.parameters(), init))
    assert moved["nearest"] < 0.5 * moved["master"]
    assert abs(moved["stochastic"] / moved["master"] - 1) < 0.15


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
import math  # noqa: E402

import numpy as np  # noqa: E402

from qedu.mixed_precision import _make_scaler  # noqa: E402


def _tiny_run(**kwargs):
    return train_simulated(make_mlp(seed=0), _small_data(), Precision(FP16, FP16), epochs=1, **kwargs)


ISSUE20_BAD = {
    "loss-divisor-inf": (lambda: _tiny_run(loss_divisor=math.inf), ValueError, r"loss_divisor must be a finite number"),
    "loss-divisor-nan": (lambda: _tiny_run(loss_divisor=math.nan), ValueError, r"loss_divisor must be a finite number"),
    "loss-divisor-zero": (lambda: _tiny_run(loss_divisor=0.0), ValueError, r"loss_divisor must be in \(0, inf\)"),
    "loss-divisor-huge": (lambda: _tiny_run(loss_divisor=1e40), ValueError, r"loss_divisor=1e\+40 is outside.*eps = 1e-08 / loss_divisor"),
    "loss-divisor-str": (lambda: _tiny_run(loss_divisor="65536"), TypeError, r"loss_divisor must be a number"),
    "loss-scale-overflows": (lambda: _tiny_run(loss_scale=1e39), ValueError, r"scale=1e\+39 is inf in float32"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_issue20_numpy_loss_scales_are_numbers():
    assert _make_scaler(np.int64(1024)).get_scale() == 1024.0
    assert _make_scaler(np.float32(0.5)).get_scale() == 0.5
# --- pure-bf16 weights with Kahan compensation --------------------------------------------------

def test_kahan_weights_stay_in_bf16_and_keep_the_small_updates():
    data = _small_data()
    kwargs = dict(epochs=2, lr=1e-4, backend="torch")
    master = train_simulated(make_mlp(seed=0), data, Precision(BF16, BF16, master_weights=True), **kwargs)
    nearest = train_simulated(make_mlp(seed=0), data, Precision(BF16, BF16, False, "nearest"), **kwargs)
    kahan = train_simulated(make_mlp(seed=0), data, Precision(BF16, BF16, False, "kahan"), **kwargs)
    for _name, layer in kahan.model.rounded_layers:
        for param in layer.parametrizations.values():
            assert torch.equal(param.original, cast(param.original, BF16))  # stored weights are bf16 values
    def distance(a, b):  # summed |difference| over all parameters
        return sum(float((p - q).detach().abs().sum()) for p, q in zip(a.parameters(), b.parameters()))

    # master weights keep every update (in fp32); Kahan follows them closely, round-to-nearest does not
    assert distance(kahan.model, master.model) < distance(nearest.model, master.model) / 3
    start = make_mlp(seed=0)
    assert distance(kahan.model, start) > 2 * distance(nearest.model, start)  # nearest drops most small updates


def test_weight_rounding_choices():
    assert Precision(BF16, BF16, False, "kahan").weight_rounding == "kahan"
    with pytest.raises(ValueError, match="weight_rounding"):
        Precision(BF16, BF16, False, "kahn")


# --- what lesson 06 says about its own runs (same seeds and arguments as its cells) ---------------

import math  # noqa: E402
from pathlib import Path  # noqa: E402

import nbformat  # noqa: E402

from qedu.loss_scaling import DynamicLossScaler  # noqa: E402

LESSON06 = Path(__file__).resolve().parent.parent / "lessons" / "06_mixed_precision_training.ipynb"


def _lesson06_code() -> str:
    return "\n".join(c.source for c in nbformat.read(LESSON06, 4).cells if c.cell_type == "code")


@functools.lru_cache(maxsize=1)
def _lesson06_runs():
    data = load_digits(seed=0)
    runs = {"fp32": train_simulated(make_mlp(seed=0), data, Precision(None, None), epochs=10, backend="torch")}
    for name, precision in (("master", Precision(BF16, BF16, master_weights=True)),
                            ("nearest", Precision(BF16, BF16, master_weights=False)),
                            ("kahan", Precision(BF16, BF16, False, "kahan"))):
        runs[name] = train_simulated(make_mlp(seed=0), data, precision, epochs=10, lr=1e-4, backend="torch")
    for name, fmt, scale in (("fp16", FP16, None), ("dynamic", FP16, DynamicLossScaler(growth_interval=10)),
                             ("bf16", BF16, None)):
        runs[name] = train_simulated(make_mlp(seed=0), data, Precision(fmt, fmt), epochs=10, loss_divisor=2.0**16,
                                     loss_scale=scale, backend="torch")
    return runs


def test_lesson06_runs_what_these_tests_check():
    code = _lesson06_code()
    for call in ('("fp16, dynamic loss scaling", FP16, DynamicLossScaler(growth_interval=10))',
                 'Precision(BF16, BF16, False, "kahan")', "epochs=10, loss_divisor=2.0**k", "k = 16",
                 "summation_errors(lengths=(256, 1024, 4096, 16384), n_rows=4, seed=0)"):
        assert call in code, f"lesson 06 no longer contains {call!r}: update this test and the prose"


def test_lesson06_the_dynamic_scaler_moves_and_skips():
    run = _lesson06_runs()["dynamic"]
    assert len(run.scales) == 450 < torch.amp.GradScaler("cpu").get_growth_interval() == 2000  # "longer than this run"
    assert run.scales[0] == 2.0**16 == torch.amp.GradScaler("cpu").get_scale()
    assert min(run.scales) < max(run.scales)  # the scale changes
    assert sum(run.skipped) >= 1  # at least one step is skipped
    assert 33 <= math.log2(max(run.scales)) <= 37  # "near 2^35"
    assert 0.025 < run.skipped_fraction < 0.08  # "about one step in twenty"
    first = run.skipped.index(True)
    assert all(run.scales[i + 1] == 2 * run.scales[i] for i in range(9, first, 10))  # doubles after every 10 clean steps
    assert all(run.scales[i + 1] == run.scales[i] / 2 for i, s in enumerate(run.skipped[:-1]) if s)  # halves on overflow


def test_lesson06_loss_scaling_claims():
    runs = _lesson06_runs()
    assert 0.2 < runs["fp16"].total_stats().lost_fraction < 0.3  # "about a quarter of its nonzero gradients"
    assert runs["fp16"].final_test_acc < runs["fp32"].final_test_acc - 0.02  # "and accuracy with them"
    assert abs(runs["dynamic"].final_test_acc - runs["fp32"].final_test_acc) <= 0.01  # "trains like fp32"
    assert runs["bf16"].total_stats().lost_fraction == 0 and sum(runs["bf16"].skipped) == 0
    assert abs(runs["bf16"].final_test_acc - runs["fp32"].final_test_acc) <= 0.01


def test_lesson06_master_weight_and_kahan_claims():
    runs = _lesson06_runs()
    assert runs["nearest"].final_test_acc < runs["master"].final_test_acc - 0.2  # "learns a fraction"
    assert abs(runs["kahan"].final_test_acc - runs["master"].final_test_acc) <= 0.01  # "matches the master-weight run"


def test_lesson06_a_larger_batch_does_not_divide_the_gradient():
    data, model = load_digits(seed=0), make_mlp(seed=0)
    medians = []
    for batch in (32, 1024):
        model.zero_grad()
        F.cross_entropy(model(data.x_train[:batch]), data.y_train[:batch]).backward()
        g = torch.cat([p.grad.flatten() for p in model.parameters()]).abs()
        medians.append(g[g > 0].median().item())
    assert 1.5 < medians[0] / medians[1] < 3  # "about 2 times smaller, not 32"


def test_lesson06_e5m2_shares_only_fp16s_normal_range():
    assert FP8_E5M2.min_normal == FP16.min_normal == 2.0**-14
    assert FP8_E5M2.min_subnormal == 2.0**-16 and FP16.min_subnormal == 2.0**-24
    assert FP8_E5M2.min_subnormal / FP16.min_subnormal == 256  # "gradients underflow 256 times sooner"
    assert cast(torch.tensor(2.0**-20), FP8_E5M2).item() == 0 < cast(torch.tensor(2.0**-20), FP16).item()


def test_gradstats_counts_an_overflow_only_when_the_value_rounds_past_the_max():
    """e4m3fn (saturating in qedu's cast): 448 is the max, 464 ties down to it, above 464 overflows."""
    from qedu.floats import FP8_E4M3, cast
    from qedu.mixed_precision import GradStats

    before = torch.tensor([448.0, 450.0, 464.0, 465.0, 1e4, float("inf")])
    stats = GradStats.count(before, cast(before, FP8_E4M3), FP8_E4M3)
    assert stats.overflow == 3, stats
