"""The machinery behind every exercise check.

A check compares a learner's function with qedu's reference on

1. **golden cases**: tiny hand-picked inputs whose answers a person can verify on paper, then
2. **random cases**: seeded inputs drawn by the check (same seed every run),

and stops at the first mismatch. It then runs each *classic mistake* (a deliberately wrong
implementation registered with the check) on the failing input: if the learner's answer equals
what a mistake gives, the message names that mistake and its hint. Otherwise it shows the input,
the expected and the actual value, and the generic hints.

Outcomes:

* passed: prints one line and returns a :class:`CheckResult` with ``passed=True``;
* the function still raises ``NotImplementedError``: prints "not implemented yet" and returns
  ``status="not implemented"`` (no exception, so "Run all" goes on);
* wrong answer, crash or wrong type/shape/dtype: raises :class:`CheckFailed` whose message says
  what was wrong, with expected vs actual and a hint.

>>> spec = CheckSpec(
...     name="double",
...     reference=lambda x: 2 * x,
...     golden=[Case((1,), label="one")],
...     random_case=lambda rng: Case((int(rng.integers(-9, 9)),)),
...     mistakes=[Mistake("squared instead of doubled", lambda x: x * x, "2*x, not x*x")],
... )
>>> run_check(spec, lambda x: x + x).passed
✅ double: all 1 golden and 20 random cases match.
True
>>> run_check(spec, lambda x: x * x)
Traceback (most recent call last):
...
qedu.checks.framework.CheckFailed: double: wrong answer on golden case 'one'...
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["Case", "Mistake", "CheckSpec", "CheckResult", "CheckFailed", "run_check", "compare"]


class CheckFailed(AssertionError):
    """Raised when a learner's function gives a wrong answer; the message says which and why."""


@dataclass
class Case:
    """One input to a function: positional ``args``, keyword ``kwargs`` and a readable label."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""

    def describe(self, limit: int = 300) -> str:
        parts = [_short(a) for a in self.args] + [f"{k}={_short(v)}" for k, v in self.kwargs.items()]
        text = ", ".join(parts)
        return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Mistake:
    """A classic wrong implementation, its name and the hint that fixes it."""

    name: str
    impl: Callable
    hint: str


@dataclass
class CheckSpec:
    """Everything a check needs.

    Args:
        name: shown in every message (usually the function the learner writes).
        reference: qedu's correct implementation.
        golden: hand-made cases, tried first.
        random_case: ``rng -> Case``; called ``n_random`` times with one seeded numpy Generator.
        mistakes: the classic mistakes this check must recognise.
        hints: general hints shown when no known mistake matches.
        n_random: number of random cases.
        seed: seed of the random cases.
        atol, rtol: tolerances for floating-point results (0 means exact).
        compare: optional ``(expected, actual) -> str | None`` replacing :func:`compare`.
    """

    name: str
    reference: Callable
    golden: Sequence[Case]
    random_case: Callable[[np.random.Generator], Case] | None = None
    mistakes: Sequence[Mistake] = ()
    hints: Sequence[str] = ()
    n_random: int = 20
    seed: int = 1234
    atol: float = 0.0
    rtol: float = 0.0
    compare: Callable[[Any, Any], str | None] | None = None


@dataclass
class CheckResult:
    """What a check found. ``status`` is "passed" or "not implemented"."""

    name: str
    status: str
    n_cases: int = 0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __repr__(self) -> str:
        return f"CheckResult({self.name!r}, {self.status!r}, n_cases={self.n_cases})"


def _short(value, limit: int = 120) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= 8:
            text = f"tensor({value.tolist()}, dtype={value.dtype})"
        else:
            text = f"tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    elif isinstance(value, np.ndarray):
        if value.size <= 8:
            text = f"array({value.tolist()}, dtype={value.dtype})"
        else:
            text = f"array(shape={value.shape}, dtype={value.dtype})"
    elif callable(value) and hasattr(value, "__name__"):
        text = value.__name__
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _copy_args(case: Case) -> Case:
    """Fresh copies so a function that mutates its input cannot spoil the next comparison."""

    def cp(v):
        if isinstance(v, torch.Tensor):
            return v.clone()
        if isinstance(v, np.ndarray):
            return v.copy()
        return v

    return Case(tuple(cp(a) for a in case.args), {k: cp(v) for k, v in case.kwargs.items()}, case.label)


def compare(expected, actual, atol: float = 0.0, rtol: float = 0.0, where: str = "result") -> str | None:
    """Return ``None`` if ``actual`` matches ``expected``, else a sentence saying how it differs.

    Tensors must match in type, shape and dtype; NaNs count as equal to NaNs. Tuples and lists
    are compared element by element.

    >>> compare(torch.tensor([1, 2]), torch.tensor([1, 3]))
    'result differs at 1 of 2 positions; first at index (1,): expected 2, got 3'
    """
    if isinstance(expected, (tuple, list)):
        if not isinstance(actual, (tuple, list)):
            return f"{where} should be a {type(expected).__name__} of {len(expected)} items, got {type(actual).__name__}"
        if len(actual) != len(expected):
            return f"{where} should have {len(expected)} items, got {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            msg = compare(e, a, atol, rtol, f"{where}[{i}]")
            if msg:
                return msg
        return None
    if isinstance(expected, (torch.Tensor, np.ndarray)):
        kind = type(expected)
        if not isinstance(actual, kind):
            return f"{where} should be a {kind.__module__.split('.')[0]}.{kind.__name__}, got {type(actual).__name__}"
        e = torch.as_tensor(expected)
        a = torch.as_tensor(actual)
        if tuple(a.shape) != tuple(e.shape):
            return f"{where} has shape {tuple(a.shape)}, expected {tuple(e.shape)}"
        if a.dtype != e.dtype:
            return f"{where} has dtype {a.dtype}, expected {e.dtype}"
        if e.numel() == 0:
            return None
        if e.is_floating_point():
            e64, a64 = e.double(), a.double()
            both_nan = torch.isnan(e64) & torch.isnan(a64)
            close = (e64 == a64) | both_nan
            if atol or rtol:
                close |= (a64 - e64).abs() <= atol + rtol * e64.abs()
        else:
            close = e == a
        if bool(close.all()):
            return None
        bad = (~close).nonzero()
        idx = tuple(int(i) for i in bad[0])
        n_bad = int(bad.shape[0])
        ev, av = e[idx].item() if e.ndim else e.item(), a[idx].item() if a.ndim else a.item()
        return f"{where} differs at {n_bad} of {e.numel()} positions; first at index {idx}: expected {ev!r}, got {av!r}"
    if isinstance(expected, (float, np.floating)) and not isinstance(expected, bool):
        if not isinstance(actual, (int, float, np.integer, np.floating)) or isinstance(actual, bool):
            return f"{where} should be a number, got {type(actual).__name__} {actual!r}"
        if np.isnan(expected) and np.isnan(actual):
            return None
        if abs(float(actual) - float(expected)) <= atol + rtol * abs(float(expected)):
            return None
        return f"{where}: expected {expected!r}, got {actual!r}"
    if isinstance(expected, (int, np.integer)) and not isinstance(expected, bool):
        if not isinstance(actual, (int, np.integer)) or isinstance(actual, bool):
            return f"{where} should be an int, got {type(actual).__name__} {actual!r}"
    if isinstance(expected, bool) and not isinstance(actual, (bool, np.bool_)):
        return f"{where} should be True or False, got {type(actual).__name__} {actual!r}"
    if expected != actual:
        return f"{where}: expected {expected!r}, got {actual!r}"
    return None


def _same(spec: CheckSpec, expected, actual) -> str | None:
    if spec.compare is not None:
        return spec.compare(expected, actual)
    return compare(expected, actual, spec.atol, spec.rtol)


def _iter_cases(spec: CheckSpec):
    for i, case in enumerate(spec.golden):
        yield (f"golden case {case.label!r}" if case.label else f"golden case {i + 1}"), case
    if spec.random_case is not None:
        rng = np.random.default_rng(spec.seed)
        for i in range(spec.n_random):
            case = spec.random_case(rng)
            yield f"random case {i + 1} (seed {spec.seed})", case


def _diagnose(spec: CheckSpec, case: Case, actual) -> Mistake | None:
    """The first registered mistake whose output equals the learner's on this case."""
    for mistake in spec.mistakes:
        try:
            wrong = mistake.impl(*_copy_args(case).args, **_copy_args(case).kwargs)
        except Exception:
            continue
        if _same(spec, wrong, actual) is None:
            return mistake
    return None


