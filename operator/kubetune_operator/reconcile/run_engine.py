"""Reconcile room: the engine that runs a multi-node run, where it is another project's (JobSet, Kubeflow
TrainJob). Is its CRD installed (else the FineTuneJob says so and waits, nothing is created), and is a run's
JobSet or TrainJob there. Reads CRDs and engine objects through Kube, writes the FineTuneJob's status and
deletes a replaced run's engine object; what to create is builders/gang.py's.
"""

from __future__ import annotations

from typing import Any

from kubetune_operator import job_state
from kubetune_operator.builders.gang import ENGINE_CRDS, JOB_SET, JOBSET_API, NODE, TRAIN_JOB, TRAINJOB_API
from kubetune_operator.conditions import set_condition, waiting_patch
from kubetune_operator.kube import Kube, now_iso
from kubetune_operator.reconcile.status_writes import patch_and_tell

ENGINE_AVAILABLE = "EngineAvailable"
ENGINE_NOT_INSTALLED = "EngineNotInstalled"
ENGINE_INSTALLED = "EngineInstalled"
#: (apiVersion, kind) of each engine's object, and its conditions that say the run is over.
OBJECTS = {JOB_SET: (JOBSET_API, "JobSet"), TRAIN_JOB: (TRAINJOB_API, "TrainJob")}
FINISHED = ("Completed", "Complete", "Failed")


def waits(status: dict[str, Any]) -> bool:
    """The FineTuneJob waits for an engine's CRD (the retry timer looks again)."""
    return any(c.get("type") == ENGINE_AVAILABLE and c.get("status") == "False" for c in status.get("conditions") or [])


def follows(status: dict[str, Any]) -> bool:
    """A live run on JobSet or TrainJob: the operator reads its state on a timer (handlers.follow_engine_run)."""
    available = any(
        c.get("type") == ENGINE_AVAILABLE and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return available and status.get("phase") not in job_state.TERMINAL


def missing_crd(kube: Kube, engine: str | None) -> str | None:
    """The CRD `engine` needs and this cluster does not serve; None when it needs none or it is there.

    Read at each run start, not cached: installing JobSet or Kubeflow Trainer later needs no operator restart."""
    crd = ENGINE_CRDS.get(engine or "")
    return crd if crd and not kube.crd_established(crd) else None


def mark_not_installed(
    kube: Kube, ftj: dict[str, Any], engine: str, crd: str, generation: int, keep_phase: bool
) -> None:
    """Pending, nothing created; said once (patch_and_tell skips a status that says the same)."""
    status = ftj.get("status") or {}
    message = (
        f"spec.training.distributed.engine {engine} needs the CRD {crd}, which this cluster does not have: "
        f"install {'JobSet' if engine == JOB_SET else 'Kubeflow Trainer'}, or set spec.training.distributed.engine "
        "to indexedJob (plain Kubernetes); unset, the engine is the operator's KUBETUNE_TRAINING_ENGINE. "
        "The run starts once the CRD is there"
    )
    patch = waiting_patch(status, ENGINE_AVAILABLE, ENGINE_NOT_INSTALLED, message, generation, now_iso(), keep_phase)
    patch_and_tell(kube, ftj, patch, "Warning", ENGINE_NOT_INSTALLED, message)


def installed_condition(conditions: list[dict[str, Any]], crd: str, generation: int) -> list[dict[str, Any]]:
    """EngineAvailable True: set only after the CRD was read and found established."""
    message = f"the CRD {crd} is installed"
    return set_condition(conditions, ENGINE_AVAILABLE, True, ENGINE_INSTALLED, message, generation, now_iso())


def engine_object(kube: Kube, engine: str | None, namespace: str, name: str) -> dict[str, Any] | None:
    """Run `name`'s JobSet or TrainJob when `engine` is one of those and its CRD is there."""
    if engine not in OBJECTS or missing_crd(kube, engine):
        return None
    api_version, kind = OBJECTS[engine]
    return kube.get_engine_object(api_version, kind, namespace, name)


def stop_live_run(kube: Kube, namespace: str, name: str) -> bool:
    """Delete run `name`'s JobSet or TrainJob if one is still running (the spec changed under it).

    Either engine is looked for: the spec that chose it is gone. True when one was deleted."""
    stopped = False
    for engine, (api_version, kind) in OBJECTS.items():
        obj = engine_object(kube, engine, namespace, name)
        conditions = ((obj or {}).get("status") or {}).get("conditions") or []
        if obj is not None and not any(c.get("type") in FINISHED and c.get("status") == "True" for c in conditions):
            kube.delete_engine_object(api_version, kind, namespace, name)
            stopped = True
    return stopped


def follow_suspend(kube: Kube, ftj: dict[str, Any], obj: dict[str, Any], suspend: bool) -> None:
    """spec.suspend pauses and resumes a JobSet or TrainJob as it does a Job (both have spec.suspend)."""
    if bool((obj.get("spec") or {}).get("suspend")) == suspend:
        return
    meta = obj["metadata"]
    kube.patch_engine_object(
        obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"], {"spec": {"suspend": suspend}}
    )
    kube.event(ftj, "Normal", "Suspended" if suspend else "Resumed", f"run {(ftj.get('status') or {}).get('run')}")


def read_engine(obj: dict[str, Any]) -> job_state.RunState:
    """Phase of a run from its JobSet or TrainJob (their own conditions; a restart in between is Running).

    >>> read_engine({"kind": "JobSet", "spec": {}, "status": {"conditions": [
    ...     {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "jobset failed"}]}}).reason
    'FailedJobs'
    >>> state = read_engine({"kind": "JobSet", "status": {"restarts": 1, "replicatedJobsStatus": [{"ready": 1}]}})
    >>> state.phase, state.message
    ('Running', 'the gang is running (restarts: 1)')
    """
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        when = cond.get("lastTransitionTime")
        if cond.get("type") in ("Completed", "Complete"):
            return job_state.RunState(
                job_state.SUCCEEDED, "TrainingSucceeded", "the trainer finished successfully", None, when
            )
        if cond.get("type") == "Failed":
            reason, message = cond.get("reason") or f"{obj['kind']}Failed", cond.get("message") or "the gang failed"
            return job_state.RunState(job_state.FAILED, reason, message, None, when)
    if spec.get("suspend"):
        return job_state.RunState(job_state.SUSPENDED, "JobSuspended", "spec.suspend is true: the run is paused")
    jobs = status.get("replicatedJobsStatus") or status.get("jobsStatus") or []
    restarts = f" (restarts: {status['restarts']})" if status.get("restarts") else ""
    if any(j.get("ready") for j in jobs):
        return job_state.RunState(job_state.RUNNING, "GangRunning", f"the gang is running{restarts}")
    if any(j.get("active") for j in jobs):
        return job_state.RunState(job_state.PENDING, "PodPending", f"the gang's pods are starting{restarts}")
    return job_state.RunState(job_state.PENDING, "JobCreated", f"the trainer {obj['kind']} was created")


def node_job_name(name: str) -> str:
    """The Indexed Job of a JobSet's replicated Job `node` (a TrainJob's JobSet has the TrainJob's name)."""
    return f"{name}-{NODE}-0"
