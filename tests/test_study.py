"""A two-arm study end to end on the micro models (2 steps per arm, 3 synthetic problems): report, nested MLflow
runs, resuming without retraining finished arms, the printed per-arm commands, and compare_runs.py."""

import importlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from wmtp_jax.run_config import parse
from wmtp_jax.study import runner

REPO = Path(__file__).resolve().parent.parent


def study_config(root: Path, shared: dict):
    sys.path.insert(0, str(REPO))
    study = importlib.import_module("configs.study")
    c = study.get_config("micro")
    c.workdir = str(root / "study")
    c.study.arms = {"baseline": c.study.arms.baseline, "rho1_control": study.arm("rho1", "weighting.control=True")}
    c.study.common = (
        *c.study.common,
        "train.num_steps=2",
        "checkpoint.every_steps=2",
        "checkpoint.async_save=False",
        *(f"{key}={value}" for key, value in shared.items()),  # the session's micro models and data
    )
    c.eval.limit, c.eval.max_new_tokens, c.eval.batch_size = 3, 8, 4
    return c


@pytest.fixture(scope="module")
def study(tmp_path_factory, shared):
    root = tmp_path_factory.mktemp("study")
    c = study_config(root, shared)
    with jax.default_matmul_precision("highest"):
        summary = runner.run(parse(c))
    return c, summary


def test_study_writes_the_report_with_paired_statistics(study):
    c, summary = study
    workdir = Path(c.workdir)
    for name in ("report.md", "summary.json", "pass_at_k.png", "curves.png"):
        assert (workdir / name).is_file(), name
    assert json.loads((workdir / "summary.json").read_text()) == summary
    arm = summary["arms"]["rho1_control"]["benchmarks"]["synthetic"]
    assert arm["n_problems"] == 3 and arm["split"] == "test" and set(arm["pass@1"]) == {"value", "ci95"}
    comparison = summary["comparisons"]["rho1_control"]["synthetic"]["pass@1"]
    assert {"difference", "ci95", "p_value", "n_problems"} <= set(comparison) and comparison["n_problems"] == 3
    assert set(summary["arms"]["baseline"]["reference_ce"]) == {f"synthetic/ref_ce_head_{k}" for k in range(4)}
    report = (workdir / "report.md").read_text()
    assert "| `rho1_control` |" in report and "sign-flip" in report


def test_each_arm_is_a_nested_mlflow_run_of_the_study(study):
    from mlflow import MlflowClient

    c, _ = study
    workdir = Path(c.workdir)
    client = MlflowClient(runner._tracking_uri(c))
    parent = json.loads((workdir / "mlflow_run.json").read_text())["run_id"]
    children = {}
    for arm in ("baseline", "rho1_control"):
        run_id = json.loads((runner.arm_workdir(c, arm, 0) / "mlflow_run.json").read_text())["run_id"]
        children[arm] = client.get_run(run_id)
    for arm, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent, arm
        assert "synthetic/pass_at_1" in run.data.metrics and run.data.params["model.n_future_tokens"] == "4"
    assert {a.path for a in client.list_artifacts(parent)} >= {"report.md", "summary.json", "pass_at_k.png"}


def test_compare_runs_reproduces_the_study_numbers(study, tmp_path):
    c, summary = study
    arms = [f"{arm}={runner.arm_workdir(c, arm, 0)}" for arm in ("baseline", "rho1_control")]
    out = subprocess.run(
        [sys.executable, "scripts/compare_runs.py", *arms, "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["arms"]["rho1_control"]["benchmarks"] == summary["arms"]["rho1_control"]["benchmarks"]
    assert again["comparisons"] == summary["comparisons"]
    bad = subprocess.run(
        [sys.executable, "scripts/compare_runs.py", str(tmp_path), "--out", str(tmp_path / "x")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "no eval/results.json" in bad.stderr


def test_a_killed_study_resumes_without_retraining_finished_arms(study, capsys):
    c, summary = study
    finished = runner.arm_workdir(c, "baseline", 0) / "final" / "model_config.json"
    stamp = finished.stat().st_mtime_ns
    unfinished = runner.arm_workdir(c, "rho1_control", 0)
    for name in ("eval/results.json", "eval/samples.jsonl"):  # as if killed before its evaluation finished
        (unfinished / name).unlink()
    with jax.default_matmul_precision("highest"):
        again = runner.run(parse(c))
    printed = capsys.readouterr().out
    assert "baseline seed 0 already finished; skipped" in printed and "training rho1_control seed 0" in printed
    assert finished.stat().st_mtime_ns == stamp and (unfinished / "eval" / "results.json").is_file()
    assert again["comparisons"] == summary["comparisons"]


def test_print_commands_gives_one_runnable_command_per_arm_and_seed(study, capsys):
    c, _ = study
    c.study.print_commands = True
    try:
        runner.run(parse(c))
    finally:
        c.study.print_commands = False
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python -m wmtp_jax.main")]
    assert len(lines) == 2
    args = shlex.split(lines[1])
    assert "--config=configs/rho1.py:micro" in args and "--config.weighting.control=True" in args
    assert "--config.train.eval_at_end=True" in args and any(a.startswith("--config.workdir=") for a in args)


def test_the_best_arm_is_registered_with_an_alias(study):
    from mlflow import MlflowClient

    c, summary = study
    c.study.register_alias = "candidate"
    try:
        registered = runner.register(parse(c), summary, runner.expand(c.study))
    finally:
        c.study.register_alias = ""
    client = MlflowClient(runner._tracking_uri(c))
    version = client.get_model_version_by_alias(registered["model"], "candidate")
    assert version.version == registered["version"] and registered["arm"] in ("baseline", "rho1_control")
    assert version.source.endswith(f"{registered['arm']}/seed0/final") and "sign-flip" in version.description


@pytest.mark.parametrize("preset", ["micro", ""])
def test_the_shipped_study_configs_pass_the_checks_main_runs(preset):
    """``configs/study.py`` (micro and production) passes the job's checks as ``wmtp_jax.main`` runs them: the
    arms (a free-form map) are looked up by key, each names a training config; a bad one is named."""
    from wmtp_jax import jobs

    sys.path.insert(0, str(REPO))
    c = importlib.import_module("configs.study").get_config(preset)
    assert len(c.study.arms) >= (5 if preset == "micro" else 14)
    found = jobs.problems(parse(c), n_devices=4)
    if preset == "micro":
        assert found == []
    else:  # production: only what a user must name (the model), nothing about the arms
        assert found and all(p.startswith("model.checkpoint=''") for p in found)
    c.study.arms.dft.config = "nope"
    assert "study.arms.dft.config='nope': expected the name of a training config" in " ".join(
        jobs.problems(parse(c), n_devices=4)
    )
