"""High-entropy ("forking") tokens (Wang et al. 2025, "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive
Effective Reinforcement Learning for LLM Reasoning", arXiv 2506.01939; ``docs/formulas.md``, "Entropy").

The paper keeps the policy gradient only on the targets whose predictive entropy is in the top ``rho`` fraction
of the batch (rho = 0.2) and keeps its token-level normalisation over all tokens. Here the same rule weights the
SFT loss, per MTP head:

    H[b,p,k] = - sum_v p_theta(v | x_<=p, head k) log p_theta(v | x_<=p, head k)      (nats)
    w[b,p,k] = 1[H[b,p,k] is among the ceil(rho * n_valid_k) largest of head k's valid targets]
    D_k      = n_valid_k                                  (all valid targets, as the paper's normalisation)

The ranking runs over the micro-batch the step sees (as Rho-1's selection does). The entropy costs one more
reduction over the vocabulary inside the chunked CE pass (``losses.token_ce_entropy``), no extra forward.
"""

from __future__ import annotations

import jax

from wmtp_jax.weighting.base import TokenStats, TokenWeighting, register
from wmtp_jax.weighting.common import top_k_select


@register
class Entropy(TokenWeighting):
    """Top ``weighting.entropy_ratio`` of valid targets by entropy, per head: weight 1, others 0 (``[B, S, H]``)."""

    name = "entropy"
    needs = frozenset({"entropy"})

    def weights(self, stats: TokenStats) -> jax.Array:
        return top_k_select(stats.entropy, stats.valid, self.cfg.entropy_ratio)
