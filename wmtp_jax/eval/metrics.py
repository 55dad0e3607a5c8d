"""pass@k with the unbiased estimator and a percentile bootstrap interval over problems.

Source: Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1:
``pass@k = E_problems[1 - C(n - c, k) / C(n, k)]`` for n samples of which c pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples, ``c`` correct; raises ValueError if k > n or c > n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k / i): numerically stable form of 1 - C(n-c, k) / C(n, k)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(n: Sequence[int], c: Sequence[int], k: int, *, bootstrap: int = 1000, seed: int = 0):
    """``(mean pass@k over problems, (low, high) 95% bootstrap interval over problems)``."""
    per_problem = np.asarray([pass_at_k(ni, ci, k) for ni, ci in zip(n, c)])
    if not len(per_problem):
        raise ValueError("mean_pass_at_k: no problems")
    return float(per_problem.mean()), bootstrap_ci(per_problem, resamples=bootstrap, seed=seed)


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The percentile 95% interval of ``mean(values)`` over ``resamples`` resamples with replacement
    (``scipy.stats.bootstrap``, ``method="percentile"``; Efron & Tibshirani 1993, ch. 13) from a fixed seed.
    ``values``: float ``[N]``, N >= 1, e.g. per-problem pass@k or paired differences; constant values (one
    problem included) give ``(value, value)``."""
    values = np.asarray(values, np.float64)
    if values.size < 2:  # every resample of one value is that value (scipy asks for two or more)
        return float(values.mean()), float(values.mean())
    result = scipy.stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
