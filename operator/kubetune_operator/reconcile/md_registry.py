"""A rollout's MLflow registry record (status.registry): what each transition queues, and the next reconcile's call.

Room: the reconcile layer (registry.py decides the calls and makes them). A transition only records
its calls as pending, in the same status write; `sync` makes them on a later reconcile, so MLflow is
called only about what the status already says, and a rollout never waits on it (one short timeout,
then a retry after `registry.RETRY_SECONDS`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubetune_operator import registry
from kubetune_operator.settings import Settings


def queue(current: dict[str, Any] | None, event: str, target: dict[str, str] | None, deployment: str) -> dict[str, Any]:
    """status.registry after rollout ``event`` on ``target`` (`registry.target`; None: an untracked run).

    >>> t = {"trackingUri": "http://m:5000", "registeredModel": "bot", "version": "2"}
    >>> r = queue({"productionVersion": "1"}, "canary", t, "ns/md")
    >>> r["canaryVersion"], r["productionVersion"], [a["op"] for a in r["pending"]]
    ('2', '1', ['setAlias', 'setTag'])
    """
    current = dict(current or {})
    if target is None:
        # A version with no registry entry: no alias can point at it; say so instead of keeping a stale one.
        return {**current, "message": "the served version is not registered in MLflow"} if current else {}
    if current.get("registeredModel") not in (None, target["registeredModel"]) or current.get("trackingUri") not in (
        None,
        target["trackingUri"],
    ):
        current = {}  # another model (the spec changed the FineTuneJob): its aliases are not ours to track
    version = target["version"]
    out = {**current, "trackingUri": target["trackingUri"], "registeredModel": target["registeredModel"]}
    if event in ("stable", "promote"):
        out.update(productionVersion=version, canaryVersion=None)  # None: removed by the merge patch
    elif event == "canary":
        out["canaryVersion"] = version
    elif event == "rollback":
        out["canaryVersion"] = None
    out["pending"] = [*(current.get("pending") or []), *registry.actions_for(event, version, deployment)]
    out["lastAttemptTime"] = None  # new calls go out on the next reconcile, whatever failed before
    return out


def sync(current: dict[str, Any] | None, settings: Settings, now: dt.datetime) -> dict[str, Any] | None:
    """Make the pending calls if it is time; the new status.registry, or None when there was nothing to do."""
    if not current or not current.get("pending"):
        return None
    last = current.get("lastAttemptTime")
    if last and (now - dt.datetime.fromisoformat(last.replace("Z", "+00:00"))).total_seconds() < registry.RETRY_SECONDS:
        return None
    pending, error = registry.apply(
        current["trackingUri"],
        current["registeredModel"],
        current["pending"],
        settings.mlflow_timeout_seconds,
        settings.mlflow_username,
        settings.mlflow_password,
        settings.mlflow_token,
    )
    if not pending:
        return {**current, "pending": None, "message": None, "lastAttemptTime": None}
    return {**current, "pending": pending, "message": error, "lastAttemptTime": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
