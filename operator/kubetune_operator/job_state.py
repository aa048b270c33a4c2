"""What a trainer Job's status means for its FineTuneJob: a pure reading, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubetune_operator.conditions import set_condition

PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED = "Pending", "Running", "Succeeded", "Failed", "Suspended"
TERMINAL = (SUCCEEDED, FAILED)


@dataclass(frozen=True)
class RunState:
    phase: str
    reason: str
    message: str
    start_time: str | None = None
    completion_time: str | None = None


def read_job(job: dict[str, Any]) -> RunState:
    """Phase of a run from its Job.

    >>> read_job({"spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}).phase
    'Succeeded'
    """
    status = job.get("status") or {}
    start, end = status.get("startTime"), status.get("completionTime")
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return RunState(SUCCEEDED, "TrainingSucceeded", "the trainer finished successfully", start, end)
        if cond.get("type") == "Failed":
            reason = cond.get("reason") or "JobFailed"
            message = cond.get("message") or "the trainer Job failed"
            return RunState(FAILED, reason, message, start, cond.get("lastTransitionTime"))
    if (job.get("spec") or {}).get("suspend") and not status.get("active"):
        return RunState(SUSPENDED, "JobSuspended", "spec.suspend is true: the run is paused", start)
    if status.get("ready"):
        return RunState(RUNNING, "TrainerRunning", "the trainer pod is running", start)
    if status.get("active"):
        return RunState(PENDING, "PodPending", "the trainer pod is waiting to be scheduled or to start", start)
    if status.get("succeeded"):
        # The pod is done but the Job has not written Complete yet (SuccessCriteriaMet comes first).
        return RunState(RUNNING, "TrainerFinishing", "the trainer exited; the Job is completing", start)
    if status.get("failed"):
        failed = status["failed"]
        return RunState(RUNNING, "TrainerRetrying", f"{failed} trainer pod(s) failed; the Job retries", start)
    return RunState(PENDING, "JobCreated", "the trainer Job was created", start)


WAITING_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError")


def read_pod_blocker(pod: dict[str, Any]) -> tuple[str, str] | None:
    """Why a trainer pod cannot start, in words a user can act on (None when nothing blocks it).

    >>> read_pod_blocker({"status": {"conditions": [
    ...     {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}]}})
    ('Unschedulable', 'the trainer pod cannot be scheduled: 0/3 nodes')
    """
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return "Unschedulable", f"the trainer pod cannot be scheduled: {cond.get('message', '')}"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_REASONS:
            return str(waiting["reason"]), f"the trainer container cannot start: {waiting.get('message', '')}"
    return None


def read_termination_result(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer's result JSON from its container's termination message, if it wrote one."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        message = ((cs.get("state") or {}).get("terminated") or {}).get("message")
        if not message:
            continue
        try:
            result = json.loads(message)
        except ValueError:
            return None
        return result if isinstance(result, dict) else None
    return None


def status_for_run(
    current: dict[str, Any], state: RunState, generation: int, now: str, result: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Status patch that mirrors `state` into the FineTuneJob, keeping conditions in shape."""
    conditions = current.get("conditions") or []
    for type_, reason_when_false in (
        (RUNNING, "NotRunning"),
        (SUCCEEDED, "NotSucceeded"),
        (FAILED, "NotFailed"),
        (SUSPENDED, "NotSuspended"),
    ):
        on = state.phase == type_
        conditions = set_condition(
            conditions,
            type_,
            on,
            state.reason if on else reason_when_false,
            state.message if on else "",
            generation,
            now,
        )
    patch: dict[str, Any] = {"phase": state.phase, "message": state.message, "observedGeneration": generation}
    if state.start_time:
        patch["startTime"] = state.start_time
    if state.phase in TERMINAL:
        patch["completionTime"] = state.completion_time or now
    result = result or {}
    if result.get("metrics"):
        patch["metrics"] = {k: float(v) for k, v in result["metrics"].items() if isinstance(v, int | float)}
    if result.get("artifact"):
        patch["artifact"] = result["artifact"]
    eval_passed = result.get("evalPassed", current.get("evalPassed"))
    if state.phase == SUCCEEDED:
        if eval_passed is None:
            conditions = set_condition(
                conditions, "EvalPassed", None, "NotEvaluated", "no evaluation gates result", generation, now
            )
        else:
            conditions = set_condition(
                conditions,
                "EvalPassed",
                bool(eval_passed),
                "GatesPassed" if eval_passed else "GatesFailed",
                "evaluation gates passed" if eval_passed else "evaluation gates failed; see status.metrics",
                generation,
                now,
            )
        patch["evalPassed"] = eval_passed
    patch["conditions"] = conditions
    return patch
