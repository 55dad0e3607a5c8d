"""Dynamic Fine-Tuning (Wu et al. 2025, "On the Generalization of SFT: A Reinforcement Learning Perspective with
Reward Rectification", arXiv 2508.05629; ``docs/formulas.md``, "DFT").

The paper reads the SFT gradient as a policy gradient whose implicit reward is ``1 / p_theta(target)``, which
blows up on unlikely targets, and rectifies it by scaling each target's log-likelihood by the target's own
probability under the current policy, held constant:

    L_DFT = - sum_t sg(p_theta(y_t | y_<t, x)) * log p_theta(y_t | y_<t, x)

so ``w = sg(p_theta(target)) = exp(-CE)``, per MTP head, divided by the number of valid targets as the SFT
loss is. Needs no model beyond the policy and no extra pass (the probability comes from the CE).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.weighting.base import TokenStats, TokenWeighting, register


@register
class DFT(TokenWeighting):
    """``w = p_theta(target)`` (float32 ``[B, S, H]`` in [0, 1], 0 on invalid targets); ``D_k`` = valid count."""

    name = "dft"
    needs = frozenset({"probability"})

    def weights(self, stats: TokenStats) -> jax.Array:
        return jnp.where(stats.valid, stats.probability, 0.0)
