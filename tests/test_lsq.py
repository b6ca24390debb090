"""qedu.lsq: autograd's step-size gradient is the LSQ paper's formula, g = 1/sqrt(N*Qp), the inits,
PACT's gradients, and clear errors."""
from __future__ import annotations

import math

import pytest
import torch

from qedu.calibration import mse_range
from qedu.formats import IntFormat
from qedu.granularity import PerChannel, PerTensor
from qedu.lsq import (
    LSQQuantizer, PACTQuantizer, init_step, lsq_grad_scale, pact_quantize, scale_grad,
)
from qedu.qat import fake_quantize_ste
from qedu.quantizers import choose_qparams, choose_qparams_from_minmax, fake_quantize


def _paper_step_gradient(x: torch.Tensor, s: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """Esser et al. 2020, eq. 3, by hand in float64: d x_hat / d s for each value."""
    v = x / s
    inside = torch.round(v) - v
    return torch.where(v <= -qn, torch.full_like(v, -qn), torch.where(v >= qp, torch.full_like(v, qp), inside))


def _values(shape, seed=0, spread=3.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * spread


@pytest.mark.parametrize("fmt", [IntFormat(2), IntFormat(3), IntFormat(4), IntFormat(4, signed=False),
                                 IntFormat(2, narrow_range=True)], ids=str)
def test_autograd_step_gradient_is_the_papers_formula_per_tensor(fmt):
    x = _values(2000)  # many values clip at 2-4 bits with step 0.8
    upstream = _values(2000, seed=1, spread=1.0)
    s = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    fake_quantize_ste(x, s, 0, fmt).backward(upstream)
    expected = (upstream * _paper_step_gradient(x, s.detach(), -fmt.qmin, fmt.qmax)).sum()
    torch.testing.assert_close(s.grad, expected, rtol=1e-12, atol=1e-12)


def test_lsq_quantizer_step_gradient_is_g_times_the_papers_formula_per_channel():
    fmt = IntFormat(3)
    w = _values((6, 50), seed=2, spread=0.5)
    q = LSQQuantizer(w.float(), fmt, PerChannel(0), init="lsq").double()
    upstream = _values((6, 50), seed=3, spread=1.0)
    q(w).backward(upstream)
    s = q.scale.detach()
    g = 1 / math.sqrt(50 * fmt.qmax)  # N = the 50 weights sharing each channel's step
    expected = g * (upstream * _paper_step_gradient(w, s, -fmt.qmin, fmt.qmax)).sum(dim=1, keepdim=True)
    assert q.g == pytest.approx(g, rel=1e-15)
    torch.testing.assert_close(q.scale.grad, expected, rtol=1e-12, atol=1e-12)


def test_step_gradient_agrees_with_torchs_learnable_fake_quant_away_from_the_half_step_band():
    # torch's kernel decides "outside" by the rounded code (see test_qat); away from that band the two agree
    # step 0.5, codes -4..3: inside is x in [-2, 1.5]; torch and qedu differ only for x/s in [-4.5, -4) and (3, 3.5]
    x = torch.cat([torch.linspace(-2.0, 1.5, 301), torch.linspace(-4.0, -2.5, 50), torch.linspace(2.0, 4.0, 50)])
    s = torch.tensor(0.5, requires_grad=True)
    fake_quantize_ste(x, scale_grad(s, 0.1), 0, IntFormat(3)).sum().backward()
    s_torch = torch.tensor([0.5], requires_grad=True)
    torch._fake_quantize_learnable_per_tensor_affine(x, s_torch, torch.tensor([0.0]), -4, 3, 0.1).sum().backward()
    torch.testing.assert_close(s.grad.reshape(1), s_torch.grad, rtol=1e-4, atol=1e-5)


def test_grad_scale_formula_and_its_errors():
    assert lsq_grad_scale(64, IntFormat(2)) == 1 / math.sqrt(64 * 1)  # Qp = 1 for 2-bit signed codes
    assert lsq_grad_scale(10, IntFormat(4, signed=False)) == 1 / math.sqrt(10 * 15)
    assert lsq_grad_scale(10, IntFormat(4)) == 1 / math.sqrt(10 * 7)  # Qp, not Qn = 8
    with pytest.raises(ValueError, match="n must be between 1"):
        lsq_grad_scale(0, IntFormat(4))
    with pytest.raises(ValueError, match="no positive code"):
        lsq_grad_scale(10, IntFormat(1))
    with pytest.raises(TypeError, match="fmt must be an IntFormat"):
        lsq_grad_scale(10, 4)


def test_scale_grad_leaves_the_value_and_scales_the_gradient():
    s = torch.tensor([0.1, 0.7], dtype=torch.float64, requires_grad=True)
    y = scale_grad(s, 0.25)
    assert torch.equal(y, s.detach())
    y.backward(torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert s.grad.tolist() == [0.25, 0.5]
    assert torch.autograd.gradcheck(lambda t: scale_grad(t, 1.0), (s.detach().requires_grad_(),))  # g = 1: true gradient


def test_inits_are_the_paper_rule_minmax_and_mse():
    w = _values((4, 30), seed=4).float()
    fmt = IntFormat(2)
    paper = init_step(w, fmt, PerChannel(0), "lsq")
    torch.testing.assert_close(paper, 2 * w.abs().mean(dim=1, keepdim=True) / math.sqrt(fmt.qmax))
    assert torch.equal(init_step(w, fmt, PerChannel(0), "minmax"), choose_qparams(w, fmt, PerChannel(0))[0])
    lo, hi = mse_range(w, fmt, PerTensor(), symmetric=True)
    assert torch.equal(init_step(w, fmt, PerTensor(), "mse"), choose_qparams_from_minmax(lo, hi, fmt, True)[0])
    with pytest.raises(ValueError, match="init='max'"):
        init_step(w, fmt, PerTensor(), "max")
    with pytest.raises(TypeError, match="granularity must be PerTensor"):
        init_step(w, fmt, "per-channel")


def test_lsq_learns_a_step_that_lowers_the_quantization_error():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    q = LSQQuantizer(x, IntFormat(3), init="minmax")  # min/max wastes levels on the tails
    opt = torch.optim.Adam(q.parameters(), lr=0.01)
    before = ((q(x) - x) ** 2).mean().item()
    for _ in range(100):
        opt.zero_grad()
        ((q(x) - x) ** 2).mean().backward()
        opt.step()
    after = ((q(x) - x) ** 2).mean().item()
    assert after < 0.6 * before and q.scale.item() < choose_qparams(x, IntFormat(3))[0].item()


# ----------------------------------------------------------------------------- PACT
def test_pact_gradients_are_one_where_x_clips_for_alpha_and_inside_for_x():
    x = torch.tensor([-1.0, 0.0, 0.3, 1.2, 1.99, 2.0, 2.5, 7.0], requires_grad=True)
    alpha = torch.tensor(2.0, requires_grad=True)
    upstream = torch.arange(1.0, 9.0)
    pact_quantize(x, alpha, IntFormat(2, signed=False)).backward(upstream)
    assert alpha.grad.item() == (6 + 7 + 8)  # d x_hat / d alpha = 1 where x >= alpha
    assert x.grad.tolist() == [0, 2, 3, 4, 5, 0, 0, 0]  # STE inside [0, alpha), 0 outside


def test_pact_forward_is_fake_quantize_of_the_clipped_input():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    alpha = torch.tensor(2.2)
    fmt = IntFormat(4, signed=False)
    expected = fake_quantize(torch.clamp(x, 0, 2.2), alpha / fmt.qmax, 0, fmt)
    assert torch.equal(pact_quantize(x, alpha, fmt), expected)
    assert torch.equal(fake_quantize(x, alpha / fmt.qmax, 0, fmt), expected)  # the code clamp does the clipping


def test_pact_gradient_is_the_true_gradient_outside_the_quantized_range():
    x = torch.tensor([-2.0, -0.5, 2.5, 4.0], dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a: pact_quantize(x, a, IntFormat(3, signed=False)), (x, alpha))


def test_pact_quantizer_starts_from_calibration_and_refuses_signed_codes():
    acts = torch.rand(100, 8) * 3
    q = PACTQuantizer(acts, IntFormat(4, signed=False), init="minmax")
    assert q.alpha.item() == pytest.approx(acts.max().item(), rel=1e-6)
    with pytest.raises(ValueError, match="act_method='lsq'"):
        PACTQuantizer(acts - 1, IntFormat(4), init="minmax")


@pytest.mark.parametrize(
    "args, error, fragment",
    [
        ((torch.tensor([1, 2]), torch.tensor(1.0)), TypeError, "x must be a floating-point"),
        ((torch.tensor([1.0]), torch.tensor(-1.0)), ValueError, "alpha must be one positive number"),
        ((torch.tensor([1.0]), torch.tensor([1.0, 2.0])), ValueError, "alpha must be one positive number"),
        ((torch.tensor([1.0]), 2.0), TypeError, "alpha must be a floating-point"),
    ],
    ids=["int x", "negative alpha", "two alphas", "float alpha"],
)
def test_pact_bad_input(args, error, fragment):
    with pytest.raises(error, match=fragment):
        pact_quantize(*args, IntFormat(3, signed=False))
    with pytest.raises(ValueError, match="must be unsigned"):
        pact_quantize(torch.tensor([1.0]), torch.tensor(1.0), IntFormat(3))


# ----------------------------------------------------------------------------- issue 20: nothing silently wrong
ISSUE20_BAD = {
    "lsq-nan-input": (lambda: LSQQuantizer(torch.tensor([-1.0, 0.4, 1.0]), IntFormat(2))(torch.tensor([float("nan"), 1.0])),
                      ValueError, r"x holds NaN or inf"),
    "lsq-inf-input": (lambda: LSQQuantizer(torch.tensor([-1.0, 0.4, 1.0]), IntFormat(2))(torch.tensor([float("inf")])),
                      ValueError, r"x holds NaN or inf"),
    "lsq-int-input": (lambda: LSQQuantizer(torch.tensor([-1.0, 0.4, 1.0]), IntFormat(2))(torch.tensor([1, 2])),
                      TypeError, r"x must be a floating-point torch.Tensor"),
    "pact-nan-input": (lambda: PACTQuantizer(torch.tensor([0.0, 0.4, 1.0]), IntFormat(2, signed=False))(torch.tensor([float("nan")])),
                       ValueError, r"x holds NaN or inf"),
    "pact-nan-alpha": (lambda: pact_quantize(torch.ones(2), torch.tensor(float("nan")), IntFormat(2, signed=False)),
                       ValueError, r"alpha holds NaN or inf"),
}


@pytest.mark.parametrize("call, exc, match", list(ISSUE20_BAD.values()), ids=list(ISSUE20_BAD))
def test_issue20_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
