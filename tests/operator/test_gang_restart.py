"""The gang restart decision (engine indexedJob), case by case: pure, no cluster.

The Job controller's messages below are the ones the real one wrote in tests/k8s/test_gang_restart.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_operator import specs
from kubetune_operator.reconcile import gang_restart as g
from kubetune_operator.settings import Settings

NOW = "2026-12-03T11:00:00Z"
EXIT_2 = "Container trainer for pod ns/gang-run-1-0-abcde failed with exit code 2 matching FailJob rule at index 0"
EVICTED = "Pod ns/gang-run-1-1-fghij has condition DisruptionTarget matching FailJob rule at index 1"
BACKOFF = "Job has reached the specified backoff limit"


def job(uid: str = "u1", failed: tuple[str, str] | None = None, ready: int = 0) -> dict[str, Any]:
    conditions = [{"type": "Failed", "status": "True", "reason": failed[0], "message": failed[1]}] if failed else []
    return {
        "metadata": {"uid": uid, "name": "gang-run-1", "namespace": "ns"},
        "spec": {"completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0},
        "status": {"conditions": conditions, "ready": ready},
    }


def group(**kw: Any) -> dict[str, Any]:
    return {"nodes": 2, "engine": "indexedJob", "restarts": 0, "preemptions": 0, **kw}


def test_a_running_or_finished_gang_is_mirrored_as_for_one_node():
    assert g.decide(job(ready=2), group(), 3, NOW).action == g.MIRROR
    done = job()
    done["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    assert g.decide(done, group(), 3, NOW).action == g.MIRROR


def test_a_bad_config_exit_is_final_whatever_the_budget():
    step = g.decide(job(failed=("PodFailurePolicy", EXIT_2)), group(), 5, NOW)
    assert step.action == g.MIRROR and step.group is None


def test_running_out_of_time_is_final():
    step = g.decide(job(failed=("DeadlineExceeded", "Job was active longer than specified deadline")), group(), 5, NOW)
    assert step.action == g.MIRROR


def test_a_preemption_restarts_the_group_for_free_even_with_no_budget():
    step = g.decide(job(failed=("PodFailurePolicy", EVICTED)), group(restarts=2), 2, NOW)
    assert step.action == g.RESTART and step.reason == g.PREEMPTED
    assert step.group == {
        "preemptions": 1,
        "lastRestartReason": "Preempted",
        "lastRestartMessage": EVICTED,
        "restartingJob": "u1",
        "restartingSince": NOW,
    }
    assert "restarts" not in step.group  # the budget is untouched
    assert "preemption" in step.message and EVICTED in step.message


@pytest.mark.parametrize("reason,message", [("BackoffLimitExceeded", BACKOFF), ("PodFailurePolicy", "rule at index 7")])
def test_a_failed_pod_restarts_the_group_and_uses_one_of_backoff_limit(reason, message):
    step = g.decide(job(failed=(reason, message)), group(restarts=1), 3, NOW)
    assert step.action == g.RESTART and step.reason == g.POD_FAILED
    assert step.group is not None and step.group["restarts"] == 2 and "preemptions" not in step.group
    assert step.group["restartingJob"] == "u1" and step.group["lastRestartReason"] == "PodFailed"
    assert "restart 2 of spec.backoffLimit 3" in step.message


@pytest.mark.parametrize("restarts,limit", [(0, 0), (3, 3)])
def test_a_used_up_budget_fails_the_run_naming_backoff_limit(restarts, limit):
    step = g.decide(job(failed=("BackoffLimitExceeded", BACKOFF)), group(restarts=restarts), limit, NOW)
    assert step.action == g.FAIL and step.group is None
    assert f"{restarts} restart(s) of spec.backoffLimit {limit} used" in step.message


def test_a_recorded_restart_deletes_the_failed_job_again_without_counting_it_twice():
    marked = group(restarts=1, restartingJob="u1", restartingSince=NOW)
    step = g.decide(job("u1", failed=("BackoffLimitExceeded", BACKOFF)), marked, 3, NOW)
    assert step.action == g.DELETE and step.group is None


def test_a_restart_waits_until_no_pod_of_the_run_remains_then_creates_the_job():
    marked = group(restarts=1, restartingJob="u1", restartingSince=NOW)
    waiting = g.decide(None, marked, 3, NOW, pods_left=2)
    assert waiting.action == g.WAIT and "2 pod(s)" in waiting.message
    assert g.decide(None, marked, 3, NOW, pods_left=0).action == g.CREATE


def test_the_new_job_ends_the_restart():
    marked = group(restarts=1, restartingJob="u1", restartingSince=NOW)
    step = g.decide(job("u2"), marked, 3, NOW)
    assert step.action == g.SETTLED and step.group == {"restartingJob": None, "restartingSince": None}
    # and a failure of the new Job is a new restart, counted on top of the first
    step = g.decide(job("u2", failed=("BackoffLimitExceeded", BACKOFF)), group(restarts=1), 3, NOW)
    assert step.action == g.RESTART and step.group is not None and step.group["restarts"] == 2


def test_only_indexed_job_gangs_are_restarted_by_the_operator():
    def spec(nodes: int, engine: str | None = None) -> specs.FineTuneJobSpec:
        distributed: dict[str, Any] = {"backend": "gloo", **({"engine": engine} if engine else {})}
        return specs.FineTuneJobSpec.from_dict(
            {
                "baseModel": {"uri": "/m"},
                "dataset": {"uri": "/d.jsonl"},
                "output": {"uri": "/o"},
                "resources": {"nodes": nodes, "gpus": 0},
                "training": {"distributed": distributed},
            }
        )

    settings = Settings()
    assert g.applies(spec(2), settings, job()) and g.applies(spec(2, "indexedJob"), settings)
    assert not g.applies(spec(1), settings, job())
    assert not g.applies(spec(2, "jobSet"), settings) and not g.applies(spec(2, "trainJob"), settings)
    assert not g.applies(spec(2), Settings(training_engine="jobSet"))
    plain = job()
    del plain["spec"]["completionMode"]  # a one-pod Job: the Job controller's own backoffLimit retries it
    assert not g.applies(spec(2), settings, plain)
    assert g.initial_group(spec(1), settings) is None
    assert g.initial_group(spec(2), settings) == {
        "nodes": 2,
        "engine": "indexedJob",
        "readyPods": 0,
        "restarts": 0,
        "preemptions": 0,
        "lastRestartReason": None,
        "lastRestartMessage": None,
        "restartingJob": None,
        "restartingSince": None,
    }


def test_the_rule_index_is_read_from_the_job_controllers_message():
    assert g.failed_rule("PodFailurePolicy", EXIT_2) == 0
    assert g.failed_rule("PodFailurePolicy", EVICTED) == 1
    assert g.failed_rule("BackoffLimitExceeded", "matching FailJob rule at index 1") is None
    assert g.failed_rule("PodFailurePolicy", "something else") is None


def test_group_patch_writes_only_changes():
    assert g.group_patch(group(readyPods=1), {"readyPods": 2}) == {"readyPods": 2}
    assert g.group_patch(group(readyPods=2), {"readyPods": 2}) is None
    assert g.group_patch(None, {"readyPods": 0}) == {"readyPods": 0}
