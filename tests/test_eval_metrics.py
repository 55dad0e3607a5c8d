"""pass@k estimator on hand-computed cases."""

from math import comb

import pytest

from wmtp_jax.eval.metrics import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize("n, c, k", [(10, 3, 1), (10, 3, 5), (200, 17, 10), (5, 0, 2), (5, 5, 1), (20, 1, 20)])
def test_pass_at_k_equals_the_combinatorial_formula(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_hand_computed_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c / n
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 3, 2) == 1.0  # n - c < k: every 2-subset has a pass


def test_mean_and_bootstrap_interval():
    mean, (low, high) = mean_pass_at_k([10, 10, 10, 10], [0, 10, 5, 5], 1)
    assert mean == pytest.approx(0.5) and 0.0 <= low <= mean <= high <= 1.0
    same, (lo2, hi2) = mean_pass_at_k([4, 4], [2, 2], 1)
    assert same == lo2 == hi2 == pytest.approx(0.5)  # no spread between problems


def test_invalid_arguments():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 5)
    with pytest.raises(ValueError, match="no problems"):
        mean_pass_at_k([], [], 1)
