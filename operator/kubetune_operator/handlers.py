"""Kopf handlers: guard, then delegate to the reconcile layer. Importing this module registers them."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import kopf

from kubetune_operator import api, captures, judge_target, metrics, specs
from kubetune_operator.kube import Kube, load_credentials
from kubetune_operator.reconcile import finetunejob, ftj_mirror, modeldeployment, run_engine
from kubetune_operator.settings import Settings

TRAINER_JOBS = {api.LABEL_MANAGED_BY: api.MANAGED_BY, api.LABEL_COMPONENT: "trainer"}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # The handlers' settings live in memo, read once here. Kopf reads the timers' intervals earlier,
    # when their decorators run at import: those read the same environment (Settings.from_env) there.
    memo.settings = Settings.from_env()
    load_credentials()
    settings.posting.level = logging.WARNING  # our own Events say what happened; kopf's are noise
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=api.GROUP)
    metrics.serve(memo.settings.metrics_port)


@kopf.index(api.GROUP, api.VERSION, api.FINETUNEJOBS)
def ftj_outputs(body: kopf.Body, **_: Any) -> dict[str, specs.OutputClaim] | None:
    """Every FineTuneJob's output location: one FineTuneJob owns a location (see specs.output_owner)."""
    claim = specs.output_claim(dict(body))
    return {OUTPUTS: claim} if claim is not None else None


OUTPUTS = "outputs"


