"""Comparing arms on the same problems: pooled pass@k, paired differences, paired bootstrap and sign-flip test.

The unit of analysis is the problem (``docs/formulas.md``, "Comparing arms"). For arm A against the baseline
arm B on the same N problems, ``d_i = r_i(A) - r_i(B)`` with ``r_i`` the unbiased pass@k of problem i (Chen et
al. 2021, eq. 1; for k = 1 the pass rate ``c_i / n_i``); the effect is ``mean(d)``.

- 95% interval: paired bootstrap over problems (the same resampled indices for both arms; Efron & Tibshirani
  1993, percentile interval), ``resamples`` (>= 1000) draws from a fixed seed (``scipy.stats.bootstrap``).
- p-value: the sign-flip (paired permutation) test (Fisher 1935; Good 2005, *Permutation, Parametric and
  Bootstrap Tests of Hypotheses*): under H0 each ``d_i`` is symmetric around 0. With at most
  ``EXACT_MAX`` non-zero ``d_i`` every sign pattern is enumerated (exact); otherwise ``flips`` random patterns,
  p = (1 + #{|mean| >= |observed|}) / (1 + flips) (Phipson & Smyth 2010: a Monte-Carlo p-value is never 0).
  Two-sided. Identical arms give p = 1. Computed by ``scipy.stats.permutation_test``.
- Several seeds of one arm are pooled per problem (samples and passes added up), never averaged as pass@k.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import scipy.stats

from wmtp_jax.eval.metrics import bootstrap_ci, pass_at_k

EXACT_MAX = 16  # non-zero differences up to which the sign-flip test enumerates all 2^m patterns


@dataclasses.dataclass(frozen=True)
class Counts:
    """Samples ``n`` and passing samples ``c`` of one problem, pooled over the runs (seeds) of one arm."""

    n: int
    c: int


def pool(runs: Iterable[Mapping[str, tuple[int, int]]]) -> dict[str, Counts]:
    """Pools several runs (seeds) of one arm: ``{task_id: (n, c)}`` per run -> ``{task_id: Counts(sum n, sum c)}``.

    Raises ValueError when the runs did not evaluate the same problems (pooling would then mix problem sets).
    """
    pooled: dict[str, Counts] = {}
    keys = None
    for run in runs:
        if keys is not None and set(run) != keys:
            raise ValueError(f"runs of one arm cover different problems: {sorted(set(run) ^ keys)[:5]} ...")
        keys = set(run)
        for task, (n, c) in run.items():
            old = pooled.get(task, Counts(0, 0))
            pooled[task] = Counts(old.n + int(n), old.c + int(c))
    return pooled


def per_problem_pass_at_k(counts: Mapping[str, Counts], tasks: list[str], k: int) -> np.ndarray:
    """float64 ``[len(tasks)]``: the unbiased pass@k of each task, in the order of ``tasks``."""
    return np.asarray([pass_at_k(counts[t].n, counts[t].c, k) for t in tasks], np.float64)


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """``difference`` = mean over problems of pass@k(arm) - pass@k(baseline), its paired bootstrap ``ci95``, the
    two-sided sign-flip ``p_value`` (``test``: "exact" or "monte-carlo"), ``n_problems`` and the draw counts."""

    difference: float
    ci95: tuple[float, float]
    p_value: float
    n_problems: int
    test: str
    resamples: int
    flips: int

    def to_json(self) -> dict:
        return {
            "difference": self.difference,
            "ci95": list(self.ci95),
            "p_value": self.p_value,
            "n_problems": self.n_problems,
            "test": self.test,
            "bootstrap_resamples": self.resamples,
            "sign_flips": self.flips,
        }


def sign_flip_p_value(d: np.ndarray, *, flips: int = 10_000, seed: int = 0) -> tuple[float, str, int]:
    """Two-sided sign-flip p-value of ``mean(d) = 0``: ``(p, "exact" | "monte-carlo", patterns used)``.

    ``scipy.stats.permutation_test`` with ``permutation_type="samples"`` on the one sample of non-zero
    differences (it flips their signs) and the statistic ``|sum(d)| / len(d)`` with ``alternative="greater"``, so
    the p-value counts the patterns at least as extreme in either direction. Zero differences never change sign,
    so only the ``m`` non-zero ones are flipped: every one of the ``2^m`` patterns when ``m <= EXACT_MAX``
    (scipy enumerates them), else ``flips`` random patterns, for which scipy returns ``(1 + #extreme) / (1 +
    flips)``."""
    d = np.asarray(d, np.float64)
    nonzero = d[d != 0]
    m = nonzero.size
    if m == 0:
        return 1.0, "exact", 1
    exact = m <= EXACT_MAX
    if not exact and flips < 10_000:
        raise ValueError(f"flips={flips}: at least 10,000 random sign patterns are needed")
    result = scipy.stats.permutation_test(
        (nonzero,),
        lambda x, axis: np.abs(np.sum(x, axis=axis)) / d.size,
        permutation_type="samples",
        vectorized=True,
        n_resamples=np.inf if exact else flips,
        alternative="greater",
        random_state=np.random.default_rng(seed),
    )
    return float(result.pvalue), ("exact" if exact else "monte-carlo"), (2**m if exact else flips)


def paired_bootstrap_ci(d: np.ndarray, *, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of ``mean(d)`` over problems resampled with replacement (the same indices for both
    arms, which ``d`` already pairs): ``eval.metrics.bootstrap_ci``."""
    if resamples < 1000:
        raise ValueError(f"resamples={resamples}: at least 1000 bootstrap resamples are needed")
    return bootstrap_ci(d, resamples=resamples, seed=seed)


def compare(
    arm: Mapping[str, Counts],
    baseline: Mapping[str, Counts],
    k: int = 1,
    *,
    resamples: int = 1000,
    flips: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """The paired comparison of ``arm`` against ``baseline`` on the problems both evaluated.

    Raises ValueError when they share no problem or a problem has fewer than k samples.
    """
    tasks = sorted(set(arm) & set(baseline))
    if not tasks:
        raise ValueError("the two arms share no problem: nothing to compare")
    d = per_problem_pass_at_k(arm, tasks, k) - per_problem_pass_at_k(baseline, tasks, k)
    p, test, used = sign_flip_p_value(d, flips=flips, seed=seed)
    return PairedComparison(
        float(d.mean()), paired_bootstrap_ci(d, resamples=resamples, seed=seed), p, len(tasks), test, resamples, used
    )
