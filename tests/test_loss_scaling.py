"""qedu.loss_scaling: the from-scratch scalers against torch.amp.GradScaler, and FP8 delayed scaling."""
from __future__ import annotations

import math

import pytest
import torch

from qedu.floats import FP8_E4M3, FP8_E5M2, cast
from qedu.loss_scaling import DelayedScaling, DynamicLossScaler, StaticLossScaler, scale_from_amax

INF, NAN = math.inf, math.nan
# Gradient multipliers, one per step: ordinary steps, injected inf/NaN, and 1e36 which overflows
# float32 only once multiplied by a large scale (a "natural" overflow).
SEQUENCE = [1.0, 0.5, 2.0, INF, 1.0, 1.0, 1.0, NAN, 3.0, 1e36, 1e36, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
            -INF, 0.25, 1.0, 1.0, 1.0, 1.0, 1e36, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def _setup(seed=0):
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(5))
    return p, torch.optim.SGD([p], lr=0.01)


def _run(scaler, sequence, explicit_unscale=False):
    """Scales after each update, whether each step ran, the unscaled grads and the params."""
    p, opt = _setup()
    data = torch.linspace(-1, 1, 5)
    scales, stepped, grads, params = [], [], [], []
    for mult in sequence:
        opt.zero_grad()
        loss = (p * data * torch.tensor(mult)).sum()
        scaler.scale(loss).backward()
        before = p.detach().clone()
        if explicit_unscale:
            scaler.unscale_(opt)
        scaler.step(opt)
        grads.append(p.grad.clone())
        stepped.append(not torch.equal(before, p.detach()))
        scaler.update()
        scales.append(scaler.get_scale())
        params.append(p.detach().clone())
    return scales, stepped, grads, params


def _same_tensors(a, b):
    return all(torch.equal(x, y) or bool((x.isnan() == y.isnan()).all() and torch.equal(x.nan_to_num(), y.nan_to_num()))
               for x, y in zip(a, b))


@pytest.mark.parametrize("kwargs", [
    dict(init_scale=2.0**10, growth_interval=3),
    dict(init_scale=2.0**16, growth_interval=2, growth_factor=2.0, backoff_factor=0.5),
    dict(init_scale=1000.0, growth_interval=4, growth_factor=3.0, backoff_factor=0.3),  # float32 rounding matters
    dict(init_scale=2.0**126, growth_interval=1),  # growth would overflow float32: the scale must stay
], ids=["pow2-interval3", "defaults-interval2", "non-pow2-factors", "growth-overflow"])
@pytest.mark.parametrize("explicit_unscale", [False, True], ids=["step-unscales", "unscale_-first"])
def test_dynamic_scaler_equals_torch_gradscaler(kwargs, explicit_unscale):
    ours = _run(DynamicLossScaler(**kwargs), SEQUENCE, explicit_unscale)
    theirs = _run(torch.amp.GradScaler("cpu", **kwargs), SEQUENCE, explicit_unscale)
    assert ours[0] == theirs[0], "scale trajectories differ"
    assert ours[1] == theirs[1], "skipped steps differ"
    assert _same_tensors(ours[2], theirs[2]), "unscaled gradients differ"
    assert _same_tensors(ours[3], theirs[3]), "parameters differ"
    assert not all(ours[1]) and any(ours[1]), "the sequence should mix skipped and taken steps"


def test_gradscaler_trajectory_by_hand():
    """Back off on each overflow, grow after growth_interval clean steps (here 2)."""
    seq = [1.0, 1.0, INF, 1.0, NAN, 1.0, 1.0, 1.0]
    scales, stepped, _, _ = _run(DynamicLossScaler(init_scale=8.0, growth_interval=2), seq)
    assert scales == [8.0, 16.0, 8.0, 8.0, 4.0, 4.0, 8.0, 8.0]
    assert stepped == [True, True, False, True, False, True, True, True]


def test_default_arguments_match_gradscaler():
    ours, theirs = DynamicLossScaler(), torch.amp.GradScaler("cpu")
    assert ours.get_scale() == theirs.get_scale() == 2.0**16
    assert (ours.growth_factor, ours.backoff_factor, ours.growth_interval) == (
        theirs.get_growth_factor(), theirs.get_backoff_factor(), theirs.get_growth_interval())


