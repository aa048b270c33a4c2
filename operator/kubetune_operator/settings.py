"""Operator settings, read once from KUBETUNE_* environment variables."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Settings:
    #: Image that runs the trainer when a FineTuneJob does not set `spec.image`.
    trainer_image: str = "ghcr.io/kubetune/trainer:0.1.0"
    #: Service account for trainer pods (may patch its own FineTuneJob's status) when the spec sets none.
    trainer_service_account: str = "kubetune-trainer"
    #: Where `pvc://claim/path` claims are mounted inside trainer pods (the trainer resolves the same root).
    pvc_mount_root: str = "/mnt/pvc"
    #: Port the trainer serves Prometheus metrics on.
    trainer_metrics_port: int = 9400
    #: What runs a multi-node FineTuneJob (spec.resources.nodes > 1) whose spec.training.distributed.engine
    #: is unset: indexedJob (an Indexed Job and a headless Service: plain Kubernetes), jobSet or trainJob.
    training_engine: str = "indexedJob"
    #: The Kubeflow ClusterTrainingRuntime a trainJob gang names (its torch runtime).
    trainjob_runtime: str = "torch-distributed"
    #: Seconds a trainer pod has between SIGTERM (eviction, preemption, deletion) and SIGKILL: the
    #: trainer finishes its step, writes a checkpoint and uploads it (s3:// outputs) in that time.
    #: Size it for one step plus one checkpoint write; a spot reclaim may give less than you ask.
    trainer_termination_grace_seconds: int = 300
    #: How often (seconds) scheduled FineTuneJobs are checked for a due run.
    schedule_check_seconds: float = 30.0
    #: Image that runs the builtin model server (and is the base for vLLM's adapter mount).
    server_image: str = "ghcr.io/kubetune/server:0.1.0"
    #: Image for the vllm runtime.
    vllm_image: str = "vllm/vllm-openai:v0.11.0"
    #: How often (seconds) rollouts are re-evaluated (step timing, analysis, FineTuneJob adapters).
    rollout_check_seconds: float = 5.0
    #: Timeout (seconds) of one Prometheus query.
    prometheus_timeout_seconds: float = 5.0
    #: Port of the operator's Prometheus metrics (/metrics); 0 turns the endpoint off.
    metrics_port: int = 8080
    #: Port of Kopf's liveness endpoint (/healthz, what the chart's livenessProbe checks); 0 turns it off.
    liveness_port: int = 8081
    #: MLflow tracking server for FineTuneJobs whose spec.tracking.mlflow names none; empty: no default.
    mlflow_tracking_uri: str = ""
    #: Timeout (seconds) of one MLflow registry call the operator makes (the production alias on promotion).
    mlflow_timeout_seconds: float = 3.0
    #: The operator's own MLflow credentials for those calls (basic auth, or a bearer token); from a Secret.
    mlflow_username: str = dataclasses.field(default="", repr=False)
    mlflow_password: str = dataclasses.field(default="", repr=False)
    mlflow_token: str = dataclasses.field(default="", repr=False)
    #: Namespace to watch; empty means all namespaces.
    watch_namespace: str = ""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Each field maps to KUBETUNE_<FIELD_NAME_UPPER>; unset variables keep the default."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = env.get(f"KUBETUNE_{field.name.upper()}")
            if raw is None:
                continue
            kind: type = type(field.default)
            try:
                values[field.name] = kind(raw)
            except ValueError as err:
                raise ValueError(f"KUBETUNE_{field.name.upper()}={raw!r}: expected {kind.__name__}") from err
        engine = values.get("training_engine", "indexedJob")
        if engine not in ENGINES:
            raise ValueError(f"KUBETUNE_TRAINING_ENGINE={engine!r}: expected one of {', '.join(ENGINES)}")
        return cls(**values)  # type: ignore[arg-type]


#: spec.training.distributed.engine's values (kubetune_api.finetunejob.Distributed).
ENGINES = ("indexedJob", "jobSet", "trainJob")
