"""An idle ModelDeployment costs reads, not writes: over several rollout ticks the operator writes nothing.

Measured from the apiserver's own `apiserver_request_total`. The counter has no per-client label,
so the window counts only what the operator writes (services, deployments, HTTPRoutes,
ModelDeployments and their status; other components write these only while objects change, and
namespaces of earlier tests are gone first), and Events are counted as the objects about our
ModelDeployments.
"""

from __future__ import annotations

import time

from kubernetes import client

from kubetune_dev.apiserver_metrics import Key, delta, request_counts
from tests.k8s.conftest import wait_for
from tests.k8s.test_modeldeployment_controller import md_phase, md_spec

OPERATOR_WRITTEN = {"services", "deployments", "httproutes", "modeldeployments", "modeldeployments/status"}
TICKS = 6  # the k8s tests' operator ticks every second (KUBETUNE_ROLLOUT_CHECK_SECONDS=1)


def test_idle_modeldeployments_write_nothing_over_several_ticks(k8s, operator, control_plane):
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
    core = client.CoreV1Api(k8s.client)
    wait_for(lambda: all(ns.status.phase != "Terminating" for ns in core.list_namespace().items), 90, "quiet")
    time.sleep(3)  # the last pod and Deployment status updates of the rollout settle

    events_before = len(k8s.events_for("resting")) + len(k8s.events_for("waiting"))
    before = request_counts(control_plane)
    time.sleep(TICKS)
    seen = delta(request_counts(control_plane), before)

    writes = {k: n for k, n in seen.items() if k.write and k.resource in OPERATOR_WRITTEN}
    assert writes == {}, f"writes in {TICKS} idle ticks: {writes}"
    assert len(k8s.events_for("resting")) + len(k8s.events_for("waiting")) == events_before
    # The operator did tick: it read both ModelDeployments on (nearly) every tick.
    assert seen[Key("GET", "modeldeployments")] >= TICKS, seen
