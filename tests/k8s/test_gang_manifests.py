"""What build_run_children renders for every engine is accepted by the real apiserver (server-side dry run,
dryRun=All: admission and schema validation run, nothing is stored), with JobSet's and Kubeflow Trainer's
own CRDs at the pinned releases (hack/build-control-plane.sh copies them from the projects' Go modules).

The CRDs are removed again afterwards: other tests check what the operator does on a cluster without them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune_dev.controlplane import ControlPlane
from kubetune_operator.builders.gang import ENGINE_CRDS, build_run_children
from kubetune_operator.settings import Settings
from kubetune_operator.specs import FineTuneJobSpec
from tests.k8s.conftest import wait_for

ENGINE_PROJECTS = ("jobset", "kubeflow-trainer")
PLURALS = {"JobSet": "jobsets", "TrainJob": "trainjobs"}
#: engine unset: the operator's default (indexedJob)
EXPECTED_KINDS = {
    None: ["Service", "Job"],
    "indexedJob": ["Service", "Job"],
    "jobSet": ["JobSet"],
    "trainJob": ["TrainJob"],
}


@pytest.fixture(scope="module")
def engine_crds(control_plane: ControlPlane, api: client.ApiClient) -> Iterator[None]:
    for project in ENGINE_PROJECTS:
        control_plane.kubectl("apply", "--server-side", "-f", str(control_plane.vendored_crds(project)))
    ext = client.ApiextensionsV1Api(api)

    def established(name: str) -> bool:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    for name in ENGINE_CRDS.values():
        wait_for(lambda name=name: established(name), what=f"CRD {name} established")
    yield
    for project in ENGINE_PROJECTS:
        control_plane.kubectl("delete", "--wait", "-f", str(control_plane.vendored_crds(project)))


def finetunejob(namespace: str, engine: str | None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "baseModel": {"name": "org/tiny"},
        "dataset": {"uri": "pvc://data/support.jsonl"},
        "output": {"uri": "pvc://models/support-bot"},
        "resources": {"nodes": 2, "gpus": 8},
        "training": {"distributed": {"strategy": "fsdp", "socketInterface": "eth0"}},
        **spec,
    }
    if engine:
        body["training"]["distributed"]["engine"] = engine
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "support-bot", "namespace": namespace, "uid": "0b7d5b8e-0000-4000-8000-000000000001"},
        "spec": body,
    }


#: Specs that reach every branch of the builders: placement, deadlines, secrets by reference, a CPU gang.
VARIANTS = {
    "plain": {},
    "placed": {
        "resources": {
            "nodes": 4,
            "gpus": 8,
            "nodeSelector": {"pool": "h100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "training",
        },
        "backoffLimit": 3,
        "activeDeadlineSeconds": 86400,
        "ttlSecondsAfterFinished": 3600,
        "baseModel": {"name": "org/tiny", "tokenSecretRef": {"name": "hf", "key": "token"}},
    },
    "cpu": {"resources": {"nodes": 2, "gpus": 0}, "training": {"distributed": {"backend": "gloo"}}},
}


def dry_run_create(api: client.ApiClient, manifest: dict[str, Any]) -> dict[str, Any]:
    ns, kind = manifest["metadata"]["namespace"], manifest["kind"]
    if kind == "Service":
        return api.sanitize_for_serialization(
            client.CoreV1Api(api).create_namespaced_service(ns, manifest, dry_run="All")
        )
    if kind == "Job":
        return api.sanitize_for_serialization(client.BatchV1Api(api).create_namespaced_job(ns, manifest, dry_run="All"))
    group, version = manifest["apiVersion"].split("/")
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        group, version, ns, PLURALS[kind], manifest, dry_run="All"
    )
    return created


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("engine", [None, "indexedJob", "jobSet", "trainJob"])
def test_rendered_children_are_accepted(engine_crds, k8s, api, engine, variant):
    spec = copy.deepcopy(VARIANTS[variant])
    training = spec.pop("training", {"distributed": {}})
    ftj = finetunejob(k8s.ns, engine, **spec)
    ftj["spec"]["training"]["distributed"].update(training["distributed"])
    parsed = FineTuneJobSpec.from_dict(ftj["spec"])
    assert not parsed.problems, parsed.problems
    manifests = build_run_children(parsed, ftj, 1, Settings())
    kinds = [m["kind"] for m in manifests]
    assert kinds == EXPECTED_KINDS[engine]
    for manifest in manifests:
        stored = dry_run_create(api, manifest)
        # What the apiserver would store is what was rendered (no field pruned as unknown to the schema).
        assert stored["metadata"]["name"] == "support-bot-run-1"
        assert stored["metadata"]["labels"] == manifest["metadata"]["labels"]
        if manifest["kind"] in PLURALS:
            assert _pruned(manifest["spec"], stored["spec"]) == []


def test_one_node_is_one_job(engine_crds, k8s, api):
    ftj = finetunejob(k8s.ns, "jobSet", resources={"gpus": 1})
    (job,) = build_run_children(FineTuneJobSpec.from_dict(ftj["spec"]), ftj, 1, Settings())
    assert job["kind"] == "Job" and dry_run_create(api, job)["spec"]["completions"] == 1


def test_a_broken_manifest_is_refused(engine_crds, k8s, api):
    """The dry runs above can fail: the same apiserver refuses a JobSet whose failurePolicy is wrong."""
    ftj = finetunejob(k8s.ns, "jobSet")
    (jobset,) = build_run_children(FineTuneJobSpec.from_dict(ftj["spec"]), ftj, 1, Settings())
    unknown = copy.deepcopy(jobset)
    unknown["spec"]["failurePolicy"]["restartEverything"] = True  # a field v0.10.1 does not have
    assert _pruned(unknown["spec"], dry_run_create(api, unknown)["spec"]) == ["spec.failurePolicy.restartEverything"]
    jobset["spec"]["failurePolicy"]["rules"][0]["action"] = "RestartEverything"
    with pytest.raises(ApiException) as refused:
        dry_run_create(api, jobset)
    assert refused.value.status == 422 and "RestartEverything" in (refused.value.body or "")
    ftj = finetunejob(k8s.ns, "trainJob")
    (trainjob,) = build_run_children(FineTuneJobSpec.from_dict(ftj["spec"]), ftj, 1, Settings())
    del trainjob["spec"]["runtimeRef"]
    with pytest.raises(ApiException) as refused:
        dry_run_create(api, trainjob)
    assert refused.value.status == 422 and "runtimeRef" in (refused.value.body or "")


def _pruned(sent: Any, stored: Any, path: str = "spec") -> list[str]:
    """Paths of fields in `sent` that `stored` lacks: what a structural schema would silently drop."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [path]
        return [p for k, v in sent.items() for p in _pruned(v, stored.get(k, _MISSING), f"{path}.{k}")]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [path]
        return [p for i, (a, b) in enumerate(zip(sent, stored, strict=True)) for p in _pruned(a, b, f"{path}[{i}]")]
    return [path] if stored is _MISSING else []


_MISSING = object()
