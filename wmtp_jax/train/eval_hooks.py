"""Evaluation inside training: pass@k of the live parameters on a validation slice every N steps, and the full
evaluation of ``final/`` at the end, with the generator and sandbox of the eval job on the training mesh (no
save / restore round trip). Both also report each head's teacher-forced CE of the benchmarks' reference solutions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from wmtp_jax.data import benchmarks
from wmtp_jax.distributed import is_main_process
from wmtp_jax.eval import critic_quality
from wmtp_jax.eval.generate import Generator
from wmtp_jax.eval.run import run_benchmarks
from wmtp_jax.eval.teacher_forced import head_ce, reference_rows
from wmtp_jax.files import atomic_write_text
from wmtp_jax.train.hooks import ExportFinal
from wmtp_jax.train.trainer import Hook, StepEvent, Trainer

REFERENCE_LENGTH = 512  # tokens per teacher-forced row (prompt cut on the left)


def validation_settings(c):
    """The eval section as the in-training evaluation uses it: ``train.eval_benchmarks``, the first
    ``train.eval_limit`` problems, one greedy sample, pass@1."""
    return dataclasses.replace(
        c.eval,
        benchmarks=tuple(c.train.eval_benchmarks),
        limit=c.train.eval_limit,
        protocol="greedy",
        n_samples=1,
        k=(1,),
        temperature=0.0,
        k_temperatures=(),
        speculative=False,
    )


def _broadcast(values: dict[str, float]) -> dict[str, float]:
    """Process 0's metrics on every process (only process 0 executes code), so decisions such as early stopping
    agree across processes."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    keys = sorted(values)
    array = multihost_utils.broadcast_one_to_all(np.asarray([values[k] for k in keys], np.float64))
    return dict(zip(keys, map(float, array)))


def reference_rows_by_benchmark(e, tok, split: str) -> dict[str, dict[str, np.ndarray]]:
    """The teacher-forced rows (``teacher_forced.reference_rows``) of every benchmark of ``e`` whose problems have
    reference solutions (the first ``e.limit`` problems when limited)."""
    out = {}
    for name in e.benchmarks:
        problems = benchmarks.load_for(name, e, split)
        rows = reference_rows(problems[: e.limit] if e.limit else problems, tok, REFERENCE_LENGTH)
        if rows is not None:
            out[name] = rows
    return out


def reference_head_ce(model, mesh, rows_by_benchmark: dict, batch_size: int) -> dict[str, float]:
    """``{"{benchmark}/ref_ce_head_{k}": CE}`` of ``model`` on the rows of ``reference_rows_by_benchmark``."""
    return {
        f"{name}/ref_ce_head_{k}": float(v)
        for name, rows in rows_by_benchmark.items()
        for k, v in enumerate(head_ce(model, mesh, rows, batch_size))
    }


class ValidationPassAtK(Hook):
    """Every ``every`` steps: ``val/{benchmark}/pass@1`` (greedy, validation split, first ``limit`` problems) and
    ``val/{benchmark}/ref_ce_head_{k}`` of the live parameters, into ``event.metrics`` (for early stopping and the
    metrics log)."""

    def __init__(self, e, tok, *, isolation: str, seed: int):
        self.e, self.tok, self.isolation, self.seed = e, tok, isolation, seed
        self.generator = None  # built at the first evaluation, then reused with the live parameters
        self.rows = reference_rows_by_benchmark(e, tok, "validation")

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        model = trainer.model(event.state)
        if self.generator is None:
            self.generator = Generator(model, trainer.mesh, self.tok, self.e.batch_size)
        else:
            self.generator.set_model(model)
        results = run_benchmarks(
            self.generator, self.e, seed=self.seed, isolation=self.isolation, split="validation", progress=False
        )
        values = {f"val/{name}/pass@1": r["pass@1"]["mean"] for name, r in results["benchmarks"].items()}
        ce = reference_head_ce(model, trainer.mesh, self.rows, self.e.batch_size)
        event.metrics.update(_broadcast(values | {f"val/{k}": v for k, v in ce.items()}))  # the metrics log writes them


