"""pass@k with the unbiased estimator and a bootstrap interval over problems.

Source: Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1:
``pass@k = E_problems[1 - C(n - c, k) / C(n, k)]`` for n samples of which c pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(per_problem), (bootstrap, len(per_problem)))
    means = per_problem[draws].mean(axis=1)
    return float(per_problem.mean()), (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))
