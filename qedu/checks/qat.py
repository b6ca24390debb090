"""Checks for the exercises of lesson 05 (quantization-aware training).

* :func:`check_round_ste`: ``fn(v) -> tensor``, round to nearest (ties to even) with the
  straight-through estimator;
* :func:`check_fake_quant_linear`: ``fn(x, weight, bias, scale, bits) -> y``, a Linear layer
  whose weight is fake-quantized (signed symmetric codes, one learnable step per output channel);
* :func:`check_lsq_grad_scale`: ``fn(n, bits, signed) -> g``, LSQ's ``1 / sqrt(n * Qp)``.

The first two are about gradients as much as values, so the check runs the learner's function
on inputs that require gradients, backpropagates a fixed upstream gradient and compares the
forward value *and* the gradients with qedu's reference (:mod:`qedu.qat`, :mod:`qedu.lsq`).
A gradient that never reaches an input shows up as ``None``, one that is there but zero as zeros,
so "detached" and "flat" are told apart and named.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from qedu.checks.framework import Case, CheckSpec, Failure, Mistake, _close, compare, localize, run_check
from qedu.checks.quantizers import factor
from qedu.formats import IntFormat
from qedu.lsq import lsq_grad_scale
from qedu.qat import RoundSTE, fake_quantize_ste

__all__ = ["check_round_ste", "check_fake_quant_linear", "check_lsq_grad_scale", "ROUND_STE", "FAKE_QUANT_LINEAR",
           "LSQ_GRAD_SCALE"]


def _graded(run):
    """Mark a function that already returns (value, gradients), so it is not wrapped twice."""
    run._qedu_graded = True
    return run


def _grad(t: torch.Tensor, y: torch.Tensor):
    """The gradient that reached ``t``: ``None`` if none can (y has no graph), zeros if it is flat."""
    if not y.requires_grad:
        return None
    return t.grad if t.grad is not None else torch.zeros_like(t)


# --- 1. round with the straight-through estimator ---------------------------------------------

def _round_ste_graded(fn):
    if getattr(fn, "_qedu_graded", False):
        return fn

    @_graded
    def run(v, *, upstream):
        v = v.clone().requires_grad_(True)
        y = fn(v)
        if not isinstance(y, torch.Tensor) or y.shape != v.shape:
            return y, None  # compare() reports the wrong type or shape
        if y.requires_grad:
            y.backward(upstream)
        return y.detach(), _grad(v, y)

    run.__name__ = getattr(fn, "__name__", "round_ste")
    return run


class _SaturatedSTE(torch.autograd.Function):
    """BinaryConnect's STE for sign(): gradient only where |v| <= 1. Wrong for round."""

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return torch.round(v)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * (v.abs() <= 1)


def _random_round_case(rng: np.random.Generator) -> Case:
    n = int(rng.integers(1, 12))
    v = torch.tensor(rng.normal(0, 3, size=n), dtype=torch.float32)
    return Case((v,), {"upstream": torch.tensor(rng.normal(0, 1, size=n), dtype=torch.float32)})


