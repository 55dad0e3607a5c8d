"""One pure, jitted train step shared by the five experiments; only the token weights differ.

    loss = sum_k lambda_k * (sum_{b,p} w[b,p,k] * CE[b,p,k]) / D_k  +  value_coef * sum_p l(V_p - target_p) / D_V

``w`` is 1 (baseline, ref_tuning), the TD-exp weight (verifiable) or the Rho-1 weight (rho1), optionally
shuffled over the valid targets (``control``). ``D_k`` is the number of valid targets of head k in the
*global* batch ("valid" normaliser; Rho-1 may use "selected": the number of selected targets), ``D_V`` the
number of value targets. Denominators come from the masks of the whole batch before any forward pass, so
accumulating the gradients of ``grad_accum_steps`` micro-batches gives exactly the big-batch gradient.
critic (stage 1) has no CE term and differentiates only the value head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from wmtp_jax import losses, sharding
from wmtp_jax.weighting import common, rho1, td

EXPERIMENTS = ("baseline", "critic", "verifiable", "rho1", "ref_tuning")
BATCH_KEYS = ("tokens", "loss_mask", "rewards", "segment_ids", "positions")
WEIGHT_HIST_BINS, WEIGHT_HIST_MAX = 40, 5.0  # histogram of token weights (weights above the max land in no bin)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step (hashable: part of the jit cache key)."""

    experiment: str = "baseline"
    grad_accum_steps: int = 1
    head_weights: tuple[float, ...] = (1.0,)
    ce_chunk: int = 256
    control: bool = False
    # verifiable (TD) weights, DESIGN.md section 4
    gamma: float = 1.0
    gae_lambda: float = 0.0
    beta: float = 0.9
    w_min: float = 0.1
    w_max: float = 5.0
    whiten: bool = False
    ema_decay: float = 0.99
    # value loss
    value_coef: float = 0.5
    value_loss: str = "mse"
    huber_delta: float = 1.0
    value_target: str = "mc"            # "mc" (R) or "lambda" (lambda-return V + A)
    # rho1 weights, DESIGN.md section 5
    rho1_mode: str = "signed"
    rho1_select: str = "hard"
    rho1_ratio: float = 0.6
    rho1_temperature: float = 1.0
    rho1_eps: float = 0.05
    rho1_w_max: float = 3.0
    rho1_normalize: str = "selected"    # "selected" (Rho-1 eq. 4) or "valid"

    @property
    def trains_policy(self) -> bool:
        return self.experiment != "critic"

    @property
    def trains_value(self) -> bool:
        return self.experiment in ("critic", "verifiable")


def trainable_filter(experiment: str):
    """nnx filter of the parameters an experiment trains (the rest is frozen and gets no optimizer state)."""
    if experiment == "critic":
        return nnx.All(nnx.Param, nnx.PathContains("value_head"))
    if experiment == "verifiable":
        return nnx.Param
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("value_head")))


def make_optimizer(learning_rate: float, warmup_steps: int, total_steps: int, *, end_lr_fraction: float = 0.1,
                   b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.1,
                   max_grad_norm: float = 1.0):
    """AdamW with linear warmup + cosine decay (optax), after global-norm clipping. Returns (tx, schedule)."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, max(warmup_steps, 1), max(total_steps, warmup_steps + 1), learning_rate * end_lr_fraction)
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # no decay on norms and biases
    tx = optax.chain(optax.clip_by_global_norm(max_grad_norm) if max_grad_norm > 0 else optax.identity(),
                     optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask))
    return tx, schedule


def _micro_batches(batch: dict[str, jax.Array], n: int, mesh: Mesh | None) -> dict[str, jax.Array]:
    """``[B, ...]`` -> ``[n, B/n, ...]`` with micro-batch a = rows a, a+n, ... (each spans every device)."""
    rows = next(iter(batch.values())).shape[0]
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % n or (rows // n) % shards:
        raise ValueError(f"batch of {rows} rows cannot form {n} micro-batches that each divide over {shards} "
                         "data-parallel devices")

    def split(x):
        x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
        if mesh is not None:
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))
        return x
    return {k: split(v) for k, v in batch.items()}


def denominators(cfg: StepConfig, micro: dict[str, jax.Array], n_heads: int) -> dict[str, jax.Array]:
    """Normalisers of the global batch from its masks alone: ``{"ce": [H], "value": scalar}``."""
    def per_micro(mb):
        _, valid = losses.mtp_targets(mb["tokens"], mb["loss_mask"], mb["segment_ids"], n_heads)
        n_valid = valid.sum(axis=(0, 1)).astype(jnp.float32)
        if cfg.experiment == "rho1" and cfg.rho1_select == "hard" and cfg.rho1_normalize == "selected":
            n_valid = jnp.ceil(cfg.rho1_ratio * n_valid)
        return n_valid, valid[..., 0].sum().astype(jnp.float32)
    ce, value = jax.vmap(per_micro)(micro)
    return {"ce": jnp.maximum(ce.sum(0), 1.0), "value": jnp.maximum(value.sum(), 1.0)}


def _reference_ce(reference, mb) -> jax.Array:
    """The frozen reference's next-token CE, target-token aligned ``[B, S]`` (no gradient)."""
    targets, _ = losses.mtp_targets(mb["tokens"], mb["loss_mask"], mb["segment_ids"], 1)
    out = reference.forward(mb["tokens"], mb["positions"], mb["segment_ids"])
    ce = losses.token_ce(reference.output[...], out.head_hidden, targets, dtype=reference.cfg.compute_dtype)
    return jax.lax.stop_gradient(losses.token_aligned_ce(ce[..., 0]))