def run_check(spec: CheckSpec, fn: Callable, *, quiet: bool = False) -> CheckResult:
    """Check ``fn`` against ``spec``; see the module docstring for the outcomes."""
    if not callable(fn):
        raise TypeError(f"check_{spec.name} needs the function itself, got {type(fn).__name__} {fn!r}; pass it without ().")
    n = 0
    for where, case in _iter_cases(spec):
        expected = spec.reference(*_copy_args(case).args, **_copy_args(case).kwargs)
        try:
            actual = fn(*_copy_args(case).args, **_copy_args(case).kwargs)
        except NotImplementedError:
            print(f"⏳ {spec.name}: not implemented yet - replace `raise NotImplementedError` with your code, then run this check again.")
            return CheckResult(spec.name, "not implemented", n)
        except Exception as err:  # the learner's code crashed: show where, briefly
            tb = traceback.format_exception(type(err), err, err.__traceback__)
            raise CheckFailed(
                f"{spec.name}: your function raised {type(err).__name__}: {err}\n"
                f"  on {where}: {spec.name}({case.describe()})\n"
                f"  last lines of the traceback:\n    " + "    ".join(tb[-2:])
            ) from None
        problem = _same(spec, expected, actual)
        if problem:
            lines = [
                f"{spec.name}: wrong answer on {where}",
                f"  input:    {spec.name}({case.describe()})",
                f"  problem:  {problem}",
                f"  expected: {_short(expected, 400)}",
                f"  got:      {_short(actual, 400)}",
            ]
            mistake = _diagnose(spec, case, actual)
            if mistake is not None:
                lines.append(f"  likely mistake: {mistake.name}. Hint: {mistake.hint}")
            elif spec.hints:
                lines.append("  hints: " + " | ".join(spec.hints))
            raise CheckFailed("\n".join(lines))
        n += 1
    n_golden = len(spec.golden)
    if not quiet:
        print(f"✅ {spec.name}: all {n_golden} golden and {n - n_golden} random cases match.")
    return CheckResult(spec.name, "passed", n)