ROUND_STE = CheckSpec(
    name="round_ste",
    reference=_round_ste_graded(RoundSTE.apply),
    golden=[
        Case((torch.tensor([0.2, 0.7, -1.3, 3.8]),), {"upstream": torch.tensor([1.0, 2.0, 3.0, 4.0])},
             label="gradient passes straight through"),
        Case((torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]),), {"upstream": torch.ones(6)}, label="ties go to the even integer"),
    ],
    random_case=_random_round_case,
    mistakes=[
        Mistake("plain torch.round: its gradient is zero everywhere", _round_ste_graded(torch.round),
                "round is flat between its jumps, so autograd gives 0 (so does v + (torch.round(v) - v) without "
                ".detach()). Keep round's value, take v's gradient: v + (torch.round(v) - v).detach()."),
        Mistake("detached the result: no gradient reaches v at all", _round_ste_graded(lambda v: torch.round(v).detach()),
                "the result must stay connected to v; detach only the rounding error (torch.round(v) - v)."),
        Mistake("forgot to round: returned v", _round_ste_graded(lambda v: v * 1),
                "the forward pass must really round (that is what the deployed model computes)."),
        Mistake("rounded half away from zero (2.5 -> 3)",
                _round_ste_graded(lambda v: v + (torch.sign(v) * torch.floor(v.abs() + 0.5) - v).detach()),
                "use torch.round: ties go to the even integer (2.5 -> 2, 3.5 -> 4), as torch's quantizers do."),
        Mistake("floor instead of round", _round_ste_graded(lambda v: v + (torch.floor(v) - v).detach()),
                "floor always goes down (0.7 -> 0); round goes to the nearest integer."),
        Mistake("cancelled the gradient where |v| > 1 (the STE of sign(), not of round)", _round_ste_graded(_SaturatedSTE.apply),
                "BinaryConnect's STE zeroes the gradient outside [-1, 1] because sign() saturates there; round does "
                "not saturate, so its STE passes the gradient everywhere."),
    ],
    hints=("forward: torch.round(v); backward: the upstream gradient unchanged. One line: v + (torch.round(v) - v).detach()",),
    compare=lambda e, a: _labelled(e, a, ("round_ste(v)", "gradient of v")),
    describe=lambda f: _describe_graded(("value round_ste(v)", "gradient of v"))(f) + _round_value_notes(f),
    probes=[Case((torch.tensor([-3.5, 0.5, 4.5, 1.2, -0.7]),), {"upstream": torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0])},
                 label="ties -3.5, 0.5, 4.5")],
)


def _round_value_notes(f: Failure) -> list[str]:
    def per_case(case, expected, actual):
        (v,) = case.args
        a = actual[0] if isinstance(actual, tuple) else None
        if not isinstance(a, torch.Tensor) or a.shape != v.shape:
            return None
        frac = v - torch.floor(v)
        return ~_close(expected[0], a), {"v is an exact tie (k + 0.5)": frac == 0.5, "v < 0": v < 0, "v > 0": v > 0}

    wrong, features = f.pooled(per_case)
    where = localize(wrong, features) if wrong is not None else None
    return [f"the value is wrong {where}" + (": ties go to the even integer (torch.round)" if "tie" in where else "")] if where else []


def check_round_ste(fn):
    """Check ``fn(v) -> tensor``: ``torch.round`` forward, identity gradient."""
    return run_check(ROUND_STE, _round_ste_graded(fn))


# --- 2. a fake-quantized Linear layer ---------------------------------------------------------

def _fql_graded(fn):
    if getattr(fn, "_qedu_graded", False):
        return fn

    @_graded
    def run(x, weight, bias, scale, bits, *, upstream):
        weight = weight.clone().requires_grad_(True)
        scale = scale.clone().requires_grad_(True)
        y = fn(x, weight, bias, scale, bits)
        if not isinstance(y, torch.Tensor) or y.shape != upstream.shape:
            return y, None, None
        if y.requires_grad:
            y.backward(upstream)
        return y.detach(), _grad(weight, y), _grad(scale, y)

    run.__name__ = getattr(fn, "__name__", "fake_quant_linear")
    return run


def _fql_reference(x, weight, bias, scale, bits):
    return x @ fake_quantize_ste(weight, scale, 0, IntFormat(bits)).T + bias


def _fql_variant(*, divide=False, clip=True, round_first=False, rounding=RoundSTE.apply, detach="none",
                 dequantize=True, qmax_extra=0):
    """A fake-quantized Linear with one classic mistake switched on."""

    def fql(x, weight, bias, scale, bits):
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1 + qmax_extra
        s_in = scale.detach() if detach in ("all", "inside") else scale
        s_out = scale.detach() if detach == "all" else scale
        v = weight / s_in if divide else weight * (1.0 / s_in)
        if round_first:
            q = torch.clamp(rounding(v), qmin, qmax)
        else:
            q = rounding(torch.clamp(v, qmin, qmax) if clip else v)
        w_hat = q * s_out if dequantize else q
        return x @ w_hat.T + bias

    return fql


