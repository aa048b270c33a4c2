"""What a trainer Job's status means for its FineTuneJob: a pure reading, no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from kubetune_operator import lineage
from kubetune_operator.conditions import set_condition

PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED = "Pending", "Running", "Succeeded", "Failed", "Suspended"
# A run that found nothing new to train on (spec.dataset.captures): it ends, trains nothing, keeps the artifact.
SKIPPED = "Skipped"
TERMINAL = (SUCCEEDED, FAILED, SKIPPED)
# Within one run a phase only moves forward; Suspended sits beside the line (see `moves_forward`).
RANK = {PENDING: 0, RUNNING: 1, SUCCEEDED: 2, FAILED: 2, SKIPPED: 2}
# How a run's evaluation decides EvalPassed (FineTuneJobSpec.gate_mode): its gates, nothing, or an opt-out.
GATED, NO_GATES, UNGATED = "gated", "noGates", "ungated"


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


def moves_forward(current: str | None, new: str) -> bool:
    """Whether news of phase `new` may replace `current` within the same run.

    Pending -> Running -> Succeeded | Failed, never back: a late event must not undo newer news. A
    finished run stays finished. Suspended is the one way back: suspending a live run and resuming a
    suspended one (Suspended -> Pending -> Running) are both moves the user asked for.

    >>> moves_forward("Running", "Pending"), moves_forward("Pending", "Running"), moves_forward("Failed", "Running")
    (False, True, False)
    >>> moves_forward("Running", "Suspended"), moves_forward("Suspended", "Pending")
    (True, True)
    """
    if current is None or current == new:
        return True
    if current in TERMINAL:
        return False
    if SUSPENDED in (current, new):
        return True
    return RANK.get(new, 0) >= RANK.get(current, 0)


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


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            return dict(terminated)
    return {}


def latest_result(pods: list[dict[str, Any]], job_uid: str) -> dict[str, Any] | None:
    """What the last finished pod of the Job with `job_uid` said: its result JSON, or for a plain-text
    termination message (a crash, a log tail) {"message": its last line}. Pods of other Jobs are ignored.

    >>> pod = {"metadata": {"ownerReferences": [{"uid": "j1"}]},
    ...        "status": {"containerStatuses": [{"state": {"terminated": {"message": "boom\\nOSError: disk"}}}]}}
    >>> latest_result([pod], "j1"), latest_result([pod], "other")
    ({'message': 'OSError: disk'}, None)
    """
    ours = [
        p
        for p in pods
        if any(o.get("uid") == job_uid for o in (p.get("metadata") or {}).get("ownerReferences") or [])
        and _terminated(p)
    ]
    ours.sort(key=lambda p: (str(_terminated(p).get("finishedAt") or ""), str(p["metadata"].get("creationTimestamp"))))
    for pod in reversed(ours):
        result = read_termination_result(pod)
        if result is not None:
            return result
        lines = [line.strip() for line in str(_terminated(pod).get("message") or "").splitlines() if line.strip()]
        if lines:
            return {"message": lines[-1][:1000]}
    return None


def with_trainer_result(state: RunState, result: dict[str, Any] | None) -> RunState:
    """A failed run says what the trainer said (its reason and message), not only why the Job gave up; a
    completed Job whose trainer skipped the run (nothing new to train on) is a Skipped run.

    >>> done = RunState(SUCCEEDED, "TrainingSucceeded", "the trainer finished successfully")
    >>> s = with_trainer_result(done, {"phase": "Skipped", "reason": "NoNewData", "message": "no new rows"})
    >>> s.phase, s.reason, s.message
    ('Skipped', 'NoNewData', 'no new rows')

    >>> failed = RunState(FAILED, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    >>> s = with_trainer_result(failed, {"phase": "Failed", "reason": "InvalidData", "message": "d.jsonl: no rows"})
    >>> s.reason, s.message
    ('InvalidData', 'd.jsonl: no rows (trainer Job: BackoffLimitExceeded)')
    """
    if state.phase == SUCCEEDED and result and result.get("phase") == SKIPPED:
        message = str(result.get("message") or "the trainer found nothing new to train on")
        return replace(state, phase=SKIPPED, reason=str(result.get("reason") or "NoNewData"), message=message)
    if state.phase != FAILED or not result or result.get("phase") == SUCCEEDED or not result.get("message"):
        return state
    return replace(
        state,
        reason=str(result.get("reason") or state.reason),
        message=f"{result['message']} (trainer Job: {state.reason})",
    )


def status_for_run(
    current: dict[str, Any],
    state: RunState,
    generation: int,
    now: str,
    result: dict[str, Any] | None = None,
    gate_mode: str = GATED,
) -> dict[str, Any]:
    """Status patch that mirrors `state` into the FineTuneJob, keeping conditions in shape.

    Empty when `state` is older news than the phase the status already shows (`moves_forward`).
    """
    if not moves_forward(current.get("phase"), state.phase):
        return {}
    conditions = current.get("conditions") or []
    types = [(RUNNING, "NotRunning"), (SUCCEEDED, "NotSucceeded"), (FAILED, "NotFailed"), (SUSPENDED, "NotSuspended")]
    if state.phase == SKIPPED or any(c.get("type") == SKIPPED for c in conditions):
        types.append((SKIPPED, "NotSkipped"))  # only FineTuneJobs that ever skipped a run carry it
    for type_, reason_when_false in types:
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
    for key in ("metrics", "baseMetrics"):  # the tuned model's numbers, and the base's beside them
        if isinstance(result.get(key), dict) and result[key]:
            patch[key] = {k: float(v) for k, v in result[key].items() if isinstance(v, int | float)}
    if result.get("artifact"):
        patch["artifact"] = result["artifact"]
    if isinstance(result.get("data"), dict):
        patch["data"] = _data_counts(result["data"])
    if isinstance(result.get("lineage"), dict):
        patch["lineage"] = lineage.with_result(current.get("lineage"), result["lineage"])
    judge = _judge_status(result["judge"]) if isinstance(result.get("judge"), dict) else None
    if judge is not None:
        patch["judge"] = judge
    if isinstance(result.get("tracking"), dict):
        patch["tracking"], conditions = _tracking(conditions, result["tracking"], generation, now)
    eval_passed = result.get("evalPassed", current.get("evalPassed"))
    if state.phase == SUCCEEDED:
        judge_error = judge.get("error") if judge else None
        eval_passed, conditions = _eval_condition(conditions, gate_mode, eval_passed, generation, now, judge_error)
        patch["evalPassed"] = eval_passed
    patch["conditions"] = conditions
    return patch


def _data_counts(data: dict[str, Any]) -> dict[str, Any]:
    """status.data from the trainer's result: the integer counts, and spec.dataset.captures' per-source rows.

    >>> _data_counts({"rowsRead": 3, "bogus": "x", "sources": [{"version": "v1", "rows": 3,
    ...                                                         "dropped": {"noFeedback": 2}}]})
    {'rowsRead': 3, 'sources': [{'version': 'v1', 'rows': 3, 'dropped': {'noFeedback': 2}}]}
    """

    def ints(d: dict[str, Any]) -> dict[str, int]:
        return {k: int(v) for k, v in d.items() if isinstance(v, int) and not isinstance(v, bool)}

    out: dict[str, Any] = ints(data)
    sources = data.get("sources")
    if isinstance(sources, list):
        out["sources"] = [
            {
                **{k: str(s[k]) for k in ("uri", "version") if isinstance(s.get(k), str)},
                **ints(s),
                **({"dropped": ints(s["dropped"])} if isinstance(s.get("dropped"), dict) else {}),
            }
            for s in sources[:64]
            if isinstance(s, dict)
        ]
    return out


JUDGE_COUNTS = ("judged", "wins", "ties", "losses")
JUDGE_RATES = ("winRate", "positionConsistency", "meanAnswerCharsTuned", "meanAnswerCharsBaseline")


def _judge_status(judge: dict[str, Any]) -> dict[str, Any]:
    """status.judge from the trainer's result: the counts, the rates, and the error (cut to fit a condition).

    >>> _judge_status({"judged": 4, "wins": 3, "winRate": 0.75, "bogus": 1, "error": None})
    {'judged': 4, 'wins': 3, 'winRate': 0.75}
    """
    out: dict[str, Any] = {k: int(judge[k]) for k in JUDGE_COUNTS if isinstance(judge.get(k), int)}
    out |= {k: float(judge[k]) for k in JUDGE_RATES if isinstance(judge.get(k), int | float)}
    if judge.get("error"):
        out["error"] = str(judge["error"])[:1000]
    return out


TRACKING_KEYS = ("trackingUri", "experimentId", "runId", "registeredModel", "modelVersion", "warning")


def _tracking(
    conditions: list[dict[str, Any]], tracking: dict[str, Any], generation: int, now: str
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """status.tracking from the trainer's result, and TrackingDegraded: True while MLflow missed something.

    >>> t, c = _tracking([], {"runId": "r1", "warning": "MLflow at http://m: refused", "bogus": 1}, 1, "t0")
    >>> t, (c[0]["type"], c[0]["status"], c[0]["reason"])
    ({'runId': 'r1', 'warning': 'MLflow at http://m: refused'}, ('TrackingDegraded', 'True', 'TrackerUnavailable'))
    """
    out = {k: str(tracking[k])[:1000] for k in TRACKING_KEYS if tracking.get(k)}
    warning = out.get("warning")
    reason, message = ("TrackerUnavailable", warning) if warning else ("Tracked", "the run is tracked in MLflow")
    return out, set_condition(conditions, "TrackingDegraded", bool(warning), reason, message, generation, now)


NO_GATES_MESSAGE = (
    "the run has no evaluation gates (spec.evaluation.gates), so nothing checked the model: it is not rolled "
    "out; add gates, or set spec.evaluation.requireGates: false to allow an unevaluated model"
)
UNGATED_MESSAGE = "spec.evaluation.requireGates is false: the model was not evaluated against gates"


def _eval_condition(
    conditions: list[dict[str, Any]],
    gate_mode: str,
    eval_passed: Any,
    generation: int,
    now: str,
    judge_error: str | None = None,
) -> tuple[bool | None, list[dict[str, Any]]]:
    """EvalPassed is True only when gates were checked and passed, or the spec opted out explicitly. A judge
    the spec names but the trainer could not ask fails it in every mode: the run must not pass unjudged."""
    if judge_error:
        return False, set_condition(conditions, "EvalPassed", False, "JudgeUnavailable", judge_error, generation, now)
    if gate_mode == NO_GATES:
        return None, set_condition(conditions, "EvalPassed", None, "NoGates", NO_GATES_MESSAGE, generation, now)
    if gate_mode == UNGATED:
        return True, set_condition(conditions, "EvalPassed", True, "Ungated", UNGATED_MESSAGE, generation, now)
    if eval_passed is None:
        message = "the trainer reported no evaluation result"
        return None, set_condition(conditions, "EvalPassed", None, "NotEvaluated", message, generation, now)
    passed = bool(eval_passed)
    message = "evaluation gates passed" if passed else "evaluation gates failed; see status.metrics"
    reason = "GatesPassed" if passed else "GatesFailed"
    return passed, set_condition(conditions, "EvalPassed", passed, reason, message, generation, now)
