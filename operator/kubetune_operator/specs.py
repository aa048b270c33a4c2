"""The operator's typed view of a FineTuneJob spec, and the checks the CRD schema cannot make.

The apiserver has already applied the schema's defaults to stored objects; `from_dict` applies the
same defaults again so builders can be tested with minimal dicts.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
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
    gate_mode: str  # job_state.GATED / NO_GATES / UNGATED: what decides EvalPassed
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
            gate_mode=_gate_mode(spec.get("evaluation") or {}),
            raw=spec,
        )

    def pvc_uris(self) -> list[str]:
        """Every `pvc://` location the trainer reads or writes, in a stable order."""
        uris = [self.base_model_uri, self.dataset_uri, self.mix_uri, self.golden_dataset_uri, self.output_uri]
        return [u for u in uris if u and u.startswith("pvc://")]


def _gate_mode(evaluation: dict[str, Any]) -> str:
    """Gated when any gate is set; without gates a run is never EvalPassed, unless the spec opts out.

    >>> _gate_mode({"gates": {"maxPerplexity": 9}}), _gate_mode({}), _gate_mode({"requireGates": False})
    ('gated', 'noGates', 'ungated')
    """
    if any(v is not None for v in (evaluation.get("gates") or {}).values()):
        return "gated"
    return "noGates" if evaluation.get("requireGates", True) else "ungated"


def normalize_location(uri: str) -> str:
    """One spelling per location, so locations compare equal when they are the same place.

    Trailing slashes, doubled slashes and `.` / `..` segments go; the scheme and (for s3) the bucket stay.

    >>> normalize_location("s3://bucket//runs/./a/"), normalize_location("/data/x/../y//"), normalize_location("pvc://c/")
    ('s3://bucket/runs/a', '/data/y', 'pvc://c')
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    path = posixpath.normpath("/" + rest.lstrip("/")) if rest else "/"
    if path.startswith("//"):  # normpath keeps a leading "//" (POSIX allows it to mean something else)
        path = "/" + path.lstrip("/")
    return f"{scheme}:/{path}".rstrip("/") if scheme else (path.rstrip("/") or "/")


def overlaps(a: str, b: str) -> bool:
    """Whether two locations are the same or one lies inside the other (after normalisation).

    >>> overlaps("/data/", "/data/train.jsonl"), overlaps("/data", "/database"), overlaps("s3://b/x", "s3://b//x/")
    (True, False, True)
    """
    x, y = normalize_location(a), normalize_location(b)
    return x == y or x.startswith(y.rstrip("/") + "/") or y.startswith(x.rstrip("/") + "/")


@dataclass(frozen=True)
class OutputClaim:
    """One FineTuneJob's output location, as the operator's index of outputs holds it."""

    namespace: str
    name: str
    uid: str
    location: str  # normalised spec.output.uri
    created: str  # metadata.creationTimestamp
    started: bool  # it has started a run, so files may already be there


def output_claim(body: dict[str, Any]) -> OutputClaim | None:
    meta, uri = body["metadata"], ((body.get("spec") or {}).get("output") or {}).get("uri")
    if not uri:
        return None
    started = int((body.get("status") or {}).get("run") or 0) > 0
    return OutputClaim(
        meta["namespace"],
        meta["name"],
        meta["uid"],
        normalize_location(uri),
        str(meta.get("creationTimestamp")),
        started,
    )


def output_owner(mine: OutputClaim, claims: list[OutputClaim]) -> OutputClaim | None:
    """The other FineTuneJob that owns an output overlapping `mine`, or None when `mine` may write.

    `pvc://` locations are per namespace (claims are namespaced), and so are absolute paths (each pod
    has its own filesystem; only a node-local stand-in shares them); s3:// locations are global. Of
    several claimants the one that already started a run owns the location, then the oldest: the
    answer does not depend on the order in which the operator saw them.
    """

    def key(c: OutputClaim) -> tuple[bool, str, str, str]:
        return (not c.started, c.created, c.namespace, c.name)

    def same_place(c: OutputClaim) -> bool:
        scoped = c.location.startswith(("pvc:/", "/"))
        return overlaps(c.location, mine.location) and (not scoped or c.namespace == mine.namespace)

    rivals = [c for c in claims if c.uid != mine.uid and same_place(c)]
    owner = min([mine, *rivals], key=key)
    return None if owner.uid == mine.uid else owner


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
    inputs = {
        "spec.dataset.uri": spec.dataset_uri,
        "spec.baseModel.uri": spec.base_model_uri,
        "spec.dataset.mix.uri": spec.mix_uri,
        "spec.evaluation.goldenDatasetUri": spec.golden_dataset_uri,
    }
    for field_name, uri in inputs.items():
        if spec.output_uri and uri and overlaps(spec.output_uri, uri):
            problems.append(
                f"spec.output.uri {spec.output_uri!r} overlaps {field_name} {uri!r}: runs would write into "
                "their own inputs (and a directory input would read earlier runs' files as data); use a "
                "separate location"
            )
    return problems


def _claim(pvc_uri: str) -> str:
    return pvc_uri.removeprefix("pvc://").split("/", 1)[0]
