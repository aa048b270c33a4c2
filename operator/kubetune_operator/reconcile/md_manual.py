"""A ModelDeployment's manual actions: spec.canary.abort and the retry / approve-step / promote annotations.

Part of one reconcile (modeldeployment._Context mixes this in): each annotation is judged against the
rollout (approvals.judge), then removed exactly once, and what it did is recorded in
status.lastManualAction and an Event. Touches the ModelDeployment's annotations and, through the
reconcile's StatusWriter, its status.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubetune_operator import api, approvals, canary
from kubetune_operator.kube import Kube
from kubetune_operator.reconcile.md_status import StatusWriter
from kubetune_operator.serving_spec import ModelDeploymentSpec


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class ManualActions:
    """What the reconcile provides (modeldeployment._Context): its reads, its writer and its rollback."""

    kube: Kube
    meta: dict[str, Any]
    ns: str
    name: str
    now: dt.datetime
    spec: ModelDeploymentSpec
    out: StatusWriter

    def _patch(self, patch: dict[str, Any], condition: tuple[str, bool, str, str] | None = None) -> None:
        raise NotImplementedError

    def _rollback(
        self, r: canary.Rollout, reason: str, history: list[dict[str, Any]] | None = None, aborted: bool = False
    ) -> None:
        raise NotImplementedError

    def _abort(self, r: canary.Rollout) -> bool:
        """spec.canary.abort stops the canary in flight when first seen true, and no later one: the
        operator records that it acted (status.abortObserved) until the flag is set false again."""
        action = approvals.abort_action(
            self.spec.canary.abort, bool(self.out.status.get("abortObserved")), r.canary_version
        )
        if action == "rearm":
            self._patch({"abortObserved": None})  # the next true aborts the canary in flight then
        if action in ("none", "rearm"):
            return False
        if action == "rollback":
            self._rollback(r, "aborted: spec.canary.abort is true", aborted=True)
            return True
        self._patch({"abortObserved": True})
        self.out.event(
            "Warning",
            "AbortIgnored",
            "spec.canary.abort is true but no canary is in flight: it aborts no later version "
            "(set it false, then true, to abort one)",
        )
        return False

    def _retry(self, r: canary.Rollout, desired: str) -> bool:
        value = (self.meta.get("annotations") or {}).get(approvals.RETRY)
        if value is None:
            return False
        ruling = approvals.judge(approvals.RETRY, value, self._approval_state(r, desired))
        if not ruling.ok:
            self._ignore(approvals.RETRY, value, ruling.message)
            return False
        if not self._consume(approvals.RETRY, value, ruling.message):
            return False
        self._patch({"rolledBackVersion": None, "message": ruling.message})
        return True

    def _manual(self, r: canary.Rollout) -> dict[str, tuple[str, str]]:
        """{key: (value, what it does)} of the approve-step / promote annotations that apply to the
        canary in flight; the others are removed, with an Event saying why."""
        notes = self.meta.get("annotations") or {}
        state = self._approval_state(r, None)
        valid = {}
        for key in (approvals.APPROVE, approvals.PROMOTE):
            if key in notes:
                ruling = approvals.judge(key, notes[key], state)
                if ruling.ok:
                    valid[key] = (notes[key], ruling.message)
                else:
                    self._ignore(key, notes[key], ruling.message)
        return valid

    def _approval_state(self, r: canary.Rollout, desired: str | None) -> approvals.State:
        return approvals.State(r.canary_version, self.spec.canary.steps, r.step, r.rolled_back_version, desired)

    def _consume(self, key: str, value: str, message: str) -> bool:
        """Remove the annotation, and act only when this call removed it (exactly once)."""
        rv = self.kube.remove_annotation(api.MODELDEPLOYMENTS, self.ns, self.name, key, value)
        if rv is None:
            return False
        self.out.resource_version = rv  # our own write: the status patch that follows builds on it
        self._record(key, value, "Used", message)
        self.out.event("Normal", "AnnotationUsed", f"{key}={value} {message}; removed")
        return True

    def _ignore(self, key: str, value: str, message: str) -> None:
        rv = self.kube.remove_annotation(api.MODELDEPLOYMENTS, self.ns, self.name, key, value)
        if rv is not None:
            self.out.resource_version = rv
            self._record(key, value, "Ignored", message)
            self.out.event("Warning", "AnnotationIgnored", f"{message}; removed")

    def _record(self, key: str, value: str, outcome: str, message: str) -> None:
        self._patch(
            {
                "lastManualAction": {
                    "annotation": key,
                    "value": value,
                    "outcome": outcome,
                    "message": message,
                    "time": iso(self.now),
                }
            }
        )
