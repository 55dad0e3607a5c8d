"""Evaluation and rollout jobs end to end on the micro model (4-device CPU mesh, shipped benchmarks)."""

import json
import sys
from pathlib import Path

from test_main import run_main

from wmtp_jax import jobs
from wmtp_jax.data import benchmarks
from wmtp_jax.data.records import RecordIndex
from wmtp_jax.eval import judge
from wmtp_jax.run_config import parse

REPO = Path(__file__).resolve().parent.parent


def test_eval_micro_writes_results_samples_and_mlflow(tmp_path):
    out = run_main(
        "--config=configs/eval.py:micro",
        f"--config.model.checkpoint={tmp_path}/micro/mtp_meta",
        f"--config.model.cache_dir={tmp_path}/converted",
        f"--config.workdir={tmp_path}/run",
        "--config.eval.limit=2",
        "--config.eval.protocol=mtp_paper",  # its two temperatures, on a budget: 2 samples, pass@1 / pass@2
        "--config.eval.n_samples=2",
        "--config.eval.k=(1, 2)",
        "--config.eval.k_temperatures=(0.2, 0.8)",
        "--config.eval.max_new_tokens=32",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["sandbox_isolation"] in ("bwrap", "unshare", "rlimits") and results["mesh"]["fsdp"] == 4
    assert set(results["benchmarks"]) == {"mbpp", "humaneval", "humaneval_plus", "mbpp_plus", "codecontests"}
    # the shipped CodeContests sample is train-split data: its results must say so
    assert results["benchmarks"]["codecontests"]["dataset"] == "CodeContests train-split smoke set"
    assert results["benchmarks"]["mbpp"]["dataset"] == "MBPP test split"
    assert results["benchmarks"]["mbpp_plus"]["dataset"] == "MBPP+ v0.2.0"
    assert results["protocol"] == {
        "name": "mtp_paper",
        "deviations": {"n_samples": 2, "k": [1, 2], "k_temperatures": [0.2, 0.8], "max_new_tokens": 32},
    }
    for name, r in results["benchmarks"].items():
        assert r["problems"] == 2 and r["limit"] == 2 and r["n_samples"] == 2 and r["temperature"] == 0.2
        assert set(r) >= {"pass@1", "pass@2", "outcomes", "generation", "sandbox_isolation", "timeout_reruns"}
        assert sum(r["outcomes"].values()) == 4 and 0 <= r["pass@1"]["mean"] <= 1 and 0 <= r["pass@2"]["mean"] <= 1
        # pass@1 from the samples drawn at 0.2, pass@2 from those drawn at 0.8
        assert r["k_temperatures"] == [0.2, 0.8] and set(r["by_temperature"]) == {"0.2", "0.8"}
        assert (
            r["pass@1"] == r["by_temperature"]["0.2"]["pass@1"] and r["pass@2"] == r["by_temperature"]["0.8"]["pass@2"]
        )
    for name in ("humaneval_plus", "mbpp_plus"):  # plus (base and plus inputs) and base pass@k, EvalPlus's limits
        r = results["benchmarks"][name]
        assert set(r["base"]) == {"pass@1", "pass@2"} and r["time_limits"]["memory_mb"] == 4096
        assert r["base"]["pass@1"]["mean"] >= r["pass@1"]["mean"]
    samples = [json.loads(line) for line in open(tmp_path / "run" / "eval" / "samples.jsonl")]
    assert len(samples) == 40 and {s["status"] for s in samples} <= set(judge.OUTCOMES)
    # HumanEval+ has HumanEval's prompts: judged on the same completions, not sampled again
    texts = lambda name: [(s["task_id"], s["temperature"], s["completion"]) for s in samples if s["benchmark"] == name]
    assert texts("humaneval") == texts("humaneval_plus")
    assert all(s["base_status"] in judge.OUTCOMES for s in samples if s["benchmark"].endswith("_plus"))
    assert sorted({s["temperature"] for s in samples}) == [0.2, 0.8]
    assert all(s["sandbox_isolation"] == results["sandbox_isolation"] for s in samples)

    from mlflow import MlflowClient

    from wmtp_jax.tracking import local_tracking_uri

    client = MlflowClient(local_tracking_uri(tmp_path / "run"))
    run_id = json.loads((tmp_path / "run" / "eval" / "mlflow_run.json").read_text())["run_id"]
    logged = client.get_run(run_id)
    # a bare converted model: its own experiment, named after it
    assert client.get_experiment(logged.info.experiment_id).name == "wmtp/eval/mtp_meta"
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Evaluation" in report and "| mbpp_plus (base) |" in report
    assert "humaneval/pass_at_1" in logged.data.metrics and logged.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"results.json", "samples.jsonl"}


def test_eval_config_problems_are_reported_together():
    out = run_main(
        "--config=configs/eval.py",
        "--config.eval.benchmarks=('mbpp', 'apps')",
        "--config.eval.k=(1, 500)",
        "--config.eval.speculative=true",
        "--config.eval.temperature=0.5",
        "--config.eval.batch_size=6",
        "--config.eval.mbpp_format=2shot",
    )
    assert out.returncode == 2
    assert "eval.codecontests" not in out.stderr  # the default test-split files are missing, but not evaluated
    out2 = run_main("--config=configs/eval.py", "--config.eval.codecontests=('nowhere/test-*.parquet',)")
    assert "eval.codecontests=('nowhere/test-*.parquet',): nowhere/test-*.parquet: no CodeContests file matches it" in (
        out2.stderr
    )
    for expected in (
        "checkpoint='': expected an existing Orbax model directory",
        "eval.benchmarks=('mbpp', 'apps')",
        "eval.k=(1, 500): expected a non-empty tuple of integers in [1, eval.n_samples=200]",
        "eval.k_temperatures=(0.2, 0.8, 0.8): expected () or one non-negative temperature per eval.k=(1, 500)",
        "eval.speculative=True: expected False unless every temperature is 0",
        "eval.batch_size=6: must be a multiple of the 4",
        "eval.mbpp_format='2shot'",
    ):
        assert expected in out.stderr, expected


def test_rollouts_are_labelled_by_execution_and_indexed(tmp_path):
    sys.path.insert(0, str(REPO))
    from configs import rollout as rollout_config
    from wmtp_jax import rollout

    c = rollout_config.get_config("micro")
    c.model.checkpoint, c.model.cache_dir = str(tmp_path / "micro" / "mtp_meta"), str(tmp_path / "converted")
    c.workdir, c.rollout.limit = str(tmp_path / "rollout"), 2
    jobs.validate(c)
    stats = rollout.run(parse(c))
    index = RecordIndex.load(tmp_path / "rollout" / "rollouts" / "train.index.npz")
    rows = [json.loads(line) for line in open(tmp_path / "rollout" / "rollouts" / "train.jsonl")]
    assert len(index) == len(rows) == stats["records"] and stats["records"] + stats["skipped"] == 4
    assert [r["is_correct"] for r in rows] == list(index.is_correct)
    assert all(r["metadata"]["status"] in judge.OUTCOMES and r["task_id"].startswith("mbpp/6") for r in rows)
    # the labels come from running the tests: reference answers to the Alpaca prompt pass, swapped ones fail
    problems = benchmarks.load_mbpp(split="train")[:20]
    right = judge.check([(p, p.reference) for p in problems], alpaca=True)
    wrong = judge.check([(p, q.reference) for p, q in zip(problems, problems[1:])], alpaca=True)
    assert [o.status for o in right] == ["passed"] * 20 and all(o.status != "passed" for o in wrong)
