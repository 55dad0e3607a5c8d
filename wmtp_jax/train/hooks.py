"""The standard Trainer hooks: metrics file, progress bar, MLflow, validation loss, checkpoints, ``final/`` export,
weight plot. ``wmtp_jax.train.loop`` attaches them in that order (see ``Trainer`` for the hook protocol).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp
from flax import nnx
from tqdm.auto import tqdm

from wmtp_jax import alignment, losses
from wmtp_jax.checkpoint import save_model
from wmtp_jax.checkpoint.store import restore_renamed
from wmtp_jax.schema import Section
from wmtp_jax.train import step as step_lib
from wmtp_jax.train.trainer import StepEvent, Trainer


def _is_main() -> bool:
    return jax.process_index() == 0


class MetricsLog:
    """Appends every step's scalar metrics to ``{workdir}/metrics.jsonl`` (process 0) and to MLflow every
    ``log_every`` steps; keeps the per-step losses (``losses``)."""

    def __init__(self, workdir: Path, tracker, log_every: int = 1):
        self.tracker, self.log_every, self.losses = tracker, log_every, {}
        self.file = open(Path(workdir) / "metrics.jsonl", "a") if _is_main() else None

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        self.losses[event.step] = event.metrics["loss"]
        if self.file:
            self.file.write(json.dumps({"step": event.step, **event.metrics}) + "\n")
            self.file.flush()
        if event.step % self.log_every == 0:
            self.tracker.log_metrics(event.metrics, event.step)

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        if self.file:
            self.file.close()
            self.file = None


class ProgressBar:
    """A tqdm bar (process 0) with the loss and tokens/s of the last step."""

    def __init__(self, total: int, initial: int, desc: str):
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not _is_main())

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        self.bar.set_postfix(loss=f"{event.metrics['loss']:.4f}", tok_s=f"{event.metrics['tokens_per_s']:,.0f}")
        self.bar.update()

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        self.bar.close()


def global_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Process-local rows -> global arrays sharded over the batch axes."""
    from wmtp_jax import sharding

    spec = sharding.batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(spec, v) for k, v in local.items()}


class Validation:
    """Mean per-target CE of all heads over the validation batches (``make_batches()`` yields process-local
    batches); sets ``event.metrics["val_loss"]`` for the hooks after it (checkpointing keeps the best) and logs it."""

    def __init__(self, make_batches: Callable[[], object], tracker, ce_chunk: int):
        self.make_batches, self.tracker, self.ce_chunk = make_batches, tracker, ce_chunk
        self._fn = None

    def loss(self, trainer: Trainer, state) -> float:
        if self._fn is None:
            graphdef, chunk = trainer.graphdef, self.ce_chunk

            @jax.jit
            def eval_fn(params, frozen, batch):
                m = nnx.merge(graphdef, params, frozen)
                out = m.forward(batch["tokens"], batch["positions"], batch["segment_ids"])
                targets, valid = alignment.mtp_targets(
                    batch["tokens"], batch["loss_mask"], batch["segment_ids"], m.cfg.n_future_tokens
                )
                ce = losses.token_ce(m.output_projection(), out.head_hidden, targets, chunk=chunk)
                return jnp.sum(jnp.where(valid, ce, 0.0), axis=(0, 1)), valid.sum(axis=(0, 1))

            self._fn = eval_fn
        total, count = 0.0, 0.0
        for batch in self.make_batches():
            sums, n = self._fn(state.params, trainer.frozen, global_batch(batch, trainer.mesh))
            total, count = total + float(jnp.sum(sums)), count + float(jnp.sum(n))
        return total / max(count, 1.0)

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        val = self.loss(trainer, event.state)
        event.metrics["val_loss"] = val
        self.tracker.log_metrics({"val_loss": val}, event.step)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(Section):
    """The ``checkpoint`` section: a checkpoint every ``every_steps`` steps (and at the end), the last ``keep``
    kept plus the best by validation loss, written in the background when ``async_save``."""

    every_steps: int = 100
    keep: int = 2
    async_save: bool = True

    def problems(self, prefix: str = "checkpoint") -> list[str]:
        c = self.checker(prefix)
        c.positive("every_steps")
        c.positive("keep")
        c.check("async_save", lambda v: isinstance(v, bool), "true or false")
        return c.found


