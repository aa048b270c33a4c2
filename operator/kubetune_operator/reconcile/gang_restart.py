"""Gang restart (engine indexedJob): a failed gang Job is started over as a whole, from the last checkpoint.

Room: the reconcile layer. `decide` is pure (the Job, status.group, spec.backoffLimit and how many pods
of the run remain -> one Step); `on_job`, `without_job`, `restart` and `settled` do a Step's I/O through
`Kube`. finetunejob.py calls them where it mirrors a Job and where it finds a run's Job missing.

A gang Job has backoffLimit 0 and a podFailurePolicy whose rule 0 fails it on the trainer's exit 2 (a bad
spec or bad data: final) and rule 1 on a pod's DisruptionTarget condition (preempted or evicted). The Job
controller cannot restart a whole Indexed Job, so the operator does: it records the restart in
status.group (the count, and `restartingJob`: the failed Job's uid), deletes the Job (Background), and
once no pod of the run remains (torchrun's rendezvous port and the checkpoint folder are free again)
creates the Job again with the same name and spec ConfigMap. Each step is read back from status.group
and the objects, so a crash between any two of them is repaired by the next reconcile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune_operator import api, specs
from kubetune_operator.builders.gang import engine_of
from kubetune_operator.kube import Kube, now_iso
from kubetune_operator.settings import Settings

INDEXED_JOB = "indexedJob"
#: podFailurePolicy rule indexes of a gang Job (builders.gang): exit 2 -> FailJob, DisruptionTarget -> FailJob.
BAD_CONFIG_RULE, DISRUPTION_RULE = 0, 1
#: The Job controller's words for a rule match, e.g. "Pod ns/x has condition DisruptionTarget matching
#: FailJob rule at index 1" (pkg/controller/job/pod_failure_policy.go).
_RULE = re.compile(r"matching FailJob rule at index (\d+)")
PREEMPTED, POD_FAILED = "Preempted", "PodFailed"

# What `decide` says to do.
MIRROR = "mirror"  # nothing of a restart: mirror the Job as for one node (running, done, or failed for good)
FAIL = "fail"  # the restarts are used up: the run fails, with `message` naming spec.backoffLimit
RESTART = "restart"  # record the restart (`group`), then delete the failed Job
DELETE = "delete"  # the restart is recorded but the failed Job is still there: delete it (again)
WAIT = "wait"  # the failed Job is gone; some of its pods are not yet
CREATE = "create"  # nothing of the failed Job remains: create the run's Job again
SETTLED = "settled"  # the new Job exists: the restart is over (`group` clears the marker)


@dataclass(frozen=True)
class Step:
    action: str
    reason: str = ""
    message: str = ""
    group: dict[str, Any] | None = None  # status.group after the step, when it changes


def applies(spec: specs.FineTuneJobSpec, settings: Settings, job: dict[str, Any] | None = None) -> bool:
    """Whether the operator restarts this run's gang: engine indexedJob (a JobSet has its own failurePolicy,
    a TrainJob its runtime's JobSet), and `job`, when given, is the Indexed Job of a gang."""
    if engine_of(spec, settings) != INDEXED_JOB:
        return False
    return job is None or (job.get("spec") or {}).get("completionMode") == "Indexed"


def initial_group(spec: specs.FineTuneJobSpec, settings: Settings) -> dict[str, Any] | None:
    """status.group as a new run starts: every key written, since a merge patch keeps the ones left out."""
    if spec.gang is None:
        return None
    return {
        "nodes": spec.gang.nodes,
        "engine": engine_of(spec, settings),
        "readyPods": 0,
        "restarts": 0,
        "preemptions": 0,
        "lastRestartReason": None,
        "lastRestartMessage": None,
        "restartingJob": None,
        "restartingSince": None,
    }


