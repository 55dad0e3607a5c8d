"""The training loss as a composition of terms, chosen once when the train step is built.

    loss = r * sum_k lambda_k * (sum_{b,p} w[b,p,k] * CE[b,p,k]) / D_k  [+ c_anchor * ||theta_V - theta_V1||^2]
           + c_V * value_loss

(``docs/formulas.md``, "The training loss"). ``compose(objective, cfg, anchor)`` returns the terms an objective's
loss is made of, in the order they run (and add up):

  values     where V comes from: the policy's value head, a frozen separate critic, or a co-trained one
             (``VALUE_SOURCES``)
  td         TD errors, advantages and TD-exp token weights from V (objectives whose weights or value target
             need them)
  policy     the weighted multi-head CE; the CE function (full vocabulary or only the valid targets, with or
             without the entropy) is chosen from ``CE_FUNCTIONS`` by the config and the scheme's needs
  anchor     the distance of a stage-2 value head from stage 1's (monitor, optional penalty)
  value      the value loss, one of ``VALUE_LOSSES`` (regression: mse / huber; clipped around stage 1's head;
             pairwise Bradley-Terry)

The five objectives are these compositions: baseline / ref_tuning / rho1 = [policy]; critic = [values, td,
value]; verifiable = [values, td, policy, (anchor,) value] with its own head, [values (frozen critic), td,
policy] with a frozen separate critic, [values (co-trained critic), td, policy, value] with a co-trained one.

Each term is ``term(ctx) -> loss contribution or None``; ``ctx`` (``LossContext``) carries what earlier terms
computed. ``step.micro_batch_loss`` runs them without looking at the objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wmtp_jax import alignment, losses
from wmtp_jax.train.objectives import Objective, Signals, td_weights
from wmtp_jax.weighting import common

WEIGHT_HIST_BINS, WEIGHT_HIST_MAX = 40, 5.0  # histogram of token weights (weights above the max land in no bin)
CRITIC_DROPOUT_STREAM = 2  # fold_in(micro-batch key, this) seeds a co-trained critic's dropout


@dataclasses.dataclass
class LossContext:
    """One micro-batch's shared values. Set before the terms run: ``model`` (the policy), ``reference`` (the frozen
    second model or co-trained critic, or None), ``mb`` (the micro-batch), ``denom`` (the global normalisers),
    ``ema`` (TD whitening), ``key`` (the micro-batch's PRNG key), ``out`` (the policy's forward output),
    ``targets`` / ``valid`` ([B, S, H] MTP targets and their mask).
    Set by the terms: ``values`` / ``vout`` / ``vmodel`` (the value predictions, the output and model of the
    trained value head), ``token_weights`` / ``advantages`` (TD), and ``metrics``."""

    model: Any
    reference: Any
    mb: dict[str, jax.Array]
    denom: dict[str, jax.Array]
    ema: dict[str, jax.Array]
    key: jax.Array
    out: Any
    targets: jax.Array
    valid: jax.Array
    values: jax.Array | None = None
    vout: Any = None
    vmodel: Any = None
    token_weights: jax.Array | None = None
    advantages: jax.Array | None = None
    metrics: dict[str, jax.Array] = dataclasses.field(default_factory=dict)

    @property
    def value_mask(self) -> jax.Array:
        """[B, S] bool: V(s_p) of states followed by an output token."""
        return self.valid[..., 0]


Term = Callable[[LossContext], "jax.Array | None"]


# ------------------------------------------------------------------------------------------ where V comes from
def _values_from_policy(ctx: LossContext) -> None:
    ctx.values, ctx.vout, ctx.vmodel = ctx.out.values, ctx.out, ctx.model


def _critic_forward(ctx: LossContext, key):
    mb = ctx.mb
    return ctx.reference.forward(
        mb["tokens"], mb["positions"], mb["segment_ids"], key if ctx.reference.has_dropout() else None
    )


def _values_from_frozen_critic(ctx: LossContext) -> None:
    ctx.values = jax.lax.stop_gradient(_critic_forward(ctx, None).values)
    ctx.vout, ctx.vmodel = ctx.out, ctx.model


def _values_from_co_trained_critic(ctx: LossContext) -> None:
    critic_out = _critic_forward(ctx, jax.random.fold_in(ctx.key, CRITIC_DROPOUT_STREAM))
    ctx.values, ctx.vout, ctx.vmodel = critic_out.values, critic_out, ctx.reference


VALUE_SOURCES: dict[str, Term] = {
    "policy": _values_from_policy,
    "frozen_critic": _values_from_frozen_critic,
    "co_trained_critic": _values_from_co_trained_critic,
}


# ------------------------------------------------------------------------------------------ TD errors
def _td_term(objective: Objective) -> Term:
    def td(ctx: LossContext) -> None:
        ctx.token_weights, ctx.advantages, ctx.ema = td_weights(objective.weighting, ctx.values, ctx.mb, ctx.ema)
        ctx.metrics["value_mean"] = alignment.masked_moments(ctx.values, ctx.value_mask)[0]
        td_mean, td_var, _ = alignment.masked_moments(ctx.advantages, ctx.mb["loss_mask"])
        ctx.metrics["td_error_mean"] = td_mean
        ctx.metrics["td_error_std"] = jnp.sqrt(td_var)

    return td


# ------------------------------------------------------------------------------------------ the policy term
def _ce_full(project, hidden, targets, valid, cfg):
    return losses.token_ce(project, hidden, targets, chunk=cfg.ce_chunk), None, {}


def _ce_full_entropy(project, hidden, targets, valid, cfg):
    ce, entropy = losses.token_ce_entropy(project, hidden, targets, chunk=cfg.ce_chunk)
    return ce, entropy, {}


def _ce_valid(project, hidden, targets, valid, cfg):
    ce, over = losses.valid_token_ce(project, hidden, targets, valid, capacity=cfg.ce_tokens, chunk=cfg.ce_chunk)
    return ce, None, {"ce_tokens_over": over}


def _ce_valid_entropy(project, hidden, targets, valid, cfg):
    ce, entropy, over = losses.valid_token_ce_entropy(
        project, hidden, targets, valid, capacity=cfg.ce_tokens, chunk=cfg.ce_chunk
    )
    return ce, entropy, {"ce_tokens_over": over}


# (only the valid targets are projected: train.ce_tokens > 0, the scheme needs the entropy) -> CE function
CE_FUNCTIONS = {
    (False, False): _ce_full,
    (False, True): _ce_full_entropy,
    (True, False): _ce_valid,
    (True, True): _ce_valid_entropy,
}


def _policy_term(objective: Objective, cfg) -> Term:
    ce_fn = CE_FUNCTIONS[(bool(cfg.ce_tokens), objective.needs("entropy"))]
    reduce = 1.0 / len(cfg.head_weights) if cfg.head_reduce == "mean" else None
    head_weights = cfg.head_weights

    def policy(ctx: LossContext) -> jax.Array:
        valid, denom = ctx.valid, ctx.denom
        ce, entropy, extra = ce_fn(ctx.model.output_projection(), ctx.out.head_hidden, ctx.targets, valid, cfg)
        ctx.metrics.update(extra)
        if entropy is not None:
            ctx.metrics["entropy_mean"] = alignment.masked_moments(entropy, valid)[0]
        signals = Signals(
            ce=ce,
            valid=valid,
            entropy=entropy,
            batch=ctx.mb,
            n_heads=valid.shape[-1],
            reference=ctx.reference,
            td_weights=ctx.token_weights,
            ce_tokens=cfg.ce_tokens,
        )
        weights = objective.weights(signals)
        if objective.weighting.control:
            weights = common.control_shuffle(weights, valid, ctx.key)
        weights = jax.lax.stop_gradient(weights)
        if objective.uses_td:
            ctx.metrics["weight_entropy"] = losses.weight_entropy(weights[..., 0], valid[..., 0])
        head_loss = losses.weighted_ce_sums(ce, weights, valid) / denom["ce"]
        policy_loss = jnp.dot(jnp.asarray(head_weights, jnp.float32), head_loss)
        ctx.metrics["loss_head"] = head_loss
        ctx.metrics["ce_head"] = jnp.sum(jnp.where(valid, ce, 0.0), axis=(0, 1)) / denom["ce"]
        ctx.metrics.update(common.weight_stats(weights, valid))
        ctx.metrics["weight_hist"] = jnp.histogram(
            weights, bins=WEIGHT_HIST_BINS, range=(0.0, WEIGHT_HIST_MAX), weights=valid.astype(jnp.float32)
        )[0]
        return policy_loss if reduce is None else policy_loss / len(head_weights)

    return policy


# ------------------------------------------------------------------------------------------ the value term
def _value_target(objective: Objective) -> Callable[[LossContext], jax.Array]:
    if objective.weighting.value_target == "mc":
        return lambda ctx: ctx.mb["rewards"]
    return lambda ctx: jax.lax.stop_gradient(ctx.vout.values + alignment.shift_left(ctx.advantages, 1))


def _regression_loss(objective: Objective, anchor) -> Term:
    w, target_of = objective.weighting, _value_target(objective)

    def regression(ctx: LossContext) -> jax.Array:
        target = target_of(ctx)
        loss = losses.value_loss_sum(ctx.vout.values, target, ctx.value_mask, w.value_loss, w.huber_delta)
        return _report(ctx, loss / ctx.denom["value"], target)

    return regression


def _clipped_loss(objective: Objective, anchor) -> Term:
    """V kept within +- ``critic.value_clip`` of stage 1's head (PPO-style value clipping)."""
    w, clip, target_of = objective.weighting, objective.critic.value_clip, _value_target(objective)

    def clipped(ctx: LossContext) -> jax.Array:
        target = target_of(ctx)
        anchor_head = nnx.merge(nnx.graphdef(ctx.vmodel.value_head), anchor)
        anchor_values = anchor_head(ctx.vout.value_input)[..., 0]
        loss = losses.clipped_value_loss_sum(
            ctx.vout.values, anchor_values, target, ctx.value_mask, clip, w.value_loss, w.huber_delta
        )
        return _report(ctx, loss / ctx.denom["value"], target)

    return clipped


