"""A training run on disk: its workdir layout, the train-state checkpoints in it, and what any model path is.

Workdir layout (``{workdir}/``): ``config.json`` (the resolved run config), ``inputs.json`` (the model directories
and data the run read), ``checkpoints/{step}/`` (Orbax: ``state`` = the ``TrainState``, ``data`` = the Grain
iterator position, one file per process), ``final/`` (the trained model, ``selection.json`` says which step),
``metrics.jsonl``, ``eval/`` and the MLflow store.

``resolve(path)`` says what a path a user points at is, one answer for evaluation (``policy.load_policy``) and
export (``export.open_source``): an Orbax model directory, LoRA adapters over a base, a training workdir (or one
of its checkpoint steps), or a torch checkpoint directory.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path

import jax
import orbax.checkpoint.experimental.v1 as ocp

from wmtp_jax import storage
from wmtp_jax.checkpoint.convert import ensure_orbax, is_orbax_model_dir
from wmtp_jax.checkpoint.store import CheckpointError, is_adapter_dir, restore_renamed
from wmtp_jax.model.lora import LoraConfig
from wmtp_jax.schema import Section

CONFIG, INPUTS, CHECKPOINTS, FINAL = "config.json", "inputs.json", "checkpoints", "final"
KINDS = ("model", "adapters", "workdir", "torch")  # what resolve() can say a path is


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(Section):
    """The ``checkpoint`` section: a checkpoint every ``every_steps`` steps, at the end, and whenever the best-model
    metric was measured; the last ``keep`` are kept, plus the best by ``best_metric`` (``best_mode`` min or max;
    the early-stopping metric when early stopping is on) and every ``keep_every_steps``-th (0 = none); written in
    the background when ``async_save``. ``final``: what ``final/`` is, "last" or "best" (early stopping always
    exports the best)."""

    every_steps: int = 100
    keep: int = 2
    keep_every_steps: int = 0
    async_save: bool = True
    best_metric: str = "val_loss"
    best_mode: str = "min"
    final: str = "last"

    def problems(self, prefix: str = "checkpoint") -> list[str]:
        c = self.checker(prefix)
        c.positive("every_steps")
        c.positive("keep")
        c.non_negative("keep_every_steps")
        c.check("async_save", lambda v: isinstance(v, bool), "true or false")
        c.one_of("best_mode", ("min", "max"))
        c.one_of("final", ("last", "best"))
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


class TrainStateCheckpoints:
    """Orbax checkpoints of the train state and the Grain iterator position, together, under
    ``{workdir}/checkpoints`` (see ``CheckpointConfig`` for which are kept; ``train.hooks.Checkpoints`` decides
    when to save during a run). After a checkpoint is committed
    (written and finalised, also when saved asynchronously), every callback in ``on_commit`` gets
    ``(step, step_directory)`` (from a background thread when saving asynchronously).
    """

    def __init__(self, directory: Path, iterator, config: CheckpointConfig = CheckpointConfig()):
        self.directory = Path(directory).absolute()
        self.config = config
        self.data = IteratorCheckpointable(iterator)
        self.on_commit: list[Callable[[int, Path], None]] = []
        policies = ocp.training.preservation_policies
        metric, reverse = config.best_metric, config.best_mode == "min"
        keep = [
            policies.LatestN(config.keep),
            policies.BestN(
                get_metric_fn=lambda m: m[metric], reverse=reverse, n=1, keep_checkpoints_without_metrics=False
            ),
        ]
        if config.keep_every_steps:
            keep.append(policies.EveryNSteps(config.keep_every_steps))
        self.checkpointer = ocp.training.Checkpointer(
            self.directory, preservation_policy=policies.AnyPreservationPolicy(keep)
        )
        self._pending: list[threading.Thread] = []
        self.last_saved: int | None = None
        self.best: tuple[int, float] | None = None  # (step, value) of the best checkpoint of this run

    def _committed(self, step: int) -> None:
        for callback in self.on_commit:
            callback(step, self.directory / str(step))

    def latest_step(self) -> int | None:
        latest = self.checkpointer.latest
        return None if latest is None else latest.step

    def best_step(self) -> tuple[int, float] | None:
        """``(step, metric value)`` of the best kept checkpoint by ``best_metric`` (also from earlier runs of this
        workdir), or None if no checkpoint recorded the metric."""
        scored = [
            (m.metrics[self.config.best_metric], m.step)
            for m in self.checkpointer.checkpoints
            if m.metrics and self.config.best_metric in m.metrics
        ]
        if not scored:
            return None
        value, step = (min if self.config.best_mode == "min" else max)(scored)
        return step, value

    def restore(self, trainer, step: int | None = None):
        """The train state of checkpoint ``step`` (default: the latest) restored into the shardings of
        ``trainer.abstract_state()`` (a ``train.trainer.Trainer``; the
        iterator is set to its saved position), or None if there is none. Checkpoints written before projections
        became modules (parameter names without ``/kernel``) are read through the name table of
        ``checkpoint.store``."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        abstract = trainer.abstract_state()
        stored = self.checkpointer.checkpointables_metadata(step).metadata["state"]
        self.checkpointer.load_checkpointables(step, {"data": self.data})
        return restore_renamed(
            abstract, stored, lambda target: self.checkpointer.load_checkpointables(step, {"state": target})["state"]
        )

    def save(self, step: int, state, metrics: dict[str, float] | None = None) -> None:
        checkpointables = {"state": state, "data": self.data}
        if self.config.async_save:
            response = self.checkpointer.save_checkpointables_async(
                step, checkpointables, force=True, metrics=metrics or None
            )
            thread = threading.Thread(target=lambda: (response.result(), self._committed(step)), daemon=True)
            thread.start()
            self._pending.append(thread)
        else:
            self.checkpointer.save_checkpointables(step, checkpointables, force=True, metrics=metrics or None)
            self._committed(step)
        self.last_saved = step

    def wait(self) -> None:
        """Blocks until every checkpoint started so far is committed (and its callbacks ran)."""
        self.checkpointer.wait()
        for thread in self._pending:
            thread.join()
        self._pending.clear()


