"""The operator runs multi-node FineTuneJobs on the engine they ask for, against the real apiserver: an
indexedJob gang gets its headless Service and Indexed Job; a jobSet gang on a cluster without JobSet's CRD
says so in status and creates nothing, then starts by itself once the CRD is installed.

(The pods are not trained here: the local-executor tests run real gangs.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune_dev.controlplane import ControlPlane
from tests.k8s.conftest import wait_for

JOBSETS_CRD = "jobsets.jobset.x-k8s.io"
LABELS = "kubetune.io/finetunejob={name}"


def gang_spec(engine: str) -> dict[str, Any]:
    return {
        "baseModel": {"name": "org/tiny-llama"},
        "dataset": {"uri": "/data/support.jsonl"},
        "output": {"uri": "/models/gang"},
        "image": "kubetune.test/trainer:kwok-hang",
        "resources": {"nodes": 2, "gpus": 0},
        "training": {"distributed": {"engine": engine, "backend": "gloo", "rendezvousPort": 29511}},
    }


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def crd_present(api: client.ApiClient, name: str) -> bool:
    try:
        client.ApiextensionsV1Api(api).read_custom_resource_definition(name)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


@pytest.fixture
def no_jobset_crd(control_plane: ControlPlane, api: client.ApiClient) -> Iterator[None]:
    """A cluster without JobSet (another module may have installed it); removed again afterwards."""
    crds = str(control_plane.vendored_crds("jobset"))
    control_plane.kubectl("delete", "--ignore-not-found", "--wait", "-f", crds)
    wait_for(lambda: not crd_present(api, JOBSETS_CRD), 60, "the JobSet CRD gone")
    yield
    control_plane.kubectl("delete", "--ignore-not-found", "--wait", "-f", crds)


def test_indexed_job_gang_gets_service_and_indexed_job(k8s, operator):
    k8s.create_ftj("gang", gang_spec("indexedJob"))
    job = wait_for(lambda: k8s.batch.read_namespaced_job("gang-run-1", k8s.ns), 30, "the gang's Indexed Job")
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism) == ("Indexed", 2, 2)
    assert job.spec.template.spec.subdomain == "gang-run-1"
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    assert env["KUBETUNE_NODES"].value == "2"
    assert env["KUBETUNE_MASTER_ADDR"].value == f"gang-run-1-0.gang-run-1.{k8s.ns}.svc"
    assert env["KUBETUNE_MASTER_PORT"].value == "29511"
    assert env["KUBETUNE_DIST_BACKEND"].value == "gloo"
    service = k8s.core.read_namespaced_service("gang-run-1", k8s.ns)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses
    assert [(p.name, p.port) for p in service.spec.ports] == [("rendezvous", 29511)]
    assert service.metadata.owner_references[0].kind == "FineTuneJob"
    # The Service selects exactly the gang's pods: the Job controller made one per index, each with its
    # hostname, so `gang-run-1-0.gang-run-1` names node 0.
    selector = ",".join(f"{k}={v}" for k, v in service.spec.selector.items())

    def two_pods() -> list[Any] | None:
        pods = k8s.core.list_namespaced_pod(k8s.ns, label_selector=selector).items
        return pods if len(pods) == 2 else None

    pods = wait_for(two_pods, 30, "the gang's two pods")
    assert sorted(p.spec.hostname for p in pods) == ["gang-run-1-0", "gang-run-1-1"]
    assert sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1"]
    status = k8s.get_ftj("gang")["status"]
    assert status["jobName"] == "gang-run-1" and condition(status, "EngineAvailable") is None


def test_jobset_gang_without_the_crd_waits_then_starts(k8s, operator, no_jobset_crd, control_plane):
    k8s.create_ftj("js", gang_spec("jobSet"))
    status = wait_for(
        lambda: (lambda s: s if (condition(s, "EngineAvailable") or {}).get("status") == "False" else None)(
            k8s.get_ftj("js").get("status") or {}
        ),
        30,
        "EngineAvailable False",
    )  # fmt: skip
    cond = condition(status, "EngineAvailable")
    assert cond is not None and cond["reason"] == "EngineNotInstalled"
    assert JOBSETS_CRD in cond["message"] and "spec.training.distributed.engine" in cond["message"]
    assert status["phase"] == "Pending" and not status.get("run")
    # Nothing was created for the run: no Job, no Service, no spec ConfigMap.
    selector = LABELS.format(name="js")
    assert k8s.batch.list_namespaced_job(k8s.ns, label_selector=selector).items == []
    assert k8s.core.list_namespaced_service(k8s.ns, label_selector=selector).items == []
    assert k8s.core.list_namespaced_config_map(k8s.ns, label_selector=selector).items == []
    assert any(e.reason == "EngineNotInstalled" for e in k8s.events_for("js"))

    # Installing JobSet is enough: the retry timer reads the CRD again and the run starts.
    control_plane.kubectl("apply", "--server-side", "-f", str(control_plane.vendored_crds("jobset")))
    jobsets = ("jobset.x-k8s.io", "v1alpha2", k8s.ns, "jobsets")
    jobset = wait_for(lambda: k8s.custom.get_namespaced_custom_object(*jobsets, "js-run-1"), 60, "the JobSet")
    assert jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["completions"] == 2
    status = wait_for(lambda: (k8s.get_ftj("js").get("status") or {}).get("run") == 1 and k8s.get_ftj("js")["status"],
                      30, "run 1 recorded")  # fmt: skip
    cond = condition(status, "EngineAvailable")
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "EngineInstalled")
    assert status["jobName"] == "js-run-1"

    # spec.suspend pauses the JobSet as it pauses a Job.
    k8s.patch_ftj("js", {"suspend": True})
    wait_for(lambda: k8s.custom.get_namespaced_custom_object(*jobsets, "js-run-1")["spec"].get("suspend"), 30,
             "the JobSet suspended")  # fmt: skip

    # The JobSet's state is the run's: its controller's verdict (written here by hand: no controller runs).
    failed = {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "jobset js-run-1 failed",
              "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    k8s.custom.patch_namespaced_custom_object_status(*jobsets, "js-run-1", {"status": {"conditions": [failed]}})
    status = wait_for(lambda: (k8s.get_ftj("js").get("status") or {}).get("phase") == "Failed"
                      and k8s.get_ftj("js")["status"], 30, "the FineTuneJob Failed")  # fmt: skip
    assert condition(status, "Failed")["reason"] == "FailedJobs"
    assert "jobset js-run-1 failed" in status["message"]


@pytest.fixture
def trainer_crds(control_plane: ControlPlane, api: client.ApiClient) -> Iterator[None]:
    """Kubeflow Trainer's CRDs for one test (no controller: the TrainJob is created, not run)."""
    crds = str(control_plane.vendored_crds("kubeflow-trainer"))
    control_plane.kubectl("apply", "--server-side", "-f", crds)
    wait_for(lambda: crd_present(api, "trainjobs.trainer.kubeflow.org"), 30, "the TrainJob CRD")
    yield
    control_plane.kubectl("delete", "--ignore-not-found", "--wait", "-f", crds)


