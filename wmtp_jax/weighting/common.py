"""Helpers shared by the weighting schemes: per-head top-k selection, the shuffled control and summary statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.alignment import masked_moments


def control_shuffle(weights: jax.Array, valid: jax.Array, key: jax.Array) -> jax.Array:
    """The same multiset of weights, randomly permuted over the valid entries (per head for ``[B, S, H]``).

    The control that separates a real weighting effect from a change of loss scale: weight statistics are
    identical, only the assignment of weights to tokens is random. Invalid entries get 0.
    """
    if weights.ndim == 3:
        keys = jax.random.split(key, weights.shape[-1])
        return jnp.stack(
            [control_shuffle(weights[..., h], valid[..., h], keys[h]) for h in range(weights.shape[-1])], axis=-1
        )
    w, v = weights.reshape(-1), valid.reshape(-1)
    rand = jnp.where(v, jax.random.uniform(key, w.shape), 2.0)
    source = jnp.argsort(rand)  # valid positions in random order first
    target = jnp.argsort(jnp.where(v, 0, 1), stable=True)  # valid positions in order first
    out = jnp.zeros_like(w).at[target].set(w[source])
    return jnp.where(v, out, 0.0).reshape(weights.shape)


def weight_stats(weights: jax.Array, valid: jax.Array, selected_threshold: float = 0.0) -> dict[str, jax.Array]:
    """mean, std, min, max of weights over valid entries, and the fraction with weight > threshold."""
    mean, var, n = masked_moments(weights, valid)
    std = jnp.sqrt(jnp.maximum(var, 0.0))
    big = jnp.finfo(jnp.float32).max
    return {
        "weight_mean": mean,
        "weight_std": std,
        "weight_min": jnp.min(jnp.where(valid, weights, big)),
        "weight_max": jnp.max(jnp.where(valid, weights, -big)),
        "weight_frac_selected": ((weights > selected_threshold) & valid).sum() / n,
    }


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
