"""Rho-1 excess-loss token weights (Lin et al. 2024, "Rho-1: Not All Tokens Are What You Need", eq. 3-4;
``docs/formulas.md``, "Rho-1 weights"), per MTP head.

For head k at position p with target y = token p+k+1:
    CE_pol(p, k) = -log p_theta(y | x_<=p, head k)     (from the training forward itself)
    CE_ref(p, k) = -log p_ref(y | x_<=p+k)            (the reference's next-token CE for the same target)
    score        = CE_pol - CE_ref  ("signed", default)  or |CE_pol - CE_ref|  ("absolute")
Hard selection keeps the top ``ratio`` of valid targets by score, per head, over the whole (global,
all-device) batch the function sees: weight 1, others 0. The soft variant: z-score over valid targets ->
softmax(score / T) -> rescale to mean 1 -> clip [eps, w_max] -> renormalise to mean 1. The "seed" variant (the
design documents' formula, README section 2.3 of the design this project replaces) grades the top ``top_p`` of
targets by |excess loss| above a base weight, then applies the soft pipeline, see ``seed_weights``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.alignment import masked_moments
from wmtp_jax.weighting.base import TokenStats, TokenWeighting, register
from wmtp_jax.weighting.common import top_k_select


def excess_loss(ce_policy: jax.Array, ce_reference: jax.Array, mode: str = "signed") -> jax.Array:
    """``[B, S, H]`` score; ``ce_reference`` already aligned per head (``alignment.per_head(ref_ce_tokens)``)."""
    diff = ce_policy - ce_reference
    if mode == "signed":
        return diff
    if mode == "absolute":
        return jnp.abs(diff)
    raise ValueError(f"rho1 score mode={mode!r}: expected 'signed' or 'absolute'")


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
    score: jax.Array,
    valid: jax.Array,
    top_p: float = 0.2,
    alpha: float = 0.3,
    temperature: float = 0.6,
    eps: float = 0.05,
    w_max: float = 3.0,
) -> jax.Array:
    """The design documents' Rho-1 variant, per head over the valid targets (``docs/formulas.md``, "Rho-1
    weights"): with ``s = |score|``, ``q`` the ``1 - top_p`` quantile of s and ``s_max`` its largest value,

        raw = (s / s_max) * 1[s > q] + alpha,

    so the top ``top_p`` of targets are graded by their excess loss and every other target gets the base
    ``alpha``; then ``soft_weights(raw, T, eps, w_max)``: z-score -> softmax(z / T) -> mean 1 -> clip [eps, w_max]
    -> renormalise to mean 1. The z-score removes any constant, so ``alpha`` shifts ``raw`` without changing the
    weights (kept because the design names it). ``[B, S, H]`` float32, 0 on invalid targets."""
    b, s_len, h = score.shape
    s = jnp.abs(score)
    flat = jnp.where(valid, s, jnp.nan).reshape(b * s_len, h)
    q = jnp.nanquantile(flat, 1.0 - top_p, axis=0)  # [H]
    s_max = jnp.maximum(jnp.nanmax(flat, axis=0), 1e-12)
    raw = jnp.where(s > q, s / s_max, 0.0) + alpha
    return soft_weights(raw, valid, temperature, eps, w_max)


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
    (the design documents' variant, ``seed_weights``, which scores |CE_pol - CE_ref|)."""
    score = excess_loss(jax.lax.stop_gradient(ce_policy), jax.lax.stop_gradient(ce_reference), mode)
    if scheme == "seed":
        return seed_weights(score, valid, top_p, alpha, temperature, eps, w_max)
    if scheme != "rho1":
        raise ValueError(f"rho1 scheme={scheme!r}: expected one of {list(SCHEMES)}")
    if select == "hard":
        return top_k_select(score, valid, ratio)
    if select == "soft":
        return soft_weights(score, valid, temperature, eps, w_max)
    raise ValueError(f"rho1 select={select!r}: expected one of {list(SELECTIONS)}")


@register
class Rho1(TokenWeighting):
    """Excess-loss weights (``rho1_weights`` with the ``weighting.rho1_*`` keys) against the reference CE of the same
    targets. ``D_k``: the number selected, ``ceil(ratio * n_valid)`` (Rho-1 eq. 4), for the paper's hard selection
    with ``rho1_normalize=selected``; the valid count otherwise."""

    name = "rho1"
    needs = frozenset({"reference_ce"})

    def weights(self, stats: TokenStats) -> jax.Array:
        w = self.cfg
        return rho1_weights(
            stats.ce,
            stats.reference_ce,
            stats.valid,
            mode=w.rho1_mode,
            select=w.rho1_select,
            ratio=w.rho1_ratio,
            temperature=w.rho1_temperature,
            eps=w.rho1_eps,
            w_max=w.rho1_w_max,
            scheme=w.rho1_scheme,
            top_p=w.rho1_top_p,
            alpha=w.rho1_alpha,
        )

    def normaliser(self, n_valid: jax.Array) -> jax.Array:
        w = self.cfg
        if w.rho1_scheme == "rho1" and w.rho1_select == "hard" and w.rho1_normalize == "selected":
            return jnp.ceil(w.rho1_ratio * n_valid)
        return n_valid
