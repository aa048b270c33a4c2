"""The operator's typed view of a FineTuneJob spec, and the checks the CRD schema cannot make.

The apiserver has already applied the schema's defaults to stored objects; `from_dict` applies the
same defaults again so builders can be tested with minimal dicts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter

# Fields that change how a run is scheduled or kept, not what it computes: editing them must not
# start a new training run (toggling `suspend` pauses the same run, as for a batch/v1 Job).
NON_RUN_FIELDS = ("suspend", "schedule", "ttlSecondsAfterFinished")


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str = "token"


@dataclass(frozen=True)
class PodResources:
    """`spec.resources` of both kinds: what a trainer or server pod asks for and where it may run."""

    gpus: int = 1
    gpu_resource_name: str = "nvidia.com/gpu"
    cpu: str | None = None
    memory: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None

    @classmethod
    def from_dict(cls, res: dict[str, Any] | None) -> PodResources:
        res = res or {}
        return cls(
            gpus=int(res.get("gpus", 1)),
            gpu_resource_name=res.get("gpuResourceName", "nvidia.com/gpu"),
            cpu=None if res.get("cpu") is None else str(res["cpu"]),
            memory=None if res.get("memory") is None else str(res["memory"]),
            node_selector=dict(res.get("nodeSelector") or {}),
            tolerations=list(res.get("tolerations") or []),
            affinity=res.get("affinity"),
            priority_class_name=res.get("priorityClassName"),
        )


@dataclass(frozen=True)
class FineTuneJobSpec:
    method: str
    base_model_uri: str | None
    dataset_uri: str
    output_uri: str
    golden_dataset_uri: str | None
    mix_uri: str | None
    token_secret: SecretKeyRef | None
    env_from: list[dict[str, Any]]  # core/v1 EnvFromSource entries, e.g. S3 credentials from a Secret
    resources: PodResources
    image: str | None
    service_account_name: str | None
    backoff_limit: int
    active_deadline_seconds: int | None
    ttl_seconds_after_finished: int | None
    suspend: bool
    schedule: str | None
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> FineTuneJobSpec:
        secret = (spec.get("baseModel") or {}).get("tokenSecretRef")
        return cls(
            method=spec.get("method", "lora"),
            base_model_uri=(spec.get("baseModel") or {}).get("uri"),
            dataset_uri=(spec.get("dataset") or {}).get("uri", ""),
            output_uri=(spec.get("output") or {}).get("uri", ""),
            golden_dataset_uri=(spec.get("evaluation") or {}).get("goldenDatasetUri"),
            mix_uri=((spec.get("dataset") or {}).get("mix") or {}).get("uri"),
            token_secret=SecretKeyRef(secret["name"], secret.get("key", "token")) if secret else None,
            env_from=list(spec.get("envFrom") or []),
            resources=PodResources.from_dict(spec.get("resources")),
            image=spec.get("image"),
            service_account_name=spec.get("serviceAccountName"),
            backoff_limit=int(spec.get("backoffLimit", 2)),
            active_deadline_seconds=spec.get("activeDeadlineSeconds"),
            ttl_seconds_after_finished=spec.get("ttlSecondsAfterFinished"),
            suspend=bool(spec.get("suspend", False)),
            schedule=spec.get("schedule"),
            raw=spec,
        )

    def pvc_uris(self) -> list[str]:
        """Every `pvc://` location the trainer reads or writes, in a stable order."""
        uris = [self.base_model_uri, self.dataset_uri, self.mix_uri, self.golden_dataset_uri, self.output_uri]
        return [u for u in uris if u and u.startswith("pvc://")]


def run_spec_hash(spec: dict[str, Any]) -> str:
    """A short, stable digest of the fields that define a training run.

    >>> run_spec_hash({"method": "lora", "suspend": True}) == run_spec_hash({"method": "lora"})
    True
    """
    defining = {k: v for k, v in spec.items() if k not in NON_RUN_FIELDS}
    blob = json.dumps(defining, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def validate(spec: FineTuneJobSpec) -> list[str]:
    """Problems the schema cannot see, each a sentence a user can act on. Empty when valid."""
    problems = []
    if spec.schedule and not croniter.is_valid(spec.schedule):
        problems.append(f"spec.schedule {spec.schedule!r} is not a valid cron expression (5 fields, e.g. '0 3 * * 1')")
    if spec.method == "qlora" and spec.resources.gpus < 1:
        problems.append("spec.method qlora quantizes with bitsandbytes on CUDA: set spec.resources.gpus >= 1")
    if spec.output_uri and spec.output_uri in (spec.dataset_uri, spec.base_model_uri):
        problems.append(f"spec.output.uri {spec.output_uri!r} must not be the same location as an input")
    return problems


def _claim(pvc_uri: str) -> str:
    return pvc_uri.removeprefix("pvc://").split("/", 1)[0]
