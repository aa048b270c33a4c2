"""The FineTuneJob controller against the real apiserver, controller-manager, scheduler and kwok.

kwok plays the kubelet: the trainer image's tag decides whether a pod succeeds (with a result
termination message), fails or hangs (dev/kubetune_dev/kwok/stages.yaml).
"""

from __future__ import annotations

import random
import signal
import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.k8s.conftest import wait_for

SUCCEED, FAIL, HANG = (f"kubetune.test/trainer:kwok-{tag}" for tag in ("succeed", "fail", "hang"))


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "baseModel": {"name": "org/tiny-llama"},
        # Absolute paths, not pvc://: an unbound claim would (rightly) keep the pod unschedulable.
        "dataset": {"uri": "/data/support.jsonl"},
        "output": {"uri": "/models/support"},
        "image": SUCCEED,
        "backoffLimit": 0,
    }
    base.update(overrides)
    return base


def phase_is(k8s, name: str, *phases: str):
    def check():
        status = k8s.get_ftj(name).get("status") or {}
        return status if status.get("phase") in phases else None

    return check


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_finetunejob_runs_a_trainer_job_and_mirrors_success(k8s, operator):
    k8s.core.create_namespaced_secret(k8s.ns, {"metadata": {"name": "hf"}, "stringData": {"token": "s3cr3t-token"}})
    ftj = k8s.create_ftj(
        "support",
        spec(
            baseModel={"name": "org/tiny-llama", "tokenSecretRef": {"name": "hf"}},
            evaluation={"gates": {"maxPerplexity": 10}},
            resources={
                "gpus": 2,
                "memory": "32Gi",
                "nodeSelector": {"nvidia.com/gpu.present": "true"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
        ),
    )
    job = wait_for(lambda: k8s.batch.read_namespaced_job("support-run-1", k8s.ns), 30, "the trainer Job")
    pod = job.spec.template.spec
    trainer = pod.containers[0]
    assert trainer.image == SUCCEED
    assert trainer.resources.limits == {"nvidia.com/gpu": "2", "memory": "32Gi"}
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert pod.tolerations[0].key == "nvidia.com/gpu"
    assert pod.service_account_name == "kubetune-trainer"
    env = {e.name: e for e in trainer.env}
    assert env["HF_TOKEN"].value is None and env["HF_TOKEN"].value_from.secret_key_ref.name == "hf"
    owner = job.metadata.owner_references[0]
    assert (owner.kind, owner.uid, owner.controller) == ("FineTuneJob", ftj["metadata"]["uid"], True)
    cm = k8s.core.read_namespaced_config_map("support-run-1-spec", k8s.ns)
    assert "tiny-llama" in cm.data["finetunejob.yaml"]

    # kwok schedules the pod on the fake GPU node and completes it with a result message.
    status = wait_for(phase_is(k8s, "support", "Succeeded"), 60, "phase Succeeded")
    assert status["run"] == 1 and status["jobName"] == "support-run-1"
    assert status["observedGeneration"] == 1
    assert condition(status, "Succeeded")["status"] == "True"
    assert condition(status, "Running")["status"] == "False"
    assert condition(status, "EvalPassed") | {"lastTransitionTime": None} == {
        "type": "EvalPassed",
        "status": "True",
        "reason": "GatesPassed",
        "message": "evaluation gates passed",
        "observedGeneration": 1,
        "lastTransitionTime": None,
    }
    assert status["metrics"] == {"evalLoss": 1.25, "perplexity": 3.49}
    assert status["baseMetrics"] == {"evalLoss": 2.5, "perplexity": 12.18}  # the base beside the tuned
    assert status["artifact"]["uri"] == "/models/out/run-1"
    assert status["startTime"] and status["completionTime"]
    reasons = wait_for(
        lambda: (
            {e.reason for e in k8s.events_for("support")} >= {"Created", "TrainingSucceeded"}
            and {e.reason for e in k8s.events_for("support")}
        ),
        10,
        "events",
    )
    assert "Created" in reasons
    # Secrets go by reference only: nothing the operator wrote carries the token.
    everything = str(k8s.get_ftj("support")) + str([e.message for e in k8s.events_for("support")])
    assert "s3cr3t-token" not in everything


def test_failed_trainer_marks_the_finetunejob_failed(k8s, operator):
    k8s.create_ftj("broken", spec(image=FAIL))
    status = wait_for(phase_is(k8s, "broken", "Failed"), 60, "phase Failed")
    failed = condition(status, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    # The pod's plain-text termination message is what the trainer said: it reaches the status.
    assert failed["message"].startswith("config error: dataset is empty after cleaning"), failed
    assert status["message"] == failed["message"]
    wait_for(lambda: any(e.type == "Warning" for e in k8s.events_for("broken")), 10, "a Warning event")


def test_spec_change_after_success_starts_a_new_run(k8s, operator):
    k8s.create_ftj("retrain", spec())
    wait_for(phase_is(k8s, "retrain", "Succeeded"), 60, "run 1 Succeeded")
    k8s.patch_ftj("retrain", {"training": {"learningRate": 0.0001}})
    status = wait_for(lambda: (k8s.get_ftj("retrain").get("status") or {}).get("run") == 2, 30, "run 2")
    status = wait_for(phase_is(k8s, "retrain", "Succeeded"), 60, "run 2 Succeeded")
    assert status["run"] == 2 and status["jobName"] == "retrain-run-2" and status["observedGeneration"] == 2
    names = sorted(j.metadata.name for j in k8s.jobs())
    assert names == ["retrain-run-1", "retrain-run-2"]  # the finished run is kept for its history


def test_spec_change_while_running_replaces_the_run(k8s, operator):
    k8s.create_ftj("live", spec(image=HANG))
    wait_for(phase_is(k8s, "live", "Running"), 60, "run 1 Running")
    k8s.patch_ftj("live", {"image": SUCCEED})
    status = wait_for(phase_is(k8s, "live", "Succeeded"), 90, "run 2 Succeeded")
    assert status["run"] == 2
    wait_for(lambda: [j.metadata.name for j in k8s.jobs()] == ["live-run-2"], 30, "run 1's Job deleted")
    assert any(e.reason == "RunReplaced" for e in k8s.events_for("live"))


def test_suspend_pauses_the_same_run_and_resume_continues_it(k8s, operator):
    k8s.create_ftj("pausable", spec(image=HANG))
    wait_for(phase_is(k8s, "pausable", "Running"), 60, "Running")
    k8s.patch_ftj("pausable", {"suspend": True})
    status = wait_for(phase_is(k8s, "pausable", "Suspended"), 60, "Suspended")
    assert status["run"] == 1
    assert k8s.batch.read_namespaced_job("pausable-run-1", k8s.ns).spec.suspend is True
    assert condition(status, "Suspended")["status"] == "True"
    k8s.patch_ftj("pausable", {"suspend": False})
    status = wait_for(phase_is(k8s, "pausable", "Running"), 60, "Running again")
    assert status["run"] == 1 and len(k8s.jobs()) == 1


def test_created_suspended_starts_nothing_until_resumed(k8s, operator):
    k8s.create_ftj("later", spec(suspend=True))
    status = wait_for(phase_is(k8s, "later", "Suspended"), 30, "Suspended")
    assert status["run"] == 1
    time.sleep(3)
    assert k8s.core.list_namespaced_pod(k8s.ns).items == []
    k8s.patch_ftj("later", {"suspend": False})
    wait_for(phase_is(k8s, "later", "Succeeded"), 60, "Succeeded after resume")


@pytest.mark.parametrize(
    ("name", "overrides", "reason", "fragment"),
    [
        ("badcron", {"schedule": "61 * * * *"}, "InvalidSpec", "not a valid cron expression"),
        # qlora on zero GPUs is a CEL rule now: the bad-spec table (tests/support/bad_specs.py) has it.
        (
            "badaffinity",
            {
                "resources": {
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Sometimes"}]}]
                            }
                        }
                    }
                }
            },
            "JobRejected",
            'operator: Invalid value: "Sometimes"',
        ),
    ],
)
def test_what_the_schema_cannot_check_fails_with_a_reason(k8s, operator, name, overrides, reason, fragment):
    k8s.create_ftj(name, spec(**overrides))
    status = wait_for(phase_is(k8s, name, "Failed"), 30, "phase Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == reason and fragment in failed["message"], failed
    assert k8s.jobs() == []
    time.sleep(3)  # no crash loop, no retry storm: one Warning event, the operator still alive
    assert [e.reason for e in k8s.events_for(name) if e.type == "Warning"] == [reason]
    assert operator.alive()


def test_fixing_an_invalid_spec_starts_the_run(k8s, operator):
    k8s.create_ftj("fixme", spec(schedule="61 * * * *"))
    wait_for(phase_is(k8s, "fixme", "Failed"), 30, "Failed")
    k8s.patch_ftj("fixme", {"schedule": None})
    status = wait_for(phase_is(k8s, "fixme", "Succeeded"), 60, "Succeeded after the fix")
    assert status["run"] == 1


def test_deleting_the_finetunejob_garbage_collects_its_children(k8s, operator):
    k8s.create_ftj("gone", spec(image=HANG))
    wait_for(phase_is(k8s, "gone", "Running"), 60, "Running")
    k8s.custom.delete_namespaced_custom_object("kubetune.io", "v1alpha1", k8s.ns, "finetunejobs", "gone")
    wait_for(lambda: k8s.jobs() == [], 60, "the Job garbage-collected")
    selector = "kubetune.io/finetunejob=gone"
    wait_for(
        lambda: k8s.core.list_namespaced_config_map(k8s.ns, label_selector=selector).items == [],
        30,
        "the ConfigMap garbage-collected",
    )
    wait_for(lambda: k8s.core.list_namespaced_pod(k8s.ns).items == [], 60, "pods gone")


def test_operator_killed_at_random_moments_converges_without_duplicates(k8s, operator):
    rng = random.Random(7)
    names = [f"crash-{i}" for i in range(6)]
    for i, name in enumerate(names):
        k8s.create_ftj(name, spec(image=SUCCEED if i % 2 else HANG, output={"uri": f"/models/{name}"}))
        if i % 2 == 0:
            # SIGKILL mid-flight: no chance to finish a handler, write status or clean up.
            time.sleep(rng.uniform(0.0, 1.5))
            operator.kill(signal.SIGKILL)
            operator.start()
    time.sleep(rng.uniform(0.5, 2.0))
    operator.kill(signal.SIGKILL)
    # While the operator is down, kwok finishes the SUCCEED pods: the news must not be lost.
    time.sleep(4)
    operator.start()
    for i, name in enumerate(names):
        expected = "Succeeded" if i % 2 else "Running"
        status = wait_for(phase_is(k8s, name, expected), 90, f"{name} {expected}")
        assert status["run"] == 1, (name, status)
    jobs = sorted(j.metadata.name for j in k8s.jobs())
    assert jobs == sorted(f"{n}-run-1" for n in names)
    for name in names:
        pods = k8s.core.list_namespaced_pod(k8s.ns, label_selector=f"kubetune.io/finetunejob={name}").items
        assert len(pods) == 1, (name, [p.metadata.name for p in pods])


@pytest.mark.slow
def test_cron_schedule_starts_new_runs(k8s, operator):
    k8s.create_ftj("nightly", spec(schedule="* * * * *"))
    wait_for(phase_is(k8s, "nightly", "Succeeded"), 60, "run 1 Succeeded")

    # The next minute boundary starts run 2 without any spec change.
    def run_two():
        status = k8s.get_ftj("nightly").get("status") or {}
        return status if status.get("run") == 2 else None

    status = wait_for(run_two, 80, "run 2")
    assert status["lastScheduleTime"]
    # The event is posted right after the status patch that starts the run, so it may trail it.
    wait_for(lambda: any(e.reason == "Scheduled" for e in k8s.events_for("nightly")), 15, "a Scheduled event")
    wait_for(phase_is(k8s, "nightly", "Succeeded"), 60, "run 2 Succeeded")
    assert k8s.get_ftj("nightly")["metadata"]["generation"] == 1


def test_status_subresource_rejects_unknown_phase(k8s, operator):
    k8s.create_ftj("guarded", spec(suspend=True))
    wait_for(phase_is(k8s, "guarded", "Suspended"), 30, "Suspended")
    with pytest.raises(ApiException) as err:
        k8s.custom.patch_namespaced_custom_object_status(
            "kubetune.io", "v1alpha1", k8s.ns, "finetunejobs", "guarded", {"status": {"phase": "Exploded"}}
        )
    assert err.value.status == 422


def test_a_pod_that_cannot_be_scheduled_is_explained_in_the_status(k8s, operator):
    k8s.create_ftj("stuck", spec(dataset={"uri": "pvc://missing-claim/support.jsonl"}))
    status = wait_for(
        lambda: (
            (st := k8s.get_ftj("stuck").get("status") or {}).get("message", "").startswith("the trainer pod cannot")
            and st
        ),
        30,
        "the scheduling problem in the status",
    )
    assert status["phase"] == "Pending" and 'persistentvolumeclaim "missing-claim" not found' in status["message"]
    assert condition(status, "Running")["reason"] == "Unschedulable"
    assert any(e.reason == "Unschedulable" and e.type == "Warning" for e in k8s.events_for("stuck"))
