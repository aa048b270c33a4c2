"""Manifests that serve a ModelDeployment: one Deployment per track, Services, optional HTTPRoute."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, NamedTuple

from kubetune_operator import api
from kubetune_operator.builders.labels import child_labels, owner_reference
from kubetune_operator.builders.names import bounded
from kubetune_operator.builders.resources import container_resources
from kubetune_operator.builders.trainer_job import resolve_uri
from kubetune_operator.builders.volumes import pvc_volumes
from kubetune_operator.serving_spec import ModelDeploymentSpec
from kubetune_operator.settings import Settings

COMPONENT = "server"
LABEL_TRACK = f"{api.GROUP}/track"
LABEL_VERSION = f"{api.GROUP}/version"
STABLE, CANARY = "stable", "canary"


def deployment_name(md: str, track: str) -> str:
    return bounded(md, track)


def track_selector(md: str, track: str) -> dict[str, str]:
    return {api.LABEL_INSTANCE: md[:63].rstrip("-_."), api.LABEL_COMPONENT: COMPONENT, LABEL_TRACK: track}


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
    md: dict[str, Any], track: str, version: str, adapter_uri: str | None, replicas: int, settings: Settings
) -> dict[str, Any]:
    meta = md["metadata"]
    spec = ModelDeploymentSpec.from_dict(md["spec"])
    labels = child_labels(meta["name"], COMPONENT, {LABEL_TRACK: track, LABEL_VERSION: version})
    uris = [u for u in (spec.base_model, adapter_uri) if u]
    volumes, mounts = pvc_volumes(uris, settings.pvc_mount_root)
    model = resolve_uri(spec.base_model, settings)
    adapter = resolve_uri(adapter_uri, settings) if adapter_uri else None
    if spec.runtime == "vllm":
        container = _vllm_container(spec, model, adapter, settings)
    else:
        container = _builtin_container(spec, model, adapter, version, settings)
    container["volumeMounts"] = [*mounts, {"name": "tmp", "mountPath": "/tmp"}]
    container["resources"] = container_resources(
        spec.resources.cpu, spec.resources.memory, spec.resources.gpus, spec.resources.gpu_resource_name
    )
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [*volumes, {"name": "tmp", "emptyDir": {}}],
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    }
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


def build_services(md: dict[str, Any]) -> list[dict[str, Any]]:
    """`<md>` selects both tracks (traffic by replica ratio); `<md>-stable`/`-canary` back HTTPRoutes."""
    meta = md["metadata"]
    spec = ModelDeploymentSpec.from_dict(md["spec"])
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


def build_httproute(md: dict[str, Any], canary_weight: int) -> dict[str, Any]:
    """Gateway API route splitting traffic between the track Services by weight."""
    meta = md["metadata"]
    spec = ModelDeploymentSpec.from_dict(md["spec"])
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


def _builtin_container(
    spec: ModelDeploymentSpec, model: str, adapter: str | None, version: str, settings: Settings
) -> dict[str, Any]:
    args = ["--model", model, "--host", "0.0.0.0", "--port", str(spec.port), "--version", version]
    if adapter:
        args += ["--adapter", adapter, "--adapter-name", spec.adapter_name]
    args += list(spec.builtin.get("extraArgs") or [])
    return {
        "name": COMPONENT,
        "image": spec.image or settings.server_image,
        "command": ["python", "-m", "kubetune_server"],
        "args": args,
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        "env": [{"name": "HF_HOME", "value": "/tmp/hf"}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def _vllm_container(spec: ModelDeploymentSpec, model: str, adapter: str | None, settings: Settings) -> dict[str, Any]:
    vllm = spec.vllm
    args = [
        model,
        "--port",
        str(spec.port),
        "--gpu-memory-utilization",
        str(vllm.get("gpuMemoryUtilization", 0.9)),
    ]
    if spec.resources.gpus > 1:
        args += ["--tensor-parallel-size", str(spec.resources.gpus)]
    if vllm.get("maxModelLen"):
        args += ["--max-model-len", str(vllm["maxModelLen"])]
    if adapter:
        args += [
            "--enable-lora",
            "--lora-modules",
            f"{spec.adapter_name}={adapter}",
            "--max-lora-rank",
            str(vllm.get("maxLoraRank", 64)),
        ]
    args += list(vllm.get("extraArgs") or [])
    return {
        "name": COMPONENT,
        "image": spec.image or settings.vllm_image,
        "command": ["vllm", "serve"],
        "args": args,
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
        "env": [{"name": "HF_HOME", "value": "/tmp/hf"}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
