"""Exact resume of a real training process killed with SIGKILL (its own file so that the two pytest-xdist workers,
which take whole files, share the slow end-to-end tests evenly)."""

import os
import signal
import subprocess
import sys
import time

from test_train import MICRO_FAST, REPO, read_metrics


def test_exact_resume_after_sigkill(shared, tmp_path):
    args = [
        sys.executable,
        "-m",
        "wmtp_jax.main",
        "--config=configs/baseline.py:micro",
        "--config.train.num_steps=6",
        "--config.checkpoint.every_steps=2",
        "--config.checkpoint.async_save=False",
        *(f"--config.{k}={v}" for k, v in MICRO_FAST.items()),
    ]
    args += [f"--config.{k}={v}" for k, v in shared.items()]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    full = subprocess.run(
        args + [f"--config.workdir={tmp_path / 'full'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert full.returncode == 0, full.stderr[-3000:]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        args + [f"--config.workdir={killed_dir}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while time.time() < deadline:  # kill once step 3 is done (a checkpoint exists at step 2)
        if (killed_dir / "metrics.jsonl").exists() and len(
            (killed_dir / "metrics.jsonl").read_text().splitlines()
        ) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed_dir / "checkpoints" / "2").is_dir() and not (killed_dir / "final").exists()
    resumed = subprocess.run(
        args + [f"--config.workdir={killed_dir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = read_metrics(tmp_path / "full"), read_metrics(killed_dir)
    assert sorted(got) == list(range(1, 7))
    for s in range(1, 7):
        assert got[s]["loss"] == want[s]["loss"], (s, got[s]["loss"], want[s]["loss"])  # bit for bit
