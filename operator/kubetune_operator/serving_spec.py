"""The operator's view of a ModelDeployment spec, and the version that identifies what pods serve.

`from_dict` parses the spec once through the API model (kubetune_api), which holds every default and
rule; the views here flatten what the reconciler and the builders need, with the model's defaults.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from kubetune_api import modeldeployment as api
from kubetune_api import parse_modeldeployment
from kubetune_api.capture import Capture
from kubetune_operator.specs import PodResources


def _default(model: type[BaseModel], name: str) -> Any:
    """A field's default, read from the API model: the views below repeat no default of their own."""
    return model.model_fields[name].get_default(call_default_factory=True)


@dataclass(frozen=True)
class Analysis:
    enabled: bool = False  # no analysis section: steps advance on time alone
    prometheus: str | None = None
    min_requests: int = _default(api.Analysis, "min_requests")
    no_data_policy: str = _default(api.Analysis, "no_data_policy")
    no_data_limit: int = _default(api.Analysis, "no_data_limit")
    latency_p99_ratio: float = _default(api.Analysis, "latency_p99_ratio")
    max_gpu_memory_utilization: float = _default(api.Analysis, "max_gpu_memory_utilization")
    max_error_rate: float = _default(api.Analysis, "max_error_rate")
    max_user_rating_drop: float | None = _default(api.Analysis, "max_user_rating_drop")
    min_feedback: int = _default(api.Analysis, "min_feedback")
    queries: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_model(cls, a: api.Analysis | None) -> Analysis:
        if a is None:
            return cls()
        return cls(
            enabled=a.enabled,
            prometheus=a.prometheus.address if a.prometheus else None,
            min_requests=a.min_requests,
            no_data_policy=a.no_data_policy,
            no_data_limit=a.no_data_limit,
            latency_p99_ratio=a.latency_p99_ratio,
            max_gpu_memory_utilization=a.max_gpu_memory_utilization,
            max_error_rate=a.max_error_rate,
            max_user_rating_drop=a.max_user_rating_drop,
            min_feedback=a.min_feedback,
            queries=tuple(q.model_dump(by_alias=True, exclude_none=True) for q in a.queries or ()),
        )


@dataclass(frozen=True)
class Canary:
    steps: tuple[int, ...] = api.DEFAULT_STEPS
    interval_seconds: float = field(default_factory=lambda: parse_duration(_default(api.Canary, "interval")))
    failure_limit: int = _default(api.Canary, "failure_limit")
    auto_promote: bool = _default(api.Canary, "auto_promote")
    manual_gate: bool = _default(api.Canary, "manual_gate")
    abort: bool = _default(api.Canary, "abort")
    # A canary not Ready for this long is rolled back.
    progress_deadline_seconds: float = field(
        default_factory=lambda: parse_duration(_default(api.Canary, "progress_deadline"))
    )
    analysis: Analysis = field(default_factory=Analysis)

    @classmethod
    def from_model(cls, c: api.Canary) -> Canary:
        return cls(
            steps=tuple(c.steps),
            interval_seconds=parse_duration(c.interval),
            failure_limit=c.failure_limit,
            auto_promote=c.auto_promote,
            manual_gate=c.manual_gate,
            abort=c.abort,
            progress_deadline_seconds=parse_duration(c.progress_deadline),
            analysis=Analysis.from_model(c.analysis),
        )


@dataclass(frozen=True)
class Served:
    """What a track serves from a FineTuneJob (or `spec.adapter.uri`), as one string status can hold.

    A plain uri is an adapter on top of the base model; ``#kind=model`` marks a whole model that is
    served instead of the base (a full fine-tune, or merged weights); ``digest=`` is what a download
    of it is checked against.

    >>> Served.parse("s3://b/run-2/merged#kind=model&digest=sha256:ab")
    Served(uri='s3://b/run-2/merged', kind='model', digest='sha256:ab')
    >>> Served.parse("pvc://a/run-1/artifact").ref()
    'pvc://a/run-1/artifact'
    """

    uri: str
    kind: str = "adapter"  # adapter | model
    digest: str | None = None

    def ref(self) -> str:
        params = [("kind", self.kind)] if self.kind != "adapter" else []
        params += [("digest", self.digest)] if self.digest else []
        return self.uri + ("#" + "&".join(f"{k}={v}" for k, v in params) if params else "")

    @classmethod
    def parse(cls, ref: str) -> Served:
        uri, _, fragment = ref.partition("#")
        params: dict[str, str] = {}
        for part in fragment.split("&"):
            key, _, value = part.partition("=")
            params[key] = value
        return cls(uri, params.get("kind", "adapter"), params.get("digest") or None)

    @classmethod
    def from_artifact(cls, artifact: dict[str, Any]) -> Served | None:
        """A FineTuneJob's `status.artifact`: merged weights when the run wrote them, else the artifact."""
        if artifact.get("mergedUri"):
            return cls(artifact["mergedUri"], "model", artifact.get("mergedDigest"))
        if not artifact.get("uri"):
            return None
        return cls(artifact["uri"], "model" if artifact.get("kind") == "model" else "adapter", artifact.get("digest"))


