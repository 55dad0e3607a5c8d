"""The Trainer: one objective, its model(s), the optimizer and the jitted step, with hooks around the loop.

    trainer = Trainer(objective, model, mesh=mesh, step_config=StepConfig(...), optimizer=OptimizerConfig(...))
    trainer.add_hook(MetricsLog(workdir, tracker), every=1)
    state = trainer.initial_state()          # or restored from a checkpoint
    state = trainer.run(state, batches, num_steps=100)

A hook is a ``Hook``: it overrides ``on_step(trainer, event)`` (called every ``every`` steps and at the last
step) and / or ``on_end(trainer, event, status)`` (status ``FINISHED``, ``STOPPED`` after too many non-finite
updates, or ``FAILED`` on an exception). Hooks run in the order they were added and may add entries to
``event.metrics`` for the hooks after them (validation adds ``val_loss`` before checkpointing reads it). The
standard hooks (metrics file, MLflow, validation, checkpoints with a "committed" event, ``final/`` export,
plots) live in ``wmtp_jax.train.hooks``; ``wmtp_jax.train.loop.standard_hooks`` assembles them in their order.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from wmtp_jax import sharding
from wmtp_jax.model.lora import has_lora, trainable_filter
from wmtp_jax.train.objectives import Objective
from wmtp_jax.train.step import (
    OptimizerConfig,
    StepConfig,
    TrainState,
    abstract_state,
    init_state,
    make_history_ce,
    make_optimizer,
    make_train_step,
    value_head_anchor,
)

# bf16 dense peak per device, for the MFU estimate
PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12}


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite updates."""


@dataclasses.dataclass
class StepEvent:
    """What hooks see after a step: ``step`` (steps done, 1-based), the new ``state``, host ``metrics`` (floats),
    whether it is the ``last`` step, and the step's ``weight_hist`` (counts of valid targets per weight bin,
    ``loss_terms.WEIGHT_HIST_BINS`` bins over [0, ``loss_terms.WEIGHT_HIST_MAX``]; None when no CE term is trained)."""

    step: int
    state: TrainState
    metrics: dict[str, float]
    last: bool
    weight_hist: np.ndarray | None = None


class Hook:
    """The hook protocol: subclass it and override ``on_step`` and / or ``on_end`` (both do nothing here)."""

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        """After a step (every ``every`` steps of ``add_hook`` and at the last step); may add to ``event.metrics``."""

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        """Once, when ``run`` ends: ``status`` is "FINISHED", "STOPPED" (non-finite updates) or "FAILED"."""


@dataclasses.dataclass
class _Registered:
    hook: Hook
    every: int


def flops_per_token(model, params, reference_state=None) -> float:
    """Matmul FLOPs of one train step per token, the "6N" rule (Kaplan et al. 2020, section 2.1) split by
    part: 2 per parameter for the forward of the model and of the reference, 4 more per trained parameter
    for the backward. The attention-score FLOPs (Chowdhery et al. 2022, PaLM, appendix B) are left out, so
    the MFU derived from it is a slight under-estimate at long sequences."""

    def count(tree):
        return 0 if tree is None else sum(x.size for x in jax.tree.leaves(tree))

    return 2.0 * (count(nnx.state(model)) + count(reference_state)) + 4.0 * count(params)


def peak_flops(override: float = 0.0) -> float:
    """bf16 dense peak FLOP/s of one local device: ``override`` if set, else from its kind; 0 if unknown."""
    return override or next((v for k, v in PEAK_FLOPS.items() if k in jax.devices()[0].device_kind), 0.0)


def scalar_metrics(m: dict) -> dict[str, float]:
    """Host metrics -> flat floats: per-head arrays become ``{name}_{k}``; the weight histogram is left out."""
    out = {}
    for k, v in m.items():
        v = np.asarray(v)
        if k == "weight_hist":
            continue
        if v.ndim == 0:
            out[k] = float(v)
        else:
            out.update({f"{k}_{i}": float(x) for i, x in enumerate(v)})
    return out