def micro_batch_loss(cfg: StepConfig, model, reference, mb, denom, ema, key):
    """Loss of one micro-batch (already divided by the global normalisers) and its metrics."""
    n_heads = model.cfg.n_future_tokens
    targets, valid = losses.mtp_targets(mb["tokens"], mb["loss_mask"], mb["segment_ids"], n_heads)
    out = model.forward(mb["tokens"], mb["positions"], mb["segment_ids"])
    metrics: dict[str, jax.Array] = {}
    total = jnp.zeros((), jnp.float32)
    new_ema, adv = ema, None
    if cfg.trains_value:  # critic and verifiable: TD errors from the value head
        w_tok, adv, whitened_ema = td.td_weights(
            out.values, mb["rewards"], mb["loss_mask"], gamma=cfg.gamma, lam=cfg.gae_lambda, beta=cfg.beta,
            w_min=cfg.w_min, w_max=cfg.w_max, ema=ema if cfg.whiten else None, ema_decay=cfg.ema_decay)
        if cfg.whiten:
            new_ema = whitened_ema
    if cfg.trains_policy:
        ce = losses.token_ce(model.output[...], out.head_hidden, targets, chunk=cfg.ce_chunk,
                             dtype=model.cfg.compute_dtype)
        if cfg.experiment == "verifiable":
            weights = common.per_head(w_tok, n_heads)
        elif cfg.experiment == "rho1":
            ref_tok = mb["ref_ce"] if "ref_ce" in mb else _reference_ce(reference, mb)
            weights = rho1.rho1_weights(ce, common.per_head(ref_tok, n_heads), valid, mode=cfg.rho1_mode,
                                        select=cfg.rho1_select, ratio=cfg.rho1_ratio,
                                        temperature=cfg.rho1_temperature, eps=cfg.rho1_eps, w_max=cfg.rho1_w_max)
        else:
            weights = jnp.ones_like(ce)
        if cfg.control:
            weights = common.control_shuffle(weights, valid, key)
        weights = jax.lax.stop_gradient(weights)
        head_loss = losses.weighted_ce_sums(ce, weights, valid) / denom["ce"]
        total = total + jnp.dot(jnp.asarray(cfg.head_weights, jnp.float32), head_loss)
        metrics["loss_head"] = head_loss
        metrics["ce_head"] = jnp.sum(jnp.where(valid, ce, 0.0), axis=(0, 1)) / denom["ce"]
        metrics.update(common.weight_stats(weights, valid))
        metrics["weight_hist"] = jnp.histogram(weights, bins=WEIGHT_HIST_BINS, range=(0.0, WEIGHT_HIST_MAX),
                                               weights=valid.astype(jnp.float32))[0]
    if cfg.trains_value:
        value_mask = valid[..., 0]  # V(s_p) for states followed by an output token
        target = mb["rewards"] if cfg.value_target == "mc" else jax.lax.stop_gradient(
            out.values + common.shift_left(adv, 1))
        value_loss = losses.value_loss_sum(out.values, target, value_mask, cfg.value_loss, cfg.huber_delta) / denom["value"]
        total = total + (cfg.value_coef if cfg.trains_policy else 1.0) * value_loss
        metrics["value_loss"] = value_loss
        vm = value_mask.astype(jnp.float32)
        n = jnp.maximum(vm.sum(), 1.0)
        metrics["value_mean"] = (out.values * vm).sum() / n
        metrics["value_explained_variance"] = losses.explained_variance(out.values, target, value_mask)
        m = mb["loss_mask"].astype(jnp.float32)
        metrics["td_error_mean"] = (adv * m).sum() / jnp.maximum(m.sum(), 1.0)
        metrics["td_error_std"] = jnp.sqrt((jnp.square(adv - metrics["td_error_mean"]) * m).sum() / jnp.maximum(m.sum(), 1.0))
    metrics["loss"] = total
    return total, (metrics, new_ema)


_MIN_KEYS, _MAX_KEYS = ("weight_min",), ("weight_max",)
_SUM_KEYS = ("loss", "loss_head", "ce_head", "value_loss", "weight_hist")


