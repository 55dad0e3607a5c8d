"""Token Cleaning with a fixed reference (Pang et al. 2025, "Token Cleaning: Fine-Grained Data Selection for LLM
Supervised Fine-Tuning", ICML 2025, arXiv 2502.01968; ``docs/formulas.md``, "Token Cleaning").

Each response token gets an influence score from two frozen models, the base model theta (before fine-tuning)
and a reference theta' (the base fine-tuned on a small high-quality set):

    score(x_t) = CE_base(x_t) - CE_ref(x_t)        (how much the reference's update helped this token)

The scores of *all* response tokens of the training split are ranked together once, and the top ``k`` fraction
keeps label 1, the rest 0 (the paper's "fixed-model cleaning": a global threshold, not a per-sample or
per-batch one); training is then ordinary SFT on the cleaned labels. ``scripts/precompute_ref_ce.py --base``
writes those labels beside the split (``{prefix}.token_labels.npy``); the step reads them from the batch, target
aligned, so head k at position p gets the label of its target token p+k+1 (every head that predicts a token
uses that token's label). It costs nothing in the step.

How it differs from Rho-1: Rho-1 scores ``CE_theta_t - CE_ref`` with the *current* policy, recomputed every step
and ranked within the step's batch, so the selection moves as the policy learns; Token Cleaning scores with the
fixed *base* model, once, ranked over the whole dataset, so the selection is a static property of the data
(the paper's self-evolving variant, which re-scores with updated references, is not implemented).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.weighting.base import TokenStats, TokenWeighting, register


@register
class TokenCleaning(TokenWeighting):
    """The precomputed labels (``weighting.token_labels``) of each head's target, 0 on invalid targets;
    ``D_k`` = valid count (the SFT normalisation over all response tokens)."""

    name = "token_cleaning"
    needs = frozenset({"token_labels"})

    def weights(self, stats: TokenStats) -> jax.Array:
        return jax.lax.stop_gradient(jnp.where(stats.valid, stats.token_labels, 0.0))
