"""Rho-1 excess-loss token weights (Lin et al. 2024, "Rho-1: Not All Tokens Are What You Need", eq. 3-4;
``docs/formulas.md``, "Rho-1 weights"), per MTP head.

For head k at position p with target y = token p+k+1:
    CE_pol(p, k) = -log p_theta(y | x_<=p, head k)     (from the training forward itself)
    CE_ref(p, k) = -log p_ref(y | x_<=p+k)            (the reference's next-token CE for the same target)
    score        = CE_pol - CE_ref  ("signed", default)  or |CE_pol - CE_ref|  ("absolute")
Hard selection keeps the top ``ratio`` of valid targets by score, per head, over the whole (global,
all-device) batch the function sees: weight 1, others 0. The soft variant: z-score over valid targets ->
softmax(score / T) -> rescale to mean 1 -> clip [eps, w_max] -> renormalise to mean 1. The "seed" variant (the
design this project replaces) emphasises the top ``top_p`` by |excess loss| over a base weight, see
``seed_weights``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.alignment import masked_moments


def excess_loss(ce_policy: jax.Array, ce_reference: jax.Array, mode: str = "signed") -> jax.Array:
    """``[B, S, H]`` score; ``ce_reference`` already aligned per head (``alignment.per_head(ref_ce_tokens)``)."""
    diff = ce_policy - ce_reference
    if mode == "signed":
        return diff
    if mode == "absolute":
        return jnp.abs(diff)
    raise ValueError(f"rho1 score mode={mode!r}: expected 'signed' or 'absolute'")


def top_k_select(score: jax.Array, valid: jax.Array, ratio: float) -> jax.Array:
    """Per head: 1.0 for the ``ceil(ratio * n_valid)`` highest-scoring valid targets, else 0.0. ``[B, S, H]``."""
    b, s, h = score.shape
    flat_score = jnp.where(valid, score, -jnp.inf).reshape(b * s, h)
    n_valid = valid.reshape(b * s, h).sum(axis=0)
    k = jnp.ceil(ratio * n_valid).astype(jnp.int32)
    order = jnp.argsort(-flat_score, axis=0)  # descending per head
    rank = jnp.argsort(order, axis=0)  # rank of each entry (0 = best)
    selected = (rank < k[None, :]) & valid.reshape(b * s, h)
    return jax.lax.stop_gradient(selected.reshape(b, s, h).astype(jnp.float32))


def soft_weights(
    score: jax.Array, valid: jax.Array, temperature: float = 1.0, eps: float = 0.05, w_max: float = 3.0
) -> jax.Array:
    """Softmax weights over valid targets per head, mean 1 after clipping. ``[B, S, H]``."""
    v = valid.astype(jnp.float32)
    mean, var, n = masked_moments(score, valid, axis=(0, 1))
    std = jnp.sqrt(var) + 1e-6
    z = jnp.where(valid, (score - mean) / std, -jnp.inf) / temperature
    p = jax.nn.softmax(z.reshape(-1, z.shape[-1]), axis=0).reshape(z.shape)
    w = jnp.clip(p * n, eps, w_max) * v
    w = w * n / jnp.maximum(w.sum(axis=(0, 1)), 1e-6)
    return jax.lax.stop_gradient(w)


def seed_weights(
    score: jax.Array, valid: jax.Array, top_p: float = 0.2, alpha: float = 0.3, temperature: float = 0.6
) -> jax.Array:
    """The original design's Rho-1 variant, per head over the valid targets: with ``s = |score|`` and ``q`` the
    ``1 - top_p`` quantile of s, the emphasis ``e = alpha + (1 - alpha) * min(s / q, 1)`` is 1 for the top ``top_p``
    of tokens and falls continuously to the base weight ``alpha`` as s goes to 0; then
    ``w = N * softmax(e / T)`` (mean 1 over the N valid targets; the largest weight ratio is exp((1 - alpha) / T)).
    ``[B, S, H]``, 0 on invalid targets."""
    b, s_len, h = score.shape
    s = jnp.abs(score)
    flat = jnp.where(valid, s, jnp.nan).reshape(b * s_len, h)
    q = jnp.nanquantile(flat, 1.0 - top_p, axis=0)  # [H]
    emphasis = alpha + (1.0 - alpha) * jnp.minimum(s / jnp.maximum(q, 1e-12), 1.0)
    logits = jnp.where(valid, emphasis / temperature, -jnp.inf).reshape(b * s_len, h)
    n = valid.reshape(b * s_len, h).sum(axis=0)
    w = jax.nn.softmax(logits, axis=0) * n
    return jax.lax.stop_gradient(jnp.where(valid, w.reshape(b, s_len, h), 0.0))


SELECTIONS = ("hard", "soft")
SCHEMES = ("rho1", "seed")


def rho1_weights(
    ce_policy,
    ce_reference,
    valid,
    *,
    mode="signed",
    select="hard",
    ratio=0.6,
    temperature=1.0,
    eps=0.05,
    w_max=3.0,
    scheme="rho1",
    top_p=0.2,
    alpha=0.3,
):
    """Excess-loss weights ``[B, S, H]`` from per-head policy CE and per-head-aligned reference CE: ``scheme``
    "rho1" (the paper: ``select`` "hard", the top ``ratio``, or "soft", a softmax of z-scores) or "seed"
    (``seed_weights``, which scores |CE_pol - CE_ref|)."""
    score = excess_loss(jax.lax.stop_gradient(ce_policy), jax.lax.stop_gradient(ce_reference), mode)
    if scheme == "seed":
        return seed_weights(score, valid, top_p, alpha, temperature)
    if scheme != "rho1":
        raise ValueError(f"rho1 scheme={scheme!r}: expected one of {list(SCHEMES)}")
    if select == "hard":
        return top_k_select(score, valid, ratio)
    if select == "soft":
        return soft_weights(score, valid, temperature, eps, w_max)
    raise ValueError(f"rho1 select={select!r}: expected one of {list(SELECTIONS)}")
