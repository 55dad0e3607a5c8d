"""``--config.dry_run=True`` compiles the production step from the checkpoints' shapes alone and reports the same
per-device memory as the memory benchmark for the same shapes (7B_1T_4 Rho-1 + 2.7B reference, 4-device FSDP,
per-device batch 2 x 2048)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from wmtp_jax.data.prepare import prepare

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")


def total_gib(stdout: str) -> float:
    return float(re.search(r"per-device total ([\d.]+) GiB", stdout).group(1))


def test_dry_run_memory_equals_the_memory_benchmark(tmp_path):
    policy, reference = tmp_path / "7B_1T_4", tmp_path / "sheared-2.7b"  # shapes only: no weight files at all
    policy.mkdir()
    reference.mkdir()
    (policy / "params.json").write_text(
        json.dumps(
            {
                "dim": 4096,
                "n_layers": 32,
                "n_heads": 32,
                "vocab_size": 32000,
                "multiple_of": 256,
                "norm_eps": 1e-5,
                "n_future_tokens": 4,
            }
        )
    )
    (reference / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 2560,
                "num_hidden_layers": 32,
                "num_attention_heads": 20,
                "num_key_value_heads": 20,
                "intermediate_size": 6912,
                "vocab_size": 32000,
                "rms_norm_eps": 1e-5,
            }
        )
    )
    prepare("mbpp", tmp_path / "data", max_length=2048)
    dry = subprocess.run(
        [
            sys.executable,
            "-m",
            "wmtp_jax.main",
            "--config=configs/rho1.py",
            "--config.dry_run=True",
            f"--config.model.checkpoint={policy}",
            f"--config.reference.checkpoint={reference}",
            f"--config.data.train={tmp_path / 'data' / 'train.jsonl'}",
            "--config.train.batch_size=8",
            "--config.data.buckets=(2048,)",
            f"--config.workdir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "GFLOP per token" in dry.stdout and not (tmp_path / "run" / "checkpoints").exists()
    bench = subprocess.run(
        [sys.executable, "scripts/bench_train.py", "memory"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert total_gib(dry.stdout) == total_gib(bench.stdout)
