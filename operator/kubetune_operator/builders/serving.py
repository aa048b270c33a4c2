"""Manifests that serve a ModelDeployment: one Deployment per track, Services, optional HTTPRoute."""

from __future__ import annotations

import math
from typing import Any

from kubetune_operator import api
from kubetune_operator.builders.labels import child_labels, label_value, owner_reference
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
    return {api.LABEL_INSTANCE: label_value(md), api.LABEL_COMPONENT: COMPONENT, LABEL_TRACK: track}


def canary_replicas(total: int, weight: int) -> int:
    """Canary pods for a traffic weight when the weight is carried by replica ratio (at least one).

    >>> canary_replicas(4, 5), canary_replicas(4, 50), canary_replicas(4, 100)
    (1, 2, 4)
    """
    return max(1, math.ceil(total * weight / 100))


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