def failed_condition(job: dict[str, Any]) -> tuple[str, str] | None:
    """The Job's Failed condition as (reason, message), when it is True."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return str(cond.get("reason") or ""), str(cond.get("message") or "")
    return None


def failed_rule(reason: str, message: str) -> int | None:
    """The podFailurePolicy rule that failed the Job, from the Job controller's message.

    >>> failed_rule("PodFailurePolicy", "Pod ns/x-0 has condition DisruptionTarget matching FailJob rule at index 1")
    1
    >>> failed_rule("BackoffLimitExceeded", "Job has reached the specified backoff limit") is None
    True
    """
    found = _RULE.search(message) if reason == "PodFailurePolicy" else None
    return int(found.group(1)) if found else None


def decide(
    job: dict[str, Any] | None, group: dict[str, Any] | None, backoff_limit: int, now: str, pods_left: int = 0
) -> Step:
    """What a gang run does next. `job`: the run's Job as read now (None: not there); `group`: status.group;
    `pods_left`: pods of the run still there (only read while a restart waits for the failed Job to go).

    >>> decide(None, {"restartingJob": "u1"}, 3, "t0", pods_left=2).action
    'wait'
    """
    group = group or {}
    marker = group.get("restartingJob")
    uid = ((job or {}).get("metadata") or {}).get("uid")
    if marker:
        if job is not None and uid == marker:
            return Step(DELETE)
        if job is not None:
            return Step(SETTLED, group={"restartingJob": None, "restartingSince": None})
        if pods_left:
            return Step(WAIT, message=f"restarting the group: waiting for {pods_left} pod(s) of the failed Job to go")
        return Step(CREATE)
    failed = failed_condition(job) if job is not None else None
    if failed is None or failed[0] == "DeadlineExceeded":
        return Step(MIRROR)  # running, done, or out of time (spec.activeDeadlineSeconds): as for one node
    reason, message = failed
    rule = failed_rule(reason, message)
    if rule == BAD_CONFIG_RULE:
        return Step(MIRROR)  # the trainer's exit 2: a bad spec or bad data, final; its words say why
    nodes = group.get("nodes") or "its"
    restarts, preemptions = int(group.get("restarts") or 0), int(group.get("preemptions") or 0)
    if rule == DISRUPTION_RULE:
        counts = {"preemptions": preemptions + 1}
        why = f"restarting the group of {nodes} pods after a preemption ({preemptions + 1}; spec.backoffLimit unused)"
        kind = PREEMPTED
    elif restarts < backoff_limit:
        counts = {"restarts": restarts + 1}
        why = f"restarting the group of {nodes} pods (restart {restarts + 1} of spec.backoffLimit {backoff_limit})"
        kind = POD_FAILED
    else:
        used = f"{restarts} restart(s) of spec.backoffLimit {backoff_limit} used"
        return Step(FAIL, reason, f"the group failed with no restart left ({used})")
    marker_fields = {"restartingJob": uid, "restartingSince": now}
    record = {**counts, "lastRestartReason": kind, "lastRestartMessage": message[:1000], **marker_fields}
    return Step(RESTART, kind, f"{why}: {message}", record)


def group_patch(group: dict[str, Any] | None, updates: dict[str, Any]) -> dict[str, Any] | None:
    """`updates` when one of them changes status.group, else None (write once).

    >>> group_patch({"readyPods": 2, "restarts": 1}, {"readyPods": 2}) is None
    True
    """
    current = group or {}
    return updates if any(current.get(k) != v for k, v in updates.items()) else None


def restarting(status: dict[str, Any]) -> bool:
    """Whether a restart of the run's gang is under way (its failed Job deleted, the new one not yet seen)."""
    return bool((status.get("group") or {}).get("restartingJob"))


