"""qedu.rtn: round-to-nearest, both conventions against ports of the reference code."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qedu.quantizers import fake_quantize
from qedu.rtn import bits_per_weight, rtn_linear, rtn_qparams, rtn_quantize


# ------------------------------------------------------------------ reference ports (test-only)
def gptq_quant_py(w, bits, group_size, sym):
    """IST-DASLab/gptq quant.py: Quantizer(perchannel=True).find_params(weight=True) + quantize,
    applied per group of columns (as gptq.py does). Divides by scale, codes 0..2^b-1."""
    rows = w if group_size is None else w.reshape(-1, group_size)  # (C_out * n_groups, g)
    maxq = 2**bits - 1
    zero = torch.zeros(rows.shape[0])
    xmin = torch.minimum(rows.min(1).values, zero)
    xmax = torch.maximum(rows.max(1).values, zero)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    both0 = (xmin == 0) & (xmax == 0)
    xmin, xmax = torch.where(both0, -1.0, xmin), torch.where(both0, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    zp = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    scale, zp = scale[:, None], zp[:, None]
    q = torch.clamp(torch.round(rows / scale) + zp, 0, maxq)
    return (scale * (q - zp)).reshape(w.shape), scale, zp


def awq_pseudo_quantize(w, bits, group_size, zero_point=True):
    """mit-han-lab/llm-awq pseudo_quantize_tensor."""
    rows = w if group_size is None else w.reshape(-1, group_size)
    if zero_point:
        max_val, min_val = rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True)
        max_int, min_int = 2**bits - 1, 0
        scales = (max_val - min_val).clamp(min=1e-5) / max_int
        zeros = (-torch.round(min_val / scales)).clamp_(min_int, max_int)
    else:
        max_val = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-5)
        max_int, min_int = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
        scales, zeros = max_val / max_int, 0
    return ((torch.clamp(torch.round(rows / scales) + zeros, min_int, max_int) - zeros) * scales).reshape(w.shape), scales


def near_tie(rows, scale):
    """Where dividing and multiplying by the reciprocal round differently (a value next to a tie)."""
    return (torch.round(rows / scale) != torch.round(rows * (1.0 / scale))).reshape(-1)


CASES = [(bits, g, sym) for bits in (8, 4, 3) for g in (None, 32, 64, 128) for sym in (False, True)]


def _weight(seed=0, shape=(96, 256)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 0.02 + 0.01 * torch.randn(shape[0], 1, generator=g)


@pytest.mark.parametrize("bits,group_size,sym", CASES, ids=[f"w{b}-g{g}-{'sym' if s else 'asym'}" for b, g, s in CASES])
def test_gptq_convention_equals_quant_py(bits, group_size, sym):
    w = _weight(bits)
    ours = rtn_quantize(w, bits, group_size, sym, "gptq")
    ref, ref_scale, _ = gptq_quant_py(w, bits, group_size, sym)
    rows = w if group_size is None else w.reshape(-1, group_size)
    tie = near_tie(rows, ref_scale)
    # quant.py's symmetric quirk: a group with no negative value keeps xmin = 0 (see the next test)
    quirk = (rows.min(1).values >= 0)[:, None].expand_as(rows).reshape(-1) if sym else torch.zeros_like(tie)
    differ = (ours != ref).reshape(-1)
    assert not bool((differ & ~tie & ~quirk).any()), "differs away from a near-tie"
    # division vs reciprocal: rare, except that the symmetric step puts -max|w| of each group exactly on a tie
    assert int((differ & ~quirk).sum()) <= w.numel() // 1000 + (rows.shape[0] if sym else 0)
    scale = rtn_qparams(w, bits, group_size, sym, "gptq").scale
    ours_scale = scale.reshape(-1, 1) if group_size is None else scale.reshape(-1, group_size)[:, :1]
    ok = ~(rows.min(1).values >= 0) if sym else torch.ones(rows.shape[0], dtype=torch.bool)
    assert torch.equal(ours_scale[ok], ref_scale[ok])


def test_quant_py_symmetric_quirk_on_a_nonnegative_group_is_not_copied():
    w = torch.tensor([[0.1, 0.4, 0.8, 1.6]])
    ref, scale, zp = gptq_quant_py(w, 4, None, sym=True)
    assert scale.item() == pytest.approx(1.6 / 15) and zp.item() == 8  # codes 8..15 cover only 0..7 steps
    assert ref[0, 3].item() == pytest.approx(7 * 1.6 / 15)  # the top half of the range is clipped
    ours = rtn_quantize(w, 4, None, symmetric=True, convention="gptq")
    assert ours[0, 3].item() == pytest.approx(1.6, abs=0.11)  # qedu: step max/7.5, nothing beyond half a step clips
    assert float((ours - w).abs().max()) < float((ref - w).abs().max())


@pytest.mark.parametrize("bits,group_size,sym", CASES, ids=[f"w{b}-g{g}-{'sym' if s else 'asym'}" for b, g, s in CASES])
def test_awq_convention_equals_pseudo_quantize_tensor(bits, group_size, sym):
    w = _weight(10 + bits)
    ours = rtn_quantize(w, bits, group_size, sym, "awq")
    ref, ref_scale = awq_pseudo_quantize(w, bits, group_size, zero_point=not sym)
    rows = w if group_size is None else w.reshape(-1, group_size)
    differ = (ours != ref).reshape(-1)
    assert not bool((differ & ~near_tie(rows, ref_scale)).any())
    assert int(differ.sum()) <= w.numel() // 1000


def test_reciprocal_vs_division_differ_only_at_a_near_tie():
    # -12.15 / 0.1 = -121.49999 in float32 (-> -121) but -12.15 * (1 / 0.1) = -121.5 (-> -122): qedu follows torch.
    x, scale = torch.tensor(-12.15), torch.tensor(0.1)
    assert torch.round(x / scale) == -121 and torch.round(x * (1.0 / scale)) == -122
    assert bool(near_tie(x.reshape(1, 1), scale)) and not bool(near_tie(torch.tensor([[-12.1]]), scale))


def test_conventions_differ_on_a_group_that_does_not_straddle_zero():
    w = torch.tensor([[0.5, 1.0, 1.5, 2.0]])  # all positive
    gptq = rtn_quantize(w, bits=2, group_size=None, convention="gptq")
    awq = rtn_quantize(w, bits=2, group_size=None, convention="awq")
    # gptq: range widened to [0, 2] -> step 2/3, levels 0, 2/3, 4/3, 2: nothing clips, coarse step
    assert torch.allclose(gptq, torch.tensor([[2 / 3, 4 / 3, 4 / 3, 2.0]]))  # 1.0 sits on a tie (1.5 steps): to even
    # awq: range [0.5, 2] -> step 0.5, zero point -round(0.5/0.5) = -1 clamped to 0: levels 0, .5, 1, 1.5 -> the max clips
    assert torch.equal(awq, torch.tensor([[0.5, 1.0, 1.5, 1.5]]))
    assert rtn_qparams(w, 2, None, convention="awq").zero_point.item() == 0
    # and a group that straddles 0 gets the same grid from both
    s = torch.tensor([[-1.0, 0.2, 0.5, 2.0]])
    assert torch.equal(rtn_quantize(s, 2, None, convention="gptq"), rtn_quantize(s, 2, None, convention="awq"))


def test_conventions_differ_in_the_symmetric_step():
    w = torch.tensor([[-1.0, 0.3, 0.9, 1.5]])
    gptq = rtn_qparams(w, 4, None, symmetric=True, convention="gptq")
    awq = rtn_qparams(w, 4, None, symmetric=True, convention="awq")
    assert gptq.scale.item() == pytest.approx(1.5 / 7.5) and awq.scale.item() == pytest.approx(1.5 / 7)
    # gptq's half-range step clips +max by half a step; awq's does not clip
    assert rtn_quantize(w, 4, None, True, "gptq")[0, 3].item() == pytest.approx(1.4)
    assert rtn_quantize(w, 4, None, True, "awq")[0, 3].item() == pytest.approx(1.5)


def test_error_falls_with_bits_and_smaller_groups_and_what_awqs_clamp_costs():
    w = _weight(3, (64, 512)) + torch.linspace(-0.05, 0.05, 512)  # columns drift: some groups are all > 0
    mse = {(c, b, g): float(((rtn_quantize(w, b, g, False, c) - w) ** 2).mean())
           for c in ("gptq", "awq") for b in (8, 4, 3) for g in (None, 128, 64, 32)}
    for c in ("gptq", "awq"):
        for g in (None, 128, 64, 32):
            assert mse[(c, 8, g)] < mse[(c, 4, g)] < mse[(c, 3, g)]
    for b in (4, 3):
        assert mse[("gptq", b, None)] > mse[("gptq", b, 128)] > mse[("gptq", b, 64)] > mse[("gptq", b, 32)]
    # AWQ's clamped zero point clips the all-positive groups, which small groups have more of:
    # at 4 bits its error grows again from groups of 64 to 32, and exceeds the widened rule's.
    assert mse[("awq", 4, 32)] > mse[("awq", 4, 64)]
    assert mse[("awq", 4, 32)] > 1.3 * mse[("gptq", 4, 32)]
    # on a zero-centred weight every group straddles 0 and the two rules agree
    z = _weight(5)
    z = z - z.mean(dim=1, keepdim=True)
    assert torch.equal(rtn_quantize(z, 4, 128, False, "gptq"), rtn_quantize(z, 4, 128, False, "awq"))


@pytest.mark.parametrize("convention", ["gptq", "awq"])
@pytest.mark.parametrize("sym", [False, True])
def test_every_weight_lies_on_its_group_grid(convention, sym):
    w = _weight(4)
    scale, zp, fmt = rtn_qparams(w, 3, 32, sym, convention)
    assert scale.shape == w.shape and bool((scale > 0).all())
    k = rtn_quantize(w, 3, 32, sym, convention) / scale + zp
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert fmt.qmin <= int(k.round().min()) and int(k.round().max()) <= fmt.qmax


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([2, 3, 4, 8]), st.sampled_from([None, 4, 8]), st.booleans(),
       st.sampled_from(["gptq", "awq"]), st.floats(1e-3, 1e3))
def test_properties_codes_in_range_grid_points_fixed_error_within_half_a_step(seed, bits, group_size, sym, convention, size):
    w = torch.randn(3, 16, generator=torch.Generator().manual_seed(seed)) * size
    scale, zp, fmt = rtn_qparams(w, bits, group_size, sym, convention)
    w_hat = rtn_quantize(w, bits, group_size, sym, convention)
    k = torch.round(w_hat * (1.0 / scale)) + zp  # the codes
    assert bool((k >= fmt.qmin).all()) and bool((k <= fmt.qmax).all())
    lo, hi = scale * (fmt.qmin - zp), scale * (fmt.qmax - zp)  # the grid's range
    inside = (w >= lo) & (w <= hi)
    assert bool(((w - w_hat).abs() <= scale / 2 + 1e-6 * w.abs())[inside].all())  # + float32 rounding of w
    # the grid's own points are fixed points of rounding to it
    assert torch.equal(fake_quantize(w_hat, scale, zp, fmt), w_hat)


def test_per_channel_params_shape_and_constant_rows():
    w = torch.zeros(3, 8)
    w[1] = 0.5
    for convention in ("gptq", "awq"):
        p = rtn_qparams(w, 4, None, convention=convention)
        assert p.scale.shape == (3, 1) and bool((p.scale > 0).all())
        assert torch.equal(rtn_quantize(w, 4, None, convention=convention)[0], torch.zeros(8))
    assert torch.allclose(rtn_quantize(w, 4, None, convention="gptq")[1], torch.full((8,), 0.5))


def test_rtn_linear_copies_and_keeps_bias():
    torch.manual_seed(0)
    layer = nn.Linear(64, 8)
    before = layer.weight.detach().clone()
    new = rtn_linear(layer, bits=4, group_size=32)
    assert torch.equal(layer.weight, before) and new is not layer
    assert torch.equal(new.bias, layer.bias)
    assert torch.equal(new.weight.detach(), rtn_quantize(before, 4, 32))


def test_bits_per_weight():
    assert bits_per_weight(4, 128, 4096) == 4 + 16 / 128 + 4 / 128
    assert bits_per_weight(3, 64, 256, symmetric=True) == 3 + 16 / 64
    assert bits_per_weight(8, None, 512) == 8 + 24 / 512


@pytest.mark.parametrize("call,match", [
    (lambda: rtn_quantize(torch.randn(4), 4, None), "2-D"),
    (lambda: rtn_quantize(torch.randn(4, 48), 4, 32), "group_size=32 must divide"),
    (lambda: rtn_quantize(torch.randn(4, 32), 1, None), "bits"),
    (lambda: rtn_quantize(torch.randn(4, 32), 4.0, None), "bits must be an int"),
    (lambda: rtn_quantize(torch.randn(4, 32), 4, None, convention="hqq"), "convention"),
    (lambda: rtn_quantize(torch.randn(4, 32), 4, None, symmetric=1), "symmetric"),
    (lambda: rtn_quantize(nn.Linear(4, 4), 4, None), "rtn_linear"),
    (lambda: rtn_quantize(torch.tensor([[float("nan"), 1.0]]), 4, None), "NaN"),
    (lambda: rtn_linear(torch.randn(4, 4)), "nn.Linear"),
    (lambda: bits_per_weight(4, 100, 4096), "group_size"),
])
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()