class _InvertedMaskSTE(torch.autograd.Function):
    """Clipped STE with its mask the wrong way round: gradient outside the range, none inside."""

    @staticmethod
    def forward(ctx, v, qmin, qmax):
        ctx.save_for_backward(v)
        ctx.bounds = (qmin, qmax)
        return torch.clamp(torch.round(v), qmin, qmax)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        return grad * ((v < qmin) | (v > qmax)), None, None


def _inverted_mask(x, weight, bias, scale, bits):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return x @ (_InvertedMaskSTE.apply(weight * (1.0 / scale), qmin, qmax) * scale).T + bias


def _describe_graded(names):
    """What differs in a (value, gradients...) result: which part, a missing or flat gradient, a factor."""

    def describe(f: Failure) -> list[str]:
        notes = []
        for e, a, name in zip(f.expected, f.actual, names):
            if a is None and e is not None:
                notes.append(f"no gradient reaches {name.split()[-1]}: the result was cut from it (.detach(), .item(), "
                             "float(), or a new tensor)")
            elif isinstance(a, torch.Tensor) and isinstance(e, torch.Tensor) and a.shape == e.shape:
                if compare(e, a, atol=1e-5, rtol=1e-5) is None:
                    continue
                if name.startswith("gradient") and bool((a == 0).all()) and bool((e != 0).any()):
                    notes.append(f"the {name} is zero everywhere: torch.round has zero gradient; use the STE")
                    continue
                nz = e.abs() > 1e-6
                if bool(nz.any()):
                    r = (a[nz] / e[nz]).double()
                    if bool(((r - r[0]).abs() <= 1e-4 * r[0].abs().clamp(min=1e-12)).all()):
                        notes.append(f"the {name} is {factor(float(r[0]))} x the expected everywhere")
                        continue
                notes.append(f"the {name} differs" + ("" if notes else " (the parts before it are right)"))
        return notes

    return describe


def _labelled(expected, actual, names, **tolerance) -> str | None:
    """compare() on each part of a graded result, naming the part that differs."""
    for e, a, name in zip(expected, actual, names):
        problem = compare(e, a, where=name, **tolerance)
        if problem:
            return problem
    return None


def _fql_random_case(rng: np.random.Generator) -> Case:
    n, c_in, c_out = (int(rng.integers(1, k)) for k in (5, 7, 5))
    bits = int(rng.choice([2, 3, 4, 8]))
    weight = rng.normal(0, 0.5, size=(c_out, c_in))
    qmax = 2 ** (bits - 1) - 1
    scale = np.abs(weight).max(axis=1, keepdims=True) / qmax * rng.uniform(0.5, 1.2, size=(c_out, 1)) + 1e-3
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return Case((f32(rng.normal(0, 1, size=(n, c_in))), f32(weight), f32(rng.normal(0, 0.1, size=c_out)), f32(scale), bits),
                {"upstream": f32(rng.normal(0, 1, size=(n, c_out)))})


