"""The gang restart of engine indexedJob, against the real Job controller: a failed pod restarts the whole
group (counted against spec.backoffLimit), an eviction restarts it for free, a bad-config exit and a
used-up budget fail the run.

The gang Job is made here from build_trainer_job's output, shaped as the operator's gang builder shapes
it (Indexed, completions = parallelism = 2, backoffLimit 0, FailJob on exit 2 and on DisruptionTarget),
and put in place of the Job the operator created (whose pods wait for a Node that does not exist). Its
pods are sleeping processes run by the local executor: the test kills one (exit 137), evicts one
(SIGTERM, 143) or has one exit 2, and the real Job controller decides that the Job failed and why.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kubetune_operator.builders.trainer_job import build_trainer_job
from kubetune_operator.settings import Settings
from kubetune_operator.specs import FineTuneJobSpec
from tests.k8s.conftest import wait_for

NODE = "local-gang"
INDEX = "batch.kubernetes.io/job-completion-index"
# Each pod's process writes its pid under the pod's name (its scratch folder is named after the pod), and
# exits 2 on SIGUSR1: the trainer's status for a bad spec.
SLEEPER = (
    "import os, pathlib, signal, sys, time\n"
    "signal.signal(signal.SIGUSR1, lambda *_: os._exit(2))\n"
    "pod = pathlib.Path(os.environ['KUBETUNE_CACHE']).parent.name\n"
    "(pathlib.Path(sys.argv[1]) / pod).write_text(str(os.getpid()))\n"
    "print('up', flush=True)\n"
    "time.sleep(600)\n"
)


def create_ftj(k8s: Any, name: str, tmp: Path, backoff_limit: int) -> None:
    k8s.create_ftj(
        name,
        {
            "baseModel": {"uri": str(tmp / "model")},
            "dataset": {"uri": str(tmp / "data.jsonl")},
            "output": {"uri": str(tmp / "out")},
            "backoffLimit": backoff_limit,
            # The operator's own Job waits for this Node forever; the test's gang Job runs on NODE.
            "resources": {"nodes": 2, "gpus": 0, "nodeSelector": {"kubernetes.io/hostname": "nowhere"}},
            "training": {"distributed": {"backend": "gloo"}},
        },
    )


def job_uid(k8s: Any, name: str) -> str | None:
    try:
        return str(k8s.batch.read_namespaced_job(name, k8s.ns).metadata.uid)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def put_gang_in_place(k8s: Any, name: str, pids: Path) -> str:
    """Replace the run's Job (the operator's) by a gang Job of two sleepers; its uid."""
    job_name = f"{name}-run-1"
    wait_for(lambda: job_uid(k8s, job_name), 60, f"the operator's Job {job_name}")
    k8s.batch.delete_namespaced_job(job_name, k8s.ns, propagation_policy="Background")
    wait_for(lambda: job_uid(k8s, job_name) is None, 30, "the operator's Job to be gone")
    ftj = k8s.get_ftj(name)
    job = build_trainer_job(FineTuneJobSpec.from_dict(ftj["spec"]), ftj, 1, Settings())
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    spec.update({"completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0})
    spec["podFailurePolicy"]["rules"][1]["action"] = "FailJob"  # rule 0 (exit 2) is FailJob already
    pod.update({"subdomain": job_name, "nodeSelector": {"kubernetes.io/hostname": NODE}})
    pod["terminationGracePeriodSeconds"] = 5
    pod["containers"][0]["command"] = ["python", "-c", SLEEPER, str(pids)]
    for stale in pids.iterdir():
        stale.unlink()
    return str(k8s.batch.create_namespaced_job(k8s.ns, job).metadata.uid)


def gang_pods(k8s: Any, uid: str, pids: Path) -> dict[int, tuple[str, int]]:
    """Completion index -> (pod name, pid) once both pods' processes are up."""

    def up() -> dict[int, tuple[str, int]] | None:
        pods = k8s.core.list_namespaced_pod(k8s.ns, label_selector=f"batch.kubernetes.io/controller-uid={uid}").items
        found = {int(p.metadata.annotations[INDEX]): p.metadata.name for p in pods}
        if len(found) != 2 or not all((pids / n).exists() for n in found.values()):
            return None
        return {i: (n, int((pids / n).read_text())) for i, n in found.items()}

    result: dict[int, tuple[str, int]] = wait_for(up, 60, "both gang pods' processes")
    return result


def group_of(k8s: Any, name: str) -> dict[str, Any]:
    return dict(k8s.get_ftj(name).get("status", {}).get("group") or {})


def restarted(k8s: Any, name: str, old_uid: str) -> str:
    """The uid of the Job the operator created again, once the restart is over."""

    def done() -> str | None:
        uid = job_uid(k8s, f"{name}-run-1")
        group = group_of(k8s, name)
        return uid if uid not in (None, old_uid) and not group.get("restartingJob") else None

    new_uid: str = wait_for(done, 60, "the group to be restarted")
    # It was created only once no pod of the failed Job was left.
    left = k8s.core.list_namespaced_pod(k8s.ns, label_selector=f"batch.kubernetes.io/controller-uid={old_uid}")
    assert not left.items, [p.metadata.name for p in left.items]
    return new_uid


