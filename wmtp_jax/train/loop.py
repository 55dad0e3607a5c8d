"""The training loop: inputs -> sharded state -> Grain iterator -> jitted step -> metrics -> checkpoints.

Re-running the same command on the same workdir resumes from the latest checkpoint (train state and data
iterator position together), so the resumed run sees exactly the remaining batches.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from wmtp_jax import distributed, sharding
from wmtp_jax.config import layout_options, model_options
from wmtp_jax.checkpoint import ensure_orbax, load_model, save_model
from wmtp_jax.checkpoint.micro import write_micro_models
from wmtp_jax.data import assets
from wmtp_jax.data.pipeline import PipelineConfig, ReferenceCE, make_dataset
from wmtp_jax.data.prepare import prepare
from wmtp_jax.data.records import RecordIndex
from wmtp_jax.data.sampling import SamplingConfig, build_plan, shard_plan
from wmtp_jax.data.tokenizer import Tokenizer
from wmtp_jax.losses import mtp_targets, token_ce
from wmtp_jax.tracking import Tracker, redact
from wmtp_jax.train import step as step_lib

# bf16 dense peak per device, for the MFU estimate
PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12}


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite updates."""


# ------------------------------------------------------------------------------------------------ inputs
def index_path(jsonl: str | Path) -> Path:
    jsonl = Path(jsonl)
    return jsonl.with_name(jsonl.name.removesuffix(".jsonl") + ".index.npz")


def prepare_inputs(c) -> None:
    """Everything cached on disk, done once: ``:micro`` micro checkpoints and shipped data, and the torch ->
    Orbax conversions of the policy and the Rho-1 reference. (With several processes, process 0 does it
    first; the others then find the caches.)"""
    if c.model.build_micro:
        write_micro_models(Path(c.model.checkpoint).parent)
    vocab = c.model.vocab_size or None
    if not c.model.init_from:
        ensure_orbax(c.model.checkpoint, c.model.cache_dir, vocab_size=vocab)
    if c.experiment == "rho1" and not c.weighting.rho1_reference_ce:
        ensure_orbax(c.reference.checkpoint, c.model.cache_dir, vocab_size=vocab)
    if not c.data.prepare_micro or c.data.train:
        return
    out = Path(c.data.cache_dir) / c.data.prepare_micro
    if c.data.prepare_micro == "mbpp":
        if not (out / "validation.index.npz").exists():
            prepare("mbpp", out, max_length=max(c.data.buckets))
        c.data.train, c.data.validation = str(out / "train.jsonl"), str(out / "validation.jsonl")
    else:
        if not (out / "train.index.npz").exists():
            prepare("alpaca", out, [str(assets.MICRO_LABELLED)], max_length=max(c.data.buckets))
        mbpp = Path(c.data.cache_dir) / "mbpp"
        if not (mbpp / "validation.index.npz").exists():
            prepare("mbpp", mbpp, max_length=max(c.data.buckets))
        c.data.train, c.data.validation = str(out / "train.jsonl"), str(mbpp / "validation.jsonl")


def step_config(c, n_heads: int) -> step_lib.StepConfig:
    w = c.weighting
    head_weights = tuple(c.train.head_weights) or (1.0,) * n_heads
    if len(head_weights) != n_heads:
        raise ValueError(f"train.head_weights={head_weights}: expected {n_heads} values (one per head)")
    return step_lib.StepConfig(
        experiment=c.experiment, grad_accum_steps=c.train.grad_accum_steps, head_weights=head_weights,
        ce_chunk=c.train.ce_chunk, control=w.control, gamma=w.gamma, gae_lambda=w.gae_lambda, beta=w.beta,
        w_min=w.w_min, w_max=w.w_max, whiten=w.whiten, ema_decay=w.ema_decay, value_coef=w.value_coef,
        value_loss=w.value_loss, huber_delta=w.huber_delta, value_target=w.value_target, rho1_mode=w.rho1_mode,
        rho1_select=w.rho1_select, rho1_ratio=w.rho1_ratio, rho1_temperature=w.rho1_temperature,
        rho1_eps=w.rho1_eps, rho1_w_max=w.rho1_w_max, rho1_normalize=w.rho1_normalize)


def sampling_config(c) -> SamplingConfig:
    return SamplingConfig(strategy=c.data.strategy, correct_ratio=c.data.correct_ratio, repeat=c.data.repeat,
                          curriculum_correct_only=c.data.curriculum_correct_only)


