"""How a run's state reaches its FineTuneJob's status: from its Job (or JobSet, TrainJob) and the trainer's
termination message, written once and only when it says something new.

Room: the reconcile layer. Reads the run's Job/engine object and pods, patches the FineTuneJob's status and
posts Events; a failed gang Job is handed to gang_restart first (a restart, not a failure, when budget is left).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kubetune_operator import api, job_state, metrics, specs
from kubetune_operator.kube import Kube, now_iso
from kubetune_operator.reconcile import gang_restart, run_engine
from kubetune_operator.reconcile.status_writes import same as _same
from kubetune_operator.settings import Settings

# The Job controller labels a Job's pods with the Job's uid: a selector no other Job can match.
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"


def sync_from_job(kube: Kube, job: dict[str, Any], settings: Settings) -> None:
    """On any event of a trainer Job: mirror its state into the owning FineTuneJob's status."""
    labels = job["metadata"].get("labels") or {}
    name, ns = labels.get(api.LABEL_FINETUNEJOB), job["metadata"]["namespace"]
    owner = next((o for o in job["metadata"].get("ownerReferences") or [] if o.get("kind") == "FineTuneJob"), None)
    if not name or owner is None:
        return
    ftj = kube.get_custom(api.FINETUNEJOBS, ns, owner["name"])
    if ftj is None or ftj["metadata"]["uid"] != owner["uid"]:
        return
    if (ftj.get("status") or {}).get("jobName") != job["metadata"]["name"]:
        return  # An older run's Job: its news no longer describes the FineTuneJob.
    # The event's body may be older than the Job now is (events queue up): mirror what is there.
    fresh = kube.get_job(ns, job["metadata"]["name"])
    if fresh is not None and fresh["metadata"].get("uid") == job["metadata"].get("uid"):
        mirror(kube, ftj, fresh, specs.FineTuneJobSpec.from_dict(ftj["spec"]), settings)


def mirror_engine(kube: Kube, ftj: dict[str, Any], obj: dict[str, Any], spec: specs.FineTuneJobSpec) -> None:
    state = run_engine.read_engine(obj)
    result = None
    if state.phase in job_state.TERMINAL:  # node 0 wrote the trainer's words into its termination message
        ns = obj["metadata"]["namespace"]
        node_job = kube.get_job(ns, run_engine.node_job_name(obj["metadata"]["name"]))
        result = job_state.latest_result(pods_of(kube, node_job), node_job["metadata"]["uid"]) if node_job else None
        state = job_state.with_trainer_result(state, result)
    mirror_state(kube, ftj, state, result, spec)


def mirror(
    kube: Kube, ftj: dict[str, Any], job: dict[str, Any], spec: specs.FineTuneJobSpec, settings: Settings
) -> None:
    state = job_state.read_job(job)
    # A failed gang Job is started over as a whole, unless the failure is final (gang_restart).
    step = gang_restart.on_job(kube, ftj, job, spec, settings)
    if step is not None and step.action in (gang_restart.RESTART, gang_restart.DELETE):
        return
    result = None
    if state.phase in job_state.TERMINAL:
        # Success or failure, the trainer's own words are in its last pod's termination message.
        result = job_state.latest_result(pods_of(kube, job), job["metadata"]["uid"])
        state = job_state.with_trainer_result(state, result)
    if step is not None and step.action == gang_restart.FAIL:
        state = replace(state, message=f"{step.message}: {state.message}")
    group = gang_restart.mirrored_group(ftj.get("status") or {}, job, step) if step is not None else None
    mirror_state(kube, ftj, state, result, spec, group)


def mirror_state(
    kube: Kube,
    ftj: dict[str, Any],
    state: job_state.RunState,
    result: dict[str, Any] | None,
    spec: specs.FineTuneJobSpec,
    group: dict[str, Any] | None = None,
) -> None:
    meta, status = ftj["metadata"], ftj.get("status") or {}
    gate_mode = spec.gate_mode
    generation = int(meta.get("generation", 1))
    patch = job_state.status_for_run(status, state, generation, now_iso(), result, gate_mode)
    if group is not None:
        patch["group"] = group
    if _same(status, patch):
        return  # nothing new, or older news than the status already shows
    kube.patch_status(api.FINETUNEJOBS, meta["namespace"], meta["name"], patch)
    if status.get("phase") != state.phase:
        metrics.RUN_TRANSITIONS.labels(meta["namespace"], state.phase).inc()
        kind = "Warning" if state.phase == job_state.FAILED else "Normal"
        kube.event(ftj, kind, state.reason, f"run {status.get('run')}: {state.message}")
        if state.phase == job_state.SUCCEEDED and gate_mode == job_state.UNGATED:
            kube.event(ftj, "Warning", "Ungated", f"run {status.get('run')}: {job_state.UNGATED_MESSAGE}")


def pods_of(kube: Kube, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The Job's own pods: selected by its uid and checked against their owner, never by a name label."""
    uid = job["metadata"]["uid"]
    return [p for p in kube.list_pods(job["metadata"]["namespace"], f"{CONTROLLER_UID}={uid}") if owned_by(p, uid)]


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(o.get("uid") == uid for o in (obj.get("metadata") or {}).get("ownerReferences") or [])
