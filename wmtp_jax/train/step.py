"""One pure, jitted train step shared by every objective; only the token weights differ.

    loss = r * sum_k lambda_k * (sum_{b,p} w[b,p,k] * CE[b,p,k]) / D_k  +  c_V * sum_p l(V_p - target_p) / D_V

(r = 1, or 1/H with ``train.head_reduce=mean``). The objective (``wmtp_jax.train.objectives``) and its token
weighting (``wmtp_jax.weighting``) supply ``w``, ``D_k``, ``c_V`` and which terms are present;
``w`` may be shuffled over the valid targets (``weighting.control``). ``D_k`` comes from the number of valid
targets of head k in the *global* batch, ``D_V`` is the number of value targets; both are computed from the
masks of the whole batch before any forward pass, so accumulating the gradients of ``grad_accum_steps``
micro-batches gives exactly the big-batch gradient (``docs/formulas.md``, "The training loss").
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wmtp_jax import alignment, sharding
from wmtp_jax.schema import Section
from wmtp_jax.train import loss_terms
from wmtp_jax.train.objectives import Objective, frozen_ce

BATCH_KEYS = ("tokens", "loss_mask", "rewards", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class StepConfig(Section):
    """Static settings of the train step from the ``train`` section (hashable: part of the jit cache key).

    ``head_weights``: the loss weight lambda_k of each head; () = 1 for every head (``for_heads`` resolves it).
    ``head_reduce``: how the heads' weighted losses combine: "sum" (``sum_k lambda_k loss_k``) or "mean" (the same
    divided by the number of heads H, the ``(1/H) sum_k`` of the design documents).
    ``ce_tokens``: 0 projects every position onto the vocabulary (``losses.token_ce``); N > 0 only the valid
    targets, at most N per micro-batch (``losses.valid_token_ce``; more is an error naming this key).
    """

    grad_accum_steps: int = 1
    head_weights: tuple[float, ...] = ()
    ce_chunk: int = 256
    ce_tokens: int = 0  # > 0: project only the valid (position, head) targets, at most this many per micro-batch
    head_reduce: str = "sum"  # sum | mean over the heads' weighted losses

    def for_heads(self, n_heads: int) -> StepConfig:
        """This config with one head weight per head; raises ValueError for a wrong count."""
        weights = tuple(self.head_weights) or (1.0,) * n_heads
        if len(weights) != n_heads:
            raise ValueError(f"train.head_weights={weights}: expected {n_heads} values (one per head)")
        return dataclasses.replace(self, head_weights=weights)

    def problems(self, prefix: str = "train") -> list[str]:
        c = self.checker(prefix)
        for key in ("grad_accum_steps", "ce_chunk"):
            c.positive(key)
        c.non_negative("ce_tokens")
        c.one_of("head_reduce", ("sum", "mean"))
        c.check(
            "head_weights",
            lambda v: all(isinstance(x, (int, float)) and x >= 0 for x in v),
            "() or one non-negative loss weight per head",
        )
        return c.found


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Section):
    """AdamW with linear warmup and cosine decay from the ``train`` section (``num_steps`` is the schedule length)."""

    learning_rate: float = 1e-5
    warmup_steps: int = 50
    num_steps: int = 1000
    end_lr_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0

    def problems(self, prefix: str = "train") -> list[str]:
        c = self.checker(prefix)
        c.positive("num_steps")
        c.positive("learning_rate", integer=False)
        c.non_negative("warmup_steps")
        for key in ("end_lr_fraction", "b1", "b2"):
            c.fraction(key)
        c.check("weight_decay", lambda v: v >= 0, "a non-negative number")
        c.check("max_grad_norm", lambda v: v >= 0, "a non-negative number (0 = no clipping)")
        return c.found


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: ``step`` (int32), the trained ``params`` (an ``nnx.State``), the optimizer
    state, the TD-whitening ``ema`` ({mean, var, count}), the ``rng`` key data (uint32 [2]) and the trained
    parameters of a co-trained separate ``critic`` (``critic.co_train``; else None; the optimizer state then
    covers ``(params, critic)``) and the ``history`` copy of ``params`` a scheme compares the policy with (ssToken's
    EMA, ``weighting.history_decay``, in ``weighting.history_dtype``; else None). Checkpoints store these names."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema: dict[str, jax.Array]
    rng: jax.Array
    critic: Any = None
    history: Any = None

    @property
    def trained(self):
        """What the optimizer updates: ``params``, or ``(params, critic)`` with a co-trained critic."""
        return self.params if self.critic is None else (self.params, self.critic)

    @property
    def key(self) -> jax.Array:
        return jax.random.wrap_key_data(self.rng)


def make_optimizer(o: OptimizerConfig):
    """AdamW with linear warmup + cosine decay (optax), after global-norm clipping. Returns (tx, schedule)."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        o.learning_rate,
        max(o.warmup_steps, 1),
        max(o.num_steps, o.warmup_steps + 1),
        o.learning_rate * o.end_lr_fraction,
    )
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
    tx = optax.chain(
        optax.clip_by_global_norm(o.max_grad_norm) if o.max_grad_norm > 0 else optax.identity(),
        optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask),
    )
    return tx, schedule


