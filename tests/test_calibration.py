"""qedu.calibration: observers equal torch.ao's exactly, range rules do what they promise, hooks always come off."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.ao.quantization import observer as tq

from qedu.calibration import (
    KLObserver, MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver, PercentileObserver, clipping_error,
    kl_range, make_observer, minmax_range, mse_range, observing, percentile_range, record_activations,
)
from qedu.formats import INT8, UINT8, IntFormat
from qedu.granularity import PerChannel, PerGroup
from qedu.quantizers import choose_qparams_from_minmax, fake_quantize, quantization_error

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated.*", "ignore:Please use quant_min and quant_max")

# torch dtype, reduce_range -> qedu format
FORMATS = {
    (torch.qint8, False): INT8,
    (torch.quint8, False): UINT8,
    (torch.qint8, True): IntFormat(7),
    (torch.quint8, True): IntFormat(7, signed=False),
}
SCHEMES = {False: (torch.per_tensor_affine, torch.per_channel_affine),
           True: (torch.per_tensor_symmetric, torch.per_channel_symmetric)}
CASES = [(d, r, s) for (d, r), s in itertools.product(FORMATS, (False, True))]
CASE_IDS = [f"{'qint8' if d == torch.qint8 else 'quint8'}-{'reduce' if r else 'full'}-{'sym' if s else 'affine'}"
            for d, r, s in CASES]


def _batches(g: torch.Generator, shape_tail=(6, 3), fixed_n: int | None = None) -> list[torch.Tensor]:
    """A few batches of varied size and range: shifted, all positive, all negative, constant, tiny, huge."""
    kind = int(torch.randint(0, 6, (), generator=g))
    out = []
    for _ in range(int(torch.randint(1, 5, (), generator=g))):
        n = fixed_n or int(torch.randint(1, 9, (), generator=g))
        x = torch.randn((n, *shape_tail), generator=g) * float(10 ** torch.empty(()).uniform_(-4, 3, generator=g))
        if kind == 1:
            x = x.abs()
        elif kind == 2:
            x = -x.abs()
        elif kind == 3:
            x = torch.full_like(x, float(x.flatten()[0]))
        elif kind == 4:
            x = x + 5 * x.abs().max()  # a range far from 0: widening to include 0 matters
        elif kind == 5:
            x = torch.zeros_like(x)
        out.append(x)
    return out


def _skip_refused(dtype, reduce_range, symmetric):
    if symmetric and reduce_range and dtype == torch.quint8:
        pytest.skip("torch refuses symmetric quint8 with reduce_range (NotImplementedError); qedu allows it")


def _assert_same_qparams(ours, theirs):
    scale, zero_point = ours
    t_scale, t_zero_point = theirs
    assert torch.equal(scale.flatten(), t_scale.flatten().float()), (scale.flatten(), t_scale.flatten())
    assert torch.equal(zero_point.flatten().long(), t_zero_point.flatten().long())


def _run(observer, batches):
    for x in batches:
        assert observer(x) is x  # returns its input unchanged
    return observer.calculate_qparams()


# ----------------------------------------------------------------------------- exactness vs torch.ao
@pytest.mark.parametrize("dtype, reduce_range, symmetric", CASES, ids=CASE_IDS)
def test_minmax_observer_equals_torch(dtype, reduce_range, symmetric):
    _skip_refused(dtype, reduce_range, symmetric)
    fmt = FORMATS[(dtype, reduce_range)]
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        batches = _batches(g)
        theirs = tq.MinMaxObserver(dtype=dtype, qscheme=SCHEMES[symmetric][0], reduce_range=reduce_range)
        _assert_same_qparams(_run(MinMaxObserver(fmt, symmetric), batches), _run(theirs, batches))


@pytest.mark.parametrize("dtype, reduce_range, symmetric", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_per_channel_minmax_observer_equals_torch(dtype, reduce_range, symmetric, axis):
    _skip_refused(dtype, reduce_range, symmetric)
    fmt = FORMATS[(dtype, reduce_range)]
    g = torch.Generator().manual_seed(axis + 1)
    for _ in range(25):
        batches = _batches(g, fixed_n=5 if axis == 0 else None)  # the channel axis keeps its length
        ours = MinMaxObserver(fmt, symmetric, PerChannel(axis))
        theirs = tq.PerChannelMinMaxObserver(ch_axis=axis, dtype=dtype, qscheme=SCHEMES[symmetric][1],
                                             reduce_range=reduce_range)
        _assert_same_qparams(_run(ours, batches), _run(theirs, batches))


@pytest.mark.parametrize("dtype, reduce_range, symmetric", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("c", [0.01, 0.3, 1.0])
def test_moving_average_observer_equals_torch(dtype, reduce_range, symmetric, c):
    _skip_refused(dtype, reduce_range, symmetric)
    fmt = FORMATS[(dtype, reduce_range)]
    g = torch.Generator().manual_seed(7)
    for _ in range(25):
        batches = _batches(g)
        ours = MovingAverageMinMaxObserver(fmt, symmetric, averaging_constant=c)
        theirs = tq.MovingAverageMinMaxObserver(averaging_constant=c, dtype=dtype, qscheme=SCHEMES[symmetric][0],
                                                reduce_range=reduce_range)
        _assert_same_qparams(_run(ours, batches), _run(theirs, batches))


@pytest.mark.parametrize("dtype, reduce_range, symmetric", CASES, ids=CASE_IDS)
def test_moving_average_per_channel_observer_equals_torch(dtype, reduce_range, symmetric):
    _skip_refused(dtype, reduce_range, symmetric)
    fmt = FORMATS[(dtype, reduce_range)]
    g = torch.Generator().manual_seed(11)
    for _ in range(25):
        batches = _batches(g)
        ours = MovingAverageMinMaxObserver(fmt, symmetric, PerChannel(1), averaging_constant=0.2)
        theirs = tq.MovingAveragePerChannelMinMaxObserver(averaging_constant=0.2, ch_axis=1, dtype=dtype,
                                                          qscheme=SCHEMES[symmetric][1], reduce_range=reduce_range)
        _assert_same_qparams(_run(ours, batches), _run(theirs, batches))


def test_per_channel_range_broadcasts_against_activations():
    obs = MinMaxObserver(granularity=PerChannel(1))
    obs(torch.randn(4, 3, 5, 5))
    obs(torch.randn(2, 3, 5, 5))  # another batch size is fine
    scale, zero_point = obs.calculate_qparams()
    assert scale.shape == (1, 3, 1, 1) and zero_point.shape == (1, 3, 1, 1)
    fake_quantize(torch.randn(7, 3, 5, 5), scale, zero_point, UINT8)  # broadcasts against any batch


# ----------------------------------------------------------------------------- range rules
def test_minmax_range_is_the_data_range_per_slice():
    x = torch.randn(4, 6)
    lo, hi = minmax_range(x, PerChannel(0))
    assert torch.equal(lo.flatten(), x.amin(1)) and torch.equal(hi.flatten(), x.amax(1))
    lo, hi = minmax_range(x, PerGroup(3))
    assert lo.shape == x.shape and torch.equal(lo[0, :3], x[0, :3].min().expand(3))


@pytest.mark.parametrize("p", [99.99, 99.9, 99.0, 90.0, 100.0])
def test_percentile_range_matches_numpy(p):
    x = torch.randn(5000, generator=torch.Generator().manual_seed(3)) ** 3
    lo, hi = percentile_range(x, p)
    assert np.isclose(lo.item(), np.percentile(x.double().numpy(), 100 - p), rtol=1e-6, atol=1e-7)
    assert np.isclose(hi.item(), np.percentile(x.double().numpy(), p), rtol=1e-6, atol=1e-7)
    lo_s, hi_s = percentile_range(x, p, symmetric=True)  # symmetric: a percentile of |x|, not of x
    assert np.isclose(hi_s.item(), np.percentile(np.abs(x.numpy()), p), rtol=1e-5) and lo_s.item() == -hi_s.item()


def test_percentile_100_is_minmax_and_per_channel_is_per_row():
    x = torch.randn(3, 200)
    assert all(torch.equal(a, b) for a, b in zip(percentile_range(x, 100.0), minmax_range(x)))
    lo, hi = percentile_range(x, 99.0, PerChannel(0))
    for i in range(3):
        assert np.isclose(hi[i, 0].item(), np.percentile(x[i].numpy(), 99.0), rtol=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_range_is_never_worse_than_minmax_and_clips_heavy_tails(bits, symmetric):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(3000, generator=g) ** 3  # heavy tails
    fmt = IntFormat(bits)

    def mse(lo, hi):
        scale, zp = choose_qparams_from_minmax(lo, hi, fmt, symmetric)
        return quantization_error(x, fake_quantize(x, scale, zp, fmt)).mse

    lo, hi = mse_range(x, fmt, symmetric=symmetric)
    assert mse(lo, hi) <= mse(*minmax_range(x))
    if bits <= 4:
        assert hi < x.max() and mse(lo, hi) < 0.8 * mse(*minmax_range(x))  # heavy tails: clipping pays


def test_mse_range_per_channel_equals_a_search_per_row():
    w = torch.randn(5, 40, generator=torch.Generator().manual_seed(0)) * torch.tensor([[0.1], [1], [3], [10], [0.5]])
    lo, hi = mse_range(w, IntFormat(3), PerChannel(0), symmetric=True)
    for i in range(5):
        lo_i, hi_i = mse_range(w[i], IntFormat(3), symmetric=True)
        assert lo[i, 0] == lo_i and hi[i, 0] == hi_i


def test_kl_range_keeps_a_clean_distribution_and_drops_a_far_outlier():
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0)).abs()
    lo, hi = kl_range(x, UINT8)
    assert lo == 0 and 0.85 * x.max() < hi <= x.max()  # 8 bits: almost no clipping
    lo4, hi4 = kl_range(x, IntFormat(4, signed=False))
    assert hi4 < hi  # fewer bits: clip more
    with_outlier = torch.cat([x, torch.tensor([100.0])])
    # one far value does not set the range; the threshold is at least n_levels = 256 of the 2048 bins
    assert kl_range(with_outlier, UINT8)[1] == 100.0 * 256 / 2048
    assert kl_range(with_outlier, UINT8, n_bins=4096)[1] == 100.0 * 256 / 4096  # finer bins, tighter clipping
    lo_s, hi_s = kl_range(torch.cat([x, -x]), INT8, symmetric=True)
    assert lo_s == -hi_s


def test_clipping_error_adds_up_to_the_quantization_error():
    x = torch.randn(4000, generator=torch.Generator().manual_seed(1))
    fmt = IntFormat(4)
    for lo, hi in [minmax_range(x), (-1.0, 1.0), (-0.2, 3.0)]:
        e = clipping_error(x, lo, hi, fmt)
        scale, zp = choose_qparams_from_minmax(torch.as_tensor(lo), torch.as_tensor(hi), fmt, False)
        total = quantization_error(x, fake_quantize(x, scale, zp, fmt)).mse
        assert np.isclose(e.total, total, rtol=1e-9) and np.isclose(e.clipping + e.rounding, e.total, rtol=1e-9)
    assert clipping_error(x, *minmax_range(x), fmt).clipping == 0.0
    e = clipping_error(x, -1.0, 1.0, fmt)
    assert e.clipping > 0 and np.isclose(e.clipped_fraction, float((x.abs() > 1.0 + 1 / 15).double().mean()), atol=2e-3)


def test_value_observers_combine_batches():
    x = torch.randn(6, 50, generator=torch.Generator().manual_seed(2))
    for obs, rule in [
        (PercentileObserver(percentile=99.0), lambda v: percentile_range(v, 99.0)),
        (MSEObserver(IntFormat(4, signed=False)), lambda v: mse_range(v, IntFormat(4, signed=False))),
        (KLObserver(IntFormat(4, signed=False)), lambda v: kl_range(v, IntFormat(4, signed=False))),
    ]:
        obs(x[:2]), obs(x[2:])
        assert [t.item() for t in obs.clipping_range()] == [t.item() for t in rule(x)], type(obs).__name__
    obs = PercentileObserver(percentile=99.0, granularity=PerChannel(1))
    obs(x[:2]), obs(x[2:])
    assert obs.clipping_range()[1].shape == (1, 50)


def test_make_observer_builds_each_method():
    for method in ("minmax", "moving_average", "percentile", "mse", "kl"):
        obs = make_observer(method, IntFormat(4, signed=False))
        obs(torch.rand(100))
        scale, zero_point = obs.calculate_qparams()
        assert scale.item() > 0 and 0 <= zero_point.item() <= 15
    assert make_observer("percentile", percentile=99.9).percentile == 99.9


# ----------------------------------------------------------------------------- hooks
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_observing_records_layer_inputs_and_removes_hooks():
    model = _mlp()
    x = torch.randn(10, 2, 2)
    with observing(model) as observers:
        assert _hook_count(model) == 2
        model(x)
    assert _hook_count(model) == 0
    assert sorted(observers) == ["1", "3"]
    lo, hi = observers["3"].clipping_range()
    hidden = torch.relu(model[1](x.flatten(1)))
    assert lo == hidden.min() and hi == hidden.max()


def test_observing_removes_hooks_even_when_the_block_raises():
    model = _mlp()
    with pytest.raises(RuntimeError, match="boom"):
        with observing(model, names=["1", "3"], where="output"):
            assert _hook_count(model) == 2
            raise RuntimeError("boom")
    assert _hook_count(model) == 0
    with pytest.raises(ValueError, match="NaN"):  # an observer refusing NaN input also cleans up
        with observing(model):
            model(torch.full((2, 4), float("nan")))
    assert _hook_count(model) == 0


def test_record_activations_restores_mode_and_leaves_no_hooks():
    model = _mlp().train()
    acts = record_activations(model, torch.randn(7, 4), names=["3"], where="output", batch_size=3)
    assert acts["3"].shape == (7, 3) and model.training and _hook_count(model) == 0


# ----------------------------------------------------------------------------- bad input
def test_observer_errors_name_the_problem():
    with pytest.raises(RuntimeError, match="has not seen any data"):
        MinMaxObserver().calculate_qparams()
    with pytest.raises(ValueError, match="1 NaN"):
        MinMaxObserver()(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="empty"):
        MinMaxObserver()(torch.zeros(0))
    with pytest.raises(ValueError, match="percentile must be in"):
        PercentileObserver(percentile=101)
    with pytest.raises(TypeError, match="percentile must be a number"):
        percentile_range(torch.ones(3), "99")
    with pytest.raises(ValueError, match="per tensor"):
        KLObserver(granularity=PerChannel(0))
    with pytest.raises(TypeError, match="granularity must be PerTensor"):
        MinMaxObserver(granularity=PerGroup(2))
    with pytest.raises(TypeError, match="fmt must be an IntFormat"):
        MinMaxObserver(fmt=8)
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageMinMaxObserver(averaging_constant=0)
    with pytest.raises(ValueError, match="not a calibration method.*'minmax'"):
        make_observer("entropy")
    obs = MinMaxObserver(granularity=PerChannel(1))
    obs(torch.ones(2, 3))
    with pytest.raises(ValueError, match="different number of channels"):
        obs(torch.ones(2, 4))


def test_observing_errors_name_the_problem():
    model = _mlp()
    with pytest.raises(ValueError, match=r"'fc9'.*choose from"):
        with observing(model, names=["fc9"]):
            pass
    with pytest.raises(ValueError, match="where must be"):
        with observing(model, where="middle"):
            pass
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        with observing("model"):
            pass
    assert _hook_count(model) == 0


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
from torch import nn  # noqa: E402


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 4096])
def test_issue20_percentile_equals_torch_quantile_exactly(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, n, generator=g) * torch.tensor([[1.0], [1e-3], [1e4]])
    x[1, : n // 3] = 0.5  # ties
    for p in (50.001, 90.0, 99.0, 99.99, 100.0):
        for sym in (False, True):
            lo, hi = percentile_range(x, p, PerChannel(0), symmetric=sym)
            v = x.abs() if sym else x
            expect_hi = torch.quantile(v.double(), p / 100, dim=1, keepdim=True).float()
            assert torch.equal(hi, expect_hi), (n, p, sym)
            if not sym:
                assert torch.equal(lo, torch.quantile(v.double(), 1 - p / 100, dim=1, keepdim=True).float())


@pytest.mark.slow
def test_issue20_percentile_beyond_torch_quantiles_limit_agrees_with_numpy():
    """torch.quantile refuses more than 2**24 values; percentile calibration of a large layer needs more."""
    n = 2**24 + 1
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError):
        torch.quantile(x, 0.5)  # the limit this function avoids
    lo, hi = percentile_range(x, 99.9)
    expect_lo, expect_hi = np.percentile(x.numpy().astype(np.float64), [0.1, 99.9])
    assert lo.item() == pytest.approx(float(np.float32(expect_lo)), rel=1e-6)
    assert hi.item() == pytest.approx(float(np.float32(expect_hi)), rel=1e-6)


ISSUE20_BAD = {
    "observer-instance": (lambda: observing(nn.Linear(2, 2), MinMaxObserver()).__enter__(), TypeError,
                          r"observer_factory must make a new observer per layer: pass the class"),
    "record-shape": (lambda: record_activations(nn.Sequential(nn.Linear(4, 2)), torch.ones(3, 5)), ValueError,
                     r"cannot run on x of shape \(3, 5\)"),
    "record-scalar": (lambda: record_activations(nn.Sequential(nn.Linear(4, 2)), torch.tensor(1.0)), ValueError,
                      r"x must be a batch of inputs"),
    "x-float64-beyond-float32": (lambda: minmax_range(torch.tensor([1e39], dtype=torch.float64)), ValueError,
                                 r"x holds 1 finite value\(s\) beyond float32's range"),
    "percentile-float64": (lambda: percentile_range(torch.tensor([0.0, -1e40], dtype=torch.float64)), ValueError, r"x holds 1 finite"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_issue20_record_activations_casts_float64_and_restores_the_mode():
    model = nn.Sequential(nn.Linear(4, 2)).train()
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    acts = record_activations(model, x.double())
    assert model.training and acts["0"].dtype == torch.float32 and torch.equal(acts["0"], x)
