"""The machinery behind every exercise check.

A check compares a learner's function with qedu's reference on

1. **golden cases**: tiny hand-picked inputs whose answers a person can verify on paper, then
2. **random cases**: seeded inputs drawn by the check (same seed every run),

and stops at the first mismatch. Every call also checks two properties: the function must not
change its inputs, and (where the spec asks) its result must be detached from the autograd graph.
A spec whose inputs hold a ``torch.Generator`` also gets "same seed, same result" checks.

After a mismatch the check *diagnoses* it with small differential probes, never by a guess from
one output:

* a registered classic :class:`Mistake` is named only when it reproduces the learner's output on
  the failing case **and** on other cases where it differs from the reference (a second probe);
* otherwise the spec's ``describe`` probes say what differs, measured from the learner's own
  answers ("off by one code only at exact ties", "wrong only for negative inputs",
  "right values, but float64", ...), and the generic hints follow.

Outcomes:

* passed: prints one line and returns a :class:`CheckResult` with ``passed=True`` (it displays
  nothing in a notebook, so no ``Out[]`` line follows the check);
* the function still raises ``NotImplementedError``: prints "not implemented yet" and returns
  ``status="not implemented"`` (no exception, so "Run all" goes on);
* wrong answer, crash, changed input or wrong type/shape/dtype: raises :class:`CheckFailed`.
  In IPython and Jupyter only its message is shown (no framework traceback), but it is still an
  exception, so nbval and autograders see the failure.

>>> spec = CheckSpec(
...     name="double",
...     reference=lambda x: 2 * x,
...     golden=[Case((1,), label="one"), Case((3,), label="three")],
...     random_case=lambda rng: Case((int(rng.integers(-9, 9)),)),
...     mistakes=[Mistake("squared instead of doubled", lambda x: x * x, "2*x, not x*x")],
... )
>>> run_check(spec, lambda x: x + x).passed
✓ double: all 2 golden and 20 random cases match.
True
>>> run_check(spec, lambda x: x * x)
Traceback (most recent call last):
...
qedu.checks.framework.CheckFailed: ✗ double: wrong answer on golden case 'one'...
"""
from __future__ import annotations

import copy
import inspect
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["Case", "Mistake", "CheckSpec", "CheckResult", "CheckFailed", "Failure", "run_check", "compare",
           "localize", "PASS", "TODO", "FAIL"]

# Plain symbols present in every common font (no emoji font needed).
PASS, TODO, FAIL = "✓", "○", "✗"

# A describe probe that crashes says nothing (the failure itself still shows); tests set this to
# True so that a broken probe cannot hide.
RAISE_PROBE_ERRORS = False


class CheckFailed(AssertionError):
    """Raised when a learner's function gives a wrong answer; the message says which and why.

    IPython shows an exception through ``_render_traceback_`` when it has one: here that is just
    the message (first line in bold red), without the frames of this module.
    """

    def _render_traceback_(self) -> list[str]:
        lines = str(self).splitlines() or [""]
        return ["\x1b[1;31m" + lines[0] + "\x1b[0m", *lines[1:]]


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
        mistakes: the classic mistakes this check can name (each only after a second probe agrees).
        hints: general hints shown when no mistake is confirmed (consistent with the task text).
        n_random: number of random cases.
        seed: seed of the random cases.
        atol, rtol: tolerances for floating-point results (0 means exact).
        compare: optional ``(expected, actual) -> str | None`` replacing :func:`compare`.
        describe: optional ``Failure -> list[str]``: differential probes run after a mismatch that
            say, in words a learner can act on, what differs.
        probes: extra cases used only while diagnosing (to confirm or rule out a mistake).
        detached: the result must not require grad.
        cache: remember the reference's and the mistakes' answers on the golden cases and probes
            (for slow checks; those cases are fixed objects, so their answers never change).
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
    describe: Callable[["Failure"], list] | None = None
    probes: Sequence[Case] = ()
    detached: bool = False
    cache: bool = False
    _memo: dict = field(default_factory=dict, repr=False, compare=False)


