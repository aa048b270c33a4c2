"""Reading trainer Job status into FineTuneJob phase and conditions (pure)."""

from __future__ import annotations

import json

import pytest

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
    patch = status_for_run({}, state, 3, "now", {"evalPassed": False, "metrics": {"evalLoss": 2, "note": "x"}})
    assert patch["phase"] == "Succeeded"
    assert patch["metrics"] == {"evalLoss": 2.0}
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
