"""A ModelDeployment's status over one reconcile: built in memory, patched once, skipped when unchanged.

The patch carries the resourceVersion the status was read at (or of our own last write), so of two
runs that read the same status only one writes (see StaleStatus); what a step announces (Events,
the operator's metrics) happens only after its status was written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune_operator import api
from kubetune_operator.conditions import set_condition
from kubetune_operator.kube import Kube


class StaleStatus(Exception):
    """Another reconcile of the same object (the resume handler and the timer after a restart)
    patched its status after we read it: ours is based on old news, so this run stops here."""


class StatusWriter:
    def __init__(self, kube: Kube, md: dict[str, Any], now: dt.datetime) -> None:
        self.kube, self.md, self.now = kube, md, now
        meta = md["metadata"]
        self.ns, self.name = meta["namespace"], meta["name"]
        self.generation = int(meta.get("generation", 1))
        self.resource_version: str | None = meta.get("resourceVersion")
        self.read: dict[str, Any] = md.get("status") or {}
        self.status: dict[str, Any] = dict(self.read)  # what it says once this run's patch is written
        self.pending: dict[str, Any] = {}
        self._after: list[Callable[[], None]] = []

    def patch(self, patch: dict[str, Any], condition: tuple[str, bool, str, str] | None = None) -> None:
        """JSON merge patch semantics (None removes a field), applied in memory until `flush`."""
        patch = {"observedGeneration": self.generation, **patch}
        if condition is not None:
            type_, on, reason, message = condition
            stamp = self.now.strftime("%Y-%m-%dT%H:%M:%SZ")
            patch["conditions"] = set_condition(
                self.status.get("conditions"), type_, on, reason, message, self.generation, stamp
            )
        self.pending.update(patch)
        self.status = {**self.status, **patch}

    def event(self, type_: str, reason: str, message: str) -> None:
        self.then(lambda: self.kube.event(self.md, type_, reason, message))

    def then(self, announce: Callable[[], None]) -> None:
        """Run `announce` once the status is written (never when another run wrote first)."""
        self._after.append(announce)

    def flush(self) -> None:
        if self.changed():
            try:
                rv = self.kube.patch_status(
                    api.MODELDEPLOYMENTS, self.ns, self.name, self.pending, self.resource_version
                )
            except ApiException as err:
                if err.status == 409:
                    raise StaleStatus() from err
                raise
            self.resource_version = rv
        self.read, self.pending = self.status, {}
        after, self._after = self._after, []
        for announce in after:
            announce()

    def changed(self) -> bool:
        return any(self.read.get(k) != v for k, v in self.pending.items())
