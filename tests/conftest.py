"""Test setup: a 4-device CPU mesh (must be set before JAX is imported) and shared fixtures."""

import os
import tempfile

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one persistent XLA compilation cache for the whole suite: both xdist workers and every `python -m wmtp_jax.main`
# subprocess compile the same micro steps (a resumed run, the same config in several tests) only once
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "wmtp_jax_tests_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# HumanEval+ / MBPP+ expected outputs (wmtp_jax.eval.differential), computed once per problem for the whole suite
os.environ.setdefault("WMTP_EVALPLUS_CACHE", os.path.join(tempfile.gettempdir(), "wmtp_jax_tests_evalplus"))

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")


# The two xdist workers take one file at a time in collection order (--dist loadfile --no-loadscope-reorder; xdist's
# default reorder would sort the files by their number of tests instead): the longest files go first,
# so that no long file starts last while the other worker idles (seconds per file in a fresh-clone CI run on a
# 2-core machine, cold caches, December 2026; regenerate from `pytest --durations=0`)
LONGEST_FIRST = (
    "test_train.py",  # ~650 s
    "test_lora.py",  # ~360
    "test_synthetic_task.py",  # ~340
    "test_critic.py",  # ~235
    "test_weighting_runs.py",  # ~145
    "test_distributed.py",  # ~140
    "test_model.py",  # ~140
    "test_loss_traces.py",  # ~135
    "test_trainer.py",  # ~135
    "test_eval_run.py",  # ~115
    "test_judge_agreement.py",  # ~105
    "test_resume.py",  # ~100
    "test_generate.py",  # ~65
    "test_storage.py",  # ~65
    "test_mlflow_server.py",  # ~55
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order


def pytest_report_header(config):
    from wmtp_jax.sandbox.execution import _isolation

    level, drop_uid = _isolation()
    return f"wmtp_jax sandbox: isolation {level!r}, programs run as {'a dropped uid' if drop_uid else 'this uid'}"


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """Micro checkpoints, conversions and prepared data shared by every training test. The micro models are
    written here (a job's config checks need them to exist); conversions and data are made by the first run."""
    from wmtp_jax.checkpoint.micro import write_micro_models

    root = tmp_path_factory.mktemp("train_shared")
    write_micro_models(root / "micro")
    return {
        "model.checkpoint": str(root / "micro" / "mtp_meta"),
        "reference.checkpoint": str(root / "micro" / "reference_hf"),
        "model.cache_dir": str(root / "converted"),
        "data.cache_dir": str(root / "data"),
    }


@pytest.fixture(scope="session")
def devices():
    assert jax.device_count() == 4, "tests expect 4 virtual CPU devices"
    return jax.devices()


def start_moto_server(log_path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """moto's standalone S3-protocol server on a free localhost port, ``(process, endpoint URL)``; ``env`` adds to
    its environment (e.g. ``INITIAL_NO_AUTH_ACTION_COUNT`` turns on its IAM checks after that many requests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start; see {log_path}") from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """``(boto3 client, bucket)`` on moto's standalone S3 server (a real HTTP server process, started once);
    AWS_* point at it for the session."""
    import boto3

    proc, endpoint = start_moto_server(tmp_path_factory.mktemp("moto") / "server.log")
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3")
    client.create_bucket(Bucket="wmtp")
    yield client, "wmtp"
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.kill()