class IteratorCheckpointable:
    """A Grain iterator's position as an Orbax v1 checkpointable: one ``process_{i}-of-{n}.json`` per process, the
    files Grain's own (v0) checkpoint handler writes, so checkpoints from before the move to v1 still restore."""

    def __init__(self, iterator):
        self.iterator = iterator

    def _file(self, directory) -> Path:
        return Path(directory) / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    async def save(self, directory):
        text = json.dumps(self.iterator.get_state(), indent=4)  # captured now; written in the background

        async def write():
            self._file(await directory.await_creation()).write_text(text)

        return write()

    async def load(self, directory):
        self.iterator.set_state(json.loads(self._file(directory).read_text()))

        async def done():
            return None

        return done()


class Checkpoints:
    """Orbax checkpoints of the train state and the Grain iterator position, together, under
    ``{workdir}/checkpoints``: the last ``keep`` plus the best by ``val_loss``. After a checkpoint is committed
    (written and finalised, also when saved asynchronously), every callback in ``on_commit`` gets
    ``(step, step_directory)`` (from a background thread when saving asynchronously).
    """

    def __init__(self, directory: Path, iterator, config: CheckpointConfig = CheckpointConfig()):
        self.directory = Path(directory).absolute()
        self.data = IteratorCheckpointable(iterator)
        self.on_commit: list[Callable[[int, Path], None]] = []
        self.async_save = config.async_save
        policies = ocp.training.preservation_policies
        policy = policies.AnyPreservationPolicy(
            [
                policies.LatestN(config.keep),
                policies.BestN(
                    get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        self.checkpointer = ocp.training.Checkpointer(self.directory, preservation_policy=policy)
        self._pending: list[threading.Thread] = []
        self.last_saved: int | None = None

    def _committed(self, step: int) -> None:
        for callback in self.on_commit:
            callback(step, self.directory / str(step))

    def latest_step(self) -> int | None:
        latest = self.checkpointer.latest
        return None if latest is None else latest.step

    def restore(self, trainer: Trainer):
        """The train state of the latest checkpoint restored into the trainer's shardings (the iterator is set to
        its saved position), or None if there is none. Checkpoints written before projections became modules
        (parameter names without ``/kernel``) are read through the name table of ``checkpoint.store``."""
        step = self.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), trainer.initial_state()
        )
        stored = self.checkpointer.checkpointables_metadata(step).metadata["state"]
        self.checkpointer.load_checkpointables(step, {"data": self.data})
        return restore_renamed(
            abstract, stored, lambda target: self.checkpointer.load_checkpointables(step, {"state": target})["state"]
        )

    def save(self, step: int, state, val_loss: float | None = None) -> None:
        checkpointables = {"state": state, "data": self.data}
        metrics = {"val_loss": val_loss} if val_loss is not None else None
        if self.async_save:
            response = self.checkpointer.save_checkpointables_async(step, checkpointables, force=True, metrics=metrics)
            thread = threading.Thread(target=lambda: (response.result(), self._committed(step)), daemon=True)
            thread.start()
            self._pending.append(thread)
        else:
            self.checkpointer.save_checkpointables(step, checkpointables, force=True, metrics=metrics)
            self._committed(step)
        self.last_saved = step

    def wait(self) -> None:
        """Blocks until every checkpoint started so far is committed (and its callbacks ran)."""
        self.checkpointer.wait()
        for thread in self._pending:
            thread.join()
        self._pending.clear()

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        self.save(event.step, event.state, event.metrics.get("val_loss"))

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        if status == "STOPPED" and self.last_saved != event.step:
            self.save(event.step, event.state)
        self.wait()


class ExportFinal:
    """Writes the trained model to ``final_dir`` (every process) when the run finishes."""

    def __init__(self, final_dir: Path, **provenance):
        self.final_dir, self.provenance = Path(final_dir), provenance

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        pass

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        if status == "FINISHED":
            save_model(trainer.model(event.state), self.final_dir, **self.provenance)


class WeightPlot:
    """Sums the token-weight histogram over the run; at the end writes ``weight_distribution.png`` and logs it."""

    def __init__(self, path: Path, tracker):
        self.path, self.tracker = Path(path), tracker
        self.hist = np.zeros(step_lib.WEIGHT_HIST_BINS)

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        if event.weight_hist is not None:
            self.hist += event.weight_hist

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        if status == "FINISHED" and _is_main() and self.hist.sum():
            plot_weights(self.hist, self.path)
            self.tracker.log_artifact(self.path)


class CloseTracker:
    """Ends the MLflow run with the loop's status (add it last)."""

    def __init__(self, tracker):
        self.tracker = tracker

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        pass

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        self.tracker.close("FINISHED" if status == "FINISHED" else "FAILED")


def plot_weights(hist: np.ndarray, path: Path) -> None:
    """Bar plot of a token-weight histogram (``step.WEIGHT_HIST_BINS`` bins over [0, ``step.WEIGHT_HIST_MAX``])."""
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
