"""FineTuneJob reconciliation: start, replace, suspend and restart trainer runs.

A run's state reaches the status through ftj_mirror; a gang's restart is gang_restart's decision.

Every function reads what is there, computes what should be, and converges. Names are
deterministic, so a crash between any two API calls is repaired by the next call.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kubetune_api.stages import Merge
from kubetune_operator import api, captures, job_state, judge_target, lineage, merge_sources, specs
from kubetune_operator.builders.gang import ENGINE_CRDS, build_run_children, engine_of, engine_problems
from kubetune_operator.builders.names import trainer_job_name
from kubetune_operator.builders.trainer_job import build_spec_configmap, run_labels
from kubetune_operator.conditions import set_condition, waiting_patch
from kubetune_operator.kube import Kube, now_iso
from kubetune_operator.reconcile import ftj_captures, ftj_mirror, gang_restart, run_engine
from kubetune_operator.reconcile.status_writes import patch_and_tell as _patch_and_tell
from kubetune_operator.schedule import due_time, parse_time
from kubetune_operator.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seen:
    """Trainer Jobs by (namespace, name) and their pods by Job uid, as the operator's watches hold them
    (kopf indexes): for who owns what and why a pod waits, not for a run's result, which is read fresh."""

    jobs: Mapping[tuple[str, str], Collection[dict[str, Any]]]
    pods: Mapping[str, Collection[dict[str, Any]]]

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next(iter(self.jobs.get((namespace, name), ())), None)

    def pods_of(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        uid = job["metadata"]["uid"]
        return [p for p in self.pods.get(uid, ()) if ftj_mirror.owned_by(p, uid)]


def reconcile_spec(
    kube: Kube, ftj: dict[str, Any], settings: Settings, outputs: list[specs.OutputClaim] | None = None
) -> None:
    """On create, spec change and operator start: make the current run match the spec.

    `outputs`: every FineTuneJob's output location (the operator's index); a new run starts only when
    this FineTuneJob owns its output, so two FineTuneJobs never write into the same place."""
    meta, status = ftj["metadata"], ftj.get("status") or {}
    generation = int(meta.get("generation", 1))
    spec = specs.FineTuneJobSpec.from_dict(ftj["spec"])
    problems = specs.validate(spec)
    if problems:
        _mark_invalid(kube, ftj, "; ".join(problems), generation)
        return

    spec_hash = specs.run_spec_hash(ftj["spec"])
    run = int(status.get("run") or 0)
    if run == 0 or status.get("runSpecHash") != spec_hash:
        owner = _output_owner(ftj, outputs)
        if owner is not None:
            _mark_invalid(kube, ftj, _output_in_use(spec.output_uri, owner), generation, "OutputInUse")
            return
        if spec.parent_name == meta["name"]:
            _mark_invalid(kube, ftj, "spec.initFrom.fineTuneJobRef names this FineTuneJob itself", generation)
            return
        previous = kube.get_job(meta["namespace"], trainer_job_name(meta["name"], run)) if run else None
        if previous is not None and job_state.read_job(previous).phase not in job_state.TERMINAL:
            # The spec changed under a live run: it trains the wrong thing, so replace it.
            kube.delete_job(meta["namespace"], previous["metadata"]["name"])
            kube.event(ftj, "Normal", "RunReplaced", f"spec changed: run {run} stopped, starting run {run + 1}")
        elif (
            run
            and previous is None
            and run_engine.stop_live_run(kube, meta["namespace"], trainer_job_name(meta["name"], run))
        ):
            kube.event(ftj, "Normal", "RunReplaced", f"spec changed: run {run} stopped, starting run {run + 1}")
        init = _latest_init(kube, ftj, spec)  # a new run takes the parent's latest artifact
        if isinstance(init, lineage.Waiting):
            _mark_waiting(kube, ftj, init.message, generation)
            return
        reason = "SpecChanged" if run else "Created"
        _start_run(kube, ftj, spec, run + 1, spec_hash, settings, reason=reason, init=init)
        return

    if status.get("phase") in job_state.TERMINAL:
        return  # A finished run stays finished (its Job may even be gone by TTL); nothing to do.
    job_name = trainer_job_name(meta["name"], run)
    job = kube.get_job(meta["namespace"], job_name)
    if job is None and gang_restart.restarting(status):
        continue_gang_restart(kube, ftj, settings)  # not before the failed Job's pods are gone
        return
    engine_obj = None if job else run_engine.engine_object(kube, engine_of(spec, settings), meta["namespace"], job_name)
    if engine_obj is not None:
        # A JobSet or TrainJob runs this run: its Jobs are the engine's, not ours to recreate.
        run_engine.follow_suspend(kube, ftj, engine_obj, spec.suspend)
        ftj_mirror.mirror_engine(kube, ftj, engine_obj, spec)
        return
    if job is None:
        # Status says a run is live but its Job is missing (e.g. crash before create): recreate it, from
        # the artifact the run recorded (not the parent's latest: that would be another run).
        init = lineage.ParentArtifact.from_status(status)
        _start_run(kube, ftj, spec, run, spec_hash, settings, reason="Recreated", init=init)
        return
    if bool(job["spec"].get("suspend")) != spec.suspend:
        kube.patch_job(meta["namespace"], job["metadata"]["name"], {"spec": {"suspend": spec.suspend}})
        kube.event(ftj, "Normal", "Suspended" if spec.suspend else "Resumed", f"run {run}")
        job["spec"]["suspend"] = spec.suspend
    ftj_mirror.mirror(kube, ftj, job, spec, settings)


def continue_gang_restart(kube: Kube, ftj: dict[str, Any], settings: Settings) -> None:
    """Timer while status.group.restartingJob is set (and reconcile_spec finding the Job missing): once no
    pod of the failed gang Job remains, create the run's Job again (gang_restart)."""
    meta, status = ftj["metadata"], ftj.get("status") or {}
    run = int(status.get("run") or 0)
    if not run or status.get("phase") in job_state.TERMINAL or not gang_restart.restarting(status):
        return
    if status.get("runSpecHash") != specs.run_spec_hash(ftj["spec"]):
        return  # the spec changed meanwhile: reconcile_spec starts the next run instead
    spec = specs.FineTuneJobSpec.from_dict(ftj["spec"])
    job = kube.get_job(meta["namespace"], trainer_job_name(meta["name"], run))
    if job is not None:
        ftj_mirror.mirror(kube, ftj, job, spec, settings)  # the failed one still there, or the new one already
        return
    if gang_restart.without_job(kube, ftj, spec, run_labels(ftj, run)).action != gang_restart.CREATE:
        return  # pods of the failed Job are still there (their processes may hold the port, the disk)
    # The same inputs as the run's first Job: the artifact it recorded; its spec ConfigMap is still there.
    init = lineage.ParentArtifact.from_status(status)
    _start_run(kube, ftj, spec, run, status["runSpecHash"], settings, "GroupRestarted", init=init, restart=True)


def sync_from_pod(kube: Kube, pod: dict[str, Any], seen: Seen | None = None) -> None:
    """On trainer pod events: say why a pending run cannot start (no node fits, missing claim, bad image)."""
    labels = pod["metadata"].get("labels") or {}
    ns = pod["metadata"]["namespace"]
    job_name = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
    if not job_name or job_state.read_pod_blocker(pod) is None:
        return
    job = (seen and seen.job(ns, job_name)) or kube.get_job(ns, job_name)
    if job is None or not ftj_mirror.owned_by(pod, job["metadata"]["uid"]):
        return
    owner = next((o for o in job["metadata"].get("ownerReferences") or [] if o.get("kind") == "FineTuneJob"), None)
    ftj = kube.get_custom(api.FINETUNEJOBS, ns, owner["name"]) if owner else None
    if ftj is None or owner is None or ftj["metadata"]["uid"] != owner["uid"]:
        return
    if (ftj.get("status") or {}).get("jobName") == job_name:
        explain_pending(kube, ftj, [pod])


def explain_pending(
    kube: Kube, ftj: dict[str, Any], pods: list[dict[str, Any]] | None = None, seen: Seen | None = None
) -> None:
    """Put the first blocker of the current run's pods into the status (also run by a timer while
    Pending: a pod event can arrive before the run is recorded, and a stuck pod sends no more)."""
    meta, status = ftj["metadata"], ftj.get("status") or {}
    run = status.get("run")
    if status.get("phase") != job_state.PENDING or not run:
        return
    if pods is None:
        name = status.get("jobName") or trainer_job_name(meta["name"], int(run))
        job = (seen and seen.job(meta["namespace"], name)) or kube.get_job(meta["namespace"], name)
        pods = ((seen and seen.pods_of(job)) or ftj_mirror.pods_of(kube, job)) if job is not None else []
    for pod in pods:
        blocker = job_state.read_pod_blocker(pod)
        if blocker is None:
            continue
        reason, message = blocker
        generation = int(meta.get("generation", 1))
        conditions = set_condition(status.get("conditions"), "Running", False, reason, message, generation, now_iso())
        _patch_and_tell(kube, ftj, {"message": message, "conditions": conditions}, "Warning", reason, message)
        return


def start_scheduled_run(kube: Kube, ftj: dict[str, Any], settings: Settings, now: dt.datetime) -> None:
    """Timer: start a new run when the cron schedule has a slot due and no run is live."""
    status, meta = ftj.get("status") or {}, ftj["metadata"]
    schedule = ftj["spec"].get("schedule")
    if not schedule or not status.get("run"):
        return
    last = parse_time(status.get("lastScheduleTime") or meta["creationTimestamp"])
    due = due_time(schedule, last, now)
    if due is None:
        return
    if status.get("phase") not in job_state.TERMINAL:
        return  # Forbid overlap: a run is live; the slot is taken when it finishes.
    spec = specs.FineTuneJobSpec.from_dict(ftj["spec"])
    init = _latest_init(kube, ftj, spec)
    if isinstance(init, lineage.Waiting):
        log.info("%s/%s: scheduled run waits: %s", meta["namespace"], meta["name"], init.message)
        return  # The slot stays due (lastScheduleTime is unchanged): the next tick tries again.
    _start_run(
        kube,
        ftj,
        spec,
        int(status["run"]) + 1,
        specs.run_spec_hash(ftj["spec"]),
        settings,
        reason="Scheduled",
        extra_status={"lastScheduleTime": due.strftime("%Y-%m-%dT%H:%M:%SZ")},
        init=init,
    )


def follow_parent(
    kube: Kube, ftj: dict[str, Any], settings: Settings, outputs: list[specs.OutputClaim] | None = None
) -> None:
    """Timer, and any event of the parent: start a child that waits for its parent once the parent has an
    artifact; with rerunOnParentSuccess, start a new run for each newer artifact. The parent is read
    afresh; what the child started from is read back from its status, so a restart decides the same."""
    meta, status = ftj["metadata"], ftj.get("status") or {}
    spec = specs.FineTuneJobSpec.from_dict(ftj["spec"])
    if not spec.parent_name:
        return
    if lineage.waiting(status):
        reconcile_spec(kube, ftj, settings, outputs)
        return
    if status.get("runSpecHash") != specs.run_spec_hash(ftj["spec"]):
        return  # a spec change is reconcile_spec's to start
    parent = kube.get_custom(api.FINETUNEJOBS, meta["namespace"], spec.parent_name)
    latest = lineage.parent_artifact(spec.parent_name, spec.method, parent)
    if not isinstance(latest, lineage.ParentArtifact) or not lineage.rerun_due(
        spec.rerun_on_parent_success, status, latest
    ):
        return
    run = int(status["run"]) + 1
    _start_run(kube, ftj, spec, run, status["runSpecHash"], settings, reason=lineage.PARENT_UPDATED, init=latest)


def _start_run(
    kube: Kube,
    ftj: dict[str, Any],
    spec: specs.FineTuneJobSpec,
    run: int,
    spec_hash: str,
    settings: Settings,
    reason: str,
    extra_status: dict[str, Any] | None = None,
    init: lineage.ParentArtifact | None = None,
    restart: bool = False,
) -> None:
    """Create run `run`'s spec ConfigMap and Job and record the run; `restart`: the Job again, after a gang
    restart (the ConfigMap is kept, and the status keeps the run's progress and checkpoint)."""
    meta = ftj["metadata"]
    generation = int(meta.get("generation", 1))
    sources = None
    if spec.merge is not None:
        sources = _merge_sources(kube, ftj, spec.merge, generation, keep_phase=reason == "Scheduled")
        if sources is None:
            return  # a source is not ready: the WaitingForSources timer checks again
    capture = ftj_captures.resolve(kube, ftj, spec, generation, keep_phase=reason == "Scheduled")
    if isinstance(capture, captures.Unavailable):
        return  # recorded in status; the WaitingForSources timer checks again
    judge_url = ftj_captures.resolve_judge(kube, ftj, spec, generation, keep_phase=reason == "Scheduled")
    if isinstance(judge_url, captures.Unavailable):
        return  # the same
    if judge_url is not None:
        spec = replace(spec, judge_url=judge_url)
    resolved = init if init is not None and init.name else None  # a parent's artifact, not a spec uri
    if resolved is not None:
        spec = replace(spec, init_uri=resolved.uri)  # the pod mounts the parent's claim
    if capture is not None:
        spec = replace(spec, captures_uri=capture.uri)  # and the ModelDeployment's capture claim
    engine = engine_of(spec, settings)
    problems = engine_problems(spec, engine, trainer_job_name(meta["name"], run))
    if problems:
        _mark_invalid(kube, ftj, "; ".join(problems), generation)
        return
    crd = run_engine.missing_crd(kube, engine)
    if engine is not None and crd is not None:
        run_engine.mark_not_installed(kube, ftj, engine, crd, generation, keep_phase=reason == "Scheduled")
        return  # nothing created; the retry timer reads the CRD again
    children = build_run_children(spec, ftj, run, settings, sources)
    job = children[-1]  # what runs the pods: the Job, JobSet or TrainJob (a gang's Service comes first)
    try:
        init_artifact = resolved.for_trainer() if resolved else None
        frozen_captures = capture.for_trainer(now_iso()) if capture else None
        kube.create(
            build_spec_configmap(ftj, run, init_artifact=init_artifact, merge_sources=sources, captures=frozen_captures)
        )
        created = [kube.create(child) for child in children][-1]  # False: there already (a retried start)
    except ApiException as err:
        if err.status in (400, 403, 422):
            # The apiserver refused what the spec produced (e.g. an invalid affinity): retrying the
            # same input cannot help, so report it and wait for a spec change.
            _mark_invalid(kube, ftj, f"the trainer Job was rejected: {_api_message(err)}", generation, "JobRejected")
            return
        raise kopf.TemporaryError(f"creating run {run}: {err.reason}", delay=10) from err
    if restart:
        gang_restart.settled(kube, ftj, job["metadata"]["name"], created)
        return
    state = job_state.RunState(
        job_state.SUSPENDED if job["spec"]["suspend"] else job_state.PENDING,
        "JobSuspended" if job["spec"]["suspend"] else "JobCreated",
        f"run {run}: trainer {job['kind']} {job['metadata']['name']} created",
    )
    patch = job_state.status_for_run({"conditions": []}, state, generation, now_iso())
    patch.update(
        {
            "run": run,
            "runGeneration": generation,
            "runSpecHash": spec_hash,
            "jobName": job["metadata"]["name"],
            # A new run starts clean: the last run's numbers must not pass for this one's.
            "startTime": None,
            "completionTime": None,
            "progress": None,
            "metrics": None,
            "baseMetrics": None,
            "judge": None,
            "artifact": None,
            "evalPassed": None,
            "lastCheckpoint": None,
            "data": None,
            "lineage": ftj_captures.run_lineage(init, capture),
            "group": gang_restart.initial_group(spec, settings),
        }
    )
    if engine in ENGINE_CRDS:  # read above: the CRD is established
        patch["conditions"] = run_engine.installed_condition(patch["conditions"], ENGINE_CRDS[engine], generation)
    if capture is not None:
        patch["conditions"] = set_condition(
            patch["conditions"], captures.CAPTURES_READY, True, captures.RESOLVED, capture.message(run), generation,
            now_iso(),
        )  # fmt: skip
    if isinstance(judge_url, str) and spec.judge_ref:
        patch["conditions"] = judge_target.ready_conditions(
            patch["conditions"], spec.judge_ref, judge_url, generation, now_iso()
        )
    if sources is not None:
        names = ", ".join(f"{r['name']} run {r['run']}" for r in sources if r.get("name")) or "uris only"
        message = f"run {run} merges {len(sources)} adapters ({names})"
        patch["conditions"] = set_condition(
            patch["conditions"], SOURCES_READY, True, "SourcesResolved", message, generation, now_iso()
        )
    patch["mergeSources"] = sources
    patch.update(extra_status or {})
    kube.patch_status(api.FINETUNEJOBS, meta["namespace"], meta["name"], patch)
    if created:
        source = f" from {resolved.name} run {resolved.run} ({resolved.uri})" if resolved else ""
        kube.event(ftj, "Normal", reason, f"run {run} started{source}: trainer {job['kind']} {job['metadata']['name']}")


def _latest_init(
    kube: Kube, ftj: dict[str, Any], spec: specs.FineTuneJobSpec
) -> lineage.ParentArtifact | lineage.Waiting | None:
    """What a new run starts from: the parent's latest artifact, the spec's initFrom.uri, or nothing."""
    if spec.parent_name:
        parent = kube.get_custom(api.FINETUNEJOBS, ftj["metadata"]["namespace"], spec.parent_name)
        return lineage.parent_artifact(spec.parent_name, spec.method, parent)
    return lineage.ParentArtifact(spec.init_uri) if spec.init_uri else None


def _mark_waiting(kube: Kube, ftj: dict[str, Any], message: str, generation: int) -> None:
    """Pending without a Job; the timer and the parent's events look again (`follow_parent`)."""
    status = ftj.get("status") or {}
    reason = lineage.WAITING_FOR_PARENT
    conditions = set_condition(status.get("conditions"), "Running", False, reason, message, generation, now_iso())
    patch: dict[str, Any] = {
        "phase": job_state.PENDING,
        "message": message,
        "observedGeneration": generation,
        "conditions": conditions,
    }
    if status.get("jobName"):
        patch["jobName"] = None  # the last run's Job no longer describes this FineTuneJob (sync_from_job)
    _patch_and_tell(kube, ftj, patch, "Normal", reason, message)


SOURCES_READY = "SourcesReady"
WAITING_FOR_SOURCES = "WaitingForSources"


def _merge_sources(
    kube: Kube, ftj: dict[str, Any], merge: Merge, generation: int, keep_phase: bool
) -> list[dict[str, Any]] | None:
    """method merge: the sources' artifacts, or None after recording (once) which source the run waits for."""
    meta, status = ftj["metadata"], ftj.get("status") or {}
    names = merge_sources.referenced(merge)
    found = {name: kube.get_custom(api.FINETUNEJOBS, meta["namespace"], name) for name in dict.fromkeys(names)}
    resolution = merge_sources.resolve(merge, found)
    if not resolution.waiting:
        return resolution.sources
    message = resolution.message
    patch = waiting_patch(status, SOURCES_READY, WAITING_FOR_SOURCES, message, generation, now_iso(), keep_phase)
    _patch_and_tell(kube, ftj, patch, "Normal", WAITING_FOR_SOURCES, message)
    return None


def _output_owner(ftj: dict[str, Any], outputs: list[specs.OutputClaim] | None) -> specs.OutputClaim | None:
    mine = specs.output_claim(ftj)
    return None if mine is None else specs.output_owner(mine, outputs or [])


def _output_in_use(uri: str, owner: specs.OutputClaim) -> str:
    return (
        f"spec.output.uri {uri!r} is already the output location of FineTuneJob {owner.namespace}/{owner.name} "
        f"({owner.location}); two FineTuneJobs writing there would overwrite each other's runs: choose another "
        "location (this FineTuneJob starts when the location is free)"
    )


def _mark_invalid(kube: Kube, ftj: dict[str, Any], message: str, generation: int, reason: str = "InvalidSpec") -> None:
    status = ftj.get("status") or {}
    conditions = set_condition(status.get("conditions"), "Failed", True, reason, message, generation, now_iso())
    patch = {"phase": job_state.FAILED, "message": message, "observedGeneration": generation, "conditions": conditions}
    _patch_and_tell(kube, ftj, patch, "Warning", reason, message)


def _api_message(err: ApiException) -> str:
    import json

    try:
        return str(json.loads(err.body or "{}").get("message") or err.reason)
    except ValueError:
        return str(err.reason)
