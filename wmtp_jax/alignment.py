"""Which target each MTP head predicts at each position, and statistics over the valid targets.

Head k (0-based) at position p predicts token p+k+1 (Gloeckle et al. 2024, "Better & Faster Large Language Models
via Multi-token Prediction", section 2). Token-level quantities (weights, reference CE, TD errors) are kept
*target-token aligned*: ``x[b, t]`` belongs to token ``tokens[b, t]`` as a target; ``per_head`` moves them to
the ``[B, S, H]`` layout of the heads. Pure functions of arrays; no module of this package is imported here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def shift_left(x: jax.Array, k: int, fill=0) -> jax.Array:
    """``out[:, p] = x[:, p + k]`` (``fill`` past the end) for ``x`` of shape ``[B, S, ...]``."""
    if k == 0:
        return x
    pad = jnp.full((x.shape[0], k) + x.shape[2:], fill, x.dtype)
    return jnp.concatenate([x[:, k:], pad], axis=1)


def per_head(token_values: jax.Array, n_heads: int, fill=0) -> jax.Array:
    """Target-aligned ``[B, S]`` values -> ``[B, S, H]`` with ``out[:, p, k] = token_values[:, p + k + 1]``."""
    return jnp.stack([shift_left(token_values, k + 1, fill) for k in range(n_heads)], axis=-1)


def mtp_targets(tokens: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array, n_heads: int):
    """``(targets int32 [B, S, H], valid bool [B, S, H])``: head k at p -> token p+k+1.

    A target is valid when that token is in the loss mask (an output token or EOS), lies in the same packed
    sequence (``segment_ids``, 0 = padding) and inside the row.
    """
    targets = per_head(tokens, n_heads)
    in_loss = per_head(loss_mask.astype(bool), n_heads, False)
    same_seq = per_head(segment_ids, n_heads, -1) == segment_ids[..., None]
    return targets.astype(jnp.int32), in_loss & same_seq & (segment_ids > 0)[..., None]


def next_token_to_target(ce_next: jax.Array) -> jax.Array:
    """Next-token values at positions ``[B, S]`` (``x[p]`` scores token p+1) -> target-aligned ``[B, S]``."""
    return jnp.concatenate([jnp.zeros_like(ce_next[:, :1]), ce_next[:, :-1]], axis=1)


def masked_moments(x: jax.Array, mask: jax.Array, axis=None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(mean, variance, count)`` of ``x`` over the entries where ``mask`` is true (population variance);
    ``count`` is at least 1, so an empty mask gives mean 0 and variance 0. ``axis``: as in ``jnp.sum``."""
    m = mask.astype(jnp.float32)
    n = jnp.maximum(m.sum(axis=axis), 1.0)
    mean = (x * m).sum(axis=axis) / n
    var = (jnp.square(x - mean) * m).sum(axis=axis) / n
    return mean, var, n


def last_output(x: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(x at each row's last output position [B], the row has an output [B] bool)`` for ``x`` ``[B, S]``: the
    last position whose ``loss_mask`` is set (rows hold one sequence each; padded, not packed)."""
    positions = jnp.arange(loss_mask.shape[1])
    last = jnp.max(jnp.where(loss_mask > 0, positions, -1), axis=1)
    return jnp.take_along_axis(x, jnp.maximum(last, 0)[:, None], axis=1)[:, 0], last >= 0
