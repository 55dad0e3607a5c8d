"""Retrospective excess loss, the self-modulated half of ssToken (Qin et al. 2025, "ssToken: Self-modulated and
Semantic-aware Token Selection for LLM Fine-tuning", arXiv 2510.18250; ``docs/formulas.md``, "Retrospective
excess loss").

Instead of a separately trained reference (Rho-1), the policy is compared with a *history* copy of itself:

    REL[b,p,k] = CE_hist[b,p,k] - CE_theta[b,p,k] = log p_theta(y) - log p_hist(y)
    w[b,p,k]   = 1[REL is among the ceil(rho * n_valid_k) largest of head k's valid targets]
    D_k        = n_valid_k

per MTP head (the history model is the same MTP network, so every head has its own REL). A large REL marks a
target the current model has learned fast since the history point, i.e. one still learnable. The history is
the policy's exponential moving average ``theta_hist <- a * theta_hist + (1 - a) * theta`` after every step
(``weighting.history_decay`` a; a = 1 keeps the starting model, the "base" history of the paper), stored in
``weighting.history_dtype`` beside the parameters in the train state and checkpointed with it: one more copy of
the trained parameters (for 7B_1T_4 in bfloat16 about 13.5 GB, 3.4 GB per device on the 4-device FSDP mesh) and
one more forward of the policy per step, without gradient. The paper's second, attention-based "semantic"
score is not implemented (it needs the attention probabilities, which the fused attention never forms).
"""

from __future__ import annotations

import jax

from wmtp_jax.weighting.base import TokenStats, TokenWeighting, register
from wmtp_jax.weighting.common import top_k_select


def retrospective_excess_loss(ce_policy: jax.Array, ce_history: jax.Array) -> jax.Array:
    """``CE_hist - CE_theta``, ``[B, S, H]``, no gradient."""
    return jax.lax.stop_gradient(ce_history - ce_policy)


@register
class SSToken(TokenWeighting):
    """Top ``weighting.sstoken_ratio`` of valid targets by retrospective excess loss, per head (``[B, S, H]``)."""

    name = "sstoken"
    needs = frozenset({"history_ce"})

    def weights(self, stats: TokenStats) -> jax.Array:
        score = retrospective_excess_loss(stats.ce, stats.history_ce)
        return top_k_select(score, stats.valid, self.cfg.sstoken_ratio)
