"""TD-error exponential weights from the value head (``docs/formulas.md``, "TD-exp weights").

States: ``s_{t-1}`` is the prefix before output token ``x_t`` (value ``V[t-1]``, read at position t-1),
``s_t`` the prefix after it (``V[t]``). For output tokens (``loss_mask[t] = 1``):

    intermediate:  delta_t = gamma * V[t] - V[t-1]
    terminal:      delta_T = R - V[T-1]              (T = last output token, the EOS; R = 1 if correct else 0)
    GAE(lambda):   A_t = delta_t + gamma * lambda * A_{t+1}   (reverse ``lax.scan``, reset at sequence ends)
    weight:        w_t = clip(exp(A_t / beta), w_min, w_max)   (A = delta when lambda = 0)

The value before the first output token is the value at the prompt's last position, as the formula gives.
Weights are constants for the policy gradient (``stop_gradient``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wmtp_jax.alignment import masked_moments, shift_left
from wmtp_jax.weighting.base import TokenStats, TokenWeighting, register


def td_errors(values: jax.Array, rewards: jax.Array, loss_mask: jax.Array, gamma: float = 1.0) -> jax.Array:
    """delta ``[B, S]`` (float32), target-token aligned, 0 outside the output tokens.

    Args:
      values: float32 ``[B, S]``; ``values[:, t]`` = V(state after reading token t).
      rewards: float32 ``[B, S]``; the sequence reward R on every token of the sequence.
      loss_mask: ``[B, S]``, 1 on output tokens (and EOS).
    """
    mask = loss_mask.astype(bool)
    v_prev = jnp.concatenate([jnp.zeros_like(values[:, :1]), values[:, :-1]], axis=1)  # V[t-1]
    terminal = mask & ~shift_left(mask, 1, False)
    delta = jnp.where(terminal, rewards - v_prev, gamma * values - v_prev)
    return jnp.where(mask, delta, 0.0).astype(jnp.float32)


def gae(delta: jax.Array, loss_mask: jax.Array, gamma: float = 1.0, lam: float = 0.0) -> jax.Array:
    """Advantages ``A_t = delta_t + gamma*lambda*A_{t+1}`` within each output span, by a reverse scan over S."""
    mask = loss_mask.astype(bool)
    cont = shift_left(mask, 1, False) & mask  # the next token continues the same output span

    def step(carry, x):
        d, m, c = x
        a = jnp.where(m, d + gamma * lam * jnp.where(c, carry, 0.0), 0.0)
        return a, a

    xs = (delta.T, mask.T, cont.T)  # scan over time
    _, adv = jax.lax.scan(step, jnp.zeros(delta.shape[0], delta.dtype), xs, reverse=True)
    return adv.T


def whiten(delta: jax.Array, loss_mask: jax.Array, ema: dict[str, jax.Array], decay: float):
    """Normalises ``delta`` by an EMA (initialised at 0, bias-corrected) of its mean and variance over output tokens.

    Returns ``(whitened delta, new ema)``; ``ema = {"mean", "var", "count"}`` (bias-corrected by ``count``).
    """
    batch_mean, batch_var, _ = masked_moments(delta, loss_mask)
    count = ema["count"] + 1.0
    mean = decay * ema["mean"] + (1 - decay) * batch_mean
    var = decay * ema["var"] + (1 - decay) * batch_var
    correction = 1.0 - decay**count
    out = (delta - mean / correction) * jax.lax.rsqrt(var / correction + 1e-8)
    return jnp.where(loss_mask.astype(bool), out, 0.0), {"mean": mean, "var": var, "count": count}


def td_weights(
    values, rewards, loss_mask, *, gamma=1.0, lam=0.0, beta=0.9, w_min=0.1, w_max=5.0, ema=None, ema_decay=0.99
):
    """Token weights ``[B, S]`` (stop-gradient) and diagnostics.

    Returns ``(weights, advantages, new_ema)``; ``new_ema`` is None when whitening is off (``ema`` None).
    """
    values = jax.lax.stop_gradient(values)
    delta = td_errors(values, rewards, loss_mask, gamma)
    adv = gae(delta, loss_mask, gamma, lam) if lam > 0 else delta
    new_ema = None
    if ema is not None:
        adv, new_ema = whiten(adv, loss_mask, ema, ema_decay)
    weights = jnp.clip(jnp.exp(adv / beta), w_min, w_max)
    weights = jnp.where(loss_mask.astype(bool), weights, 0.0)
    return jax.lax.stop_gradient(weights), jax.lax.stop_gradient(adv), new_ema


@register
class TD(TokenWeighting):
    """The TD-exp weights of the value head (``td_weights`` with the ``weighting`` TD keys, computed by the verifiable
    objective's step), each head weighted by its target token's weight; ``D_k`` = valid count."""

    name = "td"
    needs = frozenset({"td_weights"})

    def weights(self, stats: TokenStats) -> jax.Array:
        return stats.td_weights
