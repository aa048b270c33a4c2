"""Write once: a FineTuneJob's status patch (and its Event) only when it changes something.

Room: the reconcile layer (kube I/O through `Kube`); shared by finetunejob.py and its helper modules.
"""

from __future__ import annotations

from typing import Any

from kubetune_operator import api
from kubetune_operator.kube import Kube


def patch_and_tell(
    kube: Kube, ftj: dict[str, Any], patch: dict[str, Any], event_type: str, reason: str, message: str
) -> None:
    """Patch the status and post one Event, both only when the patch changes something (write once)."""
    if same(ftj.get("status") or {}, patch):
        return
    meta = ftj["metadata"]
    kube.patch_status(api.FINETUNEJOBS, meta["namespace"], meta["name"], patch)
    kube.event(ftj, event_type, reason, message)


def same(status: dict[str, Any], patch: dict[str, Any]) -> bool:
    """True when applying `patch` would change nothing but condition timestamps."""

    def strip(value: Any) -> Any:
        if isinstance(value, list):
            return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in value]
        return value

    return all(strip(status.get(k)) == strip(v) for k, v in patch.items())
