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


def test_critic_quality_against_hand_computed_cases():
    from wmtp_jax.eval import critic_quality as q

    # positives 0.9, 0.4, 0.4; negatives 0.4, 0.1: pairs (pos > neg) = 2 + 1.5 + 1.5 = 5 of 6 (ties count 1/2)
    values, labels = [0.9, 0.4, 0.4, 0.4, 0.1], [1, 1, 1, 0, 0]
    assert q.auroc(values, labels) == pytest.approx(5 / 6)
    assert q.auroc([0.2, 0.2, 0.2], [1, 0, 1]) == 0.5  # all tied: chance
    assert q.auroc([0.1, 0.9], [1, 0]) == 0.0
    with pytest.raises(ValueError, match="both classes; got 2 correct and 0 incorrect"):
        q.auroc([0.1, 0.2], [1, 1])
    # Brier of clip(V, 0, 1): V = 1.5 counts as 1, V = -1 as 0
    assert q.brier([1.5, -1.0, 0.5], [1, 0, 1]) == pytest.approx((0 + 0 + 0.25) / 3)
    # explained variance: labels 1, 0, 1, 0 (variance 0.25); residuals 0.5, -0.5, 0.5, -0.5 (variance 0.25)
    assert q.explained_variance([0.5] * 4, [1, 0, 1, 0]) == pytest.approx(0.0)
    assert q.explained_variance([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    result = q.quality(values, labels)
    assert [r["count"] for r in result["reliability"]] == [1, 3, 1]  # bins [0.1, 0.2), [0.4, 0.5), [0.9, 1.0]
    assert result["reliability"][1]["fraction_correct"] == pytest.approx(2 / 3)
    assert q.quality([0.3], [1])["auroc"] is None