@dataclass(frozen=True)
class ModelDeploymentSpec:
    base_model: str  # hub id or uri
    base_is_hub_id: bool
    base_revision: str | None
    trust_remote_code: bool
    model_cache_uri: str | None  # pvc://claim/path: HF_HOME of the pods, for hub-id base models
    env_from: list[dict[str, Any]]  # core/v1 EnvFromSource entries (S3 keys, HF_TOKEN, HF_HUB_OFFLINE)
    adapter_uri: str | None
    adapter_ref: str | None  # FineTuneJob name
    adapter_name: str
    runtime: str
    image: str | None
    port: int
    replicas: int
    resources: PodResources
    builtin: dict[str, Any]
    vllm: dict[str, Any]
    traffic: str
    gateway: dict[str, Any] | None
    canary: Canary
    capture: Capture | None = None  # the API model itself: its defaults are read from one place

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ModelDeploymentSpec:
        """Raises `kubetune_api.SpecError` (a ValueError) naming the field when the spec breaks the API."""
        m = parse_modeldeployment(spec)
        base, adapter = m.base_model, m.adapter
        ref = adapter.fine_tune_job_ref.name if adapter and adapter.fine_tune_job_ref else None
        return cls(
            base_model=base.uri or base.name or "",
            base_is_hub_id=base.uri is None,
            base_revision=base.revision,
            trust_remote_code=base.trust_remote_code,
            model_cache_uri=base.cache_uri,
            env_from=[e.model_dump(by_alias=True, exclude_none=True) for e in m.env_from or []],
            adapter_uri=adapter.uri if adapter else None,
            adapter_ref=ref,
            adapter_name=(adapter.name if adapter else None) or ref or "adapter",
            runtime=m.runtime,
            image=m.image,
            port=m.port,
            replicas=m.replicas,
            resources=PodResources.from_model(m.resources),
            builtin=m.builtin.model_dump(by_alias=True, exclude_none=True),
            vllm=m.vllm.model_dump(by_alias=True, exclude_none=True),
            traffic=m.traffic,
            gateway=m.gateway.model_dump(by_alias=True, exclude_none=True) if m.gateway else None,
            canary=Canary.from_model(m.canary),
            capture=m.capture,
        )


def serving_version(spec: dict[str, Any], adapter_uri: str | None) -> str:
    """A short digest of everything the pods run: a change means a new version to roll out.

    Canary settings, replicas and traffic mode are how a version is rolled out, not what it is.

    >>> v = serving_version({"baseModel": {"name": "m"}, "replicas": 2}, "/a")
    >>> v == serving_version({"baseModel": {"name": "m"}, "replicas": 9}, "/a")
    True
    >>> v == serving_version({"baseModel": {"name": "m"}}, "/b")
    False
    """
    what = {k: v for k, v in spec.items() if k not in ("canary", "replicas", "traffic", "gateway", "adapter")}
    what["adapterUri"] = adapter_uri
    blob = json.dumps(what, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def parse_duration(text: str) -> float:
    """Go-style durations: '1m30s' -> 90.0, '250ms' -> 0.25.

    >>> parse_duration("1m30s"), parse_duration("250ms"), parse_duration("2h")
    (90.0, 0.25, 7200.0)
    """
    import re

    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r} (use e.g. 30s, 2m, 1m30s)")
    return sum(float(n) * units[u] for n, u in parts)