def reasons(k8s: Any, name: str) -> list[str]:
    return [e.reason for e in k8s.events_for(name)]


@pytest.fixture
def pids(tmp_path: Path) -> Path:
    folder = tmp_path / "pids"
    folder.mkdir()
    return folder


def test_a_killed_pod_restarts_the_group_until_backoff_limit_is_used_up(k8s, operator, executor, pids, tmp_path):
    create_ftj(k8s, "killed", tmp_path, backoff_limit=1)
    first = put_gang_in_place(k8s, "killed", pids)
    victim = gang_pods(k8s, first, pids)[1][1]
    wait_for(lambda: group_of(k8s, "killed").get("readyPods") == 2, 30, "status.group to show both pods ready")
    os.kill(victim, signal.SIGKILL)

    restarted(k8s, "killed", first)
    group = group_of(k8s, "killed")
    print("Job controller, killed pod:", group["lastRestartMessage"], file=sys.stderr)
    assert group["restarts"] == 1 and group["preemptions"] == 0 and group["lastRestartReason"] == "PodFailed"
    assert group["nodes"] == 2 and group["engine"] == "indexedJob"
    assert group["lastRestartMessage"] == "Job has reached the specified backoff limit"
    assert {"GroupRestarting", "GroupRestarted"} <= set(reasons(k8s, "killed"))

    # The budget is spent: the next failure fails the run, and the failed Job stays for a person to read.
    second = put_gang_in_place(k8s, "killed", pids)
    os.kill(gang_pods(k8s, second, pids)[0][1], signal.SIGKILL)
    status = wait_for(
        lambda: (s := k8s.get_ftj("killed").get("status", {})).get("phase") == "Failed" and s, 60, "the run to fail"
    )
    assert "1 restart(s) of spec.backoffLimit 1 used" in status["message"], status["message"]
    assert status["group"]["restarts"] == 1
    assert job_uid(k8s, "killed-run-1") == second


def test_an_eviction_restarts_the_group_for_free_and_a_bad_config_exit_is_final(
    k8s, operator, executor, pids, tmp_path
):
    create_ftj(k8s, "evicted", tmp_path, backoff_limit=2)
    first = put_gang_in_place(k8s, "evicted", pids)
    victim = gang_pods(k8s, first, pids)[0][0]
    k8s.core.create_namespaced_pod_eviction(victim, k8s.ns, {"metadata": {"name": victim, "namespace": k8s.ns}})

    restarted(k8s, "evicted", first)
    group = group_of(k8s, "evicted")
    print("Job controller, evicted pod:", group["lastRestartMessage"], file=sys.stderr)
    assert group["preemptions"] == 1 and group["restarts"] == 0 and group["lastRestartReason"] == "Preempted"
    expected = f"Pod {k8s.ns}/{victim} has condition DisruptionTarget matching FailJob rule at index 1"
    assert group["lastRestartMessage"] == expected

    # Exit 2 (a bad spec or bad data) is final, with two restarts still to spare.
    second = put_gang_in_place(k8s, "evicted", pids)
    bad, pid = gang_pods(k8s, second, pids)[1]
    os.kill(pid, signal.SIGUSR1)
    status = wait_for(
        lambda: (s := k8s.get_ftj("evicted").get("status", {})).get("phase") == "Failed" and s, 60, "the run to fail"
    )
    failed = next(
        c for c in k8s.batch.read_namespaced_job("evicted-run-1", k8s.ns).status.conditions if c.type == "Failed"
    )
    print("Job controller, exit 2:", failed.reason, failed.message, file=sys.stderr)
    assert failed.reason == "PodFailurePolicy"
    assert (
        failed.message
        == f"Container trainer for pod {k8s.ns}/{bad} failed with exit code 2 matching FailJob rule at index 0"
    )
    assert status["group"]["restarts"] == 0 and status["group"]["preemptions"] == 1
    assert job_uid(k8s, "evicted-run-1") == second


def test_a_restart_recorded_before_an_operator_crash_is_finished_and_not_counted_twice(
    k8s, operator, executor, pids, tmp_path
):
    create_ftj(k8s, "crashed", tmp_path, backoff_limit=1)
    first = put_gang_in_place(k8s, "crashed", pids)
    pid = gang_pods(k8s, first, pids)[0][1]
    operator.kill()  # SIGKILL: the operator is gone while the gang fails
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: any(
            c.type == "Failed" for c in k8s.batch.read_namespaced_job("crashed-run-1", k8s.ns).status.conditions or []
        ),
        60,
        "the Job controller to fail the gang Job",
    )
    # What the operator writes before it deletes anything, as if it had died right after writing it.
    marker = {
        "restarts": 1,
        "lastRestartReason": "PodFailed",
        "restartingJob": first,
        "restartingSince": "2026-01-01T00:00:00Z",
    }
    k8s.custom.patch_namespaced_custom_object_status(
        "kubetune.io", "v1alpha1", k8s.ns, "finetunejobs", "crashed", {"status": {"group": marker}}
    )
    operator.start()

    restarted(k8s, "crashed", first)
    group = group_of(k8s, "crashed")
    assert group["restarts"] == 1 and group["preemptions"] == 0  # the one restart, counted once
    assert k8s.get_ftj("crashed")["status"]["phase"] != "Failed"