def resume_from_remote(workdir: Path, remote: str, endpoint_url: str = "") -> int | None:
    """On a node whose ``{workdir}/checkpoints`` holds no checkpoint: downloads the newest complete remote
    checkpoint (partial uploads are skipped with a warning) and the run's ``metrics.jsonl``; returns its step, or
    None when there is nothing to resume from. Every process downloads (to its own local disk)."""
    local = Path(workdir) / "checkpoints"
    if local.is_dir() and any(p.name.isdigit() for p in local.iterdir()):
        return None
    remote = remote.rstrip("/")
    steps = storage.complete_steps(f"{remote}/checkpoints", endpoint_url)
    if not steps:
        return None
    step = steps[-1]
    local.mkdir(parents=True, exist_ok=True)
    storage.download_dir(f"{remote}/checkpoints/{step}", local / str(step), endpoint_url)
    try:
        storage.download_file(f"{remote}/metrics.jsonl", Path(workdir) / "metrics.jsonl", endpoint_url)
    except storage.StorageError:
        pass  # a run that never logged a metric
    return step


def training_step(path: Path) -> tuple[Path, Path] | None:
    """``(workdir, step_dir)`` if ``path`` is a training workdir or one of its checkpoint steps."""
    if (path / "checkpoints").is_dir() and (path / "config.json").is_file():
        steps = sorted(
            (int(p.name), p) for p in (path / "checkpoints").iterdir() if p.name.isdigit() and (p / "state").is_dir()
        )
        if not steps:
            raise CheckpointError(f"{path}: a training workdir without any finished checkpoint in checkpoints/")
        return path, steps[-1][1]
    if (path / "state").is_dir() and path.parent.name == "checkpoints":
        return path.parent.parent, path
    return None


def starting_model(workdir: Path) -> Path:
    """The Orbax model directory a training run started from: ``inputs.json``, or for runs written before it
    existed, the model keys of ``config.json``."""
    inputs = workdir / "inputs.json"
    if inputs.is_file():
        return Path(json.loads(inputs.read_text())["model_dir"])
    model_cfg = json.loads((workdir / "config.json").read_text())["model"]
    return Path(
        model_cfg.get("init_from")
        or ensure_orbax(model_cfg["checkpoint"], model_cfg["cache_dir"], vocab_size=model_cfg.get("vocab_size") or None)
    )


def run_lora_config(workdir: Path) -> LoraConfig:
    """The run's ``model.lora`` (runs written before LoRA existed have none: rank 0)."""
    values = json.loads((workdir / "config.json").read_text())["model"].get("lora") or {}
    return LoraConfig.from_config(values)


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What ``resolve`` found: ``kind`` (one of ``KINDS``), the ``path``, and for a training workdir its
    ``workdir`` and the ``step_dir`` to read (the latest finished checkpoint, or the one pointed at)."""

    kind: str
    path: Path
    workdir: Path | None = None
    step_dir: Path | None = None


def resolve(path: str | Path) -> Resolved:
    """What ``path`` is: "model" (an Orbax model directory: ``model_config.json`` + ``params/``), "adapters" (a
    LoRA run's ``final/`` written as adapters plus a base reference), "workdir" (a training workdir or one of its
    ``checkpoints/STEP``), else "torch" (a Meta / Hugging Face checkpoint directory; the converter names what it
    cannot read). Raises CheckpointError for a workdir without a finished checkpoint."""
    path = Path(path)
    if is_orbax_model_dir(path):
        return Resolved("model", path)
    if is_adapter_dir(path):
        return Resolved("adapters", path)
    found = training_step(path.absolute())
    if found is not None:
        return Resolved("workdir", path, *found)
    return Resolved("torch", path)