def test_static_scaler_keeps_its_scale_and_skips_nonfinite_steps():
    scales, stepped, grads, _ = _run(StaticLossScaler(2.0**8), [1.0, INF, 1.0, 1e38])
    assert scales == [256.0] * 4
    assert stepped == [True, False, True, False]
    assert torch.allclose(grads[0], torch.linspace(-1, 1, 5))  # unscaled: the true gradient


def test_scaler_misuse_raises():
    p, opt = _setup()
    scaler = DynamicLossScaler()
    with pytest.raises(RuntimeError, match="update"):
        scaler.update()
    scaler.scale(p.sum()).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="once per step"):
        scaler.unscale_(opt)
    with pytest.raises(TypeError, match="loss must be a torch.Tensor"):
        scaler.scale(1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(init_scale=0.0), "scale must be"), (dict(init_scale=-1.0), "scale must be"),
    (dict(growth_factor=1.0), "growth_factor must be > 1"), (dict(backoff_factor=1.5), "backoff_factor must be < 1"),
    (dict(growth_interval=0), "growth_interval must be between"),
])
def test_dynamic_scaler_rejects_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DynamicLossScaler(**kwargs)


# --- FP8 delayed scaling --------------------------------------------------------------------

def test_scale_from_amax():
    assert scale_from_amax(2.0, FP8_E4M3) == 224.0
    assert scale_from_amax(2.0, FP8_E4M3, margin=1) == 112.0
    assert scale_from_amax(1.0, FP8_E5M2) == 57344.0
    for bad in (0.0, INF, NAN):
        assert scale_from_amax(bad, FP8_E4M3, previous=3.0) == 3.0


def test_delayed_scaling_trajectory_on_a_hand_made_sequence():
    """Each step uses the scale from the *previous* amaxes (history of 2)."""
    ds = DelayedScaling(FP8_E4M3, history_len=2)
    amaxes = [1.0, 0.5, 4.0, 2.0, 2.0, 0.0, 0.0]
    used, after = [], []
    for a in amaxes:
        used.append(ds.scale)
        ds.quantize(torch.tensor([a, -a / 2]))
        after.append(ds.scale)
    assert used == [1.0, 448.0, 448.0, 112.0, 112.0, 224.0, 224.0]
    # history (0, 0): amax 0 says nothing about the range, so the scale is kept
    assert after == [448.0, 448.0, 112.0, 112.0, 224.0, 224.0, 224.0]


def test_delayed_scaling_saturates_a_sudden_outlier_for_one_step():
    ds = DelayedScaling(FP8_E4M3, history_len=4)
    ds.quantize(torch.full((8,), 1.0))  # scale -> 448
    x = torch.tensor([1.0, 1.0, 1.0, 10.0])
    x_hat = ds.quantize(x)  # 10 * 448 is far beyond 448: clipped
    assert x_hat.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert ds.last_overflow == 0.25
    assert ds.scale == 44.8  # the history now holds 10
    assert ds.quantize(x).tolist() == pytest.approx(x.tolist(), rel=2**-3)
    assert ds.last_overflow == 0.0


def test_delayed_scaling_equals_cast_of_scaled_tensor_and_counts_underflow():
    g = torch.Generator().manual_seed(0)
    ds = DelayedScaling(FP8_E5M2, history_len=3, margin=2)
    for step in range(5):
        x = torch.randn(1000, generator=g) * 10.0 ** (step - 2)
        x[:10] = 1e-12  # far below anything e5m2 can hold at these scales
        scale = ds.scale
        x_hat = ds.quantize(x)
        assert torch.equal(x_hat, cast(x * scale, FP8_E5M2, saturate=True) / scale)
        assert ds.last_underflow >= 0.0099
        assert ds.scale == pytest.approx(FP8_E5M2.max / max(ds.amax_history) / 4)


def test_delayed_scaling_rejects_bad_arguments():
    with pytest.raises(TypeError, match="FloatFormat"):
        DelayedScaling("e4m3")
    with pytest.raises(ValueError, match="history_len"):
        DelayedScaling(history_len=0)
    with pytest.raises(ValueError, match="NaN"):
        DelayedScaling().quantize(torch.tensor([NAN]))


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
import numpy as np  # noqa: E402