class EvalAtEnd(Hook):
    """When the run finishes: the eval section's evaluation of what ``final/`` holds (``export``'s state) on the
    test split, written to ``out_dir`` (results.json with the per-head reference CE, samples.jsonl) and logged in
    the training run."""

    def __init__(self, e, tok, tracker, out_dir: Path, export: ExportFinal, *, isolation: str, seed: int):
        self.e, self.tok, self.tracker, self.out_dir, self.export = e, tok, tracker, Path(out_dir), export
        self.isolation, self.seed = isolation, seed
        self.results: dict | None = None

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        if status != "FINISHED" or self.export.state is None:
            return
        model = trainer.model(self.export.state)
        header = {
            "model": f"training run final/ ({self.export.selection})",
            "sandbox_isolation": self.isolation,
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "mesh": dict(trainer.mesh.shape),
            "reference_ce": reference_head_ce(
                model, trainer.mesh, reference_rows_by_benchmark(self.e, self.tok, "test"), self.e.batch_size
            ),
        }
        self.tracker.log_metrics(header["reference_ce"], event.step)
        self.results = run_benchmarks(
            Generator(model, trainer.mesh, self.tok, self.e.batch_size),
            self.e,
            seed=self.seed,
            isolation=self.isolation,
            tracker=self.tracker,
            out_dir=self.out_dir,
            header=header,
            step=event.step,
        )


class CriticQuality(Hook):
    """The critic's AUROC, Brier score and explained variance on held-out labelled data
    (``wmtp_jax.eval.critic_quality``) with the live parameters, at every validation: sets
    ``val/critic/{auroc, brier, explained_variance}`` in ``event.metrics`` for the hooks after it (add it before
    the metrics log). ``make_batches()`` yields the held-out split's global batches; ``last`` keeps the latest
    result."""

    def __init__(self, make_batches):
        self.make_batches = make_batches
        self.last: dict | None = None

    def measure(self, trainer: Trainer, state) -> dict:
        """The quality of ``state``'s trained value head: the model's own, or a co-trained separate critic's."""

        if state.critic is not None:
            graphdef, params = trainer.ref_graphdef, (state.critic, trainer.reference_state)
        else:
            graphdef, params = trainer.graphdef, (state.params, trainer.frozen)
        values, labels = critic_quality.collect(graphdef, params, self.make_batches())
        return critic_quality.quality(values, labels)

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        self.last = self.measure(trainer, event.state)
        for key in ("auroc", "brier", "explained_variance"):
            if self.last[key] is not None:
                event.metrics[f"val/critic/{key}"] = self.last[key]


class CriticQualityAtEnd(Hook):
    """After ``ExportFinal``: the critic quality of what ``final/`` holds, written to ``final/critic_quality.json``
    (with the reliability table) and ``{workdir}/critic_reliability.png``, logged as ``critic/*`` metrics and
    artifacts, and kept in ``result`` for the run summary (process 0 writes)."""

    def __init__(self, quality: CriticQuality, export: ExportFinal, tracker, workdir: Path):
        self.quality, self.export, self.tracker, self.workdir = quality, export, tracker, Path(workdir)
        self.result: dict | None = None

    def on_end(self, trainer: Trainer, event: StepEvent, status: str) -> None:
        if status != "FINISHED" or self.export.state is None:
            return
        import json

        self.result = {**self.quality.measure(trainer, self.export.state), "step": self.export.selection["step"]}
        if not is_main_process():
            return
        atomic_write_text(self.export.final_dir / "critic_quality.json", json.dumps(self.result, indent=2) + "\n")
        plot = critic_quality.reliability_plot(self.result, self.workdir / "critic_reliability.png")
        scalars = {f"critic/{k}": self.result[k] for k in ("auroc", "brier", "explained_variance")}
        self.tracker.log_metrics({k: v for k, v in scalars.items() if v is not None}, event.step)
        self.tracker.log_artifact(plot)
        self.tracker.log_artifact(self.export.final_dir / "critic_quality.json")
        area = "n/a (one class)" if self.result["auroc"] is None else f"{self.result['auroc']:.3f}"
        print(
            f"critic on the held-out split ({self.result['n']} solutions, {self.result['n_correct']} correct): AUROC "
            f"{area}, Brier {self.result['brier']:.4f}, explained variance {self.result['explained_variance']:.4f}"
        )
