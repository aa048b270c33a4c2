"""Manifests that serve a ModelDeployment: one Deployment per track, Services, optional HTTPRoute."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

from kubetune_operator import api
from kubetune_operator.builders.capture import capture_args, capture_claim, engine_port, proxy_container
from kubetune_operator.builders.labels import child_labels, label_value, owner_reference
from kubetune_operator.builders.names import bounded
from kubetune_operator.builders.resources import container_resources
from kubetune_operator.builders.security import container_security_context, home_env, pod_security_context
from kubetune_operator.builders.trainer_job import resolve_uri
from kubetune_operator.builders.volumes import claim_of, pvc_volumes
from kubetune_operator.serving_spec import ModelDeploymentSpec, Served
from kubetune_operator.settings import Settings

COMPONENT = "server"
LABEL_TRACK = f"{api.GROUP}/track"
LABEL_VERSION = f"{api.GROUP}/version"
STABLE, CANARY = "stable", "canary"
# s3:// models and adapters are downloaded here (an emptyDir) by init containers.
MODELS_VOLUME, MODELS_DIR = "models", "/models"


def deployment_name(md: str, track: str) -> str:
    return bounded(md, track)


def track_selector(md: str, track: str) -> dict[str, str]:
    return {api.LABEL_INSTANCE: label_value(md), api.LABEL_COMPONENT: COMPONENT, LABEL_TRACK: track}


class Split(NamedTuple):
    """Pods per track, and the percent of requests the canary gets when load is spread evenly over
    every Ready pod (a Service) or split by HTTPRoute weights (Gateway API)."""

    stable: int
    canary: int
    achieved: float


def replica_split(total: int, weight: int) -> Split:
    """Stable and canary pods whose ratio carries `weight` percent of a Service's requests.

    The canary gets the pod count whose share canary / (stable + canary) is nearest to `weight`
    (a tie goes to fewer canary pods), at least one; stable keeps max(1, total - canary), so the pods
    serving stay at `total` (total + 1 only when the canary has all `total`) and stable, the baseline
    the analysis compares against and the rollback target, keeps a warm pod until promotion.

    >>> replica_split(4, 25), replica_split(4, 50)
    (Split(stable=3, canary=1, achieved=25.0), Split(stable=2, canary=2, achieved=50.0))
    >>> replica_split(4, 100)  # stable keeps one pod until promotion
    Split(stable=1, canary=4, achieved=80.0)
    >>> replica_split(2, 5)  # two pods cannot carry less than half: rounded up to one canary pod
    Split(stable=1, canary=1, achieved=50.0)
    >>> replica_split(20, 5)
    Split(stable=19, canary=1, achieved=5.0)
    """
    if total < 1 or not 0 < weight <= 100:
        raise ValueError(f"need total >= 1 and 0 < weight <= 100, got {total}, {weight}")
    target = Fraction(weight, 100)

    def share(canary: int) -> Fraction:
        return Fraction(canary, canary + max(1, total - canary))

    canary = min(range(1, total + 1), key=lambda c: (abs(share(c) - target), c))
    return Split(max(1, total - canary), canary, round(float(share(canary)) * 100, 1))


def canary_replicas(total: int, weight: int) -> int:
    """Canary pods that carry `weight` percent of the load at the stable pods' load per pod (at least one).

    >>> canary_replicas(4, 5), canary_replicas(4, 50), canary_replicas(4, 100)
    (1, 2, 4)
    """
    return max(1, math.ceil(total * weight / 100))


def traffic_split(traffic: str, total: int, weight: int) -> Split:
    """Pods per track for a canary step.

    `replicas`: the weight is carried by the pod ratio (`replica_split`), rounded to what the pods allow.
    `gatewayAPI`: the HTTPRoute weights are exact, so stable keeps all `total` pods (ready to take
    everything back at once) and the canary gets the pods its share needs at stable's load per pod.

    >>> traffic_split("gatewayAPI", 4, 5)
    Split(stable=4, canary=1, achieved=5.0)
    >>> traffic_split("replicas", 4, 5)
    Split(stable=3, canary=1, achieved=25.0)
    """
    if traffic == "gatewayAPI":
        return Split(total, canary_replicas(total, weight), float(weight))
    return replica_split(total, weight)


def build_deployment(
    spec: ModelDeploymentSpec,
    md: dict[str, Any],
    track: str,
    version: str,
    adapter_uri: str | None,
    replicas: int,
    settings: Settings,
) -> dict[str, Any]:
    """One track's Deployment. ``md`` names the owner (its metadata; the spec is read once, as ``spec``);
    ``adapter_uri`` is a `Served` ref (see serving_spec): an adapter, or a whole model that replaces the base."""
    meta = md["metadata"]
    labels = child_labels(meta["name"], COMPONENT, {LABEL_TRACK: track, LABEL_VERSION: version})
    src = model_sources(spec, Served.parse(adapter_uri) if adapter_uri else None, settings)
    cache_claim = claim_of(spec.model_cache_uri) if src.hf_home and spec.model_cache_uri else None
    capture = spec.capture
    pvc_uris = [*src.pvc_uris, *([capture.uri] if capture_claim(capture) and capture else [])]
    volumes, mounts = pvc_volumes(pvc_uris, settings.pvc_mount_root, [cache_claim, capture_claim(capture)])
    mounts = [*mounts, {"name": "tmp", "mountPath": "/tmp"}]
    volumes = [*volumes, {"name": "tmp", "emptyDir": {}}]
    if src.fetches:
        volumes.append({"name": MODELS_VOLUME, "emptyDir": {}})
        mounts.append({"name": MODELS_VOLUME, "mountPath": MODELS_DIR})
    env = [{"name": "HF_HOME", "value": src.hf_home or "/tmp/hf"}, home_env()]
    containers = []
    if spec.runtime == "vllm":
        container = _vllm_container(spec, src, settings)
        if capture is not None:  # the proxy takes the pod's port; see builders/capture.py for why
            image = settings.server_image
            containers.append(proxy_container(capture, spec.port, version, image, spec.env_from, mounts, settings))
    else:
        container = _builtin_container(spec, src, version, settings)
        if capture is not None:
            container["args"] += capture_args(capture, settings)
    container["env"] = env
    if spec.env_from:
        container["envFrom"] = spec.env_from
    container["volumeMounts"] = mounts
    container["resources"] = container_resources(
        spec.resources.cpu, spec.resources.memory, spec.resources.gpus, spec.resources.gpu_resource_name
    )
    pod_spec: dict[str, Any] = {
        "containers": [container, *containers],
        "volumes": volumes,
        "securityContext": pod_security_context(),
    }
    if src.fetches:
        pod_spec["initContainers"] = [_fetch_container(f, spec, env, mounts, settings) for f in src.fetches]
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = spec.resources.node_selector
    if spec.resources.tolerations:
        pod_spec["tolerations"] = spec.resources.tolerations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(meta["name"], track),
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(md)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": track_selector(meta["name"], track)},
            "template": {
                "metadata": {
                    "labels": labels,
                    # Prometheus' common pod-annotation discovery finds the metrics endpoint.
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(spec.port)},
                },
                "spec": pod_spec,
            },
        },
    }


@dataclass(frozen=True)
class Fetch:
    """One download an init container makes before the server starts."""

    what: str  # base | adapter | model: names the container and the folder
    uri: str
    path: str  # where it lands inside the pod
    digest: str | None


@dataclass(frozen=True)
class Sources:
    """Where the server finds what it serves, inside the pod."""

    model: str  # a path, or a hub id resolved through the HF cache
    model_name: str | None  # the name it is served under, when the path's last part would say nothing
    revision: str | None  # of a hub id
    adapter: str | None
    fetches: tuple[Fetch, ...]
    pvc_uris: list[str]  # pvc:// locations the pod mounts
    hf_home: str | None  # the cache claim's path when a hub id is loaded through it


def model_sources(spec: ModelDeploymentSpec, served: Served | None, settings: Settings) -> Sources:
    """Local and pvc:// locations are read in place; s3:// ones are downloaded into an emptyDir first.

    A whole model from a FineTuneJob replaces the base (nothing of the base is mounted or fetched)
    and is served under the adapter's name, so clients keep naming the same model across versions.

    >>> s = model_sources(ModelDeploymentSpec.from_dict({"baseModel": {"name": "org/m"}}),
    ...                   Served("s3://b/run-1/artifact", "adapter", "sha256:1"), Settings())
    >>> s.model, s.adapter, s.fetches[0].path
    ('org/m', '/models/adapter', '/models/adapter')
    """
    fetches: list[Fetch] = []
    pvc_uris: list[str] = []

    def place(uri: str, what: str, digest: str | None) -> str:
        if uri.startswith("s3://"):
            fetches.append(Fetch(what, uri, f"{MODELS_DIR}/{what}", digest))
            return f"{MODELS_DIR}/{what}"
        pvc_uris.append(uri)
        return resolve_uri(uri, settings)

    if served is not None and served.kind == "model":
        model = place(served.uri, "model", served.digest)
        return Sources(model, spec.adapter_name, None, None, tuple(fetches), pvc_uris, None)
    revision, model_name, hf_home = None, None, None
    if spec.base_is_hub_id:
        model, revision = spec.base_model, spec.base_revision
        if spec.model_cache_uri:
            pvc_uris.append(spec.model_cache_uri)
            hf_home = resolve_uri(spec.model_cache_uri.rstrip("/"), settings)
    else:
        model = place(spec.base_model, "base", None)
        if fetches:  # "/models/base" would name every downloaded base model alike
            model_name = spec.base_model.rstrip("/").rsplit("/", 1)[-1]
    adapter = place(served.uri, "adapter", served.digest) if served is not None else None
    return Sources(model, model_name, revision, adapter, tuple(fetches), pvc_uris, hf_home)


def build_services(spec: ModelDeploymentSpec, md: dict[str, Any]) -> list[dict[str, Any]]:
    """`<md>` selects both tracks (traffic by replica ratio); `<md>-stable`/`-canary` back HTTPRoutes."""
    meta = md["metadata"]
    both = {k: v for k, v in track_selector(meta["name"], STABLE).items() if k != LABEL_TRACK}
    out = []
    for name, selector in (
        (meta["name"], both),
        (bounded(meta["name"], STABLE), track_selector(meta["name"], STABLE)),
        (bounded(meta["name"], CANARY), track_selector(meta["name"], CANARY)),
    ):
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": name,
                    "namespace": meta["namespace"],
                    "labels": child_labels(meta["name"], COMPONENT),
                    "ownerReferences": [owner_reference(md)],
                },
                "spec": {
                    "selector": selector,
                    "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
                },
            }
        )
    return out


def build_httproute(spec: ModelDeploymentSpec, md: dict[str, Any], canary_weight: int) -> dict[str, Any]:
    """Gateway API route splitting traffic between the track Services by weight."""
    meta = md["metadata"]
    gateway = spec.gateway or {}
    route_spec: dict[str, Any] = {
        "parentRefs": gateway.get("parentRefs", []),
        "rules": [
            {
                "backendRefs": [
                    {"name": bounded(meta["name"], STABLE), "port": spec.port, "weight": 100 - canary_weight},
                    {"name": bounded(meta["name"], CANARY), "port": spec.port, "weight": canary_weight},
                ]
            }
        ],
    }
    if gateway.get("hostnames"):
        route_spec["hostnames"] = gateway["hostnames"]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": child_labels(meta["name"], COMPONENT),
            "ownerReferences": [owner_reference(md)],
        },
        "spec": route_spec,
    }


def _builtin_container(spec: ModelDeploymentSpec, src: Sources, version: str, settings: Settings) -> dict[str, Any]:
    args = ["--model", src.model, "--host", "0.0.0.0", "--port", str(spec.port), "--version", version]
    if src.model_name:
        args += ["--model-name", src.model_name]
    if src.revision:
        args += ["--revision", src.revision]
    if src.adapter:
        args += ["--adapter", src.adapter, "--adapter-name", spec.adapter_name]
    args += list(spec.builtin.get("extraArgs") or [])
    return {
        "name": COMPONENT,
        "image": spec.image or settings.server_image,
        "command": ["python", "-m", "kubetune_server"],
        "args": args,
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        "securityContext": container_security_context(),
    }


def _vllm_container(spec: ModelDeploymentSpec, src: Sources, settings: Settings) -> dict[str, Any]:
    vllm = spec.vllm
    port = engine_port(spec.port) if spec.capture is not None else spec.port
    args = [
        src.model,
        "--port",
        str(port),
        "--gpu-memory-utilization",
        str(vllm.get("gpuMemoryUtilization", 0.9)),
    ]
    if src.model_name:
        args += ["--served-model-name", src.model_name]
    if src.revision:
        args += ["--revision", src.revision]
    if spec.trust_remote_code:
        args += ["--trust-remote-code"]
    if spec.resources.gpus > 1:
        args += ["--tensor-parallel-size", str(spec.resources.gpus)]
    if vllm.get("maxModelLen"):
        args += ["--max-model-len", str(vllm["maxModelLen"])]
    if src.adapter:
        args += [
            "--enable-lora",
            "--lora-modules",
            f"{spec.adapter_name}={src.adapter}",
            "--max-lora-rank",
            str(vllm.get("maxLoraRank", 64)),
        ]
    args += list(vllm.get("extraArgs") or [])
    return {
        "name": COMPONENT,
        "image": spec.image or settings.vllm_image,
        "command": ["vllm", "serve"],
        "args": args,
        # With capture on, "http" (what the Services target) is the capture proxy's port.
        "ports": [{"name": "http" if port == spec.port else "engine", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http" if port == spec.port else "engine"},
            "periodSeconds": 5,
        },
        "securityContext": container_security_context(),
    }


def _fetch_container(
    fetch: Fetch, spec: ModelDeploymentSpec, env: list[dict[str, Any]], mounts: list[dict[str, Any]], settings: Settings
) -> dict[str, Any]:
    """Downloads one s3:// location into the pod (and checks its digest) before the server starts.

    The server image has the downloader, also for vLLM pods; a builtin pod's own image is one.
    """
    args = [fetch.uri, fetch.path, *(["--digest", fetch.digest] if fetch.digest else [])]
    container: dict[str, Any] = {
        "name": f"fetch-{fetch.what}",
        "image": spec.image if spec.image and spec.runtime == "builtin" else settings.server_image,
        "command": ["python", "-m", "kubetune_server.fetch"],
        "args": args,
        "env": env,
        "volumeMounts": mounts,
        "resources": container_resources(
            spec.resources.cpu, spec.resources.memory, 0, spec.resources.gpu_resource_name
        ),
        "securityContext": container_security_context(),
    }
    if spec.env_from:
        container["envFrom"] = spec.env_from
    return container
