"""Every pod the builders make meets the `restricted` Pod Security Standard and writes only to emptyDir
scratch (the k8s tier checks the same pods against the apiserver's PodSecurity admission)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune_operator.builders.serving import build_deployment
from kubetune_operator.builders.trainer_job import build_trainer_job
from kubetune_operator.serving_spec import ModelDeploymentSpec
from kubetune_operator.settings import Settings
from kubetune_operator.specs import FineTuneJobSpec

MD: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "chat", "namespace": "ml", "uid": "uid-9", "generation": 1},
    "spec": {"baseModel": {"uri": "s3://bucket/base"}},
}


def trainer_pod(ftj: dict[str, Any]) -> dict[str, Any]:
    return build_trainer_job(FineTuneJobSpec.from_dict(ftj["spec"]), ftj, 1, Settings())["spec"]["template"]["spec"]


def server_pod(runtime: str) -> dict[str, Any]:
    md = copy.deepcopy(MD)
    md["spec"]["runtime"] = runtime
    # An s3:// base and adapter: the pod gets download init containers too.
    dep = build_deployment(
        ModelDeploymentSpec.from_dict(md["spec"]), md, "stable", "v1", "s3://bucket/run-1/artifact", 1, Settings()
    )
    return dep["spec"]["template"]["spec"]


def pods(ftj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("trainer", trainer_pod(ftj)), ("builtin", server_pod("builtin")), ("vllm", server_pod("vllm"))]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_server_pods_have_init_containers_to_check(ftj):
    assert all(server_pod(r).get("initContainers") for r in ("builtin", "vllm"))


@pytest.mark.parametrize("which", ["trainer", "builtin", "vllm"])
def test_restricted_pod_security_standard(ftj, which):
    """The checks of the `restricted` profile (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    pod = dict(pods(ftj))[which]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    allowed_volumes = {"configMap", "emptyDir", "persistentVolumeClaim", "secret", "projected"}
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= allowed_volumes, volume
    for c in containers(pod):
        ctx = c["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, c["name"]
        assert ctx["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert ctx.get("privileged") is not True and "add" not in ctx["capabilities"]
        assert ctx["readOnlyRootFilesystem"] is True, c["name"]
        assert all("hostPort" not in p for p in c.get("ports", []))


@pytest.mark.parametrize("which", ["trainer", "builtin", "vllm"])
def test_every_place_a_container_writes_is_an_emptydir(ftj, which):
    """HOME, the HF cache and /tmp lie on the pod's scratch emptyDir, so a read-only root still works."""
    pod = dict(pods(ftj))[which]
    scratch = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for c in containers(pod):
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts.get("/tmp") in scratch, c["name"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        for var in ("HOME", "HF_HOME"):
            writable = [p for p, name in mounts.items() if name in scratch and env[var].startswith(p)]
            assert writable, f"{c['name']}: {var}={env[var]} is not on an emptyDir"


def test_server_home_stays_on_scratch_with_a_cache_claim():
    """A hub-id base model with a cache claim: HF_HOME is the (writable) claim, HOME stays /tmp."""
    md = copy.deepcopy(MD)
    md["spec"]["baseModel"] = {"name": "org/m", "cacheUri": "pvc://hf-cache/hub"}
    c = build_deployment(ModelDeploymentSpec.from_dict(md["spec"]), md, "stable", "v1", None, 1, Settings())["spec"][
        "template"
    ]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["HOME"] == "/tmp" and env["HF_HOME"] == "/mnt/pvc/hf-cache/hub"
    assert {"name": "pvc-1", "mountPath": "/mnt/pvc/hf-cache", "readOnly": False} in c["volumeMounts"]
