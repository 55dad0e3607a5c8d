"""The training job: config -> resolved inputs -> model(s) -> Trainer with hooks -> Grain iterator -> run.

Re-running the same command on the same workdir resumes from the latest checkpoint (train state and data
iterator position together), so the resumed run sees exactly the remaining batches.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import numpy as np

from wmtp_jax import distributed, sharding
from wmtp_jax.checkpoint import ensure_orbax, load_model, train_state
from wmtp_jax.checkpoint.micro import write_micro_models
from wmtp_jax.data import assets
from wmtp_jax.data.benchmarks import VALIDATION_BENCHMARKS
from wmtp_jax.data.pipeline import PipelineConfig, TokenTable, make_dataset
from wmtp_jax.data.prepare import data_sha256, prepare_cached
from wmtp_jax.data.records import RecordIndex, index_path
from wmtp_jax.data.sampling import allowed, build_plan, epoch_size, shard_plan
from wmtp_jax.data.tokenizer import load_tokenizer
from wmtp_jax.distributed import is_main_process
from wmtp_jax.files import atomic_write_text
from wmtp_jax.model.config import layout_options, model_options
from wmtp_jax.model.lora import apply_lora, quantize_base
from wmtp_jax.model.mtp import with_mlp_value_head
from wmtp_jax.sandbox.execution import start_worker_pool
from wmtp_jax.schema import Section
from wmtp_jax.tracking import Tracker, redact
from wmtp_jax.train import eval_hooks, hooks
from wmtp_jax.train.objectives import objective_of, second_model, second_model_dtypes, trained_model
from wmtp_jax.train.step import OptimizerConfig, StepConfig
from wmtp_jax.train.trainer import Hook, NonFiniteError, Trainer

__all__ = [
    "Inputs",
    "LoopConfig",
    "NonFiniteError",
    "batch_rows",
    "build_trainer",
    "prepare",
    "resolve_schedule",
    "train",
]


@dataclasses.dataclass(frozen=True)
class LoopConfig(Section):
    """The loop's keys of the ``train`` section: ``num_steps`` (or ``num_epochs`` > 0 of the sampling strategy, or
    a budget of ``num_samples`` > 0 training records, turned into steps by ``resolve_schedule``), the global
    ``batch_size`` in sequences (or a ``batch_tokens`` budget of packed rows), MLflow every ``log_every`` steps,
    ``eval_batches`` validation batches at every checkpoint, the run stops after ``max_nonfinite_steps`` skipped
    updates in a row; ``peak_flops_per_device`` for MFU (0 = by device kind)."""

    num_steps: int = 1000
    batch_size: int = 8
    num_epochs: float = 0.0
    num_samples: int = 0  # > 0: train on this many records (the design's sample budgets), instead of num_steps
    batch_tokens: int = 0
    log_every: int = 1
    eval_batches: int = 4
    max_nonfinite_steps: int = 5
    peak_flops_per_device: float = 0.0
    eval_every_steps: int = 0
    eval_benchmarks: tuple[str, ...] = ("mbpp",)
    eval_limit: int = 32
    eval_at_end: bool = False

    def problems(self, prefix: str = "train") -> list[str]:

        c = self.checker(prefix)
        for key in ("batch_size", "log_every", "eval_batches", "max_nonfinite_steps"):
            c.positive(key)
        c.non_negative("eval_every_steps")
        c.non_negative("num_epochs", integer=False)
        c.non_negative("num_samples")
        if self.num_epochs and self.num_samples:
            c.found.append(f"{prefix}.num_samples={self.num_samples}: set it or {prefix}.num_epochs, not both")
        c.non_negative("batch_tokens")
        c.non_negative("eval_limit")
        c.check(  # it selects checkpoints: never on problems the final evaluation reports
            "eval_benchmarks",
            lambda v: len(v) > 0 and set(v) <= set(VALIDATION_BENCHMARKS),
            f"a non-empty tuple of {list(VALIDATION_BENCHMARKS)} (benchmarks with a validation split; the others "
            "hold only evaluation problems)",
        )
        return c.found


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a training run reads, resolved once: Orbax model directories (torch checkpoints converted) and
    prepared data (the shipped data for ``:micro``). Written to ``{workdir}/inputs.json``."""

    model_dir: str
    reference_dir: str  # the frozen second model (Rho-1 reference, separate critic); "" when none
    train: str
    validation: str  # "" = no validation loss


