"""The entry point as a user runs it: ``python -m wmtp_jax.main --config=...``."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_main(*args, devices=4):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "wmtp_jax.main", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def test_forward_job_on_micro_model(tmp_path):
    out = run_main(
        "--config=configs/forward.py:micro",
        f"--config.model.checkpoint={tmp_path}/micro/mtp_meta",
        f"--config.model.cache_dir={tmp_path}/converted",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 1} on 4 cpu device(s)" in out.stdout
    assert "logits (4, 12, 4, 32000) (batch, seq, heads, vocab)" in out.stdout
    assert (tmp_path / "micro" / "mtp_meta" / "consolidated.pth").is_file()
    assert len(list((tmp_path / "converted").iterdir())) == 1


def test_invalid_config_reports_every_problem_and_exits_2(tmp_path):
    out = run_main(
        "--config=configs/forward.py",
        "--config.model.dtype=fp8",
        "--config.mesh.fsdp=3",
        "--config.model.remat=sometimes",
        f"--config.model.checkpoint={tmp_path}/missing",
    )
    assert out.returncode == 2
    for expected in (
        "model.dtype='fp8': expected one of",
        "model.remat='sometimes'",
        f"model.checkpoint='{tmp_path}/missing': expected an existing torch or Orbax checkpoint",
        "mesh=(1, 3, 1)",
        "but 4 devices are in use",
    ):
        assert expected in out.stderr


def test_training_config_problems_are_reported_together():
    out = run_main(
        "--config=configs/rho1.py",
        "--config.train.num_step=5",
        "--config.train.batch_size=eight",
        "--config.train.learning_rate=-1",
        "--config.data.strategy=best",
        "--config.train.batch_size=6",
    )
    assert out.returncode == 2
    for expected in (
        "train.num_step: unknown config key",
        "train.batch_size='eight': expected a int",
        "train.learning_rate=-1.0: expected a positive number",
        "data.strategy='best': expected one of",
        "model.checkpoint='': expected an existing torch or Orbax checkpoint directory",
        "data.train='': expected a prepared .jsonl",
        "reference.checkpoint='': expected the Rho-1",
        "train.batch_size=6: must split into",
    ):
        assert expected in out.stderr, expected


def test_help_lists_configs_and_exits_0():
    """The Docker image's default command."""
    out = run_main("--help", devices=1)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rho1.py" in out.stdout and "eval.py" in out.stdout and "--config" in out.stdout
