"""qedu.stats: McNemar and the sign-flip test against scipy, the bootstrap against scipy's and
hand cases, ECE by hand, the random-flip null and the Pareto front on tiny cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qedu.stats import (
    bootstrap_delta, confidence_calibration, confidence_rank, mcnemar_test, pareto_front, sign_flip_test,
    worst_class_null,
)

import scipy.stats as scipy_stats  # the reference; always installed (scikit-learn, a core dependency, needs it)


def _pair(b: int, c: int, same_right: int = 5, same_wrong: int = 3):
    """Labels and two prediction vectors with exactly b (a right, b wrong) and c (a wrong, b right)."""
    n = b + c + same_right + same_wrong
    y = torch.zeros(n, dtype=torch.long)
    a = torch.cat([torch.zeros(b), torch.ones(c), torch.zeros(same_right), torch.ones(same_wrong)]).long()
    bb = torch.cat([torch.ones(b), torch.zeros(c), torch.zeros(same_right), torch.ones(same_wrong)]).long()
    return y, a, bb


# ----------------------------------------------------------------------------- McNemar
@pytest.mark.parametrize("b, c", [(0, 0), (1, 0), (6, 0), (3, 9), (10, 12), (25, 40), (200, 150)])
def test_mcnemar_exact_equals_scipys_binomial_test(b, c):
    r = mcnemar_test(*_pair(b, c))
    assert (r.b, r.c) == (b, c)
    expected = 1.0 if b + c == 0 else scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue
    assert r.p_value == pytest.approx(expected, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("b, c", [(3, 9), (10, 12), (25, 40), (200, 150)])
def test_mcnemar_chi_square_equals_scipys_chi2(b, c):
    r = mcnemar_test(*_pair(b, c), exact=False)
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    assert r.statistic == pytest.approx(stat)
    assert r.p_value == pytest.approx(scipy_stats.chi2.sf(stat, 1), rel=1e-10)


def test_mcnemar_hand_case_and_symmetry():
    y, a, b = _pair(6, 0)
    assert mcnemar_test(y, a, b).p_value == 2 / 64  # six fair coins all landing one way, two-sided
    assert mcnemar_test(y, b, a)[:2] == (0, 6)  # swapping the models swaps b and c, not the p-value
    assert mcnemar_test(y, b, a).p_value == mcnemar_test(y, a, b).p_value


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_identical_models_have_a_zero_width_interval():
    y, a, _ = _pair(4, 7)
    assert bootstrap_delta(y, a, a)[:3] == (0.0, 0.0, 0.0)


def test_bootstrap_delta_is_the_accuracy_change_and_the_interval_holds_it():
    y, a, b = _pair(4, 20, same_right=300, same_wrong=36)
    ci = bootstrap_delta(y, a, b, n_resamples=4000, seed=1)
    assert ci.delta == pytest.approx((20 - 4) / 360)
    assert ci.low < ci.delta < ci.high
    assert bootstrap_delta(y, a, b, n_resamples=4000, seed=1) == ci  # seeded: reproducible


def test_bootstrap_matches_scipys_percentile_bootstrap():
    y, a, b = _pair(4, 20, same_right=300, same_wrong=36)
    ci = bootstrap_delta(y, a, b, n_resamples=20000, seed=0)
    d = ((b == y).double() - (a == y).double()).numpy()
    ref = scipy_stats.bootstrap((d,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                                random_state=np.random.default_rng(0)).confidence_interval
    # different random draws; the resampled changes are multiples of 1/360, so the two intervals'
    # ends agree to one lattice step (one input) at most
    assert abs(ci.low - ref.low) <= 1 / 360 + 1e-12 and abs(ci.high - ref.high) <= 1 / 360 + 1e-12


def test_bootstrap_interval_narrows_with_more_data():
    small = bootstrap_delta(*_pair(1, 5, same_right=50, same_wrong=4))
    large = bootstrap_delta(*_pair(10, 50, same_right=500, same_wrong=40))
    assert small.delta == pytest.approx(large.delta)
    assert large.high - large.low < small.high - small.low


# ----------------------------------------------------------------------------- sign flips
@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0, 4.0, 5.0], [-6.9, -8.9, 0.0, -10.0, -0.8],
                                    [0.5, -0.2, 1.1, -0.4, 0.3, 0.9, -1.2], [2.0, 2.0, 2.0]])
def test_sign_flip_test_equals_scipys_exact_permutation_test(values):
    ref = scipy_stats.permutation_test((np.array(values),), np.mean, permutation_type="samples",
                                       n_resamples=10**6, alternative="two-sided").pvalue
    assert sign_flip_test(values) == pytest.approx(ref, rel=1e-12)


def test_five_seeds_cannot_reach_five_percent():
    assert sign_flip_test([-1.0, -2.0, -3.0, -4.0, -5.0]) == 0.0625  # 2 of 32 patterns
    assert sign_flip_test([-1.0] * 6) == 2 / 64


def test_sign_flip_monte_carlo_beyond_twenty_values():
    rng = np.random.default_rng(0)
    shifted = sign_flip_test(rng.normal(1.0, 1.0, 30), n_resamples=5000)
    centred = sign_flip_test(rng.normal(0.0, 1.0, 30), n_resamples=5000)
    assert shifted < 0.01 < centred
    assert 1 / 5001 <= shifted  # the observed pattern counts


# ----------------------------------------------------------------------------- the random-flip null
def test_worst_class_null_hand_case():
    y = torch.tensor([0, 0, 1, 1])
    # one flip of a correct float prediction always costs its class half of its accuracy
    null = worst_class_null(y, y.clone(), 1, n_trials=50, n_classes=2)
    assert torch.equal(null, torch.full((50,), -0.5, dtype=torch.float64))


def test_worst_class_null_is_worse_with_more_flips_and_reproducible():
    y = torch.arange(10).repeat(36)
    few = worst_class_null(y, y.clone(), 2, n_trials=300, seed=0)
    many = worst_class_null(y, y.clone(), 12, n_trials=300, seed=0)
    assert many.median() < few.median() < 0
    assert torch.equal(few, worst_class_null(y, y.clone(), 2, n_trials=300, seed=0))
    assert few.max() <= -1 / 36 + 1e-12  # two flips of correct predictions: some class always loses


# ----------------------------------------------------------------------------- calibration of confidence
def test_ece_hand_cases():
    y = torch.tensor([0, 0])
    r = confidence_calibration(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), y, n_bins=2)
    p = math.exp(2) / (1 + math.exp(2))
    assert r.ece == pytest.approx(abs(0.5 - p))
    assert r.counts.tolist() == [0.0, 2.0] and math.isnan(r.accuracy[0])
    certain_and_right = confidence_calibration(torch.tensor([[50.0, 0.0], [0.0, 50.0]]), torch.tensor([0, 1]))
    assert certain_and_right.ece == pytest.approx(0.0, abs=1e-12)


def test_ece_separates_bins():
    # two inputs 60 % sure (both right), two 90 % sure (both wrong): |1 - 0.6| and |0 - 0.9|, each half the inputs
    z = torch.log(torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1], [0.9, 0.1]]))
    r = confidence_calibration(z, torch.tensor([0, 0, 1, 1]), n_bins=10)
    assert r.ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.9)


def test_confidence_rank_orders_by_top_probability():
    z = torch.tensor([[0.0, 3.0], [0.0, 0.1], [1.0, 0.0], [0.0, 0.1]])
    assert confidence_rank(z).tolist() == [0.75, 0.0, 0.5, 0.0]  # ties share the lower rank


# ----------------------------------------------------------------------------- Pareto
def test_pareto_front_hand_case():
    points = [dict(accuracy=0.97, bytes=70_000, ms=0.3), dict(accuracy=0.97, bytes=18_000, ms=1.4),
              dict(accuracy=0.96, bytes=20_000, ms=2.0), dict(accuracy=0.97, bytes=22_000, ms=0.5)]
    assert pareto_front(points) == [True, True, False, True]
    assert pareto_front(points, minimize=("bytes",)) == [False, True, False, False]
    assert pareto_front([dict(accuracy=1, bytes=1, ms=1)] * 2) == [True, True]  # equal points dominate nothing


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, error, fragment", [
    (lambda: mcnemar_test(torch.tensor([0.0]), torch.tensor([0]), torch.tensor([0])), TypeError, "y must"),
    (lambda: mcnemar_test(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([0, 1])), ValueError, "lengths"),
    (lambda: mcnemar_test(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), exact=1), TypeError, "exact"),
    (lambda: bootstrap_delta(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), confidence=95), ValueError,
     "confidence"),
    (lambda: bootstrap_delta(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), n_resamples=10), ValueError,
     "n_resamples"),
    (lambda: sign_flip_test([]), ValueError, "diffs"),
    (lambda: worst_class_null(torch.tensor([0, 1]), torch.tensor([0, 1]), 3), ValueError, "n_flips"),
    (lambda: worst_class_null(torch.tensor([0, 12]), torch.tensor([0, 1]), 1), ValueError, "n_classes"),
    (lambda: confidence_calibration(torch.zeros(3), torch.tensor([0, 1, 0])), ValueError, "logits"),
    (lambda: confidence_calibration(torch.zeros(2, 2), torch.tensor([0, 1]), n_bins=0), ValueError, "n_bins"),
    (lambda: pareto_front([dict(accuracy=1)]), ValueError, "lacks"),
    (lambda: pareto_front([dict(accuracy=1)], minimize="bytes"), TypeError, "sequences"),
])
def test_bad_input_is_a_clear_error(call, error, fragment):
    with pytest.raises(error, match=fragment):
        call()
