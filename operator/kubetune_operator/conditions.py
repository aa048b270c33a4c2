"""Kubernetes-shaped status conditions, as pure functions over lists of dicts."""

from __future__ import annotations

from typing import Any


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Return a new list with condition `type_` set; lastTransitionTime moves only when status flips.

    >>> c = set_condition([], "Running", True, "PodRunning", "", 1, "t0")
    >>> set_condition(c, "Running", True, "PodRunning", "still", 2, "t1")[0]["lastTransitionTime"]
    't0'
    """
    status_text = "Unknown" if status is None else ("True" if status else "False")
    out = []
    previous = None
    for cond in conditions or []:
        if cond.get("type") == type_:
            previous = cond
        else:
            out.append(dict(cond))
    changed = previous is None or previous.get("status") != status_text
    out.append(
        {
            "type": type_,
            "status": status_text,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": now if changed or previous is None else previous.get("lastTransitionTime", now),
        }
    )
    return sorted(out, key=lambda c: str(c["type"]))


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for cond in conditions or []:
        if cond.get("type") == type_:
            return cond
    return None


def waiting_patch(
    status: dict[str, Any],
    type_: str,
    reason: str,
    message: str,
    generation: int,
    now: str,
    keep_phase: bool = False,
) -> dict[str, Any]:
    """The status of a run that cannot start yet: condition `type_` False with the reason, the message, and
    phase Pending, except for a scheduled re-run (`keep_phase`), which waits behind the last run's outcome
    while that stays shown. No Job is created; a timer looks again.

    >>> p = waiting_patch({}, "SourcesReady", "WaitingForSources", "a is running", 3, "now")
    >>> p["phase"], p["conditions"][0]["status"], "phase" in waiting_patch({}, "X", "Y", "z", 1, "now", True)
    ('Pending', 'False', False)
    """
    conditions = set_condition(status.get("conditions"), type_, False, reason, message, generation, now)
    patch: dict[str, Any] = {"message": message, "observedGeneration": generation, "conditions": conditions}
    if not keep_phase:
        patch["phase"] = "Pending"
    return patch