def _micro_batches(batch: dict[str, jax.Array], n: int, mesh: Mesh | None) -> dict[str, jax.Array]:
    """``[B, ...]`` -> ``[n, B/n, ...]`` with micro-batch a = rows a, a+n, ... (each spans every device)."""
    rows = next(iter(batch.values())).shape[0]
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % n or (rows // n) % shards:
        raise ValueError(
            f"batch of {rows} rows cannot form {n} micro-batches that each divide over {shards} data-parallel devices"
        )

    def split(x):
        x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
        if mesh is not None:
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))
        return x

    return {k: split(v) for k, v in batch.items()}


def denominators(objective: Objective, micro: dict[str, jax.Array], n_heads: int) -> dict[str, jax.Array]:
    """Normalisers of the global batch from its masks alone: ``{"ce": [H], "value": scalar}``."""

    def per_micro(mb):
        _, valid = alignment.mtp_targets(mb["tokens"], mb["loss_mask"], mb["segment_ids"], n_heads)
        n_valid = objective.denominator(valid.sum(axis=(0, 1)).astype(jnp.float32))
        return n_valid, valid[..., 0].sum().astype(jnp.float32)

    ce, value = jax.vmap(per_micro)(micro)
    return {"ce": jnp.maximum(ce.sum(0), 1.0), "value": jnp.maximum(value.sum(), 1.0)}


def value_head_anchor(model, required: bool = False) -> nnx.State | None:
    """A float32 copy of ``model``'s value-head parameters (linear or MLP; the anchor of ``Objective.uses_anchor``),
    or None for an abstract model (the dry run) or one whose arrays an earlier trainer's step donated.

    Raises:
      ValueError: ``required`` (value clipping or the anchor penalty is on) and the arrays were donated."""
    state = nnx.state(model.value_head, nnx.Param)
    leaves = jax.tree.leaves(state)
    if not all(isinstance(x, jax.Array) for x in leaves):
        return None
    if any(x.is_deleted() for x in leaves):
        if required:
            raise ValueError(
                "critic.value_clip / critic.anchor_coef need stage 1's value head: build the Trainer from a model "
                "whose arrays no earlier step has donated"
            )
        return None
    return jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), state)


DROPOUT_STREAM = 1  # fold_in(micro-batch key, this) seeds the training dropout (the control shuffle uses the key)


def micro_batch_loss(terms, model, reference, mb, denom, ema, key):
    """Loss of one micro-batch (already divided by the global normalisers) and ``(metrics, new TD-whitening
    EMA)``: the policy's forward, then the objective's ``terms`` (``loss_terms.compose``) in order, their
    contributions summed."""
    targets, valid = alignment.mtp_targets(mb["tokens"], mb["loss_mask"], mb["segment_ids"], model.cfg.n_future_tokens)
    dropout_key = jax.random.fold_in(key, DROPOUT_STREAM) if model.has_dropout() else None
    out = model.forward(mb["tokens"], mb["positions"], mb["segment_ids"], dropout_key)
    ctx = loss_terms.LossContext(model, reference, mb, denom, ema, key, out, targets, valid)
    total = jnp.zeros((), jnp.float32)
    for term in terms:
        contribution = term(ctx)
        if contribution is not None:
            total = total + contribution
    ctx.metrics["loss"] = total
    return total, (ctx.metrics, ctx.ema)


_MIN_KEYS, _MAX_KEYS = ("weight_min",), ("weight_max", "ce_tokens_over")
_SUM_KEYS = ("loss", "loss_head", "ce_head", "value_loss", "weight_hist")


def _lowest(dtype):
    return -jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).min


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