_G_X = torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.0, 2.0]])
FAKE_QUANT_LINEAR = CheckSpec(
    name="fake_quant_linear",
    reference=_fql_graded(_fql_reference),
    golden=[
        Case((_G_X, torch.tensor([[0.3, -0.9, 0.9], [0.1, 0.05, -0.7]]), torch.tensor([0.1, -0.2]),
              torch.tensor([[0.5], [0.25]]), 2), {"upstream": torch.tensor([[1.0, 2.0], [-1.0, 0.5]])},
             label="2 bits, some weights clip"),
        Case((torch.tensor([[1.0, 2.0]]), torch.tensor([[-12.15, 3.0]]), torch.tensor([0.0]), torch.tensor([[0.1]]), 8),
             {"upstream": torch.tensor([[1.0]])}, label="8 bits, -12.15 / 0.1 is a near tie"),
        Case((_G_X[:1], torch.tensor([[3.3, -4.2, 3.6]]), torch.tensor([0.0]), torch.tensor([[1.0]]), 3),
             {"upstream": torch.tensor([[1.0]])}, label="3 bits, weights just outside [qmin, qmax]"),
    ],
    random_case=_fql_random_case,
    mistakes=[
        Mistake("detached the scale: it gets no gradient", _fql_graded(_fql_variant(detach="all")),
                "LSQ learns the step: keep scale in the graph (no .detach(), no .item(), no float(scale))."),
        Mistake("detached the scale inside round(): its gradient lost the -w/scale term",
                _fql_graded(_fql_variant(detach="inside")),
                "scale appears twice, in w * (1/scale) and in q * scale; both must stay in the graph."),
        Mistake("plain torch.round: no gradient reaches the weights", _fql_graded(_fql_variant(rounding=torch.round)),
                "use your round_ste from task 1, not torch.round."),
        Mistake("forgot to clip to [qmin, qmax]", _fql_graded(_fql_variant(clip=False)),
                "clamp the codes to [qmin, qmax] = [-2**(bits-1), 2**(bits-1) - 1] before rounding."),
        Mistake("rounded, then clipped: the gradient is decided by the rounded code",
                _fql_graded(_fql_variant(round_first=True)),
                "round(clamp(v)) and clamp(round(v)) have the same values but not the same gradients just outside "
                "the range; clamp first, as the LSQ paper does."),
        Mistake("inverted the clipping mask: gradient zero inside the range", _fql_graded(_inverted_mask),
                "the gradient passes for qmin <= v <= qmax and is zero outside, not the other way round."),
        Mistake("divided by scale instead of multiplying by 1/scale", _fql_graded(_fql_variant(divide=True)),
                "compute weight * (1 / scale), as torch's kernels and qedu do: near ties x / s and x * (1/s) round differently."),
        Mistake("forgot to multiply the codes by scale", _fql_graded(_fql_variant(dequantize=False)),
                "the layer uses w_hat = q * scale (real values), not the integer codes q."),
        Mistake("qmax = 2**(bits-1): one code too many", _fql_graded(_fql_variant(qmax_extra=1)),
                "signed b-bit codes run from -2**(b-1) to 2**(b-1) - 1."),
    ],
    hints=("v = weight * (1 / scale); q = round_ste(clamp(v, qmin, qmax)); y = x @ (q * scale).T + bias",),
    compare=lambda e, a: _labelled(e, a, ("y", "gradient of weight", "gradient of scale"), atol=1e-5, rtol=1e-5),
    describe=lambda f: _describe_graded(("value y", "gradient of weight", "gradient of scale"))(f) + _bias_note(f),
    probes=[Case((torch.tensor([[1.0, 2.0]]), torch.tensor([[0.7500000596046448, -0.7500000596046448]]), torch.tensor([0.0]),
                  torch.tensor([[0.3]]), 3), {"upstream": torch.tensor([[1.0]])},
                 label="3 bits, w = 0.75000006, scale 0.3: w / scale rounds to 2, w * (1/scale) to 3")],
)


def _bias_note(f: Failure) -> list[str]:
    bias = f.case.args[2]
    e, a = f.expected[0], f.actual[0]
    if isinstance(a, torch.Tensor) and a.shape == e.shape and bool((bias != 0).any()):
        if compare(e, a + bias, atol=1e-5, rtol=1e-5) is None:
            return ["y is off by exactly -bias: add the bias"]
        if compare(e, a - bias, atol=1e-5, rtol=1e-5) is None:
            return ["y has the bias twice"]
    return []


def check_fake_quant_linear(fn):
    """Check ``fn(x, weight, bias, scale, bits) -> y``: values, weight gradient and step gradient."""
    return run_check(FAKE_QUANT_LINEAR, _fql_graded(fn))


