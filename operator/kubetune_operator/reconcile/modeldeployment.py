"""ModelDeployment reconciliation: serve the stable version, roll new versions out as canaries.

Level-triggered: every call reads the spec (parsed once), the referenced FineTuneJob, the children
and the status, and takes at most one rollout step. Children are written only where they differ
(md_children) and the status once, at the end, only when it changed (md_status): a ModelDeployment
at rest costs reads, not writes. All rollout state lives in `.status`, so a restarted operator
continues from where the last one stopped.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubetune_operator import api, approvals, canary, metrics, registry
from kubetune_operator.builders import serving
from kubetune_operator.conditions import get_condition
from kubetune_operator.kube import Kube
from kubetune_operator.reconcile import md_analysis, md_registry
from kubetune_operator.reconcile.md_children import Children
from kubetune_operator.reconcile.md_manual import ManualActions, iso
from kubetune_operator.reconcile.md_status import StaleStatus, StatusWriter
from kubetune_operator.schedule import parse_time
from kubetune_operator.serving_spec import ModelDeploymentSpec, Served, serving_version
from kubetune_operator.settings import Settings

# Status fields of a canary in flight; cleared together whenever it ends (promoted, rolled back, cancelled).
CANARY_ENDED: dict[str, Any] = {
    "canaryVersion": None,
    "canaryAdapterUri": None,
    "canaryWeight": 0,
    "achievedCanaryWeight": 0,
    "currentStep": None,
    "awaitingPromotion": None,
    "canaryNotReadySince": None,
}


def reconcile_rollout(kube: Kube, md: dict[str, Any], settings: Settings, now: dt.datetime) -> None:
    ctx = _Context(kube, md, settings, now)
    try:
        ctx.run()
        ctx.out.flush()
    except StaleStatus:
        return  # the other run took this step (and posted its event); the next tick re-reads


class _Context(ManualActions):
    """One reconcile: the spec parsed once, the children observed once, the status written once.

    The user's manual actions (abort, retry, approve, promote) are ManualActions' (md_manual)."""

    def __init__(self, kube: Kube, md: dict[str, Any], settings: Settings, now: dt.datetime) -> None:
        self.kube, self.md, self.settings, self.now = kube, md, settings, now
        self.meta = md["metadata"]
        self.ns, self.name = self.meta["namespace"], self.meta["name"]
        self.spec = ModelDeploymentSpec.from_dict(md["spec"])
        self.out = StatusWriter(kube, md, now)
        self.children = Children(kube, md, self.spec, settings)
        self.ftj_status: dict[str, Any] = {}  # the referenced FineTuneJob's status (its run's MLflow version)

    @property
    def status(self) -> dict[str, Any]:
        return self.out.status

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        rollout = canary.Rollout.from_status(self.status)
        self._sync_registry()
        adapter, waiting = self._desired_adapter(rollout)
        if waiting is not None:
            self._patch({"phase": self.status.get("phase") or canary.PENDING, "message": waiting})
            return
        self.children.ensure_services()
        if self._abort(rollout):
            return
        desired = serving_version(self.md["spec"], adapter)
        if self._retry(rollout, desired):
            rollout = canary.Rollout.from_status(self.status)
        action = canary.on_version(rollout, desired)
        if action == "deploy-stable":
            self._deploy_stable(desired, adapter)
        elif action in ("start-canary", "restart-canary"):
            self._start_canary(desired, adapter, restarted=action == "restart-canary")
        elif action == "cancel-canary":
            self._end_canary(canary.STABLE, "the spec went back to the stable version: canary cancelled", rollout)
        elif rollout.canary_version:
            self._progress(rollout)
        else:
            self._manual(rollout)  # approvals and promotions with no canary to apply to are removed
            self.children.scale(serving.STABLE, self.spec.replicas)  # after a rollout, or spec.replicas changed
            self._patch({})  # nothing to roll out; record that this generation was seen (if it is news)

    # -- adapters from FineTuneJobs ---------------------------------------------------------------
    def _desired_adapter(self, r: canary.Rollout) -> tuple[str | None, str | None]:
        """(what to serve as a `Served` ref, or a message saying why we wait). Keeps the current one while
        a referenced FineTuneJob has no new artifact that passed its evaluation gates."""
        current = self.status.get("canaryAdapterUri") if r.canary_version else self.status.get("stableAdapterUri")
        if self.spec.adapter_ref is None:
            return self.spec.adapter_uri, None
        ftj = self.kube.get_custom(api.FINETUNEJOBS, self.ns, self.spec.adapter_ref)
        if ftj is None:
            return self._keep(current, f"FineTuneJob {self.spec.adapter_ref} not found")
        st = self.ftj_status = ftj.get("status") or {}
        # An adapter, or the whole model (full fine-tune, merged weights) that replaces the base.
        served = Served.from_artifact(st.get("artifact") or {})
        artifact = served.ref() if served else None
        gate = get_condition(st.get("conditions"), "EvalPassed")
        if st.get("phase") == "Succeeded" and artifact and gate and gate.get("status") == "True":
            return artifact, None
        no_gates = gate is not None and gate.get("reason") == "NoGates"
        if st.get("phase") == "Succeeded" and artifact and self.status.get("skippedAdapterUri") != artifact:
            # The closed loop's guard: a run that failed its evaluation gates, or had none, is never rolled out.
            why = "has no evaluation gates" if no_gates else "did not pass evaluation"
            self.out.event(
                "Warning",
                "NoEvalGates" if no_gates else "EvalGateFailed",
                f"FineTuneJob {self.spec.adapter_ref} run {st.get('run')} {why}: not rolled out",
            )
            self._patch({"skippedAdapterUri": artifact})
        if no_gates:
            return self._keep(
                current,
                f"waiting: FineTuneJob {self.spec.adapter_ref} run {st.get('run')} has no evaluation gates, so it "
                "is not rolled out (set spec.evaluation.gates, or spec.evaluation.requireGates: false to opt out)",
            )
        return self._keep(
            current, f"waiting for FineTuneJob {self.spec.adapter_ref} to produce an adapter that passes evaluation"
        )

    def _keep(self, current: str | None, why: str) -> tuple[str | None, str | None]:
        if self.status.get("stableVersion") is None:
            return None, why
        return current, None

    # -- transitions -----------------------------------------------------------------------------
    def _deploy_stable(self, version: str, adapter: str | None) -> None:
        self.children.apply_track(serving.STABLE, version, adapter, self.spec.replicas)
        self.children.route(0)
        self._patch(
            {
                "phase": canary.STABLE,
                "stableVersion": version,
                "stableAdapterUri": adapter,
                "canaryWeight": 0,
                "achievedCanaryWeight": 0,
                "message": f"serving version {version}",
                **self._registry("stable", adapter),
            },
            ("Available", True, "Deployed", f"version {version}"),
        )
        self.out.event("Normal", "Deployed", f"stable version {version} (adapter {adapter})")

    def _start_canary(self, version: str, adapter: str | None, restarted: bool) -> None:
        weight = self.spec.canary.steps[0]
        split = self._scale_canary(version, adapter, weight)
        self._patch(
            {
                "phase": canary.PROGRESSING,
                "canaryVersion": version,
                "canaryAdapterUri": adapter,
                "currentStep": 0,
                "canaryWeight": weight,
                "achievedCanaryWeight": split.achieved,
                "stepStartTime": iso(self.now),
                "failures": 0,
                "noDataCount": 0,
                "awaitingPromotion": None,
                "message": f"canary {version} at {weight}%",
                **self._registry("canary", adapter),
            },
            ("Progressing", True, "CanaryStarted", f"canary {version} at {weight}%"),
        )
        self._count("start", weight)
        reason = "CanaryRestarted" if restarted else "CanaryStarted"
        self.out.event(
            "Normal",
            reason,
            f"canary version {version} at {weight}% (stable {self.status.get('stableVersion')})",
        )
        self._warn_rounded(weight, split)

    def _progress(self, r: canary.Rollout) -> None:
        c = self.spec.canary
        weight = c.steps[min(r.step, len(c.steps) - 1)]
        split = self._scale_canary(r.canary_version or "", self.status.get("canaryAdapterUri"), weight)  # idempotent
        if self.status.get("achievedCanaryWeight") != split.achieved:  # e.g. spec.replicas changed mid-step
            self._patch({"achievedCanaryWeight": split.achieved})
        manual = self._manual(r)
        if approvals.PROMOTE in manual and self._consume(approvals.PROMOTE, *manual[approvals.PROMOTE]):
            self._promote(r, f"promoted by annotation {approvals.PROMOTE}={r.canary_version}")
            return
        if self.status.get("awaitingPromotion"):
            return
        if self._canary_not_ready(r):
            return
        if not canary.step_due(r, c, self.now):
            return
        verdicts = md_analysis.analyse(self.spec, self.ns, self.name, r, self.settings)
        decision = canary.decide(r, c, verdicts, self.now)
        history = md_analysis.history(self.status.get("analysis") or [], c.steps[r.step], verdicts, self.now)
        if decision.kind == "rollback":
            self._rollback(r, decision.reason, history)
        elif decision.kind == "promote":
            self._promote(r, decision.reason, history)
        elif decision.kind == "await-promotion":
            why = f"all steps passed; annotate {approvals.PROMOTE}={r.canary_version} to promote"
            self._patch({"phase": canary.PAUSED, "message": why, "analysis": history, "awaitingPromotion": True})
        elif decision.kind == "hold":
            nd = decision.rollout
            phase = canary.PAUSED if nd.no_data > r.no_data else canary.PROGRESSING
            self._patch(
                {
                    "phase": phase,
                    "message": decision.reason,
                    "failures": nd.failures,
                    "noDataCount": nd.no_data,
                    "stepStartTime": iso(self.now),
                    "analysis": history,
                }
            )
            self._count("hold", None)
            self.out.event("Warning" if nd.failures > r.failures else "Normal", "AnalysisHold", decision.reason)
        else:  # advance
            nd = decision.rollout
            nxt = c.steps[nd.step]
            approval = f"{r.canary_version}/{nxt}"
            if c.manual_gate and not (
                manual.get(approvals.APPROVE, ("",))[0] == approval
                and self._consume(approvals.APPROVE, *manual[approvals.APPROVE])
            ):
                self._patch(
                    {
                        "phase": canary.PAUSED,
                        "analysis": history,
                        "message": f"step passed; annotate {approvals.APPROVE}={approval} to continue to {nxt}%",
                    }
                )
                return
            split = self._scale_canary(r.canary_version or "", self.status.get("canaryAdapterUri"), nxt)
            self._patch(
                {
                    "phase": canary.PROGRESSING,
                    "currentStep": nd.step,
                    "canaryWeight": nxt,
                    "achievedCanaryWeight": split.achieved,
                    "failures": 0,
                    "noDataCount": 0,
                    "stepStartTime": iso(self.now),
                    "message": decision.reason,
                    "analysis": history,
                }
            )
            self._count("advance", nxt)
            self.out.event("Normal", "StepAdvanced", decision.reason)
            self._warn_rounded(nxt, split)

    def _promote(self, r: canary.Rollout, reason: str, history: list[dict[str, Any]] | None = None) -> None:
        version, adapter = r.canary_version or "", self.status.get("canaryAdapterUri")
        self.children.apply_track(serving.STABLE, version, adapter, self.spec.replicas)
        self.children.route(0)
        self.children.delete(serving.CANARY)
        patch: dict[str, Any] = {
            "phase": canary.PROMOTED,
            "stableVersion": version,
            "stableAdapterUri": adapter,
            **CANARY_ENDED,
            "message": f"promoted {version}: {reason}",
            **self._registry("promote"),
        }
        if history is not None:
            patch["analysis"] = history
        self._patch(patch, ("Progressing", False, "Promoted", f"version {version} is stable"))
        self._count("promote", 0)
        self.out.event("Normal", "Promoted", f"version {version} promoted: {reason}")

    def _rollback(
        self, r: canary.Rollout, reason: str, history: list[dict[str, Any]] | None = None, aborted: bool = False
    ) -> None:
        self.children.scale(serving.STABLE, self.spec.replicas)  # stable back to full size before the canary goes
        self.children.scale(serving.CANARY, 0)
        self.children.route(0)
        patch: dict[str, Any] = {
            "phase": canary.ROLLED_BACK,
            "rolledBackVersion": r.canary_version,
            **CANARY_ENDED,
            "message": f"rolled back: {reason}",
            **self._registry("rollback"),
        }
        if history is not None:
            patch["analysis"] = history
        if aborted:
            patch.update(abortedVersion=r.canary_version, abortObserved=True)
        self._patch(patch, ("Progressing", False, "RolledBack", reason))
        self._count("rollback", 0)
        self.out.event("Warning", "RolledBack", f"version {r.canary_version} rolled back: {reason}")

    def _end_canary(self, phase: str, message: str, r: canary.Rollout) -> None:
        self.children.scale(serving.STABLE, self.spec.replicas)
        self.children.delete(serving.CANARY)
        self.children.route(0)
        self._patch(
            {
                "phase": phase,
                **CANARY_ENDED,
                "message": message,
            },
            ("Progressing", False, "CanaryCancelled", message),
        )
        self._count("cancel", 0)
        self.out.event("Normal", "CanaryCancelled", message)

    # -- helpers ---------------------------------------------------------------------------------
    def _scale_canary(self, version: str, adapter: str | None, weight: int) -> serving.Split:
        """Both tracks sized for `weight`: the canary grows before stable shrinks, so capacity holds."""
        split = serving.traffic_split(self.spec.traffic, self.spec.replicas, weight)
        self.children.apply_track(serving.CANARY, version, adapter, split.canary)
        self.children.scale(serving.STABLE, split.stable)
        self.children.route(weight)
        return split

    def _warn_rounded(self, weight: int, split: serving.Split) -> None:
        if split.achieved != weight:
            self.out.event(
                "Warning",
                "ShareRounded",
                f"step {weight}% rounded to {split.achieved:g}% of requests: {split.canary} canary and "
                f"{split.stable} stable pod(s) from replicas {self.spec.replicas} (more replicas or "
                "traffic: gatewayAPI give finer shares)",
            )

    def _count(self, decision: str, weight: int | None) -> None:
        def count() -> None:
            metrics.ROLLOUTS.labels(self.ns, self.name, decision).inc()
            if weight is not None:
                metrics.CANARY_WEIGHT.labels(self.ns, self.name).set(weight)

        self.out.then(count)  # a decision counts once it is written

    def _canary_not_ready(self, r: canary.Rollout) -> bool:
        """True while the canary's pods are not all Ready (steps wait); after spec.canary.progressDeadline
        of that, roll it back with that reason. Self-contained: reads the canary Deployment itself."""
        ready = canary.readiness(self.children.deployment(serving.CANARY))
        start = self.status.get("canaryNotReadySince")
        seen = parse_time(start) if start else None
        since, reason = canary.progress_deadline(ready, seen, self.spec.canary, self.now)
        if reason is not None:
            self._rollback(r, reason)
            return True
        if (since and iso(since)) != start:
            state = "waiting for canary pods to be Ready" if since else "canary pods Ready"
            message = f"{state} ({ready.ready}/{ready.wanted})"
            self._patch({"canaryNotReadySince": since and iso(since), "message": message})
        return since is not None

    # -- the MLflow registry (md_registry): queued with a transition, called on the next reconcile ------
    def _registry(self, event: str, adapter: str | None = None) -> dict[str, Any]:
        """status.registry's share of a transition's patch; empty for a rollout of untracked artifacts."""
        current = self.status.get("registry") or {}
        target: dict[str, str] | None
        if event in ("stable", "canary"):
            target = registry.target(self.ftj_status, adapter) if self.spec.adapter_ref else None
        else:  # promote, rollback: the canary's version, frozen when it started
            version = current.get("canaryVersion")
            target = (
                {**{k: current[k] for k in ("trackingUri", "registeredModel")}, "version": version} if version else None
            )
        queued = md_registry.queue(current, event, target, f"{self.ns}/{self.name}")
        return {"registry": queued} if queued else {}

    def _sync_registry(self) -> None:
        before = self.status.get("registry") or {}
        synced = md_registry.sync(before, self.settings, self.now)
        if synced is None:
            return
        self._patch({"registry": synced})
        if synced.get("message") and not before.get("message"):
            self.out.event("Warning", "RegistryNotUpdated", f"{synced['message']} (retried; the rollout goes on)")

    def _patch(self, patch: dict[str, Any], condition: tuple[str, bool, str, str] | None = None) -> None:
        self.out.patch(patch, condition)
