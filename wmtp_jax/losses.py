"""Chunked cross-entropy, the weighted MTP loss and the value loss (formulas: ``docs/formulas.md``).

Targets and their validity come from ``wmtp_jax.alignment`` (head k at position p predicts token p+k+1).
Cross-entropy is computed in chunks of positions under ``jax.checkpoint``, so full float32
``[B, S, H, V]`` logits are never held at once, in the forward or the backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from wmtp_jax.alignment import masked_moments


def token_ce(project, head_hidden: jax.Array, targets: jax.Array, *, chunk: int = 256) -> jax.Array:
    """``-log softmax(project(h))[target]`` for every (b, p, k): float32 ``[B, S, H]``.

    Args:
      project: the shared output projection ``[..., d] -> float32 [..., V]`` (``MTPTransformer.output_projection()``).
      head_hidden: ``[B, S, H, d]`` normalised head states.
      targets: int ``[B, S, H]``.
      chunk: positions per chunk; the logits of one chunk (``[B, chunk, H, V]`` float32) are the peak.
    """
    return _chunked(project, head_hidden, targets, chunk, with_entropy=False)


def token_ce_entropy(
    project, head_hidden: jax.Array, targets: jax.Array, *, chunk: int = 256
) -> tuple[jax.Array, jax.Array]:
    """``token_ce`` and, from the same chunk of logits, the entropy of each head's predictive distribution,
    ``H = -sum_v p_v log p_v`` (nats, no gradient): two float32 ``[B, S, H]``. Costs one more reduction over the
    vocabulary per chunk, no extra projection."""
    return _chunked(project, head_hidden, targets, chunk, with_entropy=True)


def _chunked(project, head_hidden, targets, chunk, with_entropy, n_leading=None):
    """``n_leading`` (int32 scalar, optional): only positions ``< n_leading`` are wanted; a chunk that starts at or
    after it is not projected (``lax.cond``: the skipped branch costs nothing, forward or backward) and gives 0."""
    b, s, h, d = head_hidden.shape
    chunk = min(chunk, s)
    pad = (-s) % chunk
    if pad:
        head_hidden = jnp.pad(head_hidden, ((0, 0), (0, pad), (0, 0), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad), (0, 0)))
    n = (s + pad) // chunk
    hs = head_hidden.reshape(b, n, chunk, h, d).swapaxes(0, 1)
    ts = targets.reshape(b, n, chunk, h).swapaxes(0, 1)

    @jax.checkpoint
    def chunk_ce(hc, tc):
        logits = project(hc)
        target_logit = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
        lse = jax.nn.logsumexp(logits, axis=-1)
        if not with_entropy:
            return lse - target_logit
        logits, lse_sg = jax.lax.stop_gradient(logits), jax.lax.stop_gradient(lse)
        # H = lse - sum_v p_v z_v with p = exp(z - lse): one exp over the chunk, reusing the CE's logsumexp
        entropy = lse_sg - jnp.sum(jnp.exp(logits - lse_sg[..., None]) * logits, axis=-1)
        return lse - target_logit, entropy

    def skip(hc, tc):  # a chunk past n_leading: zeros shaped like chunk_ce's output, nothing projected
        return jax.tree.map(jnp.zeros_like, jax.eval_shape(chunk_ce, hc, tc))

    def body(carry, x):
        i, hc, tc = x
        if n_leading is None:
            return carry, chunk_ce(hc, tc)
        return carry, jax.lax.cond(i * chunk < n_leading, chunk_ce, skip, hc, tc)

    _, out = jax.lax.scan(body, None, (jnp.arange(n), hs, ts))
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(b, n * chunk, h)[:, :s], out)


def valid_token_ce(
    project, head_hidden: jax.Array, targets: jax.Array, valid: jax.Array, *, capacity: int, chunk: int = 256
) -> tuple[jax.Array, jax.Array]:
    """``token_ce`` at the valid targets only: the logits of at most ``capacity`` (position, head) pairs.

    Prompt positions carry no loss, yet ``token_ce`` projects them onto the whole vocabulary. When outputs are
    short and prompts long (the synthetic task, CodeContests statements), most of that projection is wasted.
    Here the valid pairs are gathered (``jnp.nonzero`` with a static ``size``), their CE is computed in chunks as
    in ``token_ce``, and the result is scattered back. Values equal ``token_ce`` at valid targets up to
    float32 summation order.

    Args:
      project, head_hidden, targets, chunk: as ``token_ce``.
      valid: bool ``[B, S, H]``.
      capacity: static bound on the pairs projected (the gathered arrays' length); the projection runs only over
        the chunks holding valid pairs (``lax.cond``), so its cost follows the batch. Pairs beyond the bound get
        CE 0 and are counted.
    Returns:
      (float32 ``[B, S, H]`` CE, 0 where not valid; int32 scalar: valid pairs that did not fit). A caller must
      treat a non-zero count as an error (``Trainer`` raises).
    """
    return _valid_chunked(project, head_hidden, targets, valid, capacity, chunk, with_entropy=False)


def valid_token_ce_entropy(
    project, head_hidden: jax.Array, targets: jax.Array, valid: jax.Array, *, capacity: int, chunk: int = 256
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``valid_token_ce`` and the entropy of ``token_ce_entropy`` at the valid targets: (float32 ``[B, S, H]`` CE,
    float32 ``[B, S, H]`` entropy, both 0 where not valid; int32 scalar: valid pairs that did not fit)."""
    (ce, entropy), over = _valid_chunked(project, head_hidden, targets, valid, capacity, chunk, with_entropy=True)
    return ce, entropy, over


def _valid_chunked(project, head_hidden, targets, valid, capacity, chunk, with_entropy):
    b, s, h, d = head_hidden.shape
    flat_valid = valid.reshape(-1)
    (index,) = jnp.nonzero(flat_valid, size=capacity, fill_value=0)
    n_valid = jnp.sum(flat_valid, dtype=jnp.int32)
    kept = jnp.arange(capacity) < n_valid
    hidden = head_hidden.reshape(-1, d)[index]
    # the kept pairs come first: chunks past n_valid are skipped, so the cost follows the batch's valid targets and
    # capacity is only the bound
    out = _chunked(
        project, hidden[None, :, None], targets.reshape(-1)[index][None, :, None], chunk, with_entropy, n_valid
    )

    def scatter(x):
        x = jnp.where(kept, x[0, :, 0], 0.0)
        return jnp.zeros((b * s * h,), jnp.float32).at[index].add(x).reshape(b, s, h)

    return jax.tree.map(scatter, out), jnp.maximum(n_valid - capacity, 0)


def weighted_ce_sums(ce: jax.Array, weights: jax.Array, valid: jax.Array) -> jax.Array:
    """Per-head sums ``sum_{b,p} w * ce`` over valid targets: float32 ``[H]`` (divide by the normaliser)."""
    return jnp.sum(jnp.where(valid, weights * ce, 0.0), axis=(0, 1))


def value_loss_sum(
    values: jax.Array, targets: jax.Array, mask: jax.Array, kind: str = "mse", huber_delta: float = 1.0
) -> jax.Array:
    """``sum over mask of l(V - target)``: float32 scalar. l = 0.5 x^2 ("mse") or the Huber loss ("huber",
    ``optax.losses.huber_loss``: 0.5 x^2 for |x| <= delta, delta (|x| - delta / 2) beyond)."""
    per = _value_loss(values, jax.lax.stop_gradient(targets), kind, huber_delta)
    return jnp.sum(jnp.where(mask, per, 0.0))


def _value_loss(values: jax.Array, targets: jax.Array, kind: str, huber_delta: float) -> jax.Array:
    """Elementwise l(V - target): 0.5 x^2 ("mse") or the Huber loss ("huber")."""
    if kind == "mse":
        return 0.5 * jnp.square(values - targets)
    if kind == "huber":
        return optax.losses.huber_loss(values, targets, delta=huber_delta)
    raise ValueError(f"value loss kind={kind!r}: expected 'mse' or 'huber'")


def clipped_value_loss_sum(
    values: jax.Array,
    anchor_values: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    clip: float,
    kind: str = "mse",
    huber_delta: float = 1.0,
) -> jax.Array:
    """PPO-style clipped value loss: ``sum over mask of max(l(V - t), l(V_a + clip(V - V_a, -eps, eps) - t))`` with
    ``V_a = anchor_values`` (no gradient) and l as in ``value_loss_sum`` (Schulman et al. 2017, the value clipping
    of the PPO baselines implementation; here the anchor is the stage-1 critic). float32 scalar."""
    anchor_values, targets = jax.lax.stop_gradient(anchor_values), jax.lax.stop_gradient(targets)
    clipped = anchor_values + jnp.clip(values - anchor_values, -clip, clip)
    per = jnp.maximum(_value_loss(values, targets, kind, huber_delta), _value_loss(clipped, targets, kind, huber_delta))
    return jnp.sum(jnp.where(mask, per, 0.0))


def weight_entropy(weights: jax.Array, valid: jax.Array) -> jax.Array:
    """Normalised entropy of the token-weight distribution ``p = w / sum(w)`` over the valid targets:
    ``-sum p log p / log(n_valid)`` in [0, 1] (1 = uniform weights, 0 = all weight on one target). float32."""
    w = jnp.where(valid, jnp.maximum(weights, 0.0), 0.0).astype(jnp.float32)
    p = w / jnp.maximum(w.sum(), 1e-12)
    h = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-30)), 0.0))
    n = valid.sum()
    return jnp.where(n > 1, h / jnp.log(jnp.maximum(n, 2).astype(jnp.float32)), 1.0)


