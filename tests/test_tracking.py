"""Secrets reach MLflow only through the environment: never as params, in config.json, or in printed text."""

import json
import warnings

import ml_collections

from wmtp_jax import tracking


def _config(tmp_path, uri):
    c = ml_collections.ConfigDict()
    c.workdir = str(tmp_path)
    c.mlflow = ml_collections.ConfigDict(dict(tracking_uri=uri, experiment_name="t", run_name=""))
    c.storage = ml_collections.ConfigDict(dict(s3_secret_access_key="hunter2", endpoint="https://u:hunter2@s3.x/b"))
    return c


def test_secret_keys_and_url_credentials_are_never_logged(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    params = tracking.flatten_config(_config(tmp_path, ""))
    assert "storage.s3_secret_access_key" not in params
    assert params["storage.endpoint"] == "https://***@s3.x/b"
    assert "hunter2" not in json.dumps(params)
    t = tracking.Tracker(_config(tmp_path, ""), tmp_path)
    t.close()
    from mlflow import MlflowClient

    run = MlflowClient(tracking.local_tracking_uri(tmp_path)).get_run(t.run_id)
    assert "hunter2" not in json.dumps(run.data.params)


def test_unreachable_server_warning_hides_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = tracking.Tracker(_config(tmp_path, "http://alice:hunter2@127.0.0.1:9"), tmp_path)
    assert not t.enabled
    text = " ".join(str(w.message) for w in caught)
    assert "unavailable" in text and "hunter2" not in text and "***@127.0.0.1" in text