def make_train_step(
    objective: Objective,
    cfg: StepConfig,
    graphdef,
    tx,
    schedule,
    mesh: Mesh | None = None,
    ref_graphdef=None,
    anchor=None,
):
    """Returns ``step(state: TrainState, frozen, reference_state, batch) -> (state, metrics)`` (pure; jit it).

    ``frozen`` is the frozen part of the model's state; ``reference_state`` the frozen second model (the Rho-1
    reference or a separate critic; its untrained part when ``state.critic`` holds a co-trained critic's
    parameters) or None;
    ``anchor`` stage 1's value-head parameters (``value_head_anchor``; a constant of the compiled step).
    ``cfg.head_weights`` must hold one weight per head (``StepConfig.for_heads``).
    """

    terms = loss_terms.compose(objective, cfg, anchor)
    decay = objective.weighting.history_decay

    def step(state, frozen, reference_state, batch):
        if mesh is None:
            return _step(state, frozen, reference_state, batch)
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # lets the model pin activations to the batch axes
            return _step(state, frozen, reference_state, batch)

    def _step(state: TrainState, frozen, reference_state, batch):
        n = cfg.grad_accum_steps
        micro = _micro_batches(batch, n, mesh)
        model0 = nnx.merge(graphdef, state.params, frozen)
        n_heads = model0.cfg.n_future_tokens
        denom = denominators(objective, micro, n_heads)
        co_trained = state.critic is not None
        reference = None
        if reference_state is not None and not co_trained:
            reference = nnx.merge(ref_graphdef, reference_state)
        key = jax.random.fold_in(state.rng, state.step)

        def loss_fn(trained, mb, ema, k):
            params, critic = trained if co_trained else (trained, None)
            model = nnx.merge(graphdef, params, frozen)
            second = nnx.merge(ref_graphdef, critic, reference_state) if co_trained else reference
            return micro_batch_loss(terms, model, second, mb, denom, ema, k)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        shapes = jax.eval_shape(lambda: loss_fn(state.trained, jax.tree.map(lambda x: x[0], micro), state.ema, key))
        metrics0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1][0])
        metrics0 = {
            k: (
                jnp.full_like(v, jnp.inf)
                if k in _MIN_KEYS
                else jnp.full_like(v, _lowest(v.dtype))
                if k in _MAX_KEYS
                else v
            )
            for k, v in metrics0.items()
        }

        def body(carry, xs):
            grads, metrics, ema = carry
            mb, i = xs
            (_, (m, ema)), g = grad_fn(state.trained, mb, ema, jax.random.fold_in(key, i))
            return (jax.tree.map(jnp.add, grads, g), _combine(metrics, m, n), ema), None

        zeros = jax.tree.map(jnp.zeros_like, state.trained)
        if n == 1:  # no loop: XLA:CPU runs while-loop bodies far slower than straight-line code
            (grads, metrics, ema), _ = body(
                (zeros, metrics0, state.ema), (jax.tree.map(lambda x: x[0], micro), jnp.zeros((), jnp.int32))
            )
        else:
            (grads, metrics, ema), _ = jax.lax.scan(body, (zeros, metrics0, state.ema), (micro, jnp.arange(n)))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        if "ce_tokens_over" in metrics:  # a truncated loss is never applied (the Trainer raises)
            finite = finite & (metrics["ce_tokens_over"] == 0)

        def update(trained, opt_state, history):
            updates, opt_state = tx.update(grads, opt_state, trained)
            trained = optax.apply_updates(trained, updates)
            if history is not None and decay < 1.0:  # the policy's EMA (ssToken's history model)
                params = trained[0] if co_trained else trained
                history = jax.tree.map(lambda h, p: (decay * h + (1.0 - decay) * p).astype(h.dtype), history, params)
            return trained, opt_state, history

        # a non-finite step leaves parameters and optimizer state untouched; lax.cond (not a select between
        # old and new) lets XLA update them in place, without copies of the optimizer state
        trained, opt_state, new_history = jax.lax.cond(
            finite, update, lambda *a: a, state.trained, state.opt_state, state.history
        )
        params, critic = trained if co_trained else (trained, None)
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema=jax.tree.map(lambda a, b: jnp.where(finite, a, b), ema, state.ema),
            rng=state.rng,
            critic=critic,
            history=new_history,
        )
        metrics.update(
            grad_norm=grad_norm,
            learning_rate=schedule(state.step),
            finite=finite,
            target_tokens=denom["ce"].max() if objective.trains_policy else denom["value"],
            tokens=jnp.sum(batch["segment_ids"] > 0),
        )
        return new_state, metrics

    return step