class Trainer:
    """Built once from (objective, model, reference, mesh, step and optimizer settings).

    Attributes:
      graphdef, frozen: the model's graph and its frozen (untrained) state; ``model(state)`` merges them back.
      reference_state: the frozen second model's state (Rho-1 reference, separate critic) or None; with a co-trained
        critic (``objective.co_trains_critic``) only its untrained part, ``critic_params`` holding the rest.
      tx, schedule: the optax optimizer and learning-rate schedule.
      flops_per_token: the step's matmul FLOPs per token (for MFU).
    """

    def __init__(
        self,
        objective: Objective,
        model,
        *,
        mesh: Mesh | None,
        step_config: StepConfig = StepConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        reference=None,
        seed: int = 0,
        max_nonfinite_steps: int = 5,
        peak_flops_per_device: float = 0.0,
    ):
        if objective.needs_reference and reference is None:
            raise ValueError(f"objective {objective.name!r} needs a reference model (or a precomputed reference CE)")
        self.objective, self.mesh, self.seed, self.model_cfg = objective, mesh, seed, model.cfg
        self.step_config = step_config.for_heads(model.cfg.n_future_tokens)
        self.max_nonfinite_steps = max_nonfinite_steps
        trainable = objective.trainable()
        if has_lora(model):  # only the adapters (and a trained value head) learn; the base stays frozen
            trainable = trainable_filter(trainable)
        self.graphdef, self.params, self.frozen = nnx.split(model, trainable, ...)
        self.ref_graphdef = self.reference_state = self.critic_params = None
        if reference is not None and objective.co_trains_critic:
            self.ref_graphdef, self.critic_params, self.reference_state = nnx.split(
                reference, objective.critic_trainable(), ...
            )
        elif reference is not None:
            self.ref_graphdef, self.reference_state = nnx.split(reference)
        # stage 1's value head, copied before the first step donates the model's arrays
        self.anchor = None
        if objective.uses_anchor:
            self.anchor = value_head_anchor(
                reference if objective.co_trains_critic else model,
                required=bool(objective.critic.value_clip or objective.critic.anchor_coef),
            )
        self.tx, self.schedule = make_optimizer(optimizer)
        self.step_fn = make_train_step(
            objective, self.step_config, self.graphdef, self.tx, self.schedule, mesh, self.ref_graphdef, self.anchor
        )
        self.history_fn = None  # the history copy's CE, a program of its own run before each step (ssToken)
        if objective.history_dtype:
            self.history_fn = make_history_ce(self.graphdef, self.step_config, model.cfg.n_future_tokens, mesh)
        self._history_jitted = None
        self.flops_per_token = flops_per_token(
            model, (self.params, self.critic_params), (self.reference_state, self.critic_params)
        )
        self.peak_flops = peak_flops(peak_flops_per_device)
        self.hooks: list[_Registered] = []
        self.stop_reason: str | None = None
        self._jitted = None

    # ------------------------------------------------------------------------------------------ state
    def initial_state(self) -> TrainState:
        """The train state at step 0 (optimizer state in the parameters' shardings). Its parameters are the model's
        own arrays, and ``step`` donates them: after the first step, read parameters from the state
        (``trainer.model(state)``), not from the model the trainer was built with."""
        return init_state(
            self.params,
            self.tx,
            self.seed,
            self.mesh,
            critic=self.critic_params,
            history_dtype=self.objective.history_dtype,
        )

    def abstract_state(self) -> TrainState:
        """The train state's shapes, dtypes and the shardings ``initial_state`` gives; allocates nothing (works on an
        abstract model)."""
        return abstract_state(
            self.params, self.tx, self.mesh, critic=self.critic_params, history_dtype=self.objective.history_dtype
        )

    def model(self, state: TrainState):
        """The full model with ``state``'s trained parameters."""
        return nnx.merge(self.graphdef, state.params, self.frozen)

    def critic_model(self, state: TrainState):
        """The co-trained separate critic with ``state``'s trained parameters (None unless
        ``objective.co_trains_critic``)."""
        if state.critic is None:
            return None
        return nnx.merge(self.ref_graphdef, state.critic, self.reference_state)

    # ------------------------------------------------------------------------------------------ step
    def step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        """One jitted train step (``state`` is donated). Batch rows are split over the mesh's batch axes."""
        if self._jitted is None:
            self._jitted = self._jit(state)
        if self.history_fn is not None:
            batch = {**batch, "history_ce": self.history_ce(state, batch)}
        return self._jitted(state, self.frozen, self.reference_state, batch)

    def history_ce(self, state: TrainState, batch: dict[str, jax.Array]) -> jax.Array:
        """``[B, S, H]`` float32 CE of every head's target under ``state.history`` (``make_history_ce``)."""
        if self._history_jitted is None:
            if self.mesh is None:
                self._history_jitted = jax.jit(self.history_fn)
            else:
                self._history_jitted = jax.jit(
                    self.history_fn,
                    in_shardings=(
                        jax.tree.map(lambda x: x.sharding, state.history),
                        jax.tree.map(lambda x: x.sharding, self.frozen),
                        sharding.batch_sharding(self.mesh),
                    ),
                    out_shardings=sharding.batch_sharding(self.mesh),
                )
        return self._history_jitted(state.history, self.frozen, batch)

    def _jit(self, state):
        def shardings_of(tree):
            return jax.tree.map(lambda x: x.sharding, tree)

        if self.mesh is None:
            return jax.jit(self.step_fn, donate_argnums=(0,))
        state_shardings = shardings_of(state)
        return jax.jit(
            self.step_fn,
            in_shardings=(
                state_shardings,
                shardings_of(self.frozen),
                shardings_of(self.reference_state),
                sharding.batch_sharding(self.mesh),
            ),
            out_shardings=(state_shardings, sharding.replicated(self.mesh)),
            donate_argnums=(0,),
        )

    def compile(self, batch) -> jax.stages.Compiled:
        """The step compiled for an abstract ``batch`` (ShapeDtypeStructs with shardings) on ``abstract_state()``,
        without running it: ``.memory_analysis()`` gives the per-device memory."""
        fn = jax.jit(self.step_fn, donate_argnums=(0,))
        return fn.lower(self.abstract_state(), self.frozen, self.reference_state, self._with_history(batch)).compile()

    def compile_history(self, batch) -> jax.stages.Compiled | None:
        """The history-CE program compiled for an abstract ``batch`` (None unless the scheme needs a history)."""
        if self.history_fn is None:
            return None
        return jax.jit(self.history_fn).lower(self.abstract_state().history, self.frozen, batch).compile()

    def _with_history(self, batch):
        if self.history_fn is None:
            return batch
        rows, length = batch["tokens"].shape
        spec = jax.ShapeDtypeStruct(
            (rows, length, self.model_cfg.n_future_tokens), jnp.float32, sharding=batch["tokens"].sharding
        )
        return {**batch, "history_ce": spec}

    # ------------------------------------------------------------------------------------------ loop
    def add_hook(self, hook: Hook, every: int = 1) -> None:
        """Calls ``hook.on_step(trainer, event)`` every ``every`` steps and at the last step, and
        ``hook.on_end`` when ``run`` ends; raises TypeError unless ``hook`` is a ``Hook``."""
        if not isinstance(hook, Hook):
            raise TypeError(f"{type(hook).__name__} is not a wmtp_jax.train.trainer.Hook (subclass it)")
        self.hooks.append(_Registered(hook, every))

    def request_stop(self, reason: str) -> None:
        """Ends ``run`` after the current step's hooks (e.g. early stopping); ``on_end`` then gets "FINISHED"."""
        self.stop_reason = reason

    def run(self, state: TrainState, batches: Iterator[dict[str, jax.Array]], num_steps: int) -> TrainState:
        """Steps from ``state.step`` to ``num_steps`` over ``batches`` (global arrays), calling the hooks.

        Raises:
          NonFiniteError: ``max_nonfinite_steps`` consecutive non-finite losses or gradients (the hooks' ``on_end``
            ran with status "STOPPED" first, so the last good state is checkpointed).
        """
        start = int(state.step)
        event = StepEvent(start, state, {}, start >= num_steps)
        nonfinite_run = nonfinite_total = 0
        status = "FAILED"
        try:
            for step in range(start, num_steps):
                t0 = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    raise ValueError(
                        f"the data ran out before step {step + 1} of {num_steps} (the plan holds too few records; "
                        "with data.pack the plan is sized from the mean record length)"
                    ) from None
                state, metrics = self.step(state, batch)
                metrics = jax.device_get(metrics)
                dt = time.perf_counter() - t0
                finite = bool(metrics.pop("finite"))
                over = int(metrics.pop("ce_tokens_over", 0))
                if over:
                    raise ValueError(
                        f"step {step + 1}: a micro-batch has {over} more valid targets than train.ce_tokens="
                        f"{self.step_config.ce_tokens} (the update was not applied); raise train.ce_tokens or set "
                        "it to 0 (project every position)"
                    )
                nonfinite_run = 0 if finite else nonfinite_run + 1
                nonfinite_total += not finite
                scalars = scalar_metrics(metrics)
                tokens_per_s = scalars["tokens"] / dt
                scalars.update(tokens_per_s=tokens_per_s, step_time_s=dt, nonfinite_updates=nonfinite_total)
                if self.peak_flops:
                    scalars["mfu"] = tokens_per_s * self.flops_per_token / (self.peak_flops * jax.device_count())
                hist = np.asarray(metrics["weight_hist"]) if "weight_hist" in metrics else None
                event = StepEvent(step + 1, state, scalars, step + 1 == num_steps, hist)
                for registered in self.hooks:
                    if event.last or event.step % registered.every == 0:
                        registered.hook.on_step(self, event)
                if nonfinite_run >= self.max_nonfinite_steps:
                    status = "STOPPED"
                    raise NonFiniteError(
                        f"{nonfinite_run} consecutive non-finite losses/gradients at step {step + 1}; the last good "
                        "state is saved (lower train.learning_rate or check the data)"
                    )
                if self.stop_reason is not None:
                    break
            status = "FINISHED"
        finally:
            for registered in self.hooks:
                registered.hook.on_end(self, event, status)
        return state