@kopf.on.resume(api.GROUP, api.VERSION, api.FINETUNEJOBS)
@kopf.on.create(api.GROUP, api.VERSION, api.FINETUNEJOBS)
@kopf.on.update(api.GROUP, api.VERSION, api.FINETUNEJOBS, field="spec")
def reconcile_finetunejob(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    finetunejob.reconcile_spec(Kube(), _fresh(body), memo.settings, _outputs(kwargs))


def _outputs(kwargs: dict[str, Any]) -> list[specs.OutputClaim]:
    # Kopf passes every index as a keyword named after its function (its handler protocols cannot say so).
    index: kopf.Index[str, specs.OutputClaim] = kwargs["ftj_outputs"]
    return list(index.get(OUTPUTS, []))


def _waits_for_output(status: kopf.Status, **_: Any) -> bool:
    return any(c.get("type") == "Failed" and c.get("reason") == "OutputInUse" for c in status.get("conditions") or [])


@kopf.timer(
    api.GROUP,
    api.VERSION,
    api.FINETUNEJOBS,
    interval=Settings.from_env().schedule_check_seconds,
    when=_waits_for_output,
)
def retry_when_output_is_free(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    # Refused because another FineTuneJob owns the output: start once that one is deleted or moved.
    finetunejob.reconcile_spec(Kube(), _fresh(body), memo.settings, _outputs(kwargs))


def _waits_for_sources(status: kopf.Status, **_: Any) -> bool:
    conditions = status.get("conditions") or []
    return (
        captures.waits(dict(status))
        or judge_target.waits(dict(status))
        or run_engine.waits(dict(status))  # a JobSet or TrainJob run on a cluster without that CRD
        or any(c.get("type") == "SourcesReady" and c.get("status") == "False" for c in conditions)
    )


@kopf.index(api.GROUP, api.VERSION, api.FINETUNEJOBS)
def ftj_children(body: kopf.Body, **_: Any) -> dict[tuple[str, str], str] | None:
    """FineTuneJobs by the parent they start from (spec.initFrom.fineTuneJobRef): whom a parent's news concerns."""
    parent = (((body.get("spec") or {}).get("initFrom") or {}).get("fineTuneJobRef") or {}).get("name")
    return {(body["metadata"]["namespace"], parent): body["metadata"]["name"]} if parent else None


@kopf.on.event(api.GROUP, api.VERSION, api.FINETUNEJOBS)
def tell_children(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    # A parent changed (a run succeeded, failed, started; or it was deleted): its children decide again,
    # reading the parent afresh (an event's body may be older than the parent now is).
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    children: kopf.Index[tuple[str, str], str] = kwargs["ftj_children"]
    for child in set(children.get((ns, name), [])):
        current = Kube().get_custom(api.FINETUNEJOBS, ns, child)
        if current is not None:
            finetunejob.follow_parent(Kube(), current, memo.settings, _outputs(kwargs))


@kopf.timer(
    api.GROUP,
    api.VERSION,
    api.FINETUNEJOBS,
    interval=Settings.from_env().schedule_check_seconds,
    when=_waits_for_sources,
)
def retry_when_sources_are_ready(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    # method merge: a source FineTuneJob had no artifact that passed evaluation yet; or spec.dataset.captures:
    # its ModelDeployment was missing or captured nothing. Look again.
    finetunejob.reconcile_spec(Kube(), _fresh(body), memo.settings, _outputs(kwargs))


@kopf.timer(
    api.GROUP,
    api.VERSION,
    api.FINETUNEJOBS,
    interval=Settings.from_env().schedule_check_seconds,
    when=lambda spec, **_: bool((spec.get("initFrom") or {}).get("fineTuneJobRef")),
)
def follow_parent(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    # Events can be missed (the operator was down): the timer re-reads the parent.
    finetunejob.follow_parent(Kube(), _fresh(body), memo.settings, _outputs(kwargs))


@kopf.on.event("batch", "v1", "jobs", labels=TRAINER_JOBS)
def mirror_trainer_job(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        return
    ftj_mirror.sync_from_job(Kube(), dict(body), memo.settings)


@kopf.timer(
    api.GROUP,
    api.VERSION,
    api.FINETUNEJOBS,
    interval=Settings.from_env().schedule_check_seconds,
    when=lambda status, **_: bool((status.get("group") or {}).get("restartingJob")),
)
def finish_gang_restart(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # A gang restart deleted the failed Job; the new one may start only once its pods are gone, which no
    # single event tells reliably (the last pod's DELETED can come before the Job's): look again.
    finetunejob.continue_gang_restart(Kube(), _fresh(body), memo.settings)


@kopf.timer(
    api.GROUP,
    api.VERSION,
    api.FINETUNEJOBS,
    interval=Settings.from_env().schedule_check_seconds,
    when=lambda status, **_: run_engine.follows(dict(status)),
)
def follow_engine_run(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    # A JobSet or TrainJob run is read on this timer, not watched: a Kopf watch of another project's CRD
    # dies with the whole operator when that CRD is uninstalled (404 on the watch: "multitasker has failed"),
    # and starts only minutes after a CRD installed later. A gang run lasts hours; a tick is soon enough.
    finetunejob.reconcile_spec(Kube(), _fresh(body), memo.settings, _outputs(kwargs))


@kopf.index("batch", "v1", "jobs", labels=TRAINER_JOBS)
def trainer_jobs(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(body["metadata"]["namespace"], body["metadata"]["name"]): dict(body)}


@kopf.index("v1", "pods", labels=TRAINER_JOBS)
def trainer_pods(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    uid = (body["metadata"].get("labels") or {}).get(ftj_mirror.CONTROLLER_UID)
    return {uid: dict(body)} if uid else None


def _seen(kwargs: dict[str, Any]) -> finetunejob.Seen:
    # The trainer indexes, passed by kopf as keywords named after their functions (see _outputs).
    return finetunejob.Seen(kwargs["trainer_jobs"], kwargs["trainer_pods"])


@kopf.on.event("v1", "pods", labels=TRAINER_JOBS)
def explain_pending_trainer_pod(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
    if type != "DELETED":
        finetunejob.sync_from_pod(Kube(), dict(body), _seen(kwargs))


@kopf.timer(
    api.GROUP,
    api.VERSION,
    api.FINETUNEJOBS,
    interval=Settings.from_env().schedule_check_seconds,
    when=lambda status, **_: status.get("phase") == "Pending",
)
def explain_pending_run(body: kopf.Body, **kwargs: Any) -> None:
    finetunejob.explain_pending(Kube(), _fresh(body), seen=_seen(kwargs))


@kopf.timer(
    api.GROUP,
    api.VERSION,
    api.FINETUNEJOBS,
    interval=Settings.from_env().schedule_check_seconds,
    when=lambda spec, **_: bool(spec.get("schedule")),
)
def scheduled_run(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    finetunejob.start_scheduled_run(Kube(), _fresh(body), memo.settings, dt.datetime.now(dt.UTC))


def _fresh(body: kopf.Body) -> dict[str, Any]:
    """Re-read the object: the body kopf hands over may predate our own status patches."""
    meta = body["metadata"]
    current = Kube().get_custom(api.FINETUNEJOBS, meta["namespace"], meta["name"])
    if current is None:
        raise kopf.TemporaryError("the FineTuneJob is not readable yet", delay=2)
    return current


@kopf.on.resume(api.GROUP, api.VERSION, api.MODELDEPLOYMENTS)
@kopf.on.create(api.GROUP, api.VERSION, api.MODELDEPLOYMENTS)
@kopf.on.update(api.GROUP, api.VERSION, api.MODELDEPLOYMENTS, field="spec")
@kopf.timer(api.GROUP, api.VERSION, api.MODELDEPLOYMENTS, interval=Settings.from_env().rollout_check_seconds)
def reconcile_modeldeployment(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # One level-triggered function for events and the timer: steps are timed from status, not memory.
    # After a restart the resume handler and the timer may run it at once: its status patches carry the
    # resourceVersion they were computed from, so only one of them takes a step (see StaleStatus).
    current = Kube().get_custom(api.MODELDEPLOYMENTS, body["metadata"]["namespace"], body["metadata"]["name"])
    if current is not None:
        modeldeployment.reconcile_rollout(Kube(), current, memo.settings, dt.datetime.now(dt.UTC))