def make_history_ce(graphdef, cfg: StepConfig, n_heads: int, mesh: Mesh | None = None):
    """Returns ``fn(history, frozen, batch) -> [B, S, H]`` float32: the CE of every head's target under the
    policy's history copy (``TrainState.history``; no gradient). It is its own jitted program, run before the
    step (``Trainer.step`` adds its output to the batch as ``"history_ce"``): inside the step, XLA:CPU kept float32
    copies of the bfloat16 history weights alive through the backward pass (+3.4 GiB per device for 7B_1T_4).
    With ``cfg.ce_tokens`` only the valid targets are projected, up to ``ce_tokens`` per micro-batch."""
    capacity = cfg.ce_tokens * cfg.grad_accum_steps

    def fn(history, frozen, batch):
        return frozen_ce(nnx.merge(graphdef, history, frozen), batch, n_heads, capacity)

    if mesh is None:
        return fn

    def on_mesh(history, frozen, batch):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(history, frozen, batch)

    return on_mesh


def optimizer_shardings(tx, params, mesh: Mesh):
    """Shardings for ``tx.init(params)``: a leaf that mirrors a parameter (Adam's mu and nu: same path suffix and
    shape) gets that parameter's sharding, anything else (step counts) is replicated. ``jax.jit(tx.init)`` alone
    leaves the moments replicated on every device (zeros do not inherit their input's sharding)."""
    replicated = sharding.replicated(mesh)
    by_path = {tuple(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}

    def place(path, leaf):
        path = tuple(path)
        for start in range(len(path)):
            twin = by_path.get(path[start:])
            if (
                twin is not None
                and twin.shape == leaf.shape
                and isinstance(getattr(twin, "sharding", None), NamedSharding)
            ):
                return twin.sharding
        return replicated

    return jax.tree_util.tree_map_with_path(place, jax.eval_shape(tx.init, params))


def init_state(params, tx, seed: int, mesh: Mesh | None = None, critic=None, history_dtype: str = "") -> TrainState:
    """Train state for trainable ``params`` (and a co-trained ``critic``'s): the optimizer state is created in the
    parameters' shardings (``optimizer_shardings``), the small bookkeeping arrays (step, TD-whitening EMA, rng) are
    replicated over ``mesh``. ``history_dtype`` non-empty: ``history`` starts as a copy of ``params`` in that dtype
    (same shardings)."""
    trained = params if critic is None else (params, critic)
    history = None
    if history_dtype:
        history = jax.tree.map(lambda x: jnp.array(x, history_dtype, copy=True), params)
    init = jax.jit(tx.init) if mesh is None else jax.jit(tx.init, out_shardings=optimizer_shardings(tx, trained, mesh))
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=init(trained),
        ema={"mean": jnp.zeros(()), "var": jnp.zeros(()), "count": jnp.zeros(())},
        rng=jax.random.key_data(jax.random.key(seed)),
        critic=critic,
        history=history,
    )
    if mesh is not None:  # scalars (step, EMA, rng) would otherwise sit on device 0 only
        state = jax.tree.map(
            lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, sharding.replicated(mesh)),
            state,
        )
    return state


def abstract_state(params, tx, mesh: Mesh | None = None, critic=None, history_dtype: str = "") -> TrainState:
    """``TrainState`` of ShapeDtypeStructs for (abstract or concrete) ``params`` (and a co-trained ``critic``'s)
    with the shardings ``init_state`` gives them; allocates nothing."""

    def spec(x, sharding_=None):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_)

    replicated = None if mesh is None else sharding.replicated(mesh)
    params, critic = jax.tree.map(lambda x: spec(x, getattr(x, "sharding", None)), (params, critic))
    trained = params if critic is None else (params, critic)
    opt = jax.eval_shape(tx.init, trained)
    if mesh is not None:
        opt = jax.tree.map(spec, opt, optimizer_shardings(tx, trained, mesh))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
    return TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        params=params,
        opt_state=opt,
        ema={"mean": scalar, "var": scalar, "count": scalar},
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated),
        critic=critic,
        history=jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(history_dtype), sharding=x.sharding), params
        )
        if history_dtype
        else None,
    )
