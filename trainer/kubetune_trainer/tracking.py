"""MLflow tracking and registry for one run: params, per-step metrics, artifacts, the registered version.

Room: the trainer, rank 0 only. It talks to the tracking server named by spec.tracking.mlflow (or the
operator's default, which reaches the trainer as KUBETUNE_MLFLOW_TRACKING_URI) through MLflow's own
client (mlflow-skinny). Tracking must never take training down: MLflow's HTTP layer retries each call
with backoff (`RETRIES`); a call that still fails becomes ``warning`` and switches the tracker off for
the rest of the run, so an unreachable server costs one retry budget, not one per step. The result
(`Tracker.status`) goes into result.json and the termination message; the operator puts it into
status.tracking and a TrackingDegraded condition.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from kubetune_api.tracking import MlflowTracking
from kubetune_trainer.config import JobConfig, to_dict
from kubetune_trainer.environment import TrainerEnv

log = logging.getLogger("kubetune_trainer")

#: MLflow's retry knobs for this process (its defaults retry 7 times with factor 2: minutes per call).
#: Set only where the pod's environment (spec.envFrom) has not set them.
RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
#: Progress fields logged as per-step metrics (`train.train`'s points).
STEP_METRICS = ("loss", "evalLoss", "learningRate", "tokensPerSecond", "epoch")
PARAM_LIMIT = 500  # characters; MLflow stores up to 6000, a long list of target modules needs no more


@dataclass(frozen=True)
class Target:
    uri: str
    experiment: str
    registered_model: str


def target(cfg: JobConfig, env: TrainerEnv) -> Target | None:
    """Where this run is tracked: the operator's resolved variables, else the spec's (a local run); None: nowhere.

    >>> from kubetune_trainer.config import parse_job
    >>> cfg = parse_job({"metadata": {"name": "j", "namespace": "ns"}, "spec": {"baseModel": {"name": "o/m"},
    ...     "dataset": {"uri": "/d.jsonl"}, "output": {"uri": "/o"}, "tracking": {"mlflow": {}}}})
    >>> target(cfg, TrainerEnv()) is None, target(cfg, TrainerEnv(mlflow_tracking_uri="http://m:5000"))
    (True, Target(uri='http://m:5000', experiment='ns/j', registered_model='j'))
    """
    spec = cfg.tracking.mlflow if cfg.tracking else MlflowTracking()
    uri = env.mlflow_tracking_uri or spec.tracking_uri
    if not uri:
        return None
    return Target(
        uri,
        env.mlflow_experiment or MlflowTracking.experiment_for(spec.experiment, cfg.namespace, cfg.name),
        env.mlflow_registered_model or MlflowTracking.registered_model_for(spec.registered_model, cfg.name),
    )


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested spec values as MLflow params (dotted keys, strings).

    >>> flatten({"lora": {"r": 8, "targetModules": ["q", "v"]}, "method": "lora", "x": None})
    {'lora.r': '8', 'lora.targetModules': 'q,v', 'method': 'lora'}
    """
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif value is not None:
            text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
            out[name] = text[:PARAM_LIMIT]
    return out


def run_params(cfg: JobConfig, data_info: Mapping[str, Any]) -> dict[str, str]:
    """What the run was: method, base model, data hash, and the hyperparameters the method reads."""
    spec = to_dict(cfg)
    params: dict[str, Any] = {
        "method": cfg.method,
        "baseModel": {k: spec["baseModel"].get(k) for k in ("name", "uri", "revision")},
        "dataset": {"uri": cfg.dataset.uri or data_info.get("sourceUri"), "sha256": data_info.get("sourceSha256")},
        "training": {k: v for k, v in spec["training"].items() if k != "distributed"},
    }
    if cfg.policy_method in ("lora", "qlora"):
        params["lora"] = spec["lora"]
    if cfg.dataset.format == "preference":
        params["preference"] = spec["preference"]
    return flatten(params)


def lineage_tags(lineage: Mapping[str, Any] | None, base_revision: str | None, passed: bool | None) -> dict[str, str]:
    """The registered version's tags: where its weights and data came from, and its evaluation verdict.

    >>> lineage_tags({"datasetSha256": "ab", "initFrom": {"uri": "pvc://m/run-1/artifact", "digest": "sha256:c"}},
    ...              "main", True)["parentArtifact"]
    'pvc://m/run-1/artifact'
    """
    lineage = lineage or {}
    parent = lineage.get("initFrom") or {}
    tags = {
        "datasetSha256": lineage.get("datasetSha256"),
        "mixSha256": lineage.get("mixSha256"),
        "baseRevision": base_revision,
        "parentArtifact": parent.get("uri"),
        "parentDigest": parent.get("digest"),
        "evalPassed": "none" if passed is None else str(passed).lower(),
    }
    return {k: str(v) for k, v in tags.items() if v}