def pairwise_value_loss_sum(final_values: jax.Array, rewards: jax.Array, has_output: jax.Array):
    """Bradley–Terry loss of a critic on (correct, incorrect) pairs: rows ``2i`` and ``2i + 1`` are one problem's
    correct and incorrect solution (the ``pairs`` sampling strategy), and the loss is
    ``-log sigmoid(V_correct - V_incorrect)`` on their final values (Bradley & Terry 1952; the reward-model loss of
    Ouyang et al. 2022, eq. 1). Pairs whose rows are not (correct, incorrect) or lack an output are left out.

    Args: float32 ``[B]`` final values, rewards and bool ``[B]`` has-output (B even).
    Returns: ``(sum of the loss over pairs, number of pairs)``, float32 scalars.
    Raises: ValueError for an odd number of rows."""
    if final_values.shape[0] % 2:
        raise ValueError(f"pairwise value loss: {final_values.shape[0]} rows; expected (correct, incorrect) pairs")
    v, r, ok = (x.reshape(-1, 2) for x in (final_values, rewards, has_output))
    pair = ok[:, 0] & ok[:, 1] & (r[:, 0] > r[:, 1])
    loss = jax.nn.softplus(-(v[:, 0] - v[:, 1]))  # = -log sigmoid(margin)
    return jnp.sum(jnp.where(pair, loss, 0.0)), jnp.sum(pair).astype(jnp.float32)


def explained_variance(values: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """``1 - Var(target - V) / Var(target)`` over mask (float32 scalar; 0 when the targets are constant)."""
    vt = masked_moments(targets, mask)[1]
    residual = masked_moments(targets - values, mask)[1]
    return jnp.where(vt > 1e-8, 1.0 - residual / jnp.maximum(vt, 1e-8), 0.0)