def global_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Process-local rows -> global arrays sharded over the batch axes."""
    spec = sharding.batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(spec, v) for k, v in local.items()}


# ------------------------------------------------------------------------------------------------ pieces
@dataclasses.dataclass
class Run:
    """Everything the loop needs, built once."""

    mesh: jax.sharding.Mesh
    graphdef: object
    frozen: object
    reference_state: object
    state: dict
    step_fn: object
    eval_fn: object
    flops_per_token: float


def build(c, mesh) -> Run:
    model_dir = c.model.init_from or ensure_orbax(c.model.checkpoint, c.model.cache_dir,
                                                  vocab_size=c.model.vocab_size or None)
    model = load_model(model_dir, mesh, **model_options(c))
    reference = ref_graphdef = reference_state = None
    if c.experiment == "rho1" and not c.weighting.rho1_reference_ce:
        ref_dir = ensure_orbax(c.reference.checkpoint, c.model.cache_dir, vocab_size=c.model.vocab_size or None)
        # frozen: stored in its compute dtype (every weight is cast to it anyway, so results are unchanged)
        reference = load_model(ref_dir, mesh, dtype=c.reference.dtype, param_dtype=c.reference.dtype,
                               **layout_options(c))
        if reference.cfg.vocab_size != model.cfg.vocab_size:
            raise ValueError(f"reference vocab {reference.cfg.vocab_size} != policy vocab {model.cfg.vocab_size}; "
                             "set model.vocab_size to slice the larger one")
        ref_graphdef, reference_state = nnx.split(reference)
    graphdef, params, frozen = nnx.split(model, step_lib.trainable_filter(c.experiment), ...)
    total_steps = c.train.num_steps
    tx, schedule = step_lib.make_optimizer(
        c.train.learning_rate, c.train.warmup_steps, total_steps, end_lr_fraction=c.train.end_lr_fraction,
        b1=c.train.b1, b2=c.train.b2, weight_decay=c.train.weight_decay, max_grad_norm=c.train.max_grad_norm)
    state = step_lib.init_state(params, tx, c.seed, mesh)
    cfg = step_config(c, model.cfg.n_future_tokens)
    step_fn = step_lib.jit_train_step(step_lib.make_train_step(cfg, graphdef, tx, schedule, mesh, ref_graphdef),
                                      state, frozen, reference_state, mesh)

    @jax.jit
    def eval_fn(params, frozen, batch):
        m = nnx.merge(graphdef, params, frozen)
        out = m.forward(batch["tokens"], batch["positions"], batch["segment_ids"])
        targets, valid = mtp_targets(batch["tokens"], batch["loss_mask"], batch["segment_ids"], m.cfg.n_future_tokens)
        ce = token_ce(m.output[...], out.head_hidden, targets, chunk=cfg.ce_chunk, dtype=m.cfg.compute_dtype)
        return jnp.sum(jnp.where(valid, ce, 0.0), axis=(0, 1)), valid.sum(axis=(0, 1))

    return Run(mesh, graphdef, frozen, reference_state, state, step_fn, eval_fn,
               flops_per_token(model, params, reference_state))


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


def make_checkpoint_manager(c, workdir: Path) -> ocp.CheckpointManager:
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(c.checkpoint.keep),
        ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                                      keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(save_interval_steps=1, preservation_policy=policy,
                                           enable_async_checkpointing=c.checkpoint.async_save)
    return ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)


def validation_loss(c, run: Run, state, tok: Tokenizer) -> float | None:
    if not c.data.validation:
        return None
    index = RecordIndex.load(index_path(c.data.validation))
    rows = np.arange(min(len(index), c.train.eval_batches * c.train.batch_size))
    local = shard_plan(rows, c.train.batch_size, jax.process_index(), jax.process_count())
    ds = make_dataset(c.data.validation, index.offsets(local),
                      tok, PipelineConfig(batch_size=c.train.batch_size // jax.process_count(), buckets=tuple(c.data.buckets)))
    total, count = 0.0, 0.0
    for batch in ds:
        sums, n = run.eval_fn(state["params"], run.frozen, global_batch(batch, run.mesh))
        total, count = total + float(jnp.sum(sums)), count + float(jnp.sum(n))
    return total / max(count, 1.0)


def _scalar_metrics(m: dict) -> dict[str, float]:
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


def _plot_weights(hist: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0.0, step_lib.WEIGHT_HIST_MAX, step_lib.WEIGHT_HIST_BINS + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(edges[:-1], hist, width=np.diff(edges), align="edge")
    ax.set_xlabel("token weight")
    ax.set_ylabel("target tokens (whole run)")
    ax.set_title("distribution of token weights")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ loop
def train(c) -> dict:
    """Runs (or resumes) training; returns ``{"final_dir", "steps", "losses"}``."""
    workdir = Path(c.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    distributed.main_process_first(lambda: prepare_inputs(c), "prepare_inputs")
    is_main = jax.process_index() == 0
    if is_main:
        (workdir / "config.json").write_text(redact(c.to_json_best_effort(indent=2)))
    mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    run = build(c, mesh)
    tok = Tokenizer(c.tokenizer) if c.tokenizer else Tokenizer()

    index = RecordIndex.load(index_path(c.data.train))
    plan = build_plan(index, sampling_config(c), c.train.num_steps * c.train.batch_size, c.seed)
    local = shard_plan(plan, c.train.batch_size, jax.process_index(), jax.process_count())
    reference_ce = None
    if c.experiment == "rho1" and c.weighting.rho1_reference_ce:
        reference_ce = ReferenceCE(c.weighting.rho1_reference_ce)
    dataset = make_dataset(c.data.train, index.offsets(local), tok, PipelineConfig(
        batch_size=c.train.batch_size // jax.process_count(), buckets=tuple(c.data.buckets), pack=c.data.pack,
        num_workers=c.data.num_workers), rows=local, reference_ce=reference_ce)
    iterator = iter(dataset)

    manager = make_checkpoint_manager(c, workdir)
    state = run.state
    if manager.latest_step() is not None:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(iterator)))
        state = restored["state"]
    start = int(state["step"])

    tracker = Tracker(c, workdir)
    if start == 0:
        tracker.log_artifact(workdir / "config.json")
    peak = peak_flops(c.train.peak_flops_per_device)
    metrics_file = open(workdir / "metrics.jsonl", "a") if is_main else None
    bar = tqdm(total=c.train.num_steps, initial=start, desc=c.experiment, unit="step", disable=not is_main)
    hist = np.zeros(step_lib.WEIGHT_HIST_BINS)
    losses, nonfinite_run, nonfinite_total = {}, 0, 0
    status = "FAILED"
    try:
        for step in range(start, c.train.num_steps):
            t0 = time.perf_counter()
            batch = global_batch(next(iterator), mesh)
            state, metrics = run.step_fn(state, run.frozen, run.reference_state, batch)
            metrics = jax.device_get(metrics)
            dt = time.perf_counter() - t0
            finite = bool(metrics.pop("finite"))
            nonfinite_run = 0 if finite else nonfinite_run + 1
            nonfinite_total += not finite
            if "weight_hist" in metrics:
                hist += metrics["weight_hist"]
            scalars = _scalar_metrics(metrics)
            tokens_per_s = scalars["tokens"] / dt
            scalars.update(tokens_per_s=tokens_per_s, step_time_s=dt, nonfinite_updates=nonfinite_total)
            if peak:
                scalars["mfu"] = tokens_per_s * run.flops_per_token / (peak * jax.device_count())
            losses[step + 1] = scalars["loss"]
            if metrics_file:
                metrics_file.write(json.dumps({"step": step + 1, **scalars}) + "\n")
                metrics_file.flush()
            if (step + 1) % c.train.log_every == 0:
                tracker.log_metrics(scalars, step + 1)
            bar.set_postfix(loss=f"{scalars['loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}")
            bar.update()
            if nonfinite_run >= c.train.max_nonfinite_steps:
                _save(manager, step + 1, state, iterator, None)
                manager.wait_until_finished()
                raise NonFiniteError(
                    f"{nonfinite_run} consecutive non-finite losses/gradients at step {step + 1}; the last good state "
                    f"is saved in {workdir / 'checkpoints'} (lower train.learning_rate or check the data)")
            last = step + 1 == c.train.num_steps
            if (step + 1) % c.checkpoint.every_steps == 0 or last:
                val = validation_loss(c, run, state, tok)
                if val is not None:
                    tracker.log_metrics({"val_loss": val}, step + 1)
                _save(manager, step + 1, state, iterator, val)
        status = "FINISHED"
    finally:
        if status == "FAILED":
            tracker.close("FAILED")
        bar.close()
        manager.wait_until_finished()
        if metrics_file:
            metrics_file.close()

    final_dir = workdir / "final"
    model = nnx.merge(run.graphdef, state["params"], run.frozen)
    save_model(model, final_dir, experiment=c.experiment, steps=c.train.num_steps)
    if is_main and hist.sum():
        _plot_weights(hist, workdir / "weight_distribution.png")
        tracker.log_artifact(workdir / "weight_distribution.png")
    tracker.close()
    return {"final_dir": final_dir, "steps": c.train.num_steps, "losses": losses}


def _save(manager, step, state, iterator, val_loss) -> None:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=grain.checkpoint.CheckpointSave(iterator)),
                 metrics={"val_loss": val_loss} if val_loss is not None else None)