def test_trainjob_gang_is_created_or_refused(k8s, operator, trainer_crds):
    k8s.create_ftj("tj", gang_spec("trainJob"))
    trainjobs = ("trainer.kubeflow.org", "v1alpha1", k8s.ns, "trainjobs")
    trainjob = wait_for(lambda: k8s.custom.get_namespaced_custom_object(*trainjobs, "tj-run-1"), 60, "the TrainJob")
    assert trainjob["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert trainjob["spec"]["trainer"]["numNodes"] == 2
    assert trainjob["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    status = wait_for(lambda: (k8s.get_ftj("tj").get("status") or {}).get("jobName") == "tj-run-1"
                      and k8s.get_ftj("tj")["status"], 30, "run 1 recorded")  # fmt: skip
    assert (condition(status, "EngineAvailable") or {}).get("status") == "True"

    # What a TrainJob cannot carry is refused with the field named, not dropped: S3 keys from envFrom.
    k8s.create_ftj("tj-env", {**gang_spec("trainJob"), "output": {"uri": "/models/tj-env"},
                              "envFrom": [{"secretRef": {"name": "s3-keys"}}]})  # fmt: skip
    status = wait_for(lambda: (k8s.get_ftj("tj-env").get("status") or {}).get("phase") == "Failed"
                      and k8s.get_ftj("tj-env")["status"], 30, "tj-env Failed")  # fmt: skip
    assert "spec.envFrom is not supported with training.distributed.engine trainJob" in status["message"]
    listed = k8s.custom.list_namespaced_custom_object(*trainjobs)["items"]
    assert [t["metadata"]["name"] for t in listed] == ["tj-run-1"]
