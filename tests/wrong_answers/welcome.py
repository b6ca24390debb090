"""Lesson 00: wrong and right answers for snap_to_levels."""
import numpy as np

from qedu import checks
from qedu.checks.welcome import SPEC
from tests.wrong_answers import AnswerSet

SNAP = AnswerSet("snap_to_levels", checks.check_snap_to_levels, SPEC, "00")


@SNAP.wrong("rounded down instead of to the nearest level")
def snap_floor(x, levels):
    levels = np.sort(levels)
    out = []
    for v in x:
        below = [lv for lv in levels if lv <= v]
        out.append(below[-1] if below else levels[0])
    return np.array(out)


@SNAP.wrong("returned the level's index, not its value")
def snap_index(x, levels):
    levels = np.sort(levels)
    return np.argmin(np.abs(x[:, None] - levels[None, :]), axis=1).astype(float)


@SNAP.wrong("a tie went to the upper level")
def snap_tie_up(x, levels):
    levels = np.sort(levels)[::-1]
    return levels[np.argmin(np.abs(x[:, None] - levels[None, :]), axis=1)]


@SNAP.wrong("assumed the levels were already sorted")
def snap_searchsorted(x, levels):
    idx = np.clip(np.searchsorted(levels, x), 0, len(levels) - 1)
    return levels[idx]


@SNAP.wrong("sort them first")
def snap_min_key_unsorted(x, levels):  # min() keeps the first level it meets: ties depend on the order given
    return np.array([min(levels, key=lambda lv: abs(v - lv)) for v in x])


@SNAP.wrong("a tie went to the upper level")
def snap_tie_le(x, levels):  # a loop that replaces the best on <=: ties go to the later (upper) level
    levels = sorted(levels)
    out = []
    for v in x:
        best = levels[0]
        for lv in levels:
            if abs(v - lv) <= abs(v - best):
                best = lv
        out.append(best)
    return np.array(out)


@SNAP.wrong("changed its input `x`")
def snap_in_place(x, levels):
    levels = np.sort(levels)
    idx = np.argmin(np.abs(x[:, None] - levels[None, :]), axis=1)
    x[:] = levels[idx]
    return x


@SNAP.wrong("should be a numpy.ndarray")
def snap_list(x, levels):
    levels = np.sort(levels)
    return [float(levels[np.argmin(np.abs(v - levels))]) for v in x]


@SNAP.wrong("outside the levels")
def snap_clip_inside(x, levels):  # forgets values beyond the ends: leaves them as they are
    levels = np.sort(levels)
    snapped = levels[np.argmin(np.abs(x[:, None] - levels[None, :]), axis=1)]
    return np.where((x < levels[0]) | (x > levels[-1]), x, snapped)


@SNAP.right
def snap_loop(x, levels):
    levels = sorted(levels)
    out = []
    for v in x:
        best = levels[0]
        for lv in levels[1:]:
            if abs(v - lv) < abs(v - best):
                best = lv
        out.append(best)
    return np.array(out, dtype=np.float64)


@SNAP.right
def snap_searchsorted_right(x, levels):
    levels = np.sort(np.asarray(levels, dtype=np.float64))
    hi = np.clip(np.searchsorted(levels, x), 1, len(levels) - 1) if len(levels) > 1 else np.zeros(len(x), int)
    lo = np.maximum(hi - 1, 0)
    return np.where(np.abs(x - levels[lo]) <= np.abs(levels[hi] - x), levels[lo], levels[hi])