class Tracker:
    """One MLflow run. Without a target every method is a no-op, so the recipe calls them unconditionally."""

    def __init__(self, where: Target | None) -> None:
        self.target = where
        self.client: Any = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.model_version: str | None = None
        self.warning: str | None = None

    @property
    def active(self) -> bool:
        return self.target is not None and self.warning is None

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.active:
            return None
        try:
            return fn()
        except Exception as e:  # anything MLflow raises: the run goes on without tracking
            assert self.target is not None
            self.warning = f"MLflow at {self.target.uri}: {what} failed, tracking is off for this run: {e}"[:900]
            log.warning("%s", self.warning)
            return None

    def start(self, cfg: JobConfig, data_info: Mapping[str, Any], run: str | None) -> None:
        """Create (or find) the experiment and start this run with its params. Call after the data is read."""
        if self.target is None:
            return
        for key, value in RETRIES.items():
            os.environ.setdefault(key, value)

        def start() -> None:
            from mlflow.tracking import MlflowClient

            assert self.target is not None
            self.client = MlflowClient(tracking_uri=self.target.uri, registry_uri=self.target.uri)
            found = self.client.get_experiment_by_name(self.target.experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(self.target.experiment)
            tags = {"kubetune.finetuneJob": cfg.name, "kubetune.namespace": cfg.namespace or "", "kubetune.run": run}
            created = self.client.create_run(
                self.experiment_id, run_name=f"{cfg.name}-run-{run or 0}", tags={k: str(v) for k, v in tags.items()}
            )
            self.run_id = created.info.run_id
            self._log_batch(params=run_params(cfg, data_info))

        self._call("starting the run", start)

    def _log_batch(self, metrics: Sequence[Any] = (), params: Mapping[str, str] | None = None) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in (params or {}).items()]
        for i in range(0, len(items), 100):  # MLflow's limits per batch: 100 params, 1000 metrics
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=list(metrics[i : i + 1000]))

    def progress(self, p: Mapping[str, Any]) -> None:
        """One progress point (`StatusReporter.progress`): loss, evalLoss, lr, tokens/s at its step."""
        if not self.active or self.run_id is None:
            return
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int(p["step"])
        metrics = [Metric(k, float(p[k]), stamp, step) for k in STEP_METRICS if isinstance(p.get(k), int | float)]
        self._call(f"logging step {step}", lambda: self._log_batch(metrics=metrics))

    def finish(
        self,
        base: Mapping[str, float],
        tuned: Mapping[str, float],
        files: Sequence[Path],
        artifact_uri: str,
        tags: Mapping[str, str],
    ) -> None:
        """A succeeded run: its eval metrics and files, the artifact registered as a version, the run FINISHED."""
        if not self.active or self.run_id is None:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        final = [Metric(f"base.{k}", float(v), stamp, 0) for k, v in base.items()]
        final += [Metric(f"tuned.{k}", float(v), stamp, 0) for k, v in tuned.items()]
        self._call("logging the evaluation", lambda: self._log_batch(metrics=final))
        for file in files:
            self._call(f"uploading {file.name}", partial(self.client.log_artifact, self.run_id, str(file)))
        self._call("registering the artifact", lambda: self._register(artifact_uri, tags))
        self.end("FINISHED")

    def _register(self, source: str, tags: Mapping[str, str]) -> None:
        from mlflow.exceptions import MlflowException

        assert self.target is not None
        name = self.target.registered_model
        try:
            self.client.create_registered_model(name, description="Artifacts of the FineTuneJob runs (kubetune)")
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # No waiting for READY: nothing copies the files (the source is where they already are).
        version = self.client.create_model_version(
            name, source, run_id=self.run_id, tags=dict(tags), await_creation_for=0
        )
        self.model_version = str(version.version)
        log.info("registered %s version %s (%s)", name, self.model_version, source)

    def end(self, status: str) -> None:
        """FINISHED, FAILED or KILLED (preempted: the retried pod starts a new MLflow run)."""
        if self.run_id is None:
            return
        if self.active:
            self._call(f"ending the run {status}", lambda: self.client.set_terminated(self.run_id, status))
            return
        # After a failed call (e.g. a source the registry refuses): still try not to leave it RUNNING,
        # keeping the first warning, which says what went wrong.
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as e:
            log.warning("MLflow: could not end run %s: %s", self.run_id, e)

    def status(self) -> dict[str, str] | None:
        """status.tracking: where the run is in MLflow, and what could not be done; None when untracked."""
        if self.target is None:
            return None
        out = {
            "trackingUri": self.target.uri,
            "experimentId": self.experiment_id,
            "runId": self.run_id,
            "registeredModel": self.target.registered_model,
            "modelVersion": self.model_version,
            "warning": self.warning,
        }
        return {k: v for k, v in out.items() if v}
