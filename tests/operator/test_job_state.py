"""Reading trainer Job status into FineTuneJob phase and conditions (pure)."""

from __future__ import annotations

import json

import pytest

from kubetune_operator import job_state
from kubetune_operator.conditions import get_condition, set_condition
from kubetune_operator.job_state import read_job, read_termination_result, status_for_run


@pytest.mark.parametrize(
    ("job", "phase", "reason"),
    [
        ({"spec": {}, "status": {}}, "Pending", "JobCreated"),
        ({"spec": {}, "status": {"active": 1}}, "Pending", "PodPending"),
        ({"spec": {}, "status": {"active": 1, "ready": 1}}, "Running", "TrainerRunning"),
        ({"spec": {}, "status": {"failed": 1}}, "Running", "TrainerRetrying"),
        ({"spec": {}, "status": {"succeeded": 1}}, "Running", "TrainerFinishing"),  # never back to Pending
        (
            {"spec": {}, "status": {"succeeded": 1, "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}},
            "Running",
            "TrainerFinishing",
        ),
        ({"spec": {"suspend": True}, "status": {}}, "Suspended", "JobSuspended"),
        (
            {"spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}},
            "Succeeded",
            "TrainingSucceeded",
        ),
        (
            {
                "spec": {},
                "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]},
            },
            "Failed",
            "BackoffLimitExceeded",
        ),
        (
            {"spec": {}, "status": {"conditions": [{"type": "Failed", "status": "False"}], "active": 1, "ready": 1}},
            "Running",
            "TrainerRunning",
        ),
    ],
)
def test_read_job(job, phase, reason):
    state = read_job(job)
    assert (state.phase, state.reason) == (phase, reason)


def test_termination_result_parsed():
    result = {"evalPassed": True, "metrics": {"evalLoss": 1.0}}
    pod = {"status": {"containerStatuses": [{"state": {"terminated": {"message": json.dumps(result)}}}]}}
    assert read_termination_result(pod) == result


@pytest.mark.parametrize("message", ["", "not json", "[1, 2]"])
def test_termination_result_ignores_garbage(message):
    pod = {"status": {"containerStatuses": [{"state": {"terminated": {"message": message}}}]}}
    assert read_termination_result(pod) is None


def test_status_for_success_sets_eval_condition_and_metrics():
    state = read_job({"spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}})
    result = {"evalPassed": False, "metrics": {"evalLoss": 2, "note": "x"}, "baseMetrics": {"evalLoss": 3}}
    patch = status_for_run({}, state, 3, "now", result)
    assert patch["phase"] == "Succeeded"
    assert patch["metrics"] == {"evalLoss": 2.0}
    assert patch["baseMetrics"] == {"evalLoss": 3.0}  # the base's numbers beside the tuned ones
    cond = get_condition(patch["conditions"], "EvalPassed")
    assert cond["status"] == "False" and cond["reason"] == "GatesFailed" and cond["observedGeneration"] == 3
    assert get_condition(patch["conditions"], "Succeeded")["status"] == "True"
    assert get_condition(patch["conditions"], "Running")["status"] == "False"


def test_status_for_running_has_no_completion_time():
    patch = status_for_run({}, read_job({"spec": {}, "status": {"active": 1, "ready": 1}}), 1, "now")
    assert "completionTime" not in patch
    assert "EvalPassed" not in {c["type"] for c in patch["conditions"]}


def test_condition_transition_time_moves_only_on_flip():
    c = set_condition([], "Running", True, "A", "", 1, "t0")
    c = set_condition(c, "Running", True, "B", "", 2, "t1")
    assert c[0]["lastTransitionTime"] == "t0" and c[0]["reason"] == "B" and c[0]["observedGeneration"] == 2
    c = set_condition(c, "Running", False, "C", "", 2, "t2")
    assert c[0]["lastTransitionTime"] == "t2"


COMPLETE = {"spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
BACKOFF = {
    "spec": {},
    "status": {
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
            }
        ]
    },
}


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        ("Pending", "Running", True),
        ("Running", "Pending", False),  # the late "JobCreated" event after the pod was seen running
        ("Running", "Succeeded", True),
        ("Pending", "Failed", True),
        ("Succeeded", "Running", False),
        ("Failed", "Pending", False),
        ("Succeeded", "Failed", False),  # a finished run stays finished
        ("Running", "Suspended", True),
        ("Suspended", "Pending", True),  # resume: the one way back
        ("Suspended", "Running", True),
        ("Succeeded", "Suspended", False),
        (None, "Pending", True),
    ],
)
def test_phase_only_moves_forward(current, new, allowed):
    assert job_state.moves_forward(current, new) is allowed


def test_a_late_pending_event_does_not_overwrite_running():
    running = status_for_run({}, read_job({"spec": {}, "status": {"active": 1, "ready": 1}}), 1, "t0")
    assert running["phase"] == "Running"
    late = status_for_run(running, read_job({"spec": {}, "status": {}}), 1, "t1")
    assert late == {}  # nothing to patch: the status keeps the newer news
    done = status_for_run(running, read_job(COMPLETE), 1, "t2")
    assert done["phase"] == "Succeeded"


def pod(message: str, finished: str, owner: str = "job-uid") -> dict:
    terminated = {"exitCode": 2, "message": message, "finishedAt": finished}
    return {
        "metadata": {"ownerReferences": [{"uid": owner}], "creationTimestamp": finished},
        "status": {"containerStatuses": [{"state": {"terminated": terminated}}]},
    }


def test_the_last_finished_pod_of_the_job_speaks():
    first = pod(json.dumps({"phase": "Failed", "message": "attempt 1"}), "2026-01-01T00:00:01Z")
    last = pod(json.dumps({"phase": "Failed", "message": "attempt 2"}), "2026-01-01T00:00:09Z")
    other = pod(json.dumps({"phase": "Succeeded", "message": "not ours"}), "2026-01-01T00:00:59Z", owner="x")
    assert job_state.latest_result([last, other, first], "job-uid")["message"] == "attempt 2"
    assert job_state.latest_result([other], "job-uid") is None
    crash = pod("Traceback (most recent call last):\n  ...\nMemoryError: out of memory\n", "2026-01-01T00:01:00Z")
    assert job_state.latest_result([first, crash], "job-uid") == {"message": "MemoryError: out of memory"}


def test_the_trainers_reason_and_message_reach_the_failed_condition():
    result = {
        "phase": "Failed",
        "reason": "InvalidData",
        "message": "d.jsonl: no rows left after cleaning (4 rows read; dropped: 4 empty; 0 kept)",
        "data": {"rowsRead": 4, "emptyDropped": 4, "rowsKept": 0},
    }
    state = job_state.with_trainer_result(read_job(BACKOFF), result)
    patch = status_for_run({"phase": "Running"}, state, 2, "now", result)
    assert patch["phase"] == "Failed" and patch["data"] == {"rowsRead": 4, "emptyDropped": 4, "rowsKept": 0}
    failed = get_condition(patch["conditions"], "Failed")
    assert failed["reason"] == "InvalidData"
    assert failed["message"].startswith("d.jsonl: no rows left after cleaning")
    assert failed["message"].endswith("(trainer Job: BackoffLimitExceeded)")
    assert patch["message"] == failed["message"]
    # Without a trainer result the Job's own words remain.
    assert job_state.with_trainer_result(read_job(BACKOFF), None).reason == "BackoffLimitExceeded"


@pytest.mark.parametrize(
    ("mode", "reported", "status", "reason", "eval_passed"),
    [
        ("gated", True, "True", "GatesPassed", True),
        ("gated", False, "False", "GatesFailed", False),
        ("gated", None, "Unknown", "NotEvaluated", None),
        # No gates: whatever the trainer says, nothing checked the model.
        ("noGates", True, "Unknown", "NoGates", None),
        ("noGates", None, "Unknown", "NoGates", None),
        ("ungated", None, "True", "Ungated", True),
    ],
)
def test_eval_passed_is_true_only_when_gates_passed_or_the_spec_opted_out(mode, reported, status, reason, eval_passed):
    result = {"phase": "Succeeded"} | ({} if reported is None else {"evalPassed": reported})
    patch = status_for_run({}, read_job(COMPLETE), 1, "now", result, mode)
    cond = get_condition(patch["conditions"], "EvalPassed")
    assert (cond["status"], cond["reason"], patch["evalPassed"]) == (status, reason, eval_passed)
    if mode == "noGates":
        assert "no evaluation gates" in cond["message"] and "requireGates: false" in cond["message"]


def test_the_trainers_tracking_result_becomes_status_tracking_and_tracking_degraded():
    done = read_job(COMPLETE)
    tracked = {"trackingUri": "http://m:5000", "runId": "r1", "registeredModel": "bot", "modelVersion": "4"}
    patch = status_for_run({}, done, 2, "t0", {"phase": "Succeeded", "tracking": tracked})
    assert patch["tracking"] == tracked
    cond = get_condition(patch["conditions"], "TrackingDegraded")
    assert (cond["status"], cond["reason"]) == ("False", "Tracked")

    warned = {"trackingUri": "http://m:5000", "warning": "MLflow at http://m:5000: starting the run failed"}
    patch = status_for_run({}, done, 2, "t0", {"phase": "Succeeded", "tracking": warned})
    assert patch["phase"] == "Succeeded" and patch["tracking"]["warning"] == warned["warning"]
    cond = get_condition(patch["conditions"], "TrackingDegraded")
    assert (cond["status"], cond["reason"], cond["message"]) == ("True", "TrackerUnavailable", warned["warning"])


def test_an_untracked_run_has_no_tracking_status_or_condition():
    patch = status_for_run({}, read_job(COMPLETE), 1, "t0", {"phase": "Succeeded"})
    assert "tracking" not in patch and get_condition(patch["conditions"], "TrackingDegraded") is None