def _pairwise_loss(objective: Objective, anchor) -> Term:
    """Bradley-Terry on the final values of (correct, incorrect) pairs (config: grad_accum_steps 1)."""
    target_of = _value_target(objective)

    def pairwise(ctx: LossContext) -> jax.Array:
        mask = ctx.mb["loss_mask"]
        final, has_output = alignment.last_output(ctx.vout.values, mask)
        pair_sum, n_pairs = losses.pairwise_value_loss_sum(
            final, alignment.last_output(ctx.mb["rewards"], mask)[0], has_output
        )
        ctx.metrics["value_pairs"] = n_pairs
        return _report(ctx, pair_sum / jnp.maximum(n_pairs, 1.0), target_of(ctx))

    return pairwise


def _report(ctx: LossContext, value_loss: jax.Array, target: jax.Array) -> jax.Array:
    ctx.metrics["value_loss"] = value_loss
    ctx.metrics["value_explained_variance"] = losses.explained_variance(ctx.vout.values, target, ctx.value_mask)
    return value_loss


# value-loss kind -> factory(objective, anchor) -> term
VALUE_LOSSES: dict[str, Callable[[Objective, Any], Term]] = {
    "regression": _regression_loss,
    "clipped": _clipped_loss,
    "pairwise": _pairwise_loss,
}


