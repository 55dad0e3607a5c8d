"""The learning signal that makes pass@k a measurement, on the synthetic task (its own file so that the two
pytest-xdist workers, which take whole files, share the slow end-to-end tests evenly)."""

import importlib
import json
import os
import subprocess
import sys

from test_train import REPO

from wmtp_jax.run_config import parse


def test_training_on_the_synthetic_task_raises_held_out_pass_at_1(shared, tmp_path):
    """The learning signal that makes pass@k a measurement: greedy pass@1 on the 30 held-out synthetic instances,
    of the micro model before training (the eval job) and after the micro study's 800 steps (``eval_at_end``;
    run as a user runs it, on one CPU device, which is twice as fast here as 4 virtual ones)."""
    from wmtp_jax.eval import run as eval_run

    study = importlib.import_module("configs.study").get_config("micro")
    before = importlib.import_module("configs.eval").get_config("micro")
    before.eval = study.eval
    before.model.checkpoint, before.model.cache_dir = shared["model.checkpoint"], shared["model.cache_dir"]
    before.workdir = str(tmp_path / "before")
    pass_before = eval_run.evaluate(parse(before))["benchmarks"]["synthetic"]["pass@1"]["mean"]

    args = [sys.executable, "-m", "wmtp_jax.main", "--config=configs/baseline.py:micro"]
    args += [f"--config.{k}={v}" for k, v in shared.items()]
    args += [f"--config.{item}" for item in study.study.common]
    args += [f"--config.eval.{k}={v if isinstance(v, str) else repr(v)}" for k, v in study.eval.items()]
    args += ["--config.train.eval_at_end=True", f"--config.workdir={tmp_path / 'after'}"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "after" / "eval" / "results.json").read_text())
    pass_after = results["benchmarks"]["synthetic"]["pass@1"]["mean"]
    assert results["benchmarks"]["synthetic"]["problems"] == 30 and results["mesh"]["fsdp"] == 1
    # 0 / 30 before; 0.67 to 1.0 after on this machine (when the copying of the digit sets in varies a little)
    assert pass_before <= 0.1 and pass_after >= pass_before + 0.3, (pass_before, pass_after)
