"""MLflow tracking from process 0 only. A tracking server that cannot be reached is a warning, not a crash.

URI: ``config.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///{workdir}/mlflow.db`` with
artifacts in ``{workdir}/mlartifacts`` (browse with ``mlflow ui --backend-store-uri sqlite:///.../mlflow.db``).
A resumed run (same workdir) continues the same MLflow run. Secrets come only from the environment (MLflow
and S3 read ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` / ``_TOKEN``, ``AWS_*`` themselves); config keys that
look like secrets are never logged, and credentials inside URLs are redacted wherever a URL is logged or printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

from wmtp_jax.distributed import is_main_process

_SECRET = re.compile(r"(secret|password|passwd|token_value|access_key|api_key|credential)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(value: Any) -> Any:
    """``value`` with any ``user:password@`` inside URLs replaced by ``***@`` (non-strings unchanged)."""
    return _URL_USERINFO.sub(r"\1***@", value) if isinstance(value, str) else value


def flatten_config(c, prefix: str = "") -> dict[str, Any]:
    """``{"train.num_steps": 1000, ...}`` of a run config (typed sections or mappings), without secret keys and
    with URL credentials redacted (the run's MLflow params)."""
    out = {}
    items = dataclasses.asdict(c).items() if dataclasses.is_dataclass(c) else c.items()
    for key, value in items:
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(flatten_config(value, name + "."))
        elif not _SECRET.search(name):
            out[name] = redact(value)
    return out


def mlflow_name(key: str) -> str:
    """A metric key as MLflow accepts it (no "@"): ``val/mbpp/pass@1`` -> ``val/mbpp/pass_at_1``."""
    return key.replace("@", "_at_")


def experiment_name(c) -> str:
    """``mlflow.experiment_name``, or by default ``{project}/{objective}/{dataset}`` (the blueprint's naming):
    project ``mlflow.project``, the objective (or the job), and the training data's name (its prepared file's
    directory, or the micro data set)."""
    if getattr(c.mlflow, "experiment_name", ""):
        return c.mlflow.experiment_name
    what = getattr(c, "objective", "") or getattr(c, "job", "run")
    data = getattr(c, "data", None)
    train = getattr(data, "train", "")
    dataset = getattr(data, "prepare_micro", "") or (Path(train).parent.name if train else "") or "none"
    if getattr(c, "job", "") == "study":
        what, dataset = "study", c.study.name
    if getattr(c, "job", "") == "eval":  # a model evaluated on its own: the experiment is named after the model
        dataset = Path(str(c.model.checkpoint).rstrip("/")).name or "none"
    return f"{getattr(c.mlflow, 'project', 'wmtp')}/{what}/{dataset}"


RUN_FILE = "mlflow_run.json"  # a training run's MLflow run id and store, in its workdir


def local_tracking_uri(workdir: Path) -> str:
    """The default store: SQLite in the workdir (MLflow 3's file store is read-only maintenance mode)."""
    return f"sqlite:///{(Path(workdir) / 'mlflow.db').absolute()}"


class Tracker:
    """Thin MLflow wrapper (an explicit ``MlflowClient``, no global MLflow state). Every call is a no-op on
    processes other than 0 or when the run could not be opened. Once the run is open, a failing call (the server
    went away) is counted in ``failed_calls`` and the run goes on; ``close`` reports the count."""

    def __init__(
        self,
        c,
        workdir: Path,
        resume: bool = True,
        parent_run_id: str | None = None,
        *,
        tracking_uri: str | None = None,
        experiment_id: str | None = None,
        tags: dict[str, str] | None = None,
        run_file: str = RUN_FILE,
    ):
        """``resume``: continue the MLflow run recorded in ``workdir`` (a resumed training run); False for jobs
        that start a new run every time (evaluation). ``parent_run_id``: make this run a nested child of that run
        (a study's arm under the study's run, an evaluation under the training run it evaluates). The experiment
        is ``experiment_id`` if given, else ``mlflow.experiment_name``, by default ``experiment_name(c)``;
        ``mlflow.tags`` and ``tags`` are set on the run. ``tracking_uri``: the store when the config names none
        (an evaluation logs into its training run's store). ``run_file``: where in ``workdir`` the run id is kept
        (an evaluation keeps its own, ``eval/mlflow_run.json``, so it never takes over a training run's)."""
        self.enabled = is_main_process()
        self.run_id = None
        self.calls = self.failed_calls = 0  # MLflow calls made after the run was opened, and how many failed
        if not self.enabled:
            return
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        self._metric, self._param = Metric, Param
        local = not (c.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        artifacts = getattr(c.mlflow, "artifact_location", "")
        explicit = c.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        uri = explicit or tracking_uri or local_tracking_uri(workdir)
        run_file = workdir / run_file
        try:
            self.client = MlflowClient(tracking_uri=uri)
            previous = json.loads(run_file.read_text()) if run_file.exists() else {}
            if resume and previous.get("tracking_uri") == uri:
                self.run_id = previous["run_id"]  # a resumed run continues its MLflow run
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                if not experiment_id:
                    name = experiment_name(c)
                    experiment = self.client.get_experiment_by_name(name)
                    if experiment is None:
                        location = artifacts or ((workdir / "mlartifacts").absolute().as_uri() if local else None)
                        experiment_id = self.client.create_experiment(name, artifact_location=location)
                    else:
                        experiment_id = experiment.experiment_id
                tags = {str(k): str(v) for k, v in {**dict(getattr(c.mlflow, "tags", {})), **(tags or {})}.items()}
                if parent_run_id:
                    tags["mlflow.parentRunId"] = parent_run_id
                self.run_id = self.client.create_run(
                    experiment_id, run_name=c.mlflow.run_name or None, tags=tags or None
                ).info.run_id
                run_file.parent.mkdir(parents=True, exist_ok=True)
                run_file.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": uri}))
                params = [Param(k, str(v)[:500]) for k, v in flatten_config(c).items()]
                for i in range(0, len(params), 100):
                    self.client.log_batch(self.run_id, params=params[i : i + 100])
        except Exception as e:  # unreachable server, bad URI, permissions: training goes on without tracking
            self._disable(f"MLflow tracking at {uri} unavailable ({type(e).__name__}: {e}); continuing without it")

    def _disable(self, message: str) -> None:
        warnings.warn(redact(message), stacklevel=3)
        self.enabled = False

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        """One MLflow call. A failure (the server went away, a timeout) is counted and warned about once; the
        next calls are tried again, so a server that comes back gets the rest of the run."""
        if not self.enabled:
            return
        self.calls += 1
        try:
            fn(*args, **kwargs)
        except Exception as e:
            self.failed_calls += 1
            if self.failed_calls == 1:
                warnings.warn(
                    redact(
                        f"MLflow {what} failed ({type(e).__name__}: {e}); the run goes on (metrics.jsonl keeps "
                        "every metric) and counts the failed MLflow calls"
                    ),
                    stacklevel=3,
                )

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled:
            now = int(time.time() * 1000)
            batch = [self._metric(mlflow_name(k), float(v), now, step) for k, v in metrics.items()]
            self._call("log_metrics", self.client.log_batch, self.run_id, metrics=batch)

    def log_params(self, params: dict[str, object]) -> None:
        """Extra run parameters (values as strings, at most 500 characters)."""
        if self.enabled:
            batch = [self._param(k, str(v)[:500]) for k, v in params.items()]
            self._call("log_params", self.client.log_batch, self.run_id, params=batch)

    def log_artifact(self, path: str | os.PathLike) -> None:
        self._call("log_artifact", lambda: self.client.log_artifact(self.run_id, str(path)))

    def close(self, status: str = "FINISHED") -> None:
        """Ends the run with ``status`` and, if any MLflow call failed, says how many (also in ``failed_calls``)."""
        if self.enabled and self.run_id is not None:
            self._call("set_terminated", lambda: self.client.set_terminated(self.run_id, status=status))
            if self.failed_calls:
                warnings.warn(
                    f"MLflow: {self.failed_calls} of {self.calls} calls failed for run {self.run_id}; the "
                    "workdir's metrics.jsonl and result files are complete",
                    stacklevel=2,
                )
