"""The writes the test apiserver recorded in its audit log (kubetune_dev.controlplane writes one).

`apiserver_request_total` says how many writes there were, not where: other tests' namespaces being
torn down write Deployments and Services too. The audit log says which namespace and which client.

>>> line = ('{"verb":"patch","user":{"username":"kubetune-admin"},"userAgent":"kopf/1",'
...         '"objectRef":{"resource":"modeldeployments","namespace":"t-1","name":"a","subresource":"status"}}')
>>> Write.from_line(line)
Write(verb='patch', resource='modeldeployments/status', namespace='t-1', name='a', user_agent='kopf/1')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple


class Write(NamedTuple):
    verb: str
    resource: str  # "deployments", "modeldeployments/status"
    namespace: str | None
    name: str | None
    user_agent: str

    @classmethod
    def from_line(cls, line: str) -> Write:
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        return cls(event["verb"], resource, ref.get("namespace"), ref.get("name"), event.get("userAgent", ""))


class AuditLog:
    """Read the log from a mark on: ``mark = log.end(); ...; log.writes_since(mark)``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def end(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def writes_since(self, mark: int) -> list[Write]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        # The last line may be half written: only whole lines count.
        return [Write.from_line(line) for line in text.split("\n")[:-1] if line.strip()]
