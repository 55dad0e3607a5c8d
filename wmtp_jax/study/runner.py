"""The study job: train every arm (and the stages they depend on) for every seed, evaluate each on the same
benchmarks and samples, then write the report.

An arm is a training config plus overrides (``study.arms``; see ``configs/study.py``). Overrides use the command
line's ``KEY=VALUE`` form; ``{stage}`` in a value stands for that stage's ``final/`` of the same seed (a stage is
an arm that is trained but not compared, e.g. ``critic`` feeding ``verifiable``, ``ref_tuning`` feeding the Rho-1
reference), which declares the dependency. ``grid`` entries (``KEY=V1,V2,...``) expand an arm into one arm per
combination. Arms run one after another in dependency order; an arm whose workdir already holds its result is
skipped, so a killed study resumes (a half-trained arm resumes from its checkpoint). With
``study.print_commands`` the runner prints each arm's own command instead (a cluster runs them in parallel), and
``study.report_only`` builds the report from the finished workdirs.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import os
import re
import shlex
from pathlib import Path

import jax

from wmtp_jax import config as config_lib
from wmtp_jax import storage
from wmtp_jax.files import atomic_write_text
from wmtp_jax.run_checks import common_problems
from wmtp_jax.run_config import FREE_FORM, PRESETS, RunConfig, parse
from wmtp_jax.schema import ConfigChecker, ConfigError
from wmtp_jax.study import report
from wmtp_jax.tracking import Tracker, experiment_name, local_tracking_uri
from wmtp_jax.train import loop
from wmtp_jax.train.checks import training_problems

_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_\-\[\]=,.]+)\}")


class StudyError(ValueError):
    """An inconsistent study (unknown stage, dependency cycle, bad override); names the arm and the key."""


@dataclasses.dataclass(frozen=True)
class ArmSpec:
    """One arm after grid expansion: its training ``config`` file (``configs/{config}.py``), ``overrides``
    (``KEY=VALUE``), whether it is ``compared`` (a stage is not) and the stages it ``needs``."""

    name: str
    config: str
    overrides: tuple[str, ...]
    compared: bool
    needs: tuple[str, ...]


def expand(study) -> list[ArmSpec]:
    """The arms of ``study.arms`` with grids expanded, in dependency order; raises StudyError."""
    specs = []
    for name, arm in study.arms.items():
        grid = [(item.partition("=")[0], item.partition("=")[2].split(",")) for item in arm.grid]
        for values in itertools.product(*[v for _, v in grid]) if grid else [()]:
            extra = tuple(f"{key}={value}" for (key, _), value in zip(grid, values))
            label = name + (
                f"[{','.join(f'{k.rsplit(chr(46), 1)[-1]}={v}' for (k, _), v in zip(grid, values))}]" if grid else ""
            )
            overrides = tuple(arm.overrides) + extra
            needs = tuple(sorted({m for o in overrides for m in _PLACEHOLDER.findall(o.partition("=")[2])}))
            specs.append(ArmSpec(label, arm.config, overrides, bool(arm.compare), needs))
    by_name = {s.name: s for s in specs}
    for s in specs:
        for stage in s.needs:
            if stage not in by_name:
                raise StudyError(f"study.arms.{s.name}: {{{stage}}} names no arm (arms: {sorted(by_name)})")
    ordered, done = [], set()
    while len(ordered) < len(specs):
        ready = [s for s in specs if s.name not in done and set(s.needs) <= done]
        if not ready:
            raise StudyError(f"study.arms: a dependency cycle among {sorted(set(by_name) - done)}")
        ordered += ready
        done |= {s.name for s in ready}
    return ordered


def arm_workdir(c, arm: str, seed: int) -> Path:
    return Path(c.workdir) / "arms" / arm / f"seed{seed}"


def _finished(c, spec: ArmSpec, seed: int) -> bool:
    workdir = arm_workdir(c, spec.name, seed)
    if spec.compared:
        return (workdir / "eval" / "results.json").is_file()
    return (workdir / "final" / "model_config.json").is_file()


def arm_overrides(c, spec: ArmSpec, seed: int, parent_run_id: str = "") -> list[str]:
    """Every ``KEY=VALUE`` that turns ``configs/{spec.config}.py`` into this arm's run for ``seed``: the study's
    shared overrides, the arm's (stage placeholders resolved), and what the study fixes (workdir, seed, the same
    evaluation for every arm, one MLflow store with the arm as a nested run)."""

    def resolve(item: str) -> str:
        key, _, value = item.partition("=")
        return f"{key}={_PLACEHOLDER.sub(lambda m: str(arm_workdir(c, m.group(1), seed) / 'final'), value)}"

    out = [
        *c.study.common,
        *(resolve(o) for o in spec.overrides),
        f"workdir={arm_workdir(c, spec.name, seed)}",
        f"seed={seed}",
    ]
    out += [
        f"mlflow.tracking_uri={_tracking_uri(c)}",
        f"mlflow.experiment_name={experiment_name(c)}",
        f"mlflow.run_name={spec.name}/seed{seed}",
        f"mlflow.artifact_location={_artifacts(c)}",
    ]
    if parent_run_id:
        out.append(f"mlflow.parent_run_id={parent_run_id}")
    if spec.compared:
        out.append("train.eval_at_end=True")
        out += [f"eval.{key}={_literal(value)}" for key, value in dataclasses.asdict(c.eval).items()]
    return out


def _literal(value) -> str:
    return repr(tuple(value)) if isinstance(value, (tuple, list)) else str(value)


def _tracking_uri(c) -> str:
    """The study's MLflow store, shared by every arm: the configured one, else the study workdir's SQLite store."""
    return c.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri(Path(c.workdir))


def _artifacts(c) -> str:
    """Where the arms' artifacts go: the configured location, the server's default for a configured server, else
    the study workdir's ``mlartifacts``."""
    if c.mlflow.artifact_location:
        return c.mlflow.artifact_location
    configured = c.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return "" if configured else (Path(c.workdir) / "mlartifacts").absolute().as_uri()


