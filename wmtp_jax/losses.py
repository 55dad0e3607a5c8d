"""Multi-token-prediction targets, chunked cross-entropy, weighted MTP loss and value loss.

Head k at position p predicts token p+k+1 (Gloeckle et al. 2024, section 2). A target is valid when that
token is in the loss mask (an output token or EOS), lies in the same packed sequence, and is inside the row.
Cross-entropy is computed in chunks of positions under ``jax.checkpoint``, so full float32
``[B, S, H, V]`` logits are never held at once, in the forward or the backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.weighting.common import shift_left


def mtp_targets(tokens: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array, n_heads: int):
    """``(targets int32 [B, S, H], valid bool [B, S, H])``: head k at p -> token p+k+1."""
    targets = jnp.stack([shift_left(tokens, k + 1) for k in range(n_heads)], axis=-1)
    in_loss = jnp.stack([shift_left(loss_mask.astype(bool), k + 1, False) for k in range(n_heads)], axis=-1)
    same_seq = jnp.stack([shift_left(segment_ids, k + 1, -1) == segment_ids for k in range(n_heads)], axis=-1)
    return targets.astype(jnp.int32), in_loss & same_seq & (segment_ids > 0)[..., None]


def token_ce(output_kernel: jax.Array, head_hidden: jax.Array, targets: jax.Array, *, chunk: int = 256,
             dtype=jnp.float32) -> jax.Array:
    """``-log softmax(h @ W)[target]`` for every (b, p, k): float32 ``[B, S, H]``.

    Args:
      output_kernel: ``[d, V]`` shared output projection.
      head_hidden: ``[B, S, H, d]`` normalised head states.
      targets: int ``[B, S, H]``.
      chunk: positions per chunk; the logits of one chunk (``[B, chunk, H, V]`` float32) are the peak.
      dtype: matmul input dtype (the model's compute dtype); accumulation and softmax are float32.
    """
    b, s, h, d = head_hidden.shape
    chunk = min(chunk, s)
    pad = (-s) % chunk
    if pad:
        head_hidden = jnp.pad(head_hidden, ((0, 0), (0, pad), (0, 0), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad), (0, 0)))
    n = (s + pad) // chunk
    hs = head_hidden.reshape(b, n, chunk, h, d).swapaxes(0, 1)
    ts = targets.reshape(b, n, chunk, h).swapaxes(0, 1)
    kernel = output_kernel.astype(dtype)

    @jax.checkpoint
    def chunk_ce(hc, tc):
        logits = jnp.einsum("bchd,dv->bchv", hc.astype(dtype), kernel, preferred_element_type=jnp.float32)
        target_logit = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
        return jax.nn.logsumexp(logits, axis=-1) - target_logit

    _, ce = jax.lax.scan(lambda carry, x: (carry, chunk_ce(*x)), None, (hs, ts))
    return ce.swapaxes(0, 1).reshape(b, n * chunk, h)[:, :s]


def token_aligned_ce(ce_next: jax.Array) -> jax.Array:
    """Next-token CE at positions ``[B, S]`` (``ce[p]`` scores token p+1) -> target-aligned ``[B, S]``."""
    return jnp.concatenate([jnp.zeros_like(ce_next[:, :1]), ce_next[:, :-1]], axis=1)


def weighted_ce_sums(ce: jax.Array, weights: jax.Array, valid: jax.Array) -> jax.Array:
    """Per-head sums ``sum_{b,p} w * ce`` over valid targets: float32 ``[H]`` (divide by the normaliser)."""
    return jnp.sum(jnp.where(valid, weights * ce, 0.0), axis=(0, 1))


def value_loss_sum(values: jax.Array, targets: jax.Array, mask: jax.Array, kind: str = "mse",
                   huber_delta: float = 1.0) -> jax.Array:
    """``sum over mask of l(V - target)`` with l = 0.5 x^2 ("mse") or Huber(delta) ("huber"); float32 scalar."""
    err = values - jax.lax.stop_gradient(targets)
    if kind == "mse":
        per = 0.5 * jnp.square(err)
    elif kind == "huber":
        a = jnp.abs(err)
        per = jnp.where(a <= huber_delta, 0.5 * jnp.square(err), huber_delta * (a - 0.5 * huber_delta))
    else:
        raise ValueError(f"value loss kind={kind!r}: expected 'mse' or 'huber'")
    return jnp.sum(jnp.where(mask, per, 0.0))


def explained_variance(values: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """``1 - Var(target - V) / Var(target)`` over mask (float32 scalar; 0 when the targets are constant)."""
    m = mask.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)

    def var(x):
        mu = (x * m).sum() / n
        return (jnp.square(x - mu) * m).sum() / n

    vt = var(targets)
    return jnp.where(vt > 1e-8, 1.0 - var(targets - values) / jnp.maximum(vt, 1e-8), 0.0)
