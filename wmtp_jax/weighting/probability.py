"""Probability-based SFT objectives (Li et al. 2025, "Beyond Log Likelihood: Probability-Based Objectives for
Supervised Fine-Tuning across the Model Capability Continuum", arXiv 2510.00526; ``docs/formulas.md``,
"Probability family").

The paper trains with ``L = E[f(p)]``, ``p = p_theta(target)``, over the family

    f_alpha(p) = (1 - p^alpha) / alpha        (-log p as alpha -> 0; 1 - p at alpha = 1, the "-p" objective)

and its thresholded variants ``f(p) * 1[p >= q]`` (keep the likely targets, "top") or ``f(p) * 1[p <= q]``
("bottom"), with f = 1 - p or -log p. Because ``d f_alpha(p) / d logits = p^alpha * d(-log p) / d logits`` and
the indicator is piecewise constant, each of them has exactly the gradient of the CE weighted by

    w = sg(p)^alpha * 1[p >= q]   (keep "top")   or   sg(p)^alpha * 1[p <= q]   (keep "bottom"),   1 with "all",

so the family is a token weighting here, on every MTP head, divided by the valid count as the SFT loss is. The
step's reported ``loss`` is this weighted CE, not ``f``'s value; the gradients are the paper's (tested against
``jax.grad`` of ``f`` itself). alpha = 1 with keep "all" is DFT's weight; alpha = 0 with keep "all" is NLL.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.weighting.base import TokenStats, TokenWeighting, register

KEEP = ("all", "top", "bottom")


def probability_weights(p: jax.Array, valid: jax.Array, alpha: float, keep: str = "all", q: float = 0.0):
    """``[B, S, H]`` float32 ``p^alpha`` times the threshold indicator of ``keep`` at ``q``, 0 on invalid targets.
    Raises ValueError for a ``keep`` outside ``KEEP``."""
    if keep not in KEEP:
        raise ValueError(f"probability keep={keep!r}: expected one of {KEEP}")
    w = jnp.ones_like(p) if alpha == 0 else p**alpha
    if keep == "top":
        w = jnp.where(p >= q, w, 0.0)
    elif keep == "bottom":
        w = jnp.where(p <= q, w, 0.0)
    return jax.lax.stop_gradient(jnp.where(valid, w, 0.0))


@register
class Probability(TokenWeighting):
    """The paper's family: ``weighting.prob_alpha`` (alpha), ``weighting.prob_keep`` (all | top | bottom) and
    ``weighting.prob_threshold`` (q). ``D_k`` = valid count."""

    name = "probability"
    needs = frozenset({"probability"})

    def weights(self, stats: TokenStats) -> jax.Array:
        w = self.cfg
        return probability_weights(stats.probability, stats.valid, w.prob_alpha, w.prob_keep, w.prob_threshold)
