"""A real ``mlflow server`` on localhost (SQLite backend store, artifacts proxied into the local S3 server of
``conftest.s3``): a micro training with its evaluation logs over HTTP; when the server goes away mid-run,
training finishes, metrics.jsonl stays complete and the run counts the failed MLflow calls."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from test_train import read_metrics, run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, s3):
    _, bucket = s3
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            f"--backend-store-uri=sqlite:///{root}/mlflow.db",
            f"--artifacts-destination=s3://{bucket}/mlartifacts",
            "--host=127.0.0.1",
            f"--port={port}",
            "--workers=1",
        ],
        stdout=open(root / "server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_S3_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]},
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                log = (root / "server.log").read_text()[-2000:]
                raise RuntimeError(f"mlflow server did not start: {log}") from None
            time.sleep(0.5)
    yield uri, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def test_training_and_evaluation_log_over_http_and_survive_the_server_going_away(server, s3, shared, tmp_path):
    from mlflow import MlflowClient

    uri, proc = server
    client_s3, bucket = s3
    client = MlflowClient(uri)
    study = client.create_experiment("wmtp/study/http")  # a study's parent run; the training run is its arm
    parent = client.create_run(study, run_name="study").info.run_id
    evaluation = {"train.eval_at_end": True, "eval.benchmarks": ("humaneval",), "eval.limit": 1}
    up = {"mlflow.tracking_uri": uri, "train.num_steps": 3, "mlflow.parent_run_id": parent}
    result = run("baseline", shared, tmp_path / "up", **up, **evaluation)
    assert result["mlflow_failed_calls"] == 0
    run_id = json.loads((tmp_path / "up" / "mlflow_run.json").read_text())["run_id"]
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["mlflow.parentRunId"] == parent  # nested under the study's run, over HTTP
    assert client.get_experiment(logged.info.experiment_id).name == "wmtp/baseline/mbpp"
    assert logged.data.params["model.n_future_tokens"] == "4" and "data.sha256" in logged.data.params
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]
    assert "humaneval/pass_at_1" in logged.data.metrics  # the evaluation at the end, in the same run
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "weight_distribution.png"} <= artifacts
    assert {"results.json", "samples.jsonl"} <= {a.path for a in client.list_artifacts(run_id, "eval")} | artifacts
    stored = {o["Key"] for o in client_s3.list_objects_v2(Bucket=bucket, Prefix="mlartifacts/")["Contents"]}
    assert any(k.endswith(f"{run_id}/artifacts/config.json") for k in stored)  # the artifacts live in S3
    assert "report.md" in artifacts and "humaneval" in (tmp_path / "up" / "report.md").read_text()

    # a standalone evaluation of final/ is a child of the training run, in its experiment, tagged with its id
    from wmtp_jax.eval.run import evaluate
    from wmtp_jax.run_config import parse

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from configs import eval as eval_config

    c = eval_config.get_config("micro")
    c.model.checkpoint, c.workdir, c.mlflow.tracking_uri = str(tmp_path / "up" / "final"), str(tmp_path / "up"), uri
    c.eval.benchmarks, c.eval.limit = ("humaneval",), 1
    evaluate(parse(c))
    assert json.loads((tmp_path / "up" / "mlflow_run.json").read_text())["run_id"] == run_id  # not taken over
    child = client.get_run(json.loads((tmp_path / "up" / "eval" / "mlflow_run.json").read_text())["run_id"])
    assert child.info.experiment_id == logged.info.experiment_id and child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == child.data.tags["wmtp.evaluates_run_id"] == run_id
    assert "humaneval/pass_at_1" in child.data.metrics and "report.md" in {
        a.path for a in client.list_artifacts(child.info.run_id)
    }

    def kill_after_step_2():
        metrics = tmp_path / "down" / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_after_step_2, daemon=True)
    killer.start()
    result = run("baseline", shared, tmp_path / "down", **{"mlflow.tracking_uri": uri, "train.num_steps": 6})
    killer.join(timeout=60)
    assert proc.poll() is not None  # the server is gone
    assert sorted(read_metrics(tmp_path / "down")) == [1, 2, 3, 4, 5, 6]
    assert result["mlflow_failed_calls"] >= 4  # steps 3..6 at least, and the run's end
    assert (Path(result["final_dir"]) / "model_config.json").is_file()