def _overflowing_step(scaler, opt, p):
    p.grad = torch.tensor([math.inf, 1.0])
    scaler.step(opt)
    scaler.update()


def test_issue20_backoff_that_underflows_float32_raises_naming_backoff_factor():
    """Before: after two overflows S reached 0 in float32, then unscale_ died with ZeroDivisionError."""
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = DynamicLossScaler(backoff_factor=1e-30)
    _overflowing_step(scaler, opt, p)  # 65536 * 1e-30: still a usable float32 scale
    assert scaler.get_scale() == pytest.approx(65536e-30, rel=1e-6)
    with pytest.raises(ValueError, match=r"loss scale fell to 0 .*backoff_factor=1e-30.*gradients are inf/NaN at every scale"):
        _overflowing_step(scaler, opt, p)
    assert scaler.get_scale() > 0  # the last usable scale is kept


ISSUE20_BAD = {
    "static-scale-overflows-float32": (lambda: StaticLossScaler(1e39), ValueError, r"scale=1e\+39 is inf in float32"),
    "static-scale-underflows-float32": (lambda: StaticLossScaler(1e-46), ValueError, r"scale=1e-46 is 0 in float32"),
    "static-scale-inverse-overflows": (lambda: StaticLossScaler(1e-39), ValueError, r"must lie in \[2.94e-39, 3.4e\+38\]"),
    "static-scale-str": (lambda: StaticLossScaler("65536"), TypeError, r"scale must be a number"),
    "dynamic-init-overflows": (lambda: DynamicLossScaler(init_scale=1e39), ValueError, r"is inf in float32"),
    "amax-str": (lambda: scale_from_amax("2.0", FP8_E4M3), TypeError, r"amax must be a number"),
    "previous-str": (lambda: scale_from_amax(2.0, FP8_E4M3, previous="1"), TypeError, r"previous must be a number"),
    "previous-zero": (lambda: scale_from_amax(0.0, FP8_E4M3, previous=0.0), ValueError, r"previous must be in \(0, inf\)"),
    "fmt-str": (lambda: scale_from_amax(2.0, "fp8"), TypeError, r"fmt must be a FloatFormat"),
    "amax-subnormal": (lambda: scale_from_amax(1e-300, FP8_E4M3), ValueError, r"amax=1e-300 gives the scale .* outside float32"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_issue20_numpy_numbers_and_extreme_usable_scales_are_accepted():
    assert StaticLossScaler(np.int64(1024)).get_scale() == 1024.0
    assert StaticLossScaler(2.0**127).get_scale() == 2.0**127
    assert StaticLossScaler(2.0**-126).get_scale() == 2.0**-126
    assert scale_from_amax(np.float32(2.0), FP8_E4M3) == 224.0
    assert scale_from_amax(torch.tensor(2.0), FP8_E4M3) == 224.0
    assert scale_from_amax(math.nan, FP8_E4M3, previous=3.0) == 3.0  # nothing to learn from: keep previous


def test_issue20_delayed_scaling_refuses_float64_beyond_float32():
    with pytest.raises(ValueError, match=r"x holds 1 finite value"):
        DelayedScaling().quantize(torch.tensor([1.0, 1e39], dtype=torch.float64))


def test_delayed_scaling_counts_as_overflow_only_what_rounds_past_the_max():
    # e4m3's max is 448 and the next step would be 480: up to 464 (a tie to the even 448) is rounding
    ds = DelayedScaling(FP8_E4M3)  # first call: scale 1
    ds.quantize(torch.tensor([448.0, 460.0, 464.0, 464.5, 2.0**-10, 2.0**-9, 0.0, 1.0]))
    assert ds.last_overflow == 1 / 8 and ds.last_underflow == 1 / 8


def test_delayed_scaling_floors_a_tiny_amax_like_torchao():
    """An activation of 1e-37 would need the scale 4.5e39 (beyond float32): the amax is floored at 1e-12."""
    from qedu.formats import FP8_E4M3
    from qedu.loss_scaling import AMAX_FLOOR, DelayedScaling

    d = DelayedScaling(FP8_E4M3, history_len=4)
    d.quantize(torch.full((4,), 1e-37))
    assert d.scale == pytest.approx(FP8_E4M3.max / AMAX_FLOOR)
    y = d.quantize(torch.full((4,), 1e-37))
    assert torch.isfinite(y).all()