def problems(c, k: ConfigChecker) -> None:
    """The study's own keys and its arms' structure; each arm's config is validated when the arm starts."""
    k.check(
        "study.seeds",
        lambda v: len(v) > 0 and all(isinstance(s, int) and s >= 0 for s in v),
        "a non-empty tuple of non-negative integer seeds",
    )
    k.check("study.bootstrap", lambda v: isinstance(v, int) and v >= 1000, "at least 1000 resamples")
    k.check("study.flips", lambda v: isinstance(v, int) and v >= 10_000, "at least 10,000 sign flips")
    k.check("study.common", lambda v: all("=" in item for item in v), "a tuple of KEY=VALUE overrides")
    for name in c.study.arms:
        k.check(
            f"study.arms.{name}.config",
            lambda v: os.path.isfile(os.path.join("configs", f"{v}.py")),
            "the name of a training config in configs/ (e.g. baseline, rho1)",
        )
    try:
        specs = expand(c.study)
    except StudyError as e:
        k.found.append(str(e))
        return
    compared = [s.name for s in specs if s.compared]
    k.check("study.baseline", lambda v: v in compared, f"one of the compared arms {compared}")


def arm_config(c, spec: ArmSpec, seed: int, parent_run_id: str = "") -> RunConfig:
    """The arm's training config, parsed and validated as ``wmtp_jax.main`` does for a command line (the study
    composes config files the way a user does); raises StudyError naming the arm with every problem."""
    source = f"configs/{spec.config}.py"
    arm = importlib.import_module(f"configs.{spec.config}").get_config(c.preset if c.preset != "default" else "")
    found = config_lib.apply_overrides(arm, arm_overrides(c, spec, seed, parent_run_id), FREE_FORM, PRESETS)
    if not found:
        try:
            parsed = parse(arm, source)
        except ConfigError as e:
            found = e.problems
    if not found:
        try:
            parsed, _ = storage.localize(parsed)  # s3:// inputs as local mirrors, as the training job's command does
        except storage.StorageError as e:
            found.append(str(e))
    if not found:
        k, (data, fsdp) = common_problems(parsed)
        training_problems(parsed, k, data, fsdp, jax.process_count())
        found = k.found
    if found:
        raise StudyError(f"study arm {spec.name!r} (seed {seed}):\n  " + "\n  ".join(found))
    return parsed