def _fixed(spec: CheckSpec, case: Case) -> bool:
    return any(case is c for c in spec.golden) or any(case is c for c in spec.probes)


def _reference(spec: CheckSpec, case: Case):
    """The reference's answer on a copy of ``case`` (remembered for fixed cases of a cached spec)."""
    return _memoized(spec, spec.reference, case)


def _memoized(spec: CheckSpec, fn: Callable, case: Case, safe: bool = False):
    call = (lambda: _safe(fn, case)) if safe else (lambda: fn(*_copy_args(case).args, **_copy_args(case).kwargs))
    if not (spec.cache and _fixed(spec, case)):
        return call()
    key = (id(fn), id(case))
    if key not in spec._memo:
        spec._memo[key] = call()
    return spec._memo[key]


@dataclass
class CheckResult:
    """What a check found. ``status`` is "passed" or "not implemented".

    It displays nothing in IPython (the check already printed its line), so a check cell shows no
    ``Out[]`` echo.
    """

    name: str
    status: str
    n_cases: int = 0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def _ipython_display_(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"CheckResult({self.name!r}, {self.status!r}, n_cases={self.n_cases})"


# --- values: short descriptions, copies, snapshots -----------------------------------------------

def _short(value, limit: int = 120) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= 8:
            text = f"tensor({value.detach().tolist()}, dtype={value.dtype})"
        else:
            text = f"tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    elif isinstance(value, np.ndarray):
        if value.size <= 8:
            text = f"array({value.tolist()}, dtype={value.dtype})"
        else:
            text = f"array(shape={value.shape}, dtype={value.dtype})"
    elif isinstance(value, torch.Generator):
        text = "torch.Generator(seeded)"
    elif isinstance(value, torch.nn.Module):
        text = type(value).__name__ + "(...)"
    elif isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
        text = "[" + ", ".join(_short(v, 60) for v in value) + "]"
    elif callable(value) and hasattr(value, "__name__"):
        text = value.__name__
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _copy(v):
    """A fresh copy, so a function that mutates its input cannot spoil the next comparison."""
    if isinstance(v, torch.Tensor):
        return v.detach().clone().requires_grad_(v.requires_grad)
    if isinstance(v, np.ndarray):
        return v.copy()
    if isinstance(v, torch.Generator):
        g = torch.Generator(device=v.device)
        g.set_state(v.get_state())
        return g
    if isinstance(v, torch.nn.Module):
        return copy.deepcopy(v)
    if isinstance(v, list):
        return [_copy(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_copy(x) for x in v)
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    return v


def _copy_args(case: Case) -> Case:
    return Case(_copy(case.args), _copy(case.kwargs), case.label)


def _changed(before, after) -> str | None:
    """How ``after`` differs from its pristine copy ``before`` (``None`` if it does not)."""
    if isinstance(before, torch.Tensor):
        if not isinstance(after, torch.Tensor) or after.shape != before.shape or after.dtype != before.dtype:
            return "was replaced or reshaped in place"
        if after.requires_grad != before.requires_grad:
            return "now requires grad (requires_grad_ on the caller's tensor; use x.clone().requires_grad_(True))"
        if not bool(((after.detach() == before) | (after.detach().isnan() & before.isnan())).all()
                    if before.is_floating_point() else (after.detach() == before).all()):
            return "had its values changed in place"
        return None
    if isinstance(before, np.ndarray):
        return None if np.array_equal(before, after, equal_nan=before.dtype.kind == "f") else "had its values changed in place"
    if isinstance(before, torch.nn.Module):
        if before.training != after.training:
            return f"was switched to {'train' if after.training else 'eval'} mode"
        a, b = after.state_dict(), before.state_dict()
        if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in b):
            return "had its parameters changed"
        return None
    if isinstance(before, (list, tuple)):
        if not isinstance(after, (list, tuple)) or len(after) != len(before):
            return "had items added or removed"
        for x, y in zip(before, after):
            problem = _changed(x, y)
            if problem:
                return problem
    return None


def _copy_advice(value, name: str) -> str:
    if isinstance(value, torch.nn.Module):
        return f"Leave it as it is: work on copy.deepcopy({name}), and do not switch its mode or change its weights."
    if isinstance(value, (list, tuple)):
        return "Leave it and its tensors as they are: build new ones (no .append, no in-place ops like += or .clamp_())."
    return (f"Work on a copy ({name} = {name}.clone(), or .copy() for numpy) or use out-of-place operations "
            "(x = x * s instead of x *= s, torch.clamp(x, ...) instead of x.clamp_(...)).")


def _mutation(fn: Callable, pristine: Case, used: Case) -> str | None:
    """A sentence naming the input that ``fn`` changed, or ``None``."""
    try:
        names = [p.name for p in inspect.signature(fn).parameters.values()]
    except (TypeError, ValueError):
        names = []
    for i, (b, a) in enumerate(zip(pristine.args, used.args)):
        problem = _changed(b, a)
        if problem:
            name = names[i] if i < len(names) else f"argument {i + 1}"
            return f"your function changed its input `{name}`: it {problem}. {_copy_advice(b, name)}"
    for k, b in pristine.kwargs.items():
        problem = _changed(b, used.kwargs.get(k))
        if problem:
            return f"your function changed its input `{k}`: it {problem}. {_copy_advice(b, k)}"
    return None


# --- comparing results ------------------------------------------------------------------------------

def _dtype_word(dtype) -> str:
    return str(dtype).replace("torch.", "")


def compare(expected, actual, atol: float = 0.0, rtol: float = 0.0, where: str = "result") -> str | None:
    """Return ``None`` if ``actual`` matches ``expected``, else a sentence saying how it differs.

    Tensors must match in type, shape and dtype (a value-correct answer of the wrong dtype or
    container is told "right values, but ..."); NaNs count as equal to NaNs. Tuples and lists are
    compared element by element.

    >>> compare(torch.tensor([1, 2]), torch.tensor([1, 3]))
    'result differs at 1 of 2 positions; first at index (1,): expected 2, got 3'
    >>> compare(torch.tensor([0.5]), torch.tensor([0.5], dtype=torch.float64))
    'result: right values, but dtype float64; expected float32'
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
            wanted = f"{kind.__module__.split('.')[0]}.{kind.__name__}"
            if isinstance(actual, (torch.Tensor, np.ndarray)):
                other = torch.as_tensor(actual) if isinstance(actual, np.ndarray) else actual.detach().numpy()
                same = compare(expected, other, atol, rtol, where) is None
                if same:
                    return f"{where}: right values, but a {type(actual).__module__.split('.')[0]}.{type(actual).__name__}; return a {wanted}"
            return f"{where} should be a {wanted}, got {type(actual).__name__}"
        e = torch.as_tensor(expected)
        a = torch.as_tensor(actual).detach()
        if tuple(a.shape) != tuple(e.shape):
            if a.numel() == e.numel() and compare(e, a.reshape(e.shape), atol, rtol) is None:
                return f"{where}: right values, but shape {tuple(a.shape)}; expected {tuple(e.shape)}"
            return f"{where} has shape {tuple(a.shape)}, expected {tuple(e.shape)}"
        if a.dtype != e.dtype:
            try:
                cast = a.to(e.dtype)
                same = compare(e, cast, atol, rtol) is None
                if same and not e.is_floating_point():  # 2.5 -> 2 is not "the right value"
                    same = bool((cast.to(a.dtype) == a).all())
            except (RuntimeError, TypeError):
                same = False
            if same:
                return f"{where}: right values, but dtype {_dtype_word(a.dtype)}; expected {_dtype_word(e.dtype)}"
            return f"{where} has dtype {_dtype_word(a.dtype)}, expected {_dtype_word(e.dtype)}"
        if e.numel() == 0:
            return None
        close = _close(e, a, atol, rtol)
        if bool(close.all()):
            return None
        bad = (~close).nonzero()
        idx = tuple(int(i) for i in bad[0])
        n_bad = int(bad.shape[0])
        ev, av = e[idx].item() if e.ndim else e.item(), a[idx].item() if a.ndim else a.item()
        return f"{where} differs at {n_bad} of {e.numel()} positions; first at index {idx}: expected {ev!r}, got {av!r}"
    if isinstance(expected, (float, np.floating)) and not isinstance(expected, bool):
        if isinstance(actual, torch.Tensor) and actual.numel() == 1 and actual.is_floating_point():
            actual = actual.item()  # a 0-d float tensor is a number
        if not isinstance(actual, (int, float, np.integer, np.floating)) or isinstance(actual, bool):
            return f"{where} should be a number, got {type(actual).__name__} {_short(actual)}"
        if np.isnan(expected) and np.isnan(actual):
            return None
        if float(actual) == float(expected):  # also inf == inf
            return None
        # an infinite expected value is matched only by itself (rtol * inf would accept anything)
        if np.isfinite(expected) and abs(float(actual) - float(expected)) <= atol + rtol * abs(float(expected)):
            return None
        return f"{where}: expected {expected!r}, got {actual!r}"
    if isinstance(expected, (int, np.integer)) and not isinstance(expected, bool):
        if not isinstance(actual, (int, np.integer)) or isinstance(actual, bool):
            if isinstance(actual, (float, np.floating)) and float(actual) == float(expected):
                return f"{where}: right value, but a {type(actual).__name__} ({actual!r}); return an int"
            return f"{where} should be an int, got {type(actual).__name__} {_short(actual)}"
    if isinstance(expected, bool) and not isinstance(actual, (bool, np.bool_)):
        return f"{where} should be True or False, got {type(actual).__name__} {_short(actual)}"
    if expected != actual:
        return f"{where}: expected {expected!r}, got {actual!r}"
    return None


def _close(e: torch.Tensor, a: torch.Tensor, atol: float = 0.0, rtol: float = 0.0) -> torch.Tensor:
    """Elementwise 'equal within tolerance' (NaN equals NaN) of two same-shaped tensors."""
    if e.is_floating_point() or a.is_floating_point():
        e64, a64 = e.double(), a.double()
        close = (e64 == a64) | (torch.isnan(e64) & torch.isnan(a64))
        if atol or rtol:
            # only finite expected values get a tolerance: rtol * inf would accept any answer
            close |= torch.isfinite(e64) & ((a64 - e64).abs() <= atol + rtol * e64.abs())
        return close
    return e == a


def localize(wrong: torch.Tensor, features: dict) -> str | None:
    """Where the wrong positions are, if one feature explains them all.

    ``wrong`` is a boolean mask of the positions that differ; ``features`` maps a phrase ("x < 0")
    to a boolean mask of the same shape. Returns "only where <phrase>" for the feature that holds at
    every wrong position but not everywhere (so the other positions are all right), the tightest
    such feature if several do, or
    "at every position" when nothing is right. ``None`` if no feature explains them.

    >>> x = torch.tensor([-1.0, 2.0, -3.0])
    >>> localize(torch.tensor([True, False, True]), {"x < 0": x < 0})
    'only where x < 0 (every other position is right)'
    """
    wrong = wrong.reshape(-1)
    if not bool(wrong.any()):
        return None
    best = None
    for phrase, mask in features.items():
        mask = torch.as_tensor(mask).reshape(-1).to(torch.bool)
        if mask.shape != wrong.shape or bool(mask.all()):
            continue
        if bool((wrong <= mask).all()) and (best is None or int(mask.sum()) < best[1]):
            best = phrase, int(mask.sum())  # the tightest explanation wins
    if best is not None:
        return f"only where {best[0]} (every other position is right)"
    if bool(wrong.all()) and wrong.numel() > 1:
        return "at every position"
    return None


# --- running a learner's function -------------------------------------------------------------------

_CRASH = object()


def _call(fn: Callable, case: Case):
    """Run ``fn`` on copies of the case; return ``(result, mutation message or None)``."""
    pristine, used = _copy_args(case), _copy_args(case)
    result = fn(*used.args, **used.kwargs)
    return result, _mutation(fn, pristine, used)


def _safe(fn: Callable, case: Case):
    try:
        return fn(*_copy_args(case).args, **_copy_args(case).kwargs)
    except Exception:
        return _CRASH


@dataclass
class Failure:
    """A mismatch, and the tools a ``describe`` probe needs to explain it.

    ``learner(case)`` and ``reference(case)`` run the two functions on copies of any case (the
    learner's result is ``None`` if it crashes), so a probe can vary one input and watch what the
    answer does.
    """

    spec: CheckSpec
    fn: Callable
    case: Case
    where: str
    expected: Any
    actual: Any
    problem: str

    def learner(self, case: Case):
        out = _safe(self.fn, case)
        return None if out is _CRASH else out

    def reference(self, case: Case):
        return _reference(self.spec, case)

    def same(self, expected, actual) -> bool:
        return actual is not None and _same(self.spec, expected, actual) is None

    def right_on(self, case: Case) -> bool:
        """Whether the learner's function gives the reference's answer on ``case`` (a probe:
        "right when the zero point is 0", "right for 8 bits"...)."""
        return self.same(self.reference(case), self.learner(case))

    def with_args(self, **changes) -> Case:
        """The failing case with some arguments replaced, by the reference's parameter names."""
        names = list(inspect.signature(self.spec.reference).parameters)
        args = list(self.case.args)
        kwargs = dict(self.case.kwargs)
        for k, v in changes.items():
            if k in names and names.index(k) < len(args):
                args[names.index(k)] = v
            else:
                kwargs[k] = v
        return Case(tuple(args), kwargs, self.case.label)

    def pooled(self, per_case: Callable, n_cases: int = 16):
        """Wrong-position mask and feature masks pooled over the failing case, the golden cases
        and the probes: ``per_case(case, expected, actual) -> (wrong, {phrase: mask}) | None``.

        One case rarely separates two explanations (a lone value is both negative and a tie);
        many cases together do. Returns ``(wrong, features)`` flattened, or ``(None, {})``.
        """
        cases = [self.case, *self.spec.probes, *[c for _, c in _iter_cases(self.spec) if c is not self.case]]
        wrongs, feats = [], {}
        for i, case in enumerate(cases[:n_cases]):
            expected = self.expected if i == 0 else self.reference(case)
            actual = self.actual if i == 0 else self.learner(case)
            if actual is None:
                continue
            try:
                got = per_case(case, expected, actual)
            except Exception:
                if RAISE_PROBE_ERRORS:
                    raise
                got = None
            if got is None:
                continue
            wrong, features = got
            wrongs.append(wrong.reshape(-1))
            for k, m in features.items():
                feats.setdefault(k, []).append(torch.as_tensor(m).reshape(-1).to(torch.bool))
        if not wrongs:
            return None, {}
        n = len(wrongs)
        return torch.cat(wrongs), {k: torch.cat(v) for k, v in feats.items() if len(v) == n}

    def arg(self, name: str):
        names = list(inspect.signature(self.spec.reference).parameters)
        i = names.index(name)
        return self.case.args[i] if i < len(self.case.args) else self.case.kwargs.get(name)


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


def _probe_cases(spec: CheckSpec, skip: str, n_random: int = 6):
    """Cases for confirming a mistake: the probes, the golden cases, then a few random ones."""
    for i, case in enumerate(spec.probes):
        yield f"probe {case.label or i + 1!r}", case
    for where, case in _iter_cases(spec):
        if where == skip:
            continue
        if where.startswith("random") and int(where.split()[2]) > n_random:
            break
        yield where, case


def _confirmed_mistake(spec: CheckSpec, fn: Callable, case: Case, actual, where: str) -> tuple[Mistake, str] | None:
    """The first mistake that reproduces ``actual`` on ``case`` AND the learner's output on one or
    two more cases where the mistake differs from the reference."""
    learner_cache: dict[int, Any] = {}
    for mistake in spec.mistakes:
        wrong = _memoized(spec, mistake.impl, case, safe=True)
        if wrong is _CRASH or _same(spec, wrong, actual) is not None:
            continue
        confirmed: list[str] = []
        for other, probe in _probe_cases(spec, where):
            wrong_p = _memoized(spec, mistake.impl, probe, safe=True)
            if wrong_p is _CRASH:
                continue
            ref_p = _reference(spec, probe)
            if _same(spec, ref_p, wrong_p) is None:
                continue  # the mistake is right here: no evidence either way
            if other not in learner_cache:
                learner_cache[other] = _safe(fn, probe)
            mine = learner_cache[other]
            if mine is _CRASH or _same(spec, wrong_p, mine) is not None:
                confirmed = []
                break
            confirmed.append(other)
            if len(confirmed) == 2:
                break
        if confirmed:
            return mistake, confirmed[0]
    return None


def _diagnosis_lines(failure: Failure) -> list[str]:
    spec = failure.spec
    found = _confirmed_mistake(spec, failure.fn, failure.case, failure.actual, failure.where)
    if found is not None:
        mistake, other = found
        return [f"  mistake:  {mistake.name} (it gives exactly your answers, here and on {other})",
                f"  fix:      {mistake.hint}"]
    if "right value" in failure.problem:  # only the type, dtype or shape is off: the problem line says how
        return []
    lines = []
    if spec.describe is not None:
        try:
            notes = [n for n in spec.describe(failure) if n]
        except Exception:  # a probe that cannot run says nothing rather than hiding the failure
            if RAISE_PROBE_ERRORS:
                raise
            notes = []
        lines += [f"  what differs: {n}" for n in notes]
    lines += [f"  hint:     {h}" for h in spec.hints]
    return lines


def _fail(lines: Sequence[str]) -> CheckFailed:
    return CheckFailed("\n".join(lines))


class _GlobalRNG:
    """Restore torch's and numpy's global random state after a check: a learner's function that
    draws from the global generator must not change the notebook's other random numbers."""

    def __enter__(self):
        self.torch_state = torch.get_rng_state()
        self.np_state = np.random.get_state()

    def __exit__(self, *exc):
        torch.set_rng_state(self.torch_state)
        np.random.set_state(self.np_state)
        return False


def _generators(case: Case) -> list[int]:
    return [i for i, a in enumerate(case.args) if isinstance(a, torch.Generator)]


def _check_seeding(spec: CheckSpec, fn: Callable, case: Case, where: str) -> None:
    """Same seed -> same result; another seed -> another result (the generator is really used)."""
    (i,) = _generators(case)[:1]
    first, _ = _call(fn, case)
    second, _ = _call(fn, case)
    if compare(first, second) is not None:
        raise _fail([f"{FAIL} {spec.name}: same seed, different results on {where}",
                     f"  input:    {spec.name}({case.describe()})",
                     "  problem:  two calls with generators seeded alike gave different answers: your random numbers "
                     "do not come (only) from `generator`.",
                     "  fix:      draw them with generator=generator, e.g. torch.rand(v.shape, generator=generator); "
                     "torch.rand_like and np.random ignore it."])
    other = list(case.args)
    other[i] = torch.Generator().manual_seed(987_654_321)
    third, _ = _call(fn, Case(tuple(other), case.kwargs))
    if compare(first, third) is None:
        raise _fail([f"{FAIL} {spec.name}: different seeds, same results on {where}",
                     f"  input:    {spec.name}({case.describe()})",
                     "  problem:  generators with different seeds gave identical answers: your function ignores "
                     "`generator` (a fixed seed inside, or no randomness).",
                     "  fix:      draw the random numbers with generator=generator."])


def run_check(spec: CheckSpec, fn: Callable, *, quiet: bool = False) -> CheckResult:
    """Check ``fn`` against ``spec``; see the module docstring for the outcomes."""
    if not callable(fn):
        raise TypeError(f"check_{spec.name} needs the function itself, got {type(fn).__name__} {_short(fn)}; "
                        "pass it without ().")
    n = 0
    seeded = None
    with _GlobalRNG():
        for where, case in _iter_cases(spec):
            expected = _reference(spec, case)
            head = f"  input:    {spec.name}({case.describe()})"
            try:
                actual, mutated = _call(fn, case)
            except NotImplementedError:
                print(f"{TODO} {spec.name}: not implemented yet - replace `raise NotImplementedError` with your code, "
                      "then run this check again.")
                return CheckResult(spec.name, "not implemented", n)
            except CheckFailed:
                raise
            except Exception as err:  # the learner's code crashed: show where, briefly
                tb = traceback.format_exception(type(err), err, err.__traceback__)
                mine = [line for line in tb if "qedu/checks/" not in line and "qedu\\checks\\" not in line]
                raise _fail([f"{FAIL} {spec.name}: your function raised {type(err).__name__}: {err}",
                             f"  on {where}:", head,
                             "  last lines of the traceback:", *("    " + line.rstrip() for line in mine[-3:]),
                             *_runs_elsewhere(spec, fn, where)]) from None
            if mutated:
                raise _fail([f"{FAIL} {spec.name}: {mutated.split(':')[0]} on {where}", head,
                             f"  problem:  {mutated}"])
            problem = _same(spec, expected, actual)
            if problem:
                failure = Failure(spec, fn, case, where, expected, actual, problem)
                raise _fail([f"{FAIL} {spec.name}: wrong answer on {where}", head,
                             f"  expected: {_short(expected, 400)}",
                             f"  got:      {_short(actual, 400)}",
                             f"  problem:  {problem}", *_diagnosis_lines(failure)])
            if spec.detached and _requires_grad(actual):
                raise _fail([f"{FAIL} {spec.name}: right values, but the result still requires grad on {where}", head,
                             "  fix:      return a result detached from the graph (.detach() at the end)."])
            if seeded is None and _generators(case):
                seeded = (where, case)
            n += 1
        if seeded is not None:
            _check_seeding(spec, fn, seeded[1], seeded[0])
    n_golden = len(spec.golden)
    if not quiet:
        print(f"{PASS} {spec.name}: all {n_golden} golden and {n - n_golden} random cases match.")
    return CheckResult(spec.name, "passed", n)


def _runs_elsewhere(spec: CheckSpec, fn: Callable, failing: str) -> list[str]:
    """After a crash: the golden cases the function gets right, which tells what is special here."""
    right = []
    for where, case in _iter_cases(spec):
        if where.startswith("random"):
            break
        if where == failing:
            continue
        mine = _safe(fn, case)
        if mine is not _CRASH and _same(spec, _reference(spec, case), mine) is None:
            right.append(case.label or where)
    if not right:
        return []
    return ["  what differs: your function gives the right answer on " + ", ".join(repr(r) for r in right[:4])
            + f"{' and more' if len(right) > 4 else ''}; it fails only on inputs like this one"]


def _requires_grad(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, (tuple, list)):
        return any(_requires_grad(v) for v in value)
    return False
