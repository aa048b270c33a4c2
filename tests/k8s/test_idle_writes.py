"""An idle ModelDeployment costs reads, not writes: over several rollout ticks the operator writes nothing.

Measured by the apiserver itself: its audit log names each write's namespace, so the window counts
every write to what the operator writes (Services, Deployments, HTTPRoutes, ModelDeployments and
their status) in this test's namespace, whoever made it; earlier tests' namespaces being torn down
meanwhile do not count. Events are counted as the objects about our ModelDeployments, and reads from
the apiserver's request counter.
"""

from __future__ import annotations

import time

from kubetune_dev.apiserver_metrics import Key, delta, request_counts
from kubetune_dev.audit import AuditLog
from tests.k8s.conftest import wait_for
from tests.k8s.test_modeldeployment_controller import md_phase, md_spec

OPERATOR_WRITTEN = {"services", "deployments", "httproutes", "modeldeployments", "modeldeployments/status"}
TICKS = 6  # the k8s tests' operator ticks every second (KUBETUNE_ROLLOUT_CHECK_SECONDS=1)


def test_idle_modeldeployments_write_nothing_over_several_ticks(k8s, operator, control_plane):
    audit = AuditLog(control_plane.audit_log)
    start = audit.end()
    # One at rest, one canary waiting for its next step (interval 1h): neither has anything to write.
    k8s.create_md("resting", md_spec())
    k8s.create_md("waiting", md_spec(canary={"steps": [50, 100], "interval": "1h"}))
    wait_for(md_phase(k8s, "resting", "Stable"), 30, "resting Stable")
    wait_for(md_phase(k8s, "waiting", "Stable"), 30, "waiting Stable")
    k8s.patch_md("waiting", {"adapter": {"uri": "/adapters/v2"}})
    wait_for(md_phase(k8s, "waiting", "Progressing"), 30, "waiting Progressing")
    for dep in ("resting-stable", "waiting-stable", "waiting-canary"):
        wait_for(lambda d=dep: k8s.deployment(d).status.ready_replicas == k8s.deployment(d).spec.replicas, 30, dep)
    wait_for(lambda: not k8s.get_md("waiting")["status"].get("canaryNotReadySince"), 30, "canary seen Ready")
    time.sleep(3)  # the last pod and Deployment status updates of the rollout settle
    # The log does see the operator's writes: getting here took some in this namespace.
    assert {"services", "modeldeployments/status"} <= {
        w.resource for w in audit.writes_since(start) if w.namespace == k8s.ns
    }

    events_before = len(k8s.events_for("resting")) + len(k8s.events_for("waiting"))
    before, mark = request_counts(control_plane), audit.end()
    time.sleep(TICKS)
    seen = delta(request_counts(control_plane), before)

    writes = [w for w in audit.writes_since(mark) if w.namespace == k8s.ns and w.resource in OPERATOR_WRITTEN]
    assert writes == [], f"writes in {TICKS} idle ticks: {writes}"
    assert len(k8s.events_for("resting")) + len(k8s.events_for("waiting")) == events_before
    # The operator did tick: it read both ModelDeployments on (nearly) every tick.
    assert seen[Key("GET", "modeldeployments")] >= TICKS, seen