def prepare(c) -> Inputs:
    """Everything cached on disk, done once: ``:micro`` micro checkpoints and shipped data, and the torch ->
    Orbax conversions of the policy and the Rho-1 reference. The config is not changed."""
    if c.model.build_micro:
        write_micro_models(Path(c.model.checkpoint).parent)
    vocab = c.model.vocab_size or None
    model_dir = c.model.init_from or ensure_orbax(trained_model(c), c.model.cache_dir, vocab_size=vocab)
    reference_dir = ""
    second, _ = second_model(c)  # the Rho-1 reference or a separate frozen critic
    if second:
        reference_dir = ensure_orbax(second, c.model.cache_dir, vocab_size=vocab)
    train, validation = c.data.train, c.data.validation
    if c.data.prepare_micro and not train:
        train, validation = _prepare_micro_data(c.data.prepare_micro, Path(c.data.cache_dir), max(c.data.buckets))
    return Inputs(str(model_dir), str(reference_dir), str(train), str(validation))


def batch_rows(c) -> int:
    """Global rows per step: ``train.batch_size``, or with ``train.batch_tokens`` > 0 the packed rows of
    ``max(data.buckets)`` tokens that fit the budget (``config.problems`` checks that it divides evenly)."""
    if c.train.batch_tokens:
        return c.train.batch_tokens // max(c.data.buckets)
    return c.train.batch_size


def _packed_records_per_row(c, index: RecordIndex) -> float:
    """Mean records per packed row of ``max(data.buckets)`` tokens, from the index's token lengths (an estimate:
    it assumes full rows; first-fit packing leaves a little room at the end of each)."""
    row = max(c.data.buckets)
    lengths = np.minimum(index.length[allowed(index, c.data)], row)
    return row / max(float(lengths.mean()) if len(lengths) else 1.0, 1.0)


def resolve_schedule(c, index: RecordIndex):
    """A copy of ``c`` with ``train.batch_size`` and ``train.num_steps`` explicit: ``batch_tokens`` > 0 gives the
    rows per step, ``num_epochs`` > 0 the steps (epochs of ``data.strategy``'s draws, ``sampling.epoch_size``; with
    packing counted in tokens), ``num_samples`` > 0 the steps that draw that many records (a step draws
    ``batch_size`` records, or with packing the rows times the mean records per packed row). ``c`` itself is
    unchanged; the resolved values are printed and end up in config.json."""
    rows, steps = batch_rows(c), c.train.num_steps
    if c.train.batch_tokens:
        print(f"train.batch_tokens={c.train.batch_tokens}: {rows} packed rows of {max(c.data.buckets)} tokens per step")
    if c.train.num_epochs:
        draws = epoch_size(index, c.data)
        per_step = rows * (_packed_records_per_row(c, index) if c.data.pack else 1.0)
        steps = max(1, math.ceil(c.train.num_epochs * draws / per_step))
        print(
            f"train.num_epochs={c.train.num_epochs}: {steps} steps ({draws} {c.data.strategy} draws per "
            f"epoch, {per_step:.1f} records per step)"
        )
    if c.train.num_samples:
        per_step = rows * (_packed_records_per_row(c, index) if c.data.pack else 1.0)
        steps = max(1, math.ceil(c.train.num_samples / per_step))
        print(f"train.num_samples={c.train.num_samples}: {steps} steps ({per_step:.1f} records per step)")
    return dataclasses.replace(c, train=dataclasses.replace(c.train, batch_size=rows, num_steps=steps))


def plan_draws(c, index: RecordIndex) -> int:
    """Records the plan must hold for ``num_steps`` steps: one per row, or with packing enough for the mean
    records per row plus a 50% margin (the plan is deterministic, so a resumed run sees the same one)."""
    draws = c.train.num_steps * c.train.batch_size
    if c.data.pack:
        draws = math.ceil(draws * _packed_records_per_row(c, index) * 1.5) + c.train.batch_size
    return draws


