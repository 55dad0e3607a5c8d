"""The standard Trainer hooks: metrics file, progress bar, MLflow, validation loss, checkpoints, ``final/`` export,
weight plot. ``wmtp_jax.train.loop`` attaches them in that order (see ``Trainer`` for the hook protocol).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from wmtp_jax import sharding, storage
from wmtp_jax.checkpoint import save_model
from wmtp_jax.checkpoint.export import export_checkpoint
from wmtp_jax.checkpoint.store import ADAPTER_CONFIG, CONFIG_FILE, save_adapters
from wmtp_jax.checkpoint.train_state import TrainStateCheckpoints
from wmtp_jax.distributed import is_main_process
from wmtp_jax.eval.report import write_run_report
from wmtp_jax.eval.teacher_forced import head_ce_sums
from wmtp_jax.files import atomic_write_text
from wmtp_jax.model.lora import has_lora, merge_lora
from wmtp_jax.schema import Section
from wmtp_jax.train.loss_terms import WEIGHT_HIST_BINS, WEIGHT_HIST_MAX
from wmtp_jax.train.trainer import Hook, StepEvent, Trainer


class MetricsLog(Hook):
    """Appends every step's scalar metrics to ``{workdir}/metrics.jsonl`` (process 0) and to MLflow every
    ``log_every`` steps — validation metrics (``val*``) at every step that has them; keeps the per-step losses
    (``losses``). Add it after the hooks that measure (validation), so their metrics are in the same row."""

    def __init__(self, workdir: Path, tracker, log_every: int = 1):
        self.tracker, self.log_every, self.losses = tracker, log_every, {}
        self.file = open(Path(workdir) / "metrics.jsonl", "a") if is_main_process() else None

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        self.losses[event.step] = event.metrics["loss"]
        if self.file:
            self.file.write(json.dumps({"step": event.step, **event.metrics}) + "\n")
            self.file.flush()
        if event.step % self.log_every == 0:
            self.tracker.log_metrics(event.metrics, event.step)
        else:
            self.tracker.log_metrics({k: v for k, v in event.metrics.items() if k.startswith("val")}, event.step)

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        if self.file:
            self.file.close()
            self.file = None


class ProgressBar(Hook):
    """A tqdm bar (process 0) with the loss and tokens/s of the last step."""

    def __init__(self, total: int, initial: int, desc: str):
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not is_main_process())

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        self.bar.set_postfix(loss=f"{event.metrics['loss']:.4f}", tok_s=f"{event.metrics['tokens_per_s']:,.0f}")
        self.bar.update()

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        self.bar.close()


class Validation(Hook):
    """Mean per-target CE of all heads over the validation batches (``make_batches()`` yields process-local
    batches); sets ``event.metrics["val_loss"]`` for the hooks after it (checkpointing keeps the best, the
    metrics log writes it)."""

    def __init__(self, make_batches: Callable[[], object], ce_chunk: int):
        self.make_batches, self.ce_chunk = make_batches, ce_chunk

    def loss(self, trainer: Trainer, state) -> float:
        total, count = 0.0, 0.0
        for batch in self.make_batches():
            sums, n = head_ce_sums(
                trainer.graphdef,
                (state.params, trainer.frozen),
                sharding.global_batch(batch, trainer.mesh),
                chunk=self.ce_chunk,
            )
            total, count = total + float(jnp.sum(sums)), count + float(jnp.sum(n))
        return total / max(count, 1.0)

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        event.metrics["val_loss"] = self.loss(trainer, event.state)


@dataclasses.dataclass(frozen=True)
class EarlyStoppingConfig(Section):
    """``train.early_stopping``: stop when ``metric`` (e.g. "val_loss" or "val/mbpp/pass@1"; "" = off) has not
    improved by more than ``min_delta`` (``mode`` min or max) in ``patience`` consecutive measurements."""

    metric: str = ""
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0

    def problems(self, prefix: str = "train.early_stopping") -> list[str]:
        c = self.checker(prefix)
        c.one_of("mode", ("min", "max"))
        c.positive("patience")
        c.check("min_delta", lambda v: v >= 0, "a non-negative number")
        return c.found


class EarlyStopping(Hook):
    """Asks the trainer to stop once ``config.metric`` stopped improving (add it after the hooks that measure it)."""

    def __init__(self, config: EarlyStoppingConfig):
        self.config = config
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad = 0

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        value = event.metrics.get(self.config.metric)
        if value is None:
            return
        sign = 1.0 if self.config.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > self.config.min_delta:
            self.best, self.best_step, self.bad = value, event.step, 0
            return
        self.bad += 1
        if self.bad >= self.config.patience:
            trainer.request_stop(
                f"early stopping at step {event.step}: {self.config.metric} has not improved on "
                f"{self.best:.6g} (step {self.best_step}) for {self.bad} measurements"
            )


class Checkpoints(TrainStateCheckpoints, Hook):
    """The train-state checkpoints (``checkpoint.train_state``) as a hook: saves every ``every_steps``, at the last
    step, whenever the best-model metric was measured, and the state a stopped run ended with. Add it with
    ``every=1``, after the hooks that measure the best-model metric."""

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        measured = self.config.best_metric in event.metrics
        if event.step % self.config.every_steps == 0 or event.last or measured:
            metrics = {self.config.best_metric: event.metrics[self.config.best_metric]} if measured else None
            self.save(event.step, event.state, metrics)

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        self.wait()
        if status in ("STOPPED", "FINISHED") and event.step > 0 and self.latest_step() != event.step:
            self.save(event.step, event.state)  # the state the run ended with (early stop, non-finite stop)
            self.wait()


class ExportFinal(Hook):
    """Writes the trained model to ``final_dir`` (every process) when the run finishes: the last state, or with
    ``select="best"`` the best checkpoint of ``checkpoints``; ``final_dir/selection.json`` says which. A LoRA model
    is merged, or with ``adapters=(base model directory, model.lora settings)`` (``export.merge_lora=False``)
    written as its adapters plus that base reference (``store.save_adapters``). A co-trained separate critic
    (``critic.co_train``) is written to ``final_dir/critic``."""

    def __init__(
        self,
        final_dir: Path,
        checkpoints: Checkpoints | None = None,
        select: str = "last",
        adapters: tuple[str, dict] | None = None,
        **provenance,
    ):
        self.final_dir, self.checkpoints, self.select, self.adapters, self.provenance = (
            Path(final_dir),
            checkpoints,
            select,
            adapters,
            provenance,
        )

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        if status != "FINISHED":
            return
        state, selection = event.state, {"final": "last", "step": event.step}
        best = self.checkpoints.best_step() if self.select == "best" and self.checkpoints else None
        if best is not None:
            self.checkpoints.wait()
            state = self.checkpoints.restore(trainer, best[0])
            selection = {
                "final": "best",
                "step": best[0],
                "metric": self.checkpoints.config.best_metric,
                "value": best[1],
            }
        elif self.select == "best":
            selection["note"] = "no checkpoint recorded the best-model metric; final/ is the last state"
        selection["early_stopped"] = trainer.stop_reason
        self.state, self.selection = state, selection  # what final/ holds, for the hooks after this one
        model = trainer.model(state)
        if has_lora(model) and self.adapters is not None:  # adapters + value head, and where their base is
            base, lora = self.adapters
            (self.final_dir / CONFIG_FILE).unlink(missing_ok=True)  # not a plain model directory any more
            save_adapters(model, self.final_dir, base, lora, **self.provenance)
            selection["lora"] = "adapters"
        else:
            if has_lora(model):  # final/ is a plain model: W + (alpha / r) A B
                model = merge_lora(model)
                selection["lora"] = "merged"
            (self.final_dir / ADAPTER_CONFIG).unlink(missing_ok=True)
            save_model(model, self.final_dir, **self.provenance)
        critic = trainer.critic_model(state)
        if critic is not None:  # the co-trained separate critic (critic.co_train), usable as a later critic.model
            save_model(critic, self.final_dir / "critic", **self.provenance, role="co-trained critic")
            selection["critic"] = "critic/"
        if is_main_process():
            atomic_write_text(self.final_dir / "selection.json", json.dumps(selection, indent=2) + "\n")


class ExportHF(Hook):
    """After ``ExportFinal``: a Hugging Face ``LlamaForCausalLM`` copy of ``final/`` in ``hf_dir`` (``head``'s
    path for an MTP model; see ``wmtp_jax.checkpoint.export``), written by process 0 and logged in the run."""

    def __init__(self, final_dir: Path, hf_dir: Path, head: int = 1, tokenizer: str = ""):
        self.final_dir, self.hf_dir, self.head, self.tokenizer = Path(final_dir), Path(hf_dir), head, tokenizer

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        if status != "FINISHED" or not is_main_process():
            return

        export_checkpoint(
            self.final_dir,
            self.hf_dir,
            format="hf",
            head=self.head,
            tokenizer=self.tokenizer or None,
            overwrite=True,
            progress=False,
        )


class RemoteWorkdir(Hook):
    """Keeps ``remote`` (``s3://...``, ``storage.remote_workdir``) a copy of the run (process 0 only).

    Each committed checkpoint is uploaded in a background thread (the step never waits), followed by
    ``metrics.jsonl``; remote checkpoints that the local retention removed are deleted. At the end (add it last)
    the uploads are awaited and ``final/``, ``eval/`` and the run's files are uploaded. A failed upload is a
    warning with the URL, counted in ``failed``; training goes on.
    """

    FILES = ("metrics.jsonl", "config.json", "inputs.json", "weight_distribution.png", "weight_hist.json")

    def __init__(self, workdir: Path, remote: str, checkpoints: Checkpoints, endpoint_url: str = ""):
        import concurrent.futures

        self.workdir, self.remote, self.endpoint = Path(workdir), remote.rstrip("/"), endpoint_url
        self.checkpoints = checkpoints
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.pending: list = []
        self.failed = 0
        if is_main_process():
            checkpoints.on_commit.append(self.committed)

    def committed(self, step: int, path: Path) -> None:
        self.pending.append(self.pool.submit(self._upload_step, step, Path(path)))

    def _guarded(self, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except storage.StorageError as e:
            self.failed += 1
            warnings.warn(f"remote workdir: {what} failed: {e}", stacklevel=2)

    def _upload_step(self, step: int, path: Path) -> None:
        self._guarded(
            f"checkpoint {step}", storage.upload_dir, path, f"{self.remote}/checkpoints/{step}", self.endpoint
        )
        metrics = self.workdir / "metrics.jsonl"
        if metrics.is_file():
            self._guarded("metrics.jsonl", storage.upload_file, metrics, f"{self.remote}/metrics.jsonl", self.endpoint)
        local = {int(p.name) for p in self.checkpoints.directory.iterdir() if p.name.isdigit()}
        try:
            remote_steps = storage.complete_steps(f"{self.remote}/checkpoints", self.endpoint)
        except storage.StorageError:
            return
        for old in remote_steps:
            if old not in local:  # retention (keep / best) applies remotely too
                old_uri = f"{self.remote}/checkpoints/{old}"
                self._guarded(f"removing checkpoint {old}", storage.delete_prefix, old_uri, self.endpoint)

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        if not is_main_process():
            return
        self.checkpoints.wait()
        for future in self.pending:
            future.result()
        self.pool.shutdown()
        for name in ("final", "final_hf", "eval"):
            if (self.workdir / name).is_dir():
                self._guarded(name, storage.upload_dir, self.workdir / name, f"{self.remote}/{name}", self.endpoint)
        for name in self.FILES:
            if (self.workdir / name).is_file():
                self._guarded(name, storage.upload_file, self.workdir / name, f"{self.remote}/{name}", self.endpoint)
        if self.failed:
            warnings.warn(f"remote workdir {self.remote}: {self.failed} uploads failed", stacklevel=2)


class WeightPlot(Hook):
    """Sums the token-weight histogram over the run; at the end writes ``weight_distribution.png`` and logs it."""

    def __init__(self, path: Path, tracker):
        self.path, self.tracker = Path(path), tracker
        self.hist = np.zeros(WEIGHT_HIST_BINS)

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        if event.weight_hist is not None:
            self.hist += event.weight_hist

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        if status == "FINISHED" and is_main_process() and self.hist.sum():
            plot_weights(self.hist, self.path)
            edges = np.linspace(0.0, WEIGHT_HIST_MAX, WEIGHT_HIST_BINS + 1)
            atomic_write_text(
                self.path.with_name("weight_hist.json"),
                json.dumps({"edges": edges.tolist(), "counts": self.hist.tolist()}) + "\n",
            )
            self.tracker.log_artifact(self.path)


class RunReport(Hook):
    """At the end of a finished run: ``{workdir}/report.md`` (``eval.report.write_run_report``) from what the hooks
    before it wrote (final/, the evaluation, metrics, weights), logged to MLflow. Add it after them."""

    def __init__(self, workdir: Path, tracker):
        self.workdir, self.tracker = Path(workdir), tracker

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        if status == "FINISHED" and is_main_process():
            self.tracker.log_artifact(write_run_report(self.workdir))


class CloseTracker(Hook):
    """Ends the MLflow run with the loop's status (add it last)."""

    def __init__(self, tracker):
        self.tracker = tracker

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        self.tracker.close("FINISHED" if status == "FINISHED" else "FAILED")


def plot_weights(hist: np.ndarray, path: Path) -> None:
    """Bar plot of a token-weight histogram (``WEIGHT_HIST_BINS`` bins over [0, ``WEIGHT_HIST_MAX``])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0.0, WEIGHT_HIST_MAX, WEIGHT_HIST_BINS + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(edges[:-1], hist, width=np.diff(edges), align="edge")
    ax.set_xlabel("token weight")
    ax.set_ylabel("target tokens (whole run)")
    ax.set_title("distribution of token weights")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