def restart(kube: Kube, ftj: dict[str, Any], job: dict[str, Any], step: Step, backoff_limit: int, now: str) -> None:
    """RESTART: write the restart into status.group before anything is deleted, then delete the failed Job
    (DELETE: only that; the restart was recorded before a crash). The write is guarded by the FineTuneJob's
    resourceVersion, so of two reconciles that saw the same failure one counts it; on a conflict the
    FineTuneJob is read again and the decision made again (the other may have counted it already)."""
    meta = ftj["metadata"]
    for _ in range(_ATTEMPTS):
        if step.action != RESTART:
            break
        run = (ftj.get("status") or {}).get("run")
        patch = {"group": step.group, "message": f"run {run}: {step.message}"}
        try:
            kube.patch_status(api.FINETUNEJOBS, meta["namespace"], meta["name"], patch, meta.get("resourceVersion"))
        except ApiException as err:
            if err.status != 409:
                raise
            fresh = kube.get_custom(api.FINETUNEJOBS, meta["namespace"], meta["name"])
            if fresh is None:
                return
            ftj, meta = fresh, fresh["metadata"]
            step = decide(job, (fresh.get("status") or {}).get("group"), backoff_limit, now)
            continue
        kube.event(ftj, "Warning", "GroupRestarting", f"run {run}: {step.message}")
        step = Step(DELETE)
    if step.action == DELETE:
        kube.delete_job(job["metadata"]["namespace"], job["metadata"]["name"])  # Background: pods go too


_ATTEMPTS = 3


def on_job(
    kube: Kube, ftj: dict[str, Any], job: dict[str, Any], spec: specs.FineTuneJobSpec, settings: Settings
) -> Step | None:
    """The first look at the run's Job before it is mirrored: None when this module has nothing to say (not
    a gang it restarts, no restart under way); a RESTART or DELETE is done here, and then nothing is mirrored."""
    status = ftj.get("status") or {}
    if not (applies(spec, settings, job) or restarting(status)):
        return None
    now = now_iso()
    step = decide(job, status.get("group"), spec.backoff_limit, now)
    if step.action in (RESTART, DELETE):
        restart(kube, ftj, job, step, spec.backoff_limit, now)
    return step


def mirrored_group(status: dict[str, Any], job: dict[str, Any], step: Step) -> dict[str, Any] | None:
    """status.group's part of the mirror patch: the ready pods (and a SETTLED step's cleared marker),
    None when that changes nothing."""
    updates = {"readyPods": int((job.get("status") or {}).get("ready") or 0), **(step.group or {})}
    return group_patch(status.get("group"), updates)


def without_job(kube: Kube, ftj: dict[str, Any], spec: specs.FineTuneJobSpec, run_labels: dict[str, str]) -> Step:
    """The failed Job is gone: WAIT (said in status.message, once) while pods of the run remain, else CREATE."""
    meta, status = ftj["metadata"], ftj.get("status") or {}
    left = len(kube.list_pods(meta["namespace"], ",".join(f"{k}={v}" for k, v in sorted(run_labels.items()))))
    step = decide(None, status.get("group"), spec.backoff_limit, now_iso(), left)
    message = f"run {status.get('run')}: {step.message}"
    if step.action == WAIT and status.get("message") != message:
        kube.patch_status(api.FINETUNEJOBS, meta["namespace"], meta["name"], {"message": message})
    return step


def settled(kube: Kube, ftj: dict[str, Any], job_name: str, created: bool) -> None:
    """The Job is there again: clear the marker (and say so once, from the call that created it)."""
    meta, status = ftj["metadata"], ftj.get("status") or {}
    group = status.get("group") or {}
    if not group.get("restartingJob"):
        return
    run = status.get("run")
    message = f"run {run}: the group was restarted: trainer Job {job_name} created again"
    patch = {"group": {"restartingJob": None, "restartingSince": None}, "message": message}
    kube.patch_status(api.FINETUNEJOBS, meta["namespace"], meta["name"], patch)
    if created:
        reason = group.get("lastRestartReason") or POD_FAILED
        kube.event(ftj, "Normal", "GroupRestarted", f"{message} ({reason})")
