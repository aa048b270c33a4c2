"""Pure builder tests for multi-node runs: each engine's children, the pod env, one node unchanged."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune_operator.builders.gang import (
    COMPLETION_INDEX,
    ENGINE_CRDS,
    build_run_children,
    engine_of,
    engine_problems,
)
from kubetune_operator.builders.trainer_job import build_trainer_job, run_labels
from kubetune_operator.settings import Settings
from kubetune_operator.specs import FineTuneJobSpec

SETTINGS = Settings(trainer_image="registry.example/trainer:1", trainer_service_account="trainer-sa")


def gang_ftj(ftj: dict[str, Any], engine: str | None = None, **distributed: Any) -> dict[str, Any]:
    ftj = copy.deepcopy(ftj)
    ftj["spec"]["resources"] = {"nodes": 2, "gpus": 8}
    ftj["spec"]["training"] = {"distributed": {"strategy": "fsdp", **distributed}}
    if engine:
        ftj["spec"]["training"]["distributed"]["engine"] = engine
    return ftj


def children(ftj: dict[str, Any], run: int = 1, settings: Settings = SETTINGS) -> list[dict[str, Any]]:
    return build_run_children(FineTuneJobSpec.from_dict(ftj["spec"]), ftj, run, settings)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_one_node_is_the_plain_job_unchanged(ftj):
    spec = FineTuneJobSpec.from_dict(ftj["spec"])
    assert engine_of(spec, SETTINGS) is None
    assert children(ftj, 3) == [build_trainer_job(spec, ftj, 3, SETTINGS)]
    job = children(ftj)[0]["spec"]
    assert (job["completions"], job["parallelism"]) == (1, 1)
    assert "completionMode" not in job and "subdomain" not in job["template"]["spec"]
    assert not any(e["name"].startswith("KUBETUNE_NODE") for e in job["template"]["spec"]["containers"][0]["env"])
    # one node: an evicted pod is retried by the Job itself, without using up backoffLimit
    assert job["podFailurePolicy"]["rules"][1]["action"] == "Ignore"


def test_engine_from_spec_or_operator_default(ftj):
    spec = FineTuneJobSpec.from_dict(gang_ftj(ftj)["spec"])
    assert engine_of(spec, SETTINGS) == "indexedJob"
    assert engine_of(spec, Settings(training_engine="trainJob")) == "trainJob"
    spec = FineTuneJobSpec.from_dict(gang_ftj(ftj, "jobSet")["spec"])
    assert engine_of(spec, Settings(training_engine="trainJob")) == "jobSet"
    assert ENGINE_CRDS == {"jobSet": "jobsets.jobset.x-k8s.io", "trainJob": "trainjobs.trainer.kubeflow.org"}


def test_indexed_job_and_headless_service(ftj):
    service, job = children(gang_ftj(ftj, rendezvousPort=29600), 2)
    labels = run_labels(ftj, 2)
    assert [service["kind"], job["kind"]] == ["Service", "Job"]
    assert service["metadata"]["name"] == job["metadata"]["name"] == "support-bot-run-2"
    for obj in (service, job):
        assert obj["metadata"]["labels"] == labels
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert service["spec"] == {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": labels,
        "ports": [{"name": "rendezvous", "port": 29600, "targetPort": 29600, "protocol": "TCP"}],
    }
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed", 2, 2, 0,
    )  # fmt: skip
    pod = spec["template"]
    assert pod["metadata"]["labels"] == labels
    assert pod["spec"]["subdomain"] == "support-bot-run-2"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]},
    }
    assert rules[1] == {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    container = pod["spec"]["containers"][0]
    assert {"name": "rendezvous", "containerPort": 29600, "protocol": "TCP"} in container["ports"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"  # per node


def test_gang_env(ftj):
    _, job = children(gang_ftj(ftj, backend="nccl", socketInterface="eth0"))
    env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert env["KUBETUNE_NODES"] == "2"
    assert env["KUBETUNE_NODE_RANK"] == {"fieldRef": {"fieldPath": COMPLETION_INDEX}}
    assert COMPLETION_INDEX == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["KUBETUNE_MASTER_ADDR"] == "support-bot-run-1-0.support-bot-run-1.ml.svc"
    assert env["KUBETUNE_MASTER_PORT"] == "29500"
    assert env["KUBETUNE_DIST_BACKEND"] == "nccl"
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert env["KUBETUNE_RUN"] == "1"  # the single-node env is all still there


def test_gang_env_leaves_unset_settings_out(ftj):
    _, job = children(gang_ftj(ftj))
    env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert not {"KUBETUNE_DIST_BACKEND", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"} & env.keys()


def test_jobset(ftj):
    ftj = gang_ftj(ftj, "jobSet", socketInterface="eth0")
    ftj["spec"]["backoffLimit"] = 3
    ftj["spec"]["ttlSecondsAfterFinished"] = 600
    (jobset,) = children(ftj, 4)
    assert (jobset["apiVersion"], jobset["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
    assert jobset["metadata"]["name"] == "support-bot-run-4"
    assert jobset["metadata"]["labels"] == run_labels(ftj, 4)
    spec = jobset["spec"]
    assert spec["network"]["enableDNSHostnames"] is True
    assert spec["ttlSecondsAfterFinished"] == 600 and spec["suspend"] is False
    policy = spec["failurePolicy"]
    assert policy["maxRestarts"] == 3
    by_name = {r["name"]: r for r in policy["rules"]}
    assert by_name["BadConfig"]["action"] == "FailJobSet"
    assert by_name["BadConfig"]["onJobFailureMessagePatterns"] == ["matching FailJob rule at index 0$"]
    assert by_name["Preempted"]["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    assert by_name["Preempted"]["onJobFailureReasons"] == ["PodFailurePolicy"]
    (node,) = spec["replicatedJobs"]
    assert node["name"] == "node" and node["replicas"] == 1
    job = node["template"]["spec"]
    assert (job["completionMode"], job["completions"], job["backoffLimit"]) == ("Indexed", 2, 0)
    assert "suspend" not in job and "ttlSecondsAfterFinished" not in job
    pod = job["template"]
    assert pod["metadata"]["labels"] == run_labels(ftj, 4)
    env = env_of(pod["spec"]["containers"][0])
    assert env["KUBETUNE_MASTER_ADDR"] == "support-bot-run-4-node-0-0.support-bot-run-4.ml.svc"
    assert env["KUBETUNE_NODE_RANK"] == {"fieldRef": {"fieldPath": COMPLETION_INDEX}}
    assert env["NCCL_SOCKET_IFNAME"] == "eth0"


def test_trainjob(ftj):
    ftj = gang_ftj(ftj, "trainJob", backend="nccl")
    ftj["spec"]["resources"]["nodeSelector"] = {"pool": "a100"}
    (tj,) = children(ftj, 1, Settings(trainer_image="img:1", trainjob_runtime="torch-custom"))
    assert (tj["apiVersion"], tj["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    spec = tj["spec"]
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-custom",
    }
    trainer = spec["trainer"]
    assert trainer["image"] == "img:1" and trainer["numNodes"] == 2
    assert trainer["command"][:3] == ["python", "-m", "kubetune_trainer"]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    env = env_of(trainer)
    assert env["KUBETUNE_NODES"] == "2" and env["KUBETUNE_DIST_BACKEND"] == "nccl"
    assert env["KUBETUNE_MASTER_ADDR"] == "support-bot-run-1-node-0-0.support-bot-run-1.ml.svc"
    (override,) = spec["podSpecOverrides"]
    assert override["targetJobs"] == [{"name": "node"}]
    assert override["serviceAccountName"] == "kubetune-trainer"
    assert override["nodeSelector"] == {"pool": "a100"}
    mounts = {m["mountPath"] for m in override["containers"][0]["volumeMounts"]}
    assert {"/etc/kubetune", "/mnt/pvc/data", "/mnt/pvc/models"} <= mounts
    assert {v["name"] for v in override["volumes"]} >= {"spec", "tmp", "dshm"}


@pytest.mark.parametrize("engine", ["indexedJob", "jobSet", "trainJob"])
def test_every_engine_names_and_owns_its_children(ftj, engine):
    for child in children(gang_ftj(ftj, engine), 7):
        assert child["metadata"]["name"] == "support-bot-run-7"
        assert child["metadata"]["namespace"] == "ml"
        assert child["metadata"]["labels"] == run_labels(ftj, 7)
        assert child["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"


def test_trainjob_refuses_what_it_cannot_carry(ftj):
    ftj = gang_ftj(ftj, "trainJob")
    ftj["spec"]["envFrom"] = [{"secretRef": {"name": "s3-keys"}}]
    ftj["spec"]["activeDeadlineSeconds"] = 3600
    spec = FineTuneJobSpec.from_dict(ftj["spec"])
    problems = engine_problems(spec, engine_of(spec, SETTINGS), "support-bot-run-1")
    assert [p.split(" ")[0] for p in problems] == ["spec.envFrom", "spec.activeDeadlineSeconds"]
    assert engine_problems(spec, "jobSet", "support-bot-run-1") == []
    assert engine_problems(spec, "indexedJob", "support-bot-run-1") == []


@pytest.mark.parametrize(("engine", "longest"), [("indexedJob", 61), ("jobSet", 48), ("trainJob", 48)])
def test_gang_names_must_leave_room_for_pod_hostnames(ftj, engine, longest):
    """`<job>-<index>` (JobSet: `<jobset>-node-0-<index>` + the webhook's 6) must be a DNS label."""
    spec = FineTuneJobSpec.from_dict(gang_ftj(ftj, engine)["spec"])
    assert engine_problems(spec, engine, "j" * longest) == []
    (problem,) = engine_problems(spec, engine, "j" * (longest + 1))
    assert problem.startswith("metadata.name is too long for a 2-node run") and f"to {longest} " in problem
    assert engine_problems(FineTuneJobSpec.from_dict(ftj["spec"]), None, "j" * 63) == []  # one node: no hostname
