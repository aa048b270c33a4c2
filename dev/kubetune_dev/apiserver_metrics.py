"""What the test apiserver says it served: `apiserver_request_total` by verb and resource.

The counter has no per-client label, so callers attribute requests either by resource (kinds only the
operator writes) or by subtracting a window in which the operator was not running.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections import Counter
from typing import NamedTuple

from prometheus_client.parser import text_string_to_metric_families

from kubetune_dev.controlplane import ControlPlane

#: The apiserver's verbs that change something (server-side apply is counted as APPLY).
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})


class Key(NamedTuple):
    verb: str
    resource: str  # "deployments", "modeldeployments/status"

    @property
    def write(self) -> bool:
        return self.verb in WRITE_VERBS


def request_counts(cp: ControlPlane) -> Counter[Key]:
    """Requests served so far, summed over response codes, groups and scopes; resource requests only."""
    pki = cp.workdir / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    with urllib.request.urlopen(f"{cp.apiserver_url}/metrics", context=ctx, timeout=10) as resp:
        text = resp.read().decode()
    counts: Counter[Key] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name != "apiserver_request_total" or not labels.get("resource"):
                continue
            resource = labels["resource"] + (f"/{labels['subresource']}" if labels.get("subresource") else "")
            counts[Key(labels["verb"], resource)] += int(sample.value)
    return counts


def delta(after: Counter[Key], before: Counter[Key]) -> Counter[Key]:
    """after - before, keeping negative and zero entries out."""
    return Counter({k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0})