def _combine(acc, m, n):
    """Accumulates micro-batch metrics: sums for losses, min/max for extremes, means otherwise."""
    out = {}
    for k, v in m.items():
        if k in _MIN_KEYS:
            out[k] = jnp.minimum(acc[k], v)
        elif k in _MAX_KEYS:
            out[k] = jnp.maximum(acc[k], v)
        elif k in _SUM_KEYS:
            out[k] = acc[k] + v
        else:
            out[k] = acc[k] + v / n
    return out


def make_train_step(cfg: StepConfig, graphdef, tx, schedule, mesh: Mesh | None = None, ref_graphdef=None):
    """Returns ``step(state, frozen, reference_state, batch) -> (state, metrics)`` (pure; jit it).

    ``state = {"step", "params" (trainable nnx.State), "opt_state", "ema", "rng"}``; ``frozen`` is the
    frozen part of the model's state; ``reference_state`` the Rho-1 reference (or None).
    """
    def step(state, frozen, reference_state, batch):
        if mesh is None:
            return _step(state, frozen, reference_state, batch)
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # lets the model pin activations to the batch axes
            return _step(state, frozen, reference_state, batch)

    def _step(state, frozen, reference_state, batch):
        n = cfg.grad_accum_steps
        micro = _micro_batches(batch, n, mesh)
        model0 = nnx.merge(graphdef, state["params"], frozen)
        n_heads = model0.cfg.n_future_tokens
        denom = denominators(cfg, micro, n_heads)
        reference = nnx.merge(ref_graphdef, reference_state) if reference_state is not None else None
        key = jax.random.fold_in(state["rng"], state["step"])

        def loss_fn(params, mb, ema, k):
            return micro_batch_loss(cfg, nnx.merge(graphdef, params, frozen), reference, mb, denom, ema, k)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        shapes = jax.eval_shape(lambda: loss_fn(state["params"], jax.tree.map(lambda x: x[0], micro), state["ema"], key))
        metrics0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1][0])
        metrics0 = {k: (jnp.full_like(v, jnp.inf) if k in _MIN_KEYS else jnp.full_like(v, -jnp.inf) if k in _MAX_KEYS
                        else v) for k, v in metrics0.items()}

        def body(carry, xs):
            grads, metrics, ema = carry
            mb, i = xs
            (_, (m, ema)), g = grad_fn(state["params"], mb, ema, jax.random.fold_in(key, i))
            return (jax.tree.map(jnp.add, grads, g), _combine(metrics, m, n), ema), None

        zeros = jax.tree.map(jnp.zeros_like, state["params"])
        if n == 1:  # no loop: XLA:CPU runs while-loop bodies far slower than straight-line code
            (grads, metrics, ema), _ = body((zeros, metrics0, state["ema"]),
                                            (jax.tree.map(lambda x: x[0], micro), jnp.zeros((), jnp.int32)))
        else:
            (grads, metrics, ema), _ = jax.lax.scan(body, (zeros, metrics0, state["ema"]), (micro, jnp.arange(n)))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)

        def update(params, opt_state):
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        # a non-finite step leaves parameters and optimizer state untouched; lax.cond (not a select between
        # old and new) lets XLA update them in place, without copies of the optimizer state
        params, opt_state = jax.lax.cond(finite, update, lambda p, o: (p, o), state["params"], state["opt_state"])
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
                     "ema": jax.tree.map(lambda a, b: jnp.where(finite, a, b), ema, state["ema"]),
                     "rng": state["rng"]}
        metrics.update(grad_norm=grad_norm, learning_rate=schedule(state["step"]), finite=finite,
                       target_tokens=denom["ce"].max() if cfg.trains_policy else denom["value"],
                       tokens=jnp.sum(batch["segment_ids"] > 0))
        return new_state, metrics

    return step


def jit_train_step(step, state, frozen, reference_state, mesh: Mesh):
    """``jax.jit`` of ``step`` with explicit in/out shardings (state, frozen and reference keep their
    parameter shardings; batch rows split over the batch axes) and the state donated."""
    def shardings_of(tree):
        return jax.tree.map(lambda x: x.sharding, tree)

    state_shardings = shardings_of(state)
    batch = sharding.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(state_shardings, shardings_of(frozen), shardings_of(reference_state), batch),
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))


def init_state(params, tx, seed: int, mesh: Mesh | None = None) -> dict[str, Any]:
    """Train state for trainable ``params``: optimizer state follows the params' shardings, the small
    bookkeeping arrays (step, TD-whitening EMA, rng) are replicated over ``mesh``."""
    small = {"step": jnp.zeros((), jnp.int32), "ema": {"mean": jnp.zeros(()), "var": jnp.zeros(()),
                                                       "count": jnp.zeros(())},
             "rng": jax.random.key_data(jax.random.key(seed))}
    state = {**small, "params": params, "opt_state": jax.jit(tx.init)(params)}
    if mesh is not None:  # scalars (step, optimizer counts, ...) would otherwise sit on device 0 only
        state = jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding)
                             else jax.device_put(x, sharding.replicated(mesh)), state)
    return state


def state_rng(state) -> jax.Array:
    return jax.random.wrap_key_data(state["rng"])