def _scaled(term: Term, coef: float) -> Term:
    return lambda ctx: coef * term(ctx)


def _anchor_term(objective: Objective, cfg, anchor) -> Term:
    """Reports the L2 distance of the trained value head from stage 1's; with ``critic.anchor_coef`` > 0 adds
    ``coef * ||theta - theta_1||^2 / n`` per micro-batch (n = ``grad_accum_steps``: coef * sq per step)."""
    coef = objective.critic.anchor_coef

    def anchor_distance(ctx: LossContext) -> jax.Array | None:
        head = nnx.state(ctx.vmodel.value_head, nnx.Param)
        sq = sum(
            jnp.sum(jnp.square(a.astype(jnp.float32) - b))
            for a, b in zip(jax.tree.leaves(head), jax.tree.leaves(anchor))
        )
        ctx.metrics["critic_param_distance"] = jnp.sqrt(sq)
        return coef * sq / cfg.grad_accum_steps if coef > 0 else None

    return anchor_distance


# ------------------------------------------------------------------------------------------ composition
def value_source(objective: Objective) -> str:
    """The ``VALUE_SOURCES`` key of ``objective``."""
    if not objective.separate_critic:
        return "policy"
    return "co_trained_critic" if objective.co_trains_critic else "frozen_critic"


def value_loss_kind(objective: Objective, anchor) -> str:
    """The ``VALUE_LOSSES`` key of ``objective`` (clipping needs stage 1's head, ``anchor``)."""
    if objective.weighting.value_loss == "pairwise":
        return "pairwise"
    return "clipped" if anchor is not None and objective.critic.value_clip > 0 else "regression"


def compose(objective: Objective, cfg, anchor=None) -> tuple[Term, ...]:
    """The loss terms of ``objective`` with the step settings ``cfg`` (a ``StepConfig`` with one head weight per
    head) and stage 1's value-head parameters ``anchor`` (or None), in the order they run."""
    terms: list[Term] = []
    if objective.uses_td:
        terms += [VALUE_SOURCES[value_source(objective)], _td_term(objective)]
    if objective.trains_policy:
        terms.append(_policy_term(objective, cfg))
    if objective.trains_value_head:
        if anchor is not None:
            terms.append(_anchor_term(objective, cfg, anchor))
        value = VALUE_LOSSES[value_loss_kind(objective, anchor)](objective, anchor)
        terms.append(_scaled(value, objective.value_coef))
    return tuple(terms)