def command(c, spec: ArmSpec, seed: int) -> str:
    """The shell command that runs one arm on its own (``study.print_commands``)."""
    preset = "" if c.preset == "default" else f":{c.preset}"
    args = ["python", "-m", "wmtp_jax.main", f"--config=configs/{spec.config}.py{preset}"]
    args += [f"--config.{item}" for item in arm_overrides(c, spec, seed)]
    return shlex.join(args)


def run(c) -> dict:
    """Runs (or resumes) the study; returns the report's summary (empty with ``print_commands``)."""
    specs = expand(c.study)
    workdir = Path(c.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if c.study.print_commands:
        for spec in specs:
            for seed in c.study.seeds:
                print(command(c, spec, seed))
        print(
            f"# then the report: python -m wmtp_jax.main --config=configs/study.py"
            f"{'' if c.preset == 'default' else ':' + c.preset} --config.workdir={workdir} "
            "--config.study.report_only=True"
        )
        return {}
    parent = Tracker(c, workdir)
    status = "FAILED"
    try:
        if not c.study.report_only:
            for spec in specs:
                for seed in c.study.seeds:
                    if _finished(c, spec, seed):
                        print(f"study: {spec.name} seed {seed} already finished; skipped")
                        continue
                    print(f"study: training {spec.name} seed {seed} -> {arm_workdir(c, spec.name, seed)}")
                    loop.train(arm_config(c, spec, seed, parent.run_id or ""))
        summary = make_report(c, specs)
        for name in ("summary.json", "report.md", *summary.get("figures", [])):
            parent.log_artifact(workdir / name)
        registered = register(c, summary, specs)
        if registered:
            summary["registered"] = registered
            atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
        status = "FINISHED"
    finally:
        parent.close(status)
    return summary


def make_report(c, specs: list[ArmSpec]) -> dict:
    missing = [
        f"{s.name} seed {seed}" for s in specs if s.compared for seed in c.study.seeds if not _finished(c, s, seed)
    ]
    if missing:
        raise StudyError(f"cannot report: arms not finished: {missing} (run the study, or their printed commands)")
    arms = [
        report.Arm(s.name, tuple(arm_workdir(c, s.name, seed) for seed in c.study.seeds)) for s in specs if s.compared
    ]
    summary = report.build(
        arms,
        c.study.baseline,
        Path(c.workdir),
        bootstrap=c.study.bootstrap,
        flips=c.study.flips,
        seed=0,
        title=f"Study {c.study.name}",
    )
    print(f"study: report in {Path(c.workdir) / 'report.md'}, summary in {Path(c.workdir) / 'summary.json'}")
    return summary


def register(c, summary: dict, specs: list[ArmSpec]) -> dict | None:
    """Registers the best arm's ``final/`` (by its first benchmark's first pass@k, seed 0) in the MLflow model
    registry as ``study.registered_model``, with the report as its description and ``study.register_alias``;
    None when no alias is asked for or the tracking store has no registry."""
    if not c.study.register_alias:
        return None
    from mlflow import MlflowClient

    compared = [s.name for s in specs if s.compared]
    bench = sorted(summary["arms"][compared[0]]["benchmarks"])[0]
    key = next(k for k in summary["arms"][compared[0]]["benchmarks"][bench] if k.startswith("pass@"))
    best = max(compared, key=lambda a: summary["arms"][a]["benchmarks"][bench][key]["value"])
    source = arm_workdir(c, best, c.study.seeds[0])
    run_id = json.loads((source / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(_tracking_uri(c))
    name = c.study.registered_model or f"{c.mlflow.project}-{c.study.name}"
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name)
    description = (Path(c.workdir) / "report.md").read_text()[:5000]
    version = client.create_model_version(
        name, source=str((source / "final").absolute()), run_id=run_id, description=description
    )
    client.set_registered_model_alias(name, c.study.register_alias, version.version)
    print(
        f"study: registered {best} seed {c.study.seeds[0]} as {name} version {version.version} "
        f"(alias {c.study.register_alias})"
    )
    return {"model": name, "version": version.version, "alias": c.study.register_alias, "arm": best}
