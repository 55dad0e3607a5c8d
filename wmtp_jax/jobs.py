"""The jobs a run can do (``c.job``): what each validates and what runs it.

``wmtp_jax.main`` parses the command line, then asks this module for every problem of the config (the keys all
jobs share, then the job's own sections, all reported at once before anything loads) and runs the job.
"""

from __future__ import annotations

import jax
import ml_collections

from wmtp_jax import forward, rollout
from wmtp_jax.eval import run as eval_run
from wmtp_jax.eval.checks import generation_problems
from wmtp_jax.run_checks import GENERATION_JOBS, common_problems
from wmtp_jax.run_config import RunConfig, parse
from wmtp_jax.schema import ConfigError
from wmtp_jax.study import runner
from wmtp_jax.study.runner import problems as study_problems
from wmtp_jax.train import dry_run, loop
from wmtp_jax.train.checks import training_problems


def problems(
    c: RunConfig | ml_collections.ConfigDict, n_devices: int | None = None, n_processes: int | None = None
) -> list[str]:
    """Every problem in ``c``, one line each, naming the key, the value and what is allowed: keys no section
    declares (a ``ConfigDict`` is parsed first), the keys all jobs share (``run_checks``), then the job's own
    sections. Job validation runs only on a config whose keys are all known."""
    if isinstance(c, ml_collections.ConfigDict):
        try:
            c = parse(c)
        except ConfigError as e:
            return e.problems
    k, (data, fsdp) = common_problems(c, n_devices)
    if c.job in GENERATION_JOBS:
        generation_problems(c, k, data, fsdp)
    elif c.job == "train":
        training_problems(c, k, data, fsdp, jax.process_count() if n_processes is None else n_processes)
    elif c.job == "study":
        study_problems(c, k)
    return k.found


def validate(c: RunConfig | ml_collections.ConfigDict, n_devices: int | None = None) -> None:
    """Raises ``ConfigError`` listing every problem of ``c``."""
    found = problems(c, n_devices)
    if found:
        raise ConfigError(found)


def run(c: RunConfig) -> str:
    """Runs the (validated) config's job; returns the line that reports where its results are."""
    if c.job == "forward":
        forward.run(c)
        return "done"
    if c.job == "eval":
        results = eval_run.evaluate(c)
        return f"done: results in {c.workdir}/eval/results.json (sandbox isolation: {results['sandbox_isolation']})"
    if c.job == "study":
        runner.run(c)
        return "done"
    if c.job == "rollout":
        rollout.run(c)
        return "done"
    if c.dry_run:
        dry_run.dry_run(c)
        return "done"
    result = loop.train(c)
    failed = result.get("mlflow_failed_calls")
    note = f"; {failed} MLflow calls failed (metrics.jsonl is complete)" if failed else ""
    return f"done: {result['steps']} steps; final model in {result['final_dir']}{note}"
