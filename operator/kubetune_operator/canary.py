"""The canary step machine (pure): what to do next, from the rollout state and analysis verdicts."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

from kubetune_operator.analysis import ERROR, FAIL, NO_DATA, PASS, SKIPPED, Verdict, gate
from kubetune_operator.schedule import parse_time
from kubetune_operator.serving_spec import Canary

PENDING, STABLE, PROGRESSING, PAUSED = "Pending", "Stable", "Progressing", "Paused"
PROMOTED, ROLLED_BACK, FAILED = "Promoted", "RolledBack", "Failed"


@dataclass(frozen=True)
class Rollout:
    phase: str | None = None
    stable_version: str | None = None
    canary_version: str | None = None
    step: int = 0
    step_start: dt.datetime | None = None
    failures: int = 0
    no_data: int = 0
    rolled_back_version: str | None = None

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> Rollout:
        start = status.get("stepStartTime")
        return cls(
            phase=status.get("phase"),
            stable_version=status.get("stableVersion"),
            canary_version=status.get("canaryVersion"),
            step=int(status.get("currentStep") or 0),
            step_start=parse_time(start) if start else None,
            failures=int(status.get("failures") or 0),
            no_data=int(status.get("noDataCount") or 0),
            rolled_back_version=status.get("rolledBackVersion"),
        )


def on_version(r: Rollout, desired: str) -> str:
    """What a (possibly new) desired version means.

    >>> on_version(Rollout(), "v1"), on_version(Rollout(stable_version="v1"), "v1")
    ('deploy-stable', 'none')
    >>> on_version(Rollout(stable_version="v1"), "v2")
    'start-canary'
    """
    if r.stable_version is None:
        return "deploy-stable"
    if desired == r.stable_version:
        return "cancel-canary" if r.canary_version else "none"
    if desired == r.canary_version:
        return "none"
    if desired == r.rolled_back_version:
        return "none"  # it failed analysis; only a further spec change retries
    return "restart-canary" if r.canary_version else "start-canary"


def step_due(r: Rollout, canary: Canary, now: dt.datetime) -> bool:
    return r.step_start is None or (now - r.step_start).total_seconds() >= canary.interval_seconds


@dataclass(frozen=True)
class Decision:
    kind: str  # advance | promote | rollback | hold | await-promotion
    reason: str
    rollout: Rollout


def decide(r: Rollout, canary: Canary, verdicts: list[Verdict], now: dt.datetime) -> Decision:
    """After an analysis (or after the interval when analysis is off) at step `r.step`.

    Gated first: with fewer canary requests than minRequests no Pass or Fail is acted on.
    """
    verdicts = gate(verdicts)
    failed = [v for v in verdicts if v.verdict == FAIL]
    missing = [v for v in verdicts if v.verdict in (NO_DATA, ERROR)]
    if failed:
        failures = r.failures + 1
        detail = "; ".join(f"{v.check}: {v.message}" for v in failed)
        if failures > canary.failure_limit:
            return Decision("rollback", f"analysis failed at {canary.steps[r.step]}%: {detail}", r)
        return Decision(
            "hold",
            f"analysis failed ({failures}/{canary.failure_limit} tolerated): {detail}",
            replace(r, failures=failures, step_start=now),
        )
    if missing:
        no_data = r.no_data + 1
        detail = "; ".join(f"{v.check}: {v.message}" for v in missing)
        if no_data > canary.analysis.no_data_limit:
            return Decision(
                "rollback", f"no usable data after {no_data} analyses at {canary.steps[r.step]}%: {detail}", r
            )
        return Decision(
            "hold",
            f"waiting for data ({no_data}/{canary.analysis.no_data_limit}): {detail}",
            replace(r, no_data=no_data, step_start=now),
        )
    assert all(v.verdict in (PASS, SKIPPED) for v in verdicts)
    if r.step + 1 >= len(canary.steps):
        if canary.auto_promote:
            return Decision("promote", "all steps passed analysis", r)
        return Decision("await-promotion", "all steps passed; set annotation kubetune.io/promote=true to promote", r)
    nxt = replace(r, step=r.step + 1, step_start=now, failures=0, no_data=0)
    return Decision("advance", f"step {canary.steps[r.step]}% passed; moving to {canary.steps[r.step + 1]}%", nxt)


def apply_policy(verdict: Verdict, policy: str) -> Verdict:
    """A check's no-data policy: `pass` and `fail` settle NoData/Error now; `pause` leaves them to wait."""
    if verdict.verdict not in (NO_DATA, ERROR) or policy == "pause":
        return verdict
    settled = PASS if policy == "pass" else FAIL
    return replace(verdict, verdict=settled, message=f"{verdict.message} (noDataPolicy {policy})")


@dataclass(frozen=True)
class Readiness:
    """How many of the canary Deployment's pods of its current template are Ready."""

    ready: int
    wanted: int

    @property
    def ok(self) -> bool:
        return self.ready >= self.wanted


def readiness(deployment: dict[str, Any] | None) -> Readiness:
    """From a Deployment as read back: ready pods that run its current spec (an old template's
    Ready pods do not count, nor a status the controller wrote before it saw the current spec).

    >>> readiness({"metadata": {"generation": 2}, "spec": {"replicas": 1},
    ...            "status": {"observedGeneration": 2, "readyReplicas": 1, "updatedReplicas": 1}}).ok
    True
    >>> readiness(None)
    Readiness(ready=0, wanted=1)
    """
    if deployment is None:
        return Readiness(0, 1)
    wanted = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
    st = deployment.get("status") or {}
    if int(st.get("observedGeneration") or 0) < int((deployment.get("metadata") or {}).get("generation") or 0):
        return Readiness(0, wanted)
    return Readiness(min(int(st.get("readyReplicas") or 0), int(st.get("updatedReplicas") or 0)), wanted)


def progress_deadline(
    ready: Readiness, not_ready_since: dt.datetime | None, canary: Canary, now: dt.datetime
) -> tuple[dt.datetime | None, str | None]:
    """(when the canary was first seen not Ready, or None while it is Ready; the rollback reason
    once it has not been Ready for longer than spec.canary.progressDeadline, else None).

    >>> c = Canary(progress_deadline_seconds=60)
    >>> t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    >>> progress_deadline(Readiness(0, 1), None, c, t0) == (t0, None)
    True
    >>> progress_deadline(Readiness(0, 1), t0, c, t0 + dt.timedelta(seconds=61))[1]
    'canary pods not Ready within progressDeadline 60s: 0/1 Ready'
    """
    if ready.ok:
        return None, None
    since = not_ready_since or now
    if (now - since).total_seconds() > canary.progress_deadline_seconds:
        return since, (
            f"canary pods not Ready within progressDeadline {canary.progress_deadline_seconds:g}s: "
            f"{ready.ready}/{ready.wanted} Ready"
        )
    return since, None
