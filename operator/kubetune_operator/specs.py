"""The operator's view of a FineTuneJob spec, and the checks the CRD schema cannot make.

`from_dict` parses the spec once through the API model (kubetune_api), which holds every default and
every rule the apiserver checks; this view only flattens what the builders need. What the apiserver
cannot check (cron semantics, locations that overlap) is `validate`'s.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from croniter import croniter

from kubetune_api import SpecError, parse_finetunejob
from kubetune_api import common as api_common
from kubetune_api.finetunejob import FineTuneJobSpec as ApiFineTuneJobSpec
from kubetune_api.stages import Merge

# Fields that change how a run is scheduled or kept, not what it computes: editing them must not
# start a new training run (toggling `suspend` pauses the same run, as for a batch/v1 Job).
NON_RUN_FIELDS = ("suspend", "schedule", "ttlSecondsAfterFinished")


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class MlflowTarget:
    """spec.tracking.mlflow as written; `tracking_target` fills in the operator's default URI and the names."""

    tracking_uri: str | None
    experiment: str | None
    registered_model: str | None
    credentials_secret: str | None


@dataclass(frozen=True)
class Gang:
    """A multi-node run (spec.resources.nodes > 1): how many pods, on which engine, and how they meet."""

    nodes: int
    engine: str | None  # indexedJob | jobSet | trainJob; None: Settings.training_engine decides
    backend: str | None  # nccl | gloo; None: nccl with GPUs, gloo without
    rendezvous_port: int = 29500
    socket_interface: str | None = None

    @classmethod
    def from_model(cls, m: ApiFineTuneJobSpec) -> Gang | None:
        if m.resources.nodes <= 1:
            return None
        d = m.training.distributed
        return cls(m.resources.nodes, d.engine, d.backend, d.rendezvous_port, d.socket_interface)


@dataclass(frozen=True)
class PodResources:
    """`spec.resources` of both kinds: what a trainer or server pod asks for and where it may run."""

    gpus: int
    gpu_resource_name: str
    cpu: str | None
    memory: str | None
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    affinity: dict[str, Any] | None
    priority_class_name: str | None

    @classmethod
    def from_model(cls, res: api_common.TrainerResources | api_common.ServingResources) -> PodResources:
        affinity = getattr(res, "affinity", None)
        return cls(
            gpus=res.gpus,
            gpu_resource_name=res.gpu_resource_name,
            cpu=None if res.cpu is None else str(res.cpu),
            memory=None if res.memory is None else str(res.memory),
            node_selector=dict(res.node_selector or {}),
            tolerations=[t.model_dump(by_alias=True, exclude_none=True) for t in res.tolerations or []],
            affinity=affinity,
            priority_class_name=getattr(res, "priority_class_name", None),
        )


