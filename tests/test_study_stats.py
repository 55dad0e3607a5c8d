"""Paired statistics of the study report against hand-computed cases."""

import numpy as np
import pytest

from wmtp_jax.study.stats import Counts, compare, paired_bootstrap_ci, pool, sign_flip_p_value


def arm(passes, n=4):
    return {f"t{i}": Counts(n, c) for i, c in enumerate(passes)}


def test_identical_arms_differ_by_zero_with_p_one():
    a = arm([0, 1, 2, 4, 3])
    result = compare(a, a)
    assert result.difference == 0.0 and result.p_value == 1.0 and result.ci95 == (0.0, 0.0)
    assert result.n_problems == 5 and result.test == "exact"


def test_a_dominated_arm_gets_the_expected_sign_and_the_exact_p_value():
    better, worse = arm([4] * 10), arm([0] * 10)
    up, down = compare(better, worse), compare(worse, better)
    assert up.difference == 1.0 and down.difference == -1.0
    # only the all-plus and all-minus sign patterns are as extreme as the observed mean: 2 / 2^10
    assert up.p_value == pytest.approx(2 / 1024) and down.p_value == pytest.approx(2 / 1024)
    assert up.ci95 == (1.0, 1.0)


def test_sign_flip_hand_computed():
    # non-zero d = (1, 0.5, -0.5) over 4 problems, |mean| = 0.25; of the 8 sign patterns, |sum| / 4 is
    # 0.5, 0.25, 0.25, 0, 0.5, 0.25, 0.25, 0 -> 6 at least as extreme
    p, test, patterns = sign_flip_p_value(np.array([1.0, 0.0, 0.5, -0.5]))
    assert (p, test, patterns) == (0.75, "exact", 8)


def test_many_differences_use_monte_carlo_flips():
    d = np.full(40, 0.25)
    p, test, flips = sign_flip_p_value(d, flips=10_000, seed=1)
    assert test == "monte-carlo" and flips == 10_000
    assert p == pytest.approx(1 / 10_001)  # no random pattern reaches the all-plus mean
    with pytest.raises(ValueError, match="at least 10,000"):
        sign_flip_p_value(d, flips=100)


def test_pass_rates_pool_over_seeds_not_averaged_pass_at_k():
    pooled = pool([{"a": (2, 1), "b": (2, 0)}, {"a": (2, 2), "b": (6, 3)}])
    assert pooled == {"a": Counts(4, 3), "b": Counts(8, 3)}
    with pytest.raises(ValueError, match="different problems"):
        pool([{"a": (2, 1)}, {"b": (2, 1)}])


def test_bootstrap_interval_brackets_the_mean():
    d = np.random.RandomState(0).normal(0.1, 0.3, 200)
    lo, hi = paired_bootstrap_ci(d, resamples=2000)
    assert lo < d.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * d.std() / np.sqrt(200), rel=0.15)
    with pytest.raises(ValueError, match="at least 1000"):
        paired_bootstrap_ci(d, resamples=10)
