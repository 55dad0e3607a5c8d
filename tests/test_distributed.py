"""Multi-process runs: 2 processes x 2 CPU devices on localhost (JAX CPU collectives) == 1 process x 4 devices."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from test_train import MICRO_FAST

from wmtp_jax import sharding
from wmtp_jax.checkpoint import load_model
from wmtp_jax.checkpoint.policy import load_policy

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _main(args, *, processes: int, timeout=900):
    """Runs ``python -m wmtp_jax.main ARGS`` as ``processes`` processes sharing 4 CPU devices."""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={4 // processes}", JAX_PLATFORMS="cpu")
    extra = lambda i: (
        [
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            f"--config.distributed.num_processes={processes}",
            f"--config.distributed.process_id={i}",
        ]
        if processes > 1
        else []
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "wmtp_jax.main", *args, *extra(i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    return outs


@pytest.fixture(scope="module")
def common(tmp_path_factory, shared):
    """This file's workdirs, and the session's micro models, conversions and prepared data as overrides."""
    return tmp_path_factory.mktemp("distributed"), shared


def _losses(workdir):
    return {json.loads(line)["step"]: json.loads(line)["loss"] for line in open(Path(workdir) / "metrics.jsonl")}


def test_two_processes_train_like_one_and_restore_in_one(common):
    root, shared = common
    train = [
        "--config=configs/baseline.py:micro",
        "--config.train.num_steps=3",
        "--config.checkpoint.every_steps=3",
        *(f"--config.{k}={v}" for k, v in MICRO_FAST.items()),
        *(f"--config.{k}={shared[k]}" for k in ("model.checkpoint", "model.cache_dir", "data.cache_dir")),
    ]
    _main(train + [f"--config.workdir={root}/one"], processes=1)
    (out0, _), (out1, _) = _main(train + [f"--config.workdir={root}/two"], processes=2)
    assert "done: 3 steps" in out0 and "done: 3 steps" in out1
    one, two = _losses(root / "one"), _losses(root / "two")
    assert sorted(two) == [1, 2, 3]  # metrics written once (process 0)
    np.testing.assert_allclose([two[s] for s in (1, 2, 3)], [one[s] for s in (1, 2, 3)], rtol=1e-5)
    # the 2-process checkpoint (each process wrote its shards) restores in this single process
    restored, description = load_policy(root / "two", sharding.make_mesh(), cache_dir=shared["model.cache_dir"])
    assert "step 3" in description
    reference = load_model(root / "one" / "final", sharding.make_mesh())
    for a, b in zip(jax.tree.leaves(nnx.state(restored)), jax.tree.leaves(nnx.state(reference))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_two_processes_evaluate_like_one(common):
    root, shared = common
    evaluate = [
        "--config=configs/eval.py:micro",
        f"--config.model.checkpoint={shared['model.checkpoint']}",
        f"--config.model.cache_dir={shared['model.cache_dir']}",
        "--config.eval.benchmarks=('humaneval',)",
        "--config.eval.limit=2",
        "--config.eval.n_samples=1",
        "--config.eval.k=(1,)",
        "--config.eval.temperature=0.0",
        "--config.eval.max_new_tokens=12",
    ]
    _main(evaluate + [f"--config.workdir={root}/eval_one"], processes=1)
    _main(evaluate + [f"--config.workdir={root}/eval_two"], processes=2)
    samples = {
        n: [json.loads(line)["completion"] for line in open(root / n / "eval" / "samples.jsonl")]
        for n in ("eval_one", "eval_two")
    }
    assert len(samples["eval_two"]) == 2 and samples["eval_two"] == samples["eval_one"]
