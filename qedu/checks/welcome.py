"""Checks for the warm-up exercise of lesson 00."""
from __future__ import annotations

import numpy as np

import torch

from qedu.checks.framework import Case, CheckSpec, Failure, Mistake, localize, run_check

__all__ = ["snap_to_levels_reference", "check_snap_to_levels"]


def snap_to_levels_reference(x: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Each value of ``x`` replaced by its nearest level; a tie goes to the lower level."""
    levels = np.sort(np.asarray(levels, dtype=np.float64))
    x = np.asarray(x, dtype=np.float64)
    dist = np.abs(x[..., None] - levels)  # (..., n_levels)
    return levels[np.argmin(dist, axis=-1)]  # argmin picks the first (lower) level on a tie


def _round_down(x, levels):
    levels = np.sort(levels)
    idx = np.clip(np.searchsorted(levels, x, side="right") - 1, 0, len(levels) - 1)
    return levels[idx]


def _index_not_value(x, levels):
    levels = np.sort(levels)
    return np.argmin(np.abs(np.asarray(x)[..., None] - levels), axis=-1).astype(np.float64)


def _tie_up(x, levels):
    levels = np.sort(levels)[::-1]  # argmin now finds the upper level first
    return levels[np.argmin(np.abs(np.asarray(x)[..., None] - levels), axis=-1)]


def _unsorted(x, levels):
    levels = np.asarray(levels, dtype=np.float64)
    idx = np.clip(np.searchsorted(levels, x), 0, len(levels) - 1)
    return levels[idx]


_MISTAKES = [
    Mistake("rounded down instead of to the nearest level", _round_down,
            "compare the distance to the level below *and* the level above, keep the closer one."),
    Mistake("returned the level's index, not its value", _index_not_value,
            "np.argmin gives a position; look the value up with levels[...]"),
    Mistake("a tie went to the upper level", _tie_up,
            "when x is exactly halfway, the task asks for the lower level (np.argmin keeps the first minimum)."),
    Mistake("assumed the levels were already sorted", _unsorted,
            "sort the levels first (np.sort), the caller may pass them in any order."),
]


def _random_case(rng: np.random.Generator) -> Case:
    levels = rng.choice(np.arange(-8, 9) / 4, size=int(rng.integers(2, 7)), replace=False)
    x = rng.uniform(-3, 3, size=int(rng.integers(1, 12))).round(2)
    return Case((x, levels))


SPEC = CheckSpec(
    name="snap_to_levels",
    reference=snap_to_levels_reference,
    golden=[
        Case((np.array([0.2, 0.8, 1.7]), np.array([0.0, 1.0, 2.0])), label="three levels"),
        Case((np.array([0.5, 1.5]), np.array([0.0, 1.0, 2.0])), label="ties go down"),
        Case((np.array([-5.0, 9.0]), np.array([0.0, 1.0, 2.0])), label="outside the levels"),
        Case((np.array([0.3, 2.6]), np.array([3.0, 0.0, 1.0])), label="unsorted levels"),
        Case((np.array([0.5, 1.5, -0.25, 2.0]), np.array([2.0, 1.0, -0.5, 0.0])), label="unsorted levels, ties go down"),
        Case((np.array([-1.0, 0.0, 1.0]), np.array([-1.0, 1.0])), label="exactly on the levels, and a tie at 0"),
    ],
    random_case=_random_case,
    mistakes=_MISTAKES,
    hints=("for each x, compute |x - level| for every level and keep the level with the smallest distance.",),
    describe=lambda f: _describe_snap(f),
)


def _snap_features(x, levels) -> dict:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    lv = np.sort(np.asarray(levels, dtype=np.float64))
    d = np.abs(x[:, None] - lv)
    two = np.sort(d, axis=1)[:, :2] if len(lv) > 1 else np.concatenate([d, d + 1], axis=1)
    return {
        "x is exactly halfway between two levels": torch.from_numpy(two[:, 0] == two[:, 1]),
        "x lies outside the levels (below the lowest or above the highest)": torch.from_numpy((x < lv[0]) | (x > lv[-1])),
        "x < 0": torch.from_numpy(x < 0),
    }


def _describe_snap(f: Failure) -> list[str]:
    notes = []

    def per_case(case, expected, actual):
        actual = np.asarray(actual, dtype=np.float64) if not isinstance(actual, np.ndarray) else actual
        if actual.shape != expected.shape:
            return None
        wrong = torch.from_numpy(np.asarray(actual, dtype=np.float64).reshape(-1) != expected.reshape(-1))
        return wrong, _snap_features(*case.args)

    wrong, features = f.pooled(per_case)
    where = localize(wrong, features) if wrong is not None else None
    if where:
        notes.append("wrong " + where)
    levels = f.case.args[1]
    if not bool(np.all(np.diff(levels) > 0)):
        ordered = Case((f.case.args[0].copy(), np.sort(levels)))
        if f.right_on(ordered):
            notes.append("right when the levels come sorted, wrong when they do not: sort them first (np.sort)")
    return notes


def check_snap_to_levels(fn):
    """Check ``fn(x, levels) -> array``: nearest level per value, ties to the lower level."""
    return run_check(SPEC, fn)