@dataclass(frozen=True)
class FineTuneJobSpec:
    method: str
    base_model_uri: str | None
    dataset_uri: str | None
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
    # spec.initFrom: the parent FineTuneJob, or the artifact location (the parent's, once resolved).
    parent_name: str | None = None
    init_uri: str | None = None
    rerun_on_parent_success: bool = False

    # spec.dataset.captures as written (camelCase), and the location it reads (its uri, or once resolved
    # the ModelDeployment's spec.capture.uri: see captures.resolve).
    captures: dict[str, Any] | None = None
    captures_uri: str | None = None

    # spec.evaluation.judge: the Secret with its API key; the ModelDeployment it names instead of a url, and
    # (once the reconcile layer resolved it: judge_target.resolve) that ModelDeployment's Service URL.
    judge_secret: SecretKeyRef | None = None
    judge_ref: str | None = None
    judge_url: str | None = None

    problems: tuple[str, ...] = ()  # the API's own rules a stored spec breaks (it predates them)
    merge: Merge | None = None  # method merge: the adapters to combine (merge_sources resolves the refs)
    mlflow: MlflowTarget | None = None  # spec.tracking.mlflow
    gang: Gang | None = None  # spec.resources.nodes > 1: the run is a gang of pods

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> FineTuneJobSpec:
        try:
            return cls.from_model(parse_finetunejob(spec), spec)
        except SpecError as err:
            # Stored before a rule was added (the apiserver checks rules on write only): report it in
            # status like any other problem, with a view that no builder will be handed.
            return cls.unusable(spec, str(err))

    @classmethod
    def from_model(cls, m: ApiFineTuneJobSpec, raw: dict[str, Any]) -> FineTuneJobSpec:
        secret = m.base_model.token_secret_ref
        judge = m.evaluation.judge
        judge_key = judge.api_key_secret_ref if judge else None
        return cls(
            judge_secret=SecretKeyRef(judge_key.name, judge_key.key) if judge_key else None,
            judge_ref=judge.model_deployment_ref.name if judge and judge.model_deployment_ref else None,
            method=m.method,
            base_model_uri=m.base_model.uri,
            dataset_uri=m.dataset.uri,
            output_uri=m.output.uri,
            golden_dataset_uri=m.evaluation.golden_dataset_uri,
            mix_uri=m.dataset.mix.uri if m.dataset.mix else None,
            token_secret=SecretKeyRef(secret.name, secret.key) if secret else None,
            env_from=[e.model_dump(by_alias=True, exclude_none=True) for e in m.env_from or []],
            resources=PodResources.from_model(m.resources),
            image=m.image,
            service_account_name=m.service_account_name,
            backoff_limit=m.backoff_limit,
            active_deadline_seconds=m.active_deadline_seconds,
            ttl_seconds_after_finished=m.ttl_seconds_after_finished,
            suspend=m.suspend,
            schedule=m.schedule,
            gate_mode=m.gate_mode,
            raw=raw,
            merge=m.merge,
            parent_name=m.init_from.fine_tune_job_ref.name if m.init_from and m.init_from.fine_tune_job_ref else None,
            init_uri=m.init_from.uri if m.init_from else None,
            rerun_on_parent_success=bool(m.init_from and m.init_from.rerun_on_parent_success),
            captures=m.dataset.captures.model_dump(by_alias=True, exclude_none=True) if m.dataset.captures else None,
            captures_uri=m.dataset.captures.uri if m.dataset.captures else None,
            mlflow=_mlflow(m),
            gang=Gang.from_model(m),
        )

    @classmethod
    def unusable(cls, raw: dict[str, Any], problem: str) -> FineTuneJobSpec:
        return cls(
            method="",
            base_model_uri=None,
            dataset_uri="",
            output_uri="",
            golden_dataset_uri=None,
            mix_uri=None,
            token_secret=None,
            env_from=[],
            resources=PodResources.from_model(api_common.TrainerResources()),
            image=None,
            service_account_name=None,
            backoff_limit=0,
            active_deadline_seconds=None,
            ttl_seconds_after_finished=None,
            suspend=bool(raw.get("suspend")),
            schedule=None,
            gate_mode="noGates",
            raw=raw,
            problems=(problem,),
        )

    def pvc_uris(self) -> list[str]:
        """Every `pvc://` location the trainer reads or writes, in a stable order."""
        uris = [
            self.base_model_uri,
            self.init_uri,
            self.dataset_uri,
            self.captures_uri,
            self.mix_uri,
            self.golden_dataset_uri,
            self.output_uri,
        ]
        uris += [s.uri for s in self.merge.sources] if self.merge else []
        return [u for u in uris if u and u.startswith("pvc://")]


def _mlflow(m: ApiFineTuneJobSpec) -> MlflowTarget | None:
    if m.tracking is None:
        return None
    t = m.tracking.mlflow
    secret = t.credentials_secret_ref.name if t.credentials_secret_ref else None
    return MlflowTarget(t.tracking_uri, t.experiment, t.registered_model, secret)


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
    if spec.problems:
        return list(spec.problems)  # nothing else in an unparsed spec can be trusted
    problems = []
    if spec.schedule and not croniter.is_valid(spec.schedule):
        problems.append(f"spec.schedule {spec.schedule!r} is not a valid cron expression (5 fields, e.g. '0 3 * * 1')")
    inputs = {
        "spec.dataset.uri": spec.dataset_uri,
        "spec.dataset.captures.uri": spec.captures_uri,
        "spec.baseModel.uri": spec.base_model_uri,
        "spec.dataset.mix.uri": spec.mix_uri,
        "spec.evaluation.goldenDatasetUri": spec.golden_dataset_uri,
    }
    for i, source in enumerate(spec.merge.sources if spec.merge else []):
        inputs[f"spec.merge.sources[{i}].uri"] = source.uri
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