# --- 3. LSQ's gradient scale ------------------------------------------------------------------

def _g_reference(n, bits, signed):
    return lsq_grad_scale(n, IntFormat(bits, signed=signed))


def _qp(bits, signed):
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def _as_float(expected, actual) -> str | None:
    if isinstance(actual, torch.Tensor) and actual.numel() == 1:
        actual = actual.item()
    return compare(expected, actual, rtol=1e-6)  # float32 arithmetic is fine


LSQ_GRAD_SCALE = CheckSpec(
    name="lsq_grad_scale",
    reference=_g_reference,
    golden=[
        Case((64, 2, True), label="64 weights per channel, 2 bits (Qp = 1)"),
        Case((100, 4, False), label="100 features, 4-bit unsigned (Qp = 15)"),
        Case((128, 3, True), label="128 weights, 3 bits (Qp = 3)"),
    ],
    random_case=lambda rng: Case((int(rng.integers(1, 5000)), int(rng.integers(2, 9)), bool(rng.integers(0, 2)))),
    mistakes=[
        Mistake("g = 1/sqrt(N) without Qp", lambda n, bits, signed: 1 / math.sqrt(n),
                "the paper's g is 1 / sqrt(N * Qp): more levels mean smaller relative steps, so a smaller g."),
        Mistake("counted levels instead of the largest code (Qp = 2**(bits-1), or 2**bits unsigned)",
                lambda n, bits, signed: 1 / math.sqrt(n * (2 ** (bits - 1) if signed else 2**bits)),
                "Qp is the largest positive code, qmax: 2**(bits-1) - 1 for signed, 2**bits - 1 for unsigned."),
        Mistake("used the unsigned Qp (2**bits - 1) for signed codes", lambda n, bits, signed: 1 / math.sqrt(n * (2**bits - 1)),
                "signed b-bit codes stop at 2**(b-1) - 1: half the unsigned range."),
        Mistake("forgot the square root", lambda n, bits, signed: 1 / (n * _qp(bits, signed)),
                "g = 1 / sqrt(N * Qp)."),
        Mistake("g = sqrt(N * Qp), upside down", lambda n, bits, signed: math.sqrt(n * _qp(bits, signed)),
                "g shrinks the step's gradient (it is a sum over N values): 1 / sqrt(N * Qp) < 1."),
    ],
    hints=("Qp = 2**(bits-1) - 1 if signed else 2**bits - 1; g = 1 / math.sqrt(n * Qp)",),
    compare=_as_float,
    describe=lambda f: _describe_g(f),
)


def _describe_g(f: Failure) -> list[str]:
    n, bits, signed = f.case.args
    a = f.actual.item() if isinstance(f.actual, torch.Tensor) and f.actual.numel() == 1 else f.actual
    if not isinstance(a, (int, float)) or not a:
        return []
    notes = [f"yours is {factor(a / f.expected)} x the expected g"]
    for qp_name, qp in (("2**(bits-1) - 1", 2 ** (bits - 1) - 1), ("2**bits - 1", 2**bits - 1), ("2**(bits-1)", 2 ** (bits - 1)),
                        ("2**bits", 2**bits)):
        if abs(a - 1 / math.sqrt(n * qp)) < 1e-12 * (1 + a):
            notes.append(f"your g is 1 / sqrt(n * {qp_name}): Qp is 2**(bits-1) - 1 for signed codes, 2**bits - 1 for unsigned")
            break
    other = Case((n, bits, not signed))
    if f.right_on(other):
        notes.append(f"right for signed={not signed}, wrong for signed={signed}")
    return notes


def check_lsq_grad_scale(fn):
    """Check ``fn(n, bits, signed) -> g``: LSQ's gradient scale ``1 / sqrt(n * Qp)``."""
    return run_check(LSQ_GRAD_SCALE, fn)