def _prepare_micro_data(kind: str, cache_dir: Path, max_length: int) -> tuple[Path, Path]:
    """``(train, validation)`` jsonl of the shipped data: "mbpp" (train / validation splits), "labelled" (MBPP
    train with execution-labelled incorrect solutions; MBPP validation, labelled the same way: the critic's
    held-out set) or "synthetic" (``data/synthetic.py``).

    The micro stand-in keeps the shipped MBPP splits as they are, without decontamination (its random models never
    solve MBPP, and the loss traces recorded in tests/data were made from these files); ``prepare_data.py``
    decontaminates training splits by default."""
    if kind == "synthetic":
        out = cache_dir / "synthetic"
        prepare_cached("synthetic", out, max_length=max_length)
        return out / "train.jsonl", out / "validation.jsonl"
    mbpp = cache_dir / "mbpp"
    prepare_cached("mbpp", mbpp, max_length=max_length, decontaminate=False)
    if kind == "mbpp":
        return mbpp / "train.jsonl", mbpp / "validation.jsonl"
    out, held_out = cache_dir / kind, cache_dir / f"{kind}_validation"
    prepare_cached("alpaca", out, [str(assets.MICRO_LABELLED)], max_length=max_length, decontaminate=False)
    prepare_cached(
        "alpaca",
        held_out,
        [str(assets.MICRO_LABELLED_VALIDATION)],
        split="validation",
        max_length=max_length,
        decontaminate=False,
    )
    return out / "train.jsonl", held_out / "validation.jsonl"


def build_trainer(c, inputs: Inputs, mesh) -> Trainer:
    """The Trainer for ``c.objective`` with the policy (and reference) restored into ``mesh``."""
    model = load_model(inputs.model_dir, mesh, **model_options(c.model))
    critic = c.critic
    if c.objective == "critic" and critic.head == "mlp" and not model.cfg.value_head_hidden:
        with_mlp_value_head(model, critic.head_hidden, mesh, seed=c.seed, dropout=critic.head_dropout)
    lora = c.model.lora
    if lora.enabled:
        apply_lora(model, lora, mesh, seed=c.seed)
    reference = None
    if inputs.reference_dir:
        # frozen: stored in its compute dtype (every weight is cast to it anyway, so results are unchanged)
        dtype, param_dtype, quantize = second_model_dtypes(c)
        reference = load_model(
            inputs.reference_dir, mesh, dtype=dtype, param_dtype=param_dtype, **layout_options(c.model)
        )
        if quantize:
            quantize_base(reference, quantize, mesh)
        if not objective_of(c).separate_critic and reference.cfg.vocab_size != model.cfg.vocab_size:
            raise ValueError(
                f"reference vocab {reference.cfg.vocab_size} != policy vocab {model.cfg.vocab_size}; "
                "set model.vocab_size to slice the larger one"
            )
    return make_trainer(c, model, reference, mesh)


def make_trainer(c, model, reference, mesh) -> Trainer:
    """The Trainer of config ``c`` for ``model`` (and the frozen ``reference``, or None); the models may be
    abstract (``dry_run``)."""
    loop = c.train
    return Trainer(
        objective_of(c),
        model,
        mesh=mesh,
        step_config=StepConfig.from_config(c.train),
        optimizer=OptimizerConfig.from_config(c.train),
        reference=reference,
        seed=c.seed,
        max_nonfinite_steps=loop.max_nonfinite_steps,
        peak_flops_per_device=loop.peak_flops_per_device,
    )


def _early_stopped(final_dir: Path) -> bool:
    selection = final_dir / "selection.json"
    return selection.is_file() and bool(json.loads(selection.read_text()).get("early_stopped"))


