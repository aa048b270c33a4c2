"""The operator's typed view of a ModelDeployment spec, and the version that identifies what pods serve."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from kubetune_operator.specs import PodResources

DEFAULT_STEPS = (5, 25, 50, 100)


@dataclass(frozen=True)
class Analysis:
    enabled: bool = False
    prometheus: str | None = None
    min_requests: int = 50
    no_data_policy: str = "pause"
    no_data_limit: int = 5
    latency_p99_ratio: float = 1.2
    max_gpu_memory_utilization: float = 0.95
    max_error_rate: float = 0.01
    queries: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Canary:
    steps: tuple[int, ...] = DEFAULT_STEPS
    interval_seconds: float = 60.0
    failure_limit: int = 0
    auto_promote: bool = True
    manual_gate: bool = False
    abort: bool = False
    progress_deadline_seconds: float = 600.0  # a canary not Ready for this long is rolled back
    analysis: Analysis = field(default_factory=Analysis)


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

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ModelDeploymentSpec:
        base = spec.get("baseModel") or {}
        adapter = spec.get("adapter") or {}
        c = spec.get("canary") or {}
        a = c.get("analysis")
        analysis = Analysis()
        if a is not None:
            analysis = Analysis(
                enabled=bool(a.get("enabled", True)),
                prometheus=(a.get("prometheus") or {}).get("address"),
                min_requests=int(a.get("minRequests", 50)),
                no_data_policy=a.get("noDataPolicy", "pause"),
                no_data_limit=int(a.get("noDataLimit", 5)),
                latency_p99_ratio=float(a.get("latencyP99Ratio", 1.2)),
                max_gpu_memory_utilization=float(a.get("maxGpuMemoryUtilization", 0.95)),
                max_error_rate=float(a.get("maxErrorRate", 0.01)),
                queries=tuple(a.get("queries") or ()),
            )
        ref = (adapter.get("fineTuneJobRef") or {}).get("name")
        return cls(
            base_model=base.get("uri") or base.get("name") or "",
            base_is_hub_id=not base.get("uri"),
            base_revision=base.get("revision"),
            trust_remote_code=bool(base.get("trustRemoteCode", False)),
            model_cache_uri=base.get("cacheUri"),
            env_from=list(spec.get("envFrom") or []),
            adapter_uri=adapter.get("uri"),
            adapter_ref=ref,
            adapter_name=adapter.get("name") or ref or "adapter",
            runtime=spec.get("runtime", "builtin"),
            image=spec.get("image"),
            port=int(spec.get("port", 8000)),
            replicas=int(spec.get("replicas", 2)),
            resources=PodResources.from_dict(spec.get("resources")),
            builtin=dict(spec.get("builtin") or {}),
            vllm=dict(spec.get("vllm") or {}),
            traffic=spec.get("traffic", "replicas"),
            gateway=spec.get("gateway"),
            canary=Canary(
                steps=tuple(c.get("steps") or DEFAULT_STEPS),
                interval_seconds=parse_duration(c.get("interval", "1m")),
                failure_limit=int(c.get("failureLimit", 0)),
                auto_promote=bool(c.get("autoPromote", True)),
                manual_gate=bool(c.get("manualGate", False)),
                abort=bool(c.get("abort", False)),
                progress_deadline_seconds=parse_duration(c.get("progressDeadline", "10m")),
                analysis=analysis,
            ),
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
