"""Pure tests of what spec.capture adds to serving pods, for both runtimes; the flags the builder writes are
parsed by the very parsers the server and the capture proxy start with."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune_operator.builders.capture import engine_port
from kubetune_operator.builders.serving import build_deployment, build_services
from kubetune_operator.serving_spec import ModelDeploymentSpec
from kubetune_operator.settings import Settings
from kubetune_server import capture_proxy
from kubetune_server.settings import parse as parse_server

CAPTURE = {
    "uri": "pvc://captures/chat",
    "sampleRate": 0.25,
    "maxFileBytes": 4096,
    "redact": {"fields": ["email"], "patterns": ["[0-9]{3}-[0-9]{4}"]},
}
MD: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "chat", "namespace": "ml", "uid": "uid-9", "generation": 1},
    "spec": {
        "baseModel": {"uri": "pvc://models/base"},
        "adapter": {"uri": "pvc://adapters/a"},
        "envFrom": [{"secretRef": {"name": "s3-keys"}}],
        "capture": CAPTURE,
    },
}


def deployment(spec: dict[str, Any], runtime: str) -> dict[str, Any]:
    md = copy.deepcopy(MD)
    md["spec"] = {**spec, "runtime": runtime}
    parsed = ModelDeploymentSpec.from_dict(md["spec"])
    return build_deployment(parsed, md, "canary", "v2", "pvc://adapters/a", 1, Settings())


def pod(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]


def mounts(c: dict[str, Any]) -> dict[str, bool]:
    """mountPath -> read-only."""
    return {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]}


def test_builtin_server_captures_itself_to_the_claim_mounted_read_write():
    p = pod(deployment(MD["spec"], "builtin"))
    (server,) = p["containers"]
    s = parse_server(server["args"], env={})
    cfg = s.capture()
    assert cfg is not None and cfg.uri == "/mnt/pvc/captures/chat" and s.version == "v2"
    assert (cfg.sample_rate, cfg.max_bytes, cfg.max_seconds) == (0.25, 4096, 300)
    assert cfg.redact_fields == ("email",) and cfg.redact_patterns == ("[0-9]{3}-[0-9]{4}",)
    assert mounts(server) == {
        "/mnt/pvc/models": True,
        "/mnt/pvc/adapters": True,
        "/mnt/pvc/captures": False,
        "/tmp": False,
    }
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in p["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models": True, "adapters": True, "captures": False}


def test_vllm_gets_a_capture_proxy_on_the_pods_port_and_moves_to_the_next():
    dep = deployment(MD["spec"], "vllm")
    engine, proxy = pod(dep)["containers"]
    assert engine["args"][engine["args"].index("--port") + 1] == "8001" == str(engine_port(8000))
    assert engine["ports"] == [{"name": "engine", "containerPort": 8001, "protocol": "TCP"}]
    assert engine["readinessProbe"]["httpGet"]["port"] == "engine"
    # The Services target the port named http, and Prometheus scrapes the annotated port: both the proxy's.
    assert proxy["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    services = build_services(ModelDeploymentSpec.from_dict(MD["spec"]), MD)
    assert {s["spec"]["ports"][0]["targetPort"] for s in services} == {"http"}
    assert proxy["command"] == ["python", "-m", "kubetune_server.capture_proxy"]
    assert proxy["image"] == Settings().server_image and proxy["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
    s = capture_proxy.parse(proxy["args"], env={})
    assert s.upstream == "http://127.0.0.1:8001" and s.port == 8000 and s.version == "v2"
    assert s.capture_uri == "/mnt/pvc/captures/chat" and s.capture_sample_rate == 0.25
    assert mounts(proxy)["/mnt/pvc/captures"] is False
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("runtime", ["builtin", "vllm"])
def test_without_capture_nothing_changes(runtime):
    spec = {k: v for k, v in MD["spec"].items() if k != "capture"}
    p = pod(deployment(spec, runtime))
    assert len(p["containers"]) == 1 and p["containers"][0]["ports"][0]["name"] == "http"
    assert not any("--capture-uri" in c.get("args", []) for c in p["containers"])
    assert all(v["persistentVolumeClaim"]["readOnly"] for v in p["volumes"] if "persistentVolumeClaim" in v)


@pytest.mark.parametrize("runtime", ["builtin", "vllm"])
def test_s3_captures_mount_no_claim_and_carry_the_keys(runtime):
    spec = {**MD["spec"], "capture": {"uri": "s3://caps/chat"}}
    p = pod(deployment(spec, runtime))
    capturing = p["containers"][-1]
    args = capturing["args"]
    assert args[args.index("--capture-uri") + 1] == "s3://caps/chat"
    assert args[args.index("--capture-sample-rate") + 1] == "0.1"  # the API's default
    assert capturing["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
    assert "/tmp" in mounts(capturing)  # the spool before upload
    assert "captures" not in {
        v["persistentVolumeClaim"]["claimName"] for v in p["volumes"] if "persistentVolumeClaim" in v
    }