def _validation_batches(c, inputs: Inputs, tok, whole: bool = False):
    """A function yielding this process's validation batches: the first ``eval_batches`` global batches, or with
    ``whole`` every full batch of the split (the critic's held-out set)."""
    loop = c.train
    pipeline = PipelineConfig(batch_size=loop.batch_size // jax.process_count(), buckets=tuple(c.data.buckets))

    def batches():
        index = RecordIndex.load(index_path(inputs.validation))
        rows = np.arange(len(index) if whole else min(len(index), loop.eval_batches * loop.batch_size))
        local = shard_plan(rows, loop.batch_size, jax.process_index(), jax.process_count())
        return make_dataset(inputs.validation, index.offsets(local), tok, pipeline)

    return batches


@dataclasses.dataclass
class RunHooks:
    """The standard hooks of a training run: ``ordered`` as ``(hook, every)`` in the order they run, and the ones
    whose results ``train`` returns."""

    ordered: list[tuple[Hook, int]]
    metrics: hooks.MetricsLog
    tracker: Tracker
    quality_at_end: eval_hooks.CriticQualityAtEnd | None


def standard_hooks(
    c, trainer: Trainer, inputs: Inputs, checkpoints: hooks.Checkpoints, tracker: Tracker, tok, start: int
) -> RunHooks:
    """Every hook of a training run, in the one order that works. Hooks run in the order given, and a hook sees
    the metrics that the hooks before it added to the step's event:

    1. measure: ``ProgressBar``; ``Validation`` (``val_loss``), ``ValidationPassAtK`` (``val/{benchmark}/pass@1``)
       and ``CriticQuality`` (``val/critic/*``), at every checkpoint or ``train.eval_every_steps``;
    2. decide: ``EarlyStopping`` reads the measured metric;
    3. record: ``MetricsLog`` writes one row per step with everything measured; ``Checkpoints`` saves (and keeps
       the best by the measured metric);
    4. at the end, in dependency order: ``ExportFinal`` writes ``final/``; then what reads ``final/``
       (``CriticQualityAtEnd``, ``ExportHF``, ``EvalAtEnd``) and the weight plot; ``RunReport`` writes report.md
       from all of them; ``RemoteWorkdir`` uploads once
       every file is written; ``CloseTracker`` ends the MLflow run last.
    """
    loop = c.train
    workdir = Path(c.workdir)
    every = checkpoints.config.every_steps
    early = c.train.early_stopping
    ordered: list[tuple[Hook, int]] = [(hooks.ProgressBar(loop.num_steps, start, c.objective), 1)]
    if inputs.validation:
        ordered.append((hooks.Validation(_validation_batches(c, inputs, tok), trainer.step_config.ce_chunk), every))
    isolation = start_worker_pool() if loop.eval_every_steps or loop.eval_at_end else ""  # normally started by main
    if loop.eval_every_steps:
        settings = eval_hooks.validation_settings(c)
        ordered.append(
            (eval_hooks.ValidationPassAtK(settings, tok, isolation=isolation, seed=c.seed), loop.eval_every_steps)
        )
    quality = None
    if trainer.objective.trains_value_head and inputs.validation:  # the critic measured on held-out labelled data
        held_out = _validation_batches(c, inputs, tok, whole=True)
        quality = eval_hooks.CriticQuality(lambda: (sharding.global_batch(b, trainer.mesh) for b in held_out()))
        ordered.append((quality, every))
    if early.metric:
        ordered.append((hooks.EarlyStopping(early), 1))
    metrics = hooks.MetricsLog(workdir, tracker, loop.log_every)
    ordered += [(metrics, 1), (checkpoints, 1)]  # checkpoints decide themselves when to save
    lora = c.model.lora
    export = hooks.ExportFinal(
        workdir / "final",
        checkpoints,
        checkpoints.config.final,
        adapters=None if c.export.merge_lora or not lora.enabled else (inputs.model_dir, dataclasses.asdict(lora)),
        objective=c.objective,
        steps=loop.num_steps,
    )
    ordered.append((export, 1))
    quality_at_end = None
    if quality is not None:
        quality_at_end = eval_hooks.CriticQualityAtEnd(quality, export, tracker, workdir)
        ordered.append((quality_at_end, 1))
    if c.export.hf:
        if c.export.hf_head > trainer.model_cfg.n_future_tokens:
            raise ValueError(
                f"export.hf_head={c.export.hf_head}: the model has {trainer.model_cfg.n_future_tokens} "
                "next-token heads (1 = the next token)"
            )
        ordered.append((hooks.ExportHF(workdir / "final", workdir / "final_hf", c.export.hf_head, c.tokenizer), 1))
    if loop.eval_at_end:
        at_end = eval_hooks.EvalAtEnd(c.eval, tok, tracker, workdir / "eval", export, isolation=isolation, seed=c.seed)
        ordered.append((at_end, 1))
    ordered.append((hooks.WeightPlot(workdir / "weight_distribution.png", tracker), 1))
    ordered.append((hooks.RunReport(workdir, tracker), 1))  # reads what the hooks above wrote
    if c.storage.remote_workdir:
        remote = hooks.RemoteWorkdir(workdir, c.storage.remote_workdir, checkpoints, c.storage.endpoint_url)
        ordered.append((remote, 1))
    ordered.append((hooks.CloseTracker(tracker), 1))
    return RunHooks(ordered, metrics, tracker, quality_at_end)


def _checkpoints(c, workdir: Path, iterator) -> hooks.Checkpoints:
    """The train-state checkpoints of ``workdir`` (the best by the early-stopping metric kept and exported when
    early stopping is on), after fetching the newest remote checkpoint when ``storage.remote_workdir`` is set."""
    early = c.train.early_stopping
    config = c.checkpoint
    if early.metric:
        config = dataclasses.replace(config, best_metric=early.metric, best_mode=early.mode, final="best")
    remote = c.storage.remote_workdir
    if remote:  # a fresh node: the newest complete remote checkpoint (and the metrics so far) come down first
        resumed = train_state.resume_from_remote(workdir, remote, c.storage.endpoint_url)
        if resumed is not None:
            print(f"resuming from {remote}/checkpoints/{resumed}")
    return hooks.Checkpoints(workdir / "checkpoints", iterator, config)


def _training_batches(c, inputs: Inputs, index: RecordIndex, tok, trainer: Trainer):
    """This process's Grain iterator over the deterministic plan (checkpointable: its position is saved)."""
    loop = c.train
    plan = build_plan(index, c.data, plan_draws(c, index), c.seed)
    local = shard_plan(plan, loop.batch_size, jax.process_index(), jax.process_count())
    tables = {key: TokenTable(prefix, key) for key, prefix in trainer.objective.tables.items()}
    pipeline = PipelineConfig.from_config(c.data, batch_size=loop.batch_size // jax.process_count())
    return iter(make_dataset(inputs.train, index.offsets(local), tok, pipeline, rows=local, tables=tables))


def train(c) -> dict:
    """Runs (or resumes) training: prepare inputs -> build the trainer -> build the hooks -> run. Returns
    ``{"final_dir", "steps", "losses", "mlflow_failed_calls", "critic_quality"}`` (losses: step -> loss)."""
    workdir = Path(c.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    final_dir = workdir / "final"
    if _early_stopped(final_dir):  # a finished early-stopped run is not trained further when re-run
        print(f"{workdir}: already stopped early ({final_dir / 'selection.json'}); nothing to do")
        step = json.loads((final_dir / "selection.json").read_text())["step"]
        return {"final_dir": final_dir, "steps": step, "losses": {}}
    # inputs
    inputs = distributed.main_process_first(lambda: prepare(c), "prepare_inputs")
    index = RecordIndex.load(index_path(inputs.train))
    c = resolve_schedule(c, index)
    if is_main_process():
        atomic_write_text(workdir / "config.json", redact(c.to_json(indent=2)))
        atomic_write_text(workdir / "inputs.json", json.dumps(dataclasses.asdict(inputs), indent=2) + "\n")
    # trainer, data and the state to start from
    trainer = build_trainer(c, inputs, sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor))
    tok = load_tokenizer(c.tokenizer)
    iterator = _training_batches(c, inputs, index, tok, trainer)
    checkpoints = _checkpoints(c, workdir, iterator)
    state = checkpoints.restore(trainer) or trainer.initial_state()
    start = int(state.step)
    tracker = Tracker(c, workdir, parent_run_id=c.mlflow.parent_run_id or None)
    if start == 0:
        tracker.log_artifact(workdir / "config.json")
        tracker.log_params(
            {
                "model.n_future_tokens": trainer.model_cfg.n_future_tokens,
                "data.sha256": data_sha256(inputs.train),
                "inputs.model_dir": inputs.model_dir,
            }
        )
    # hooks
    run_hooks = standard_hooks(c, trainer, inputs, checkpoints, tracker, tok, start)
    for hook, every in run_hooks.ordered:
        trainer.add_hook(hook, every=every)
    # run
    num_steps = c.train.num_steps
    try:
        trainer.run(state, (sharding.global_batch(batch, trainer.mesh) for batch in iterator), num_steps)
    except NonFiniteError as e:
        raise NonFiniteError(f"{e}; checkpoints in {workdir / 'checkpoints'}") from None
    quality = run_hooks.quality_at_end
    return {
        "final_dir": final_dir,
        "steps": num_steps,
        "losses": run_hooks.metrics.losses,
        "mlflow_failed_calls": tracker.failed_calls,
        "critic_quality": quality.result if quality is not None else None,
    }
