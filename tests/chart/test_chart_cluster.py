"""The rendered chart against the real test apiserver: every scenario passes server-side validation, and
an installed release grants the operator and the trainer what they need and nothing more."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune_dev.controlplane import ControlPlane
from tests.chart.helm import CHART, NAMESPACE, RELEASE, SCENARIOS, helm, render, render_text, values_args

pytestmark = pytest.mark.k8s

SERVICEMONITOR_CRD = Path(__file__).with_name("servicemonitor-crd.yaml")
# Namespaces the scenarios put objects in (ci/namespaced-values.yaml watches ml-team).
NAMESPACES = (NAMESPACE, "ml-team", "ml-research")
OPERATOR = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    for ns in NAMESPACES:
        control_plane.kubectl("create", "namespace", ns, check=False)  # AlreadyExists is fine
    control_plane.kubectl("apply", "--server-side", "-f", str(SERVICEMONITOR_CRD))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "--timeout=60s"
    )
    yield control_plane
    control_plane.kubectl("delete", "-f", str(SERVICEMONITOR_CRD), "--wait=false", check=False)
    control_plane.kubectl("delete", "namespace", *NAMESPACES, "--wait=false", check=False)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_server_side_dry_run(cluster: ControlPlane, scenario: str) -> None:
    """The apiserver accepts every object (schemas, CRD structure, RBAC escalation checks), changing nothing."""
    objects = render(scenario)
    proc = cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=kubetune-chart-test", "--dry-run=server",
        "-f", "-", input=render_text(scenario), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    applied = [line for line in proc.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(applied) == len(objects), proc.stdout


def can_i(cp: ControlPlane, who: str, verb: str, resource: str, namespace: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={who}"]
    if "/" in resource:  # "finetunejobs.kubetune.io/status" -> --subresource
        resource, sub = resource.split("/")
        args[3:4] = [resource, f"--subresource={sub}"]
    args += ["-n", namespace] if namespace else []
    proc = cp.kubectl(*args, check=False)
    assert proc.stdout.strip() in ("yes", "no"), proc.stdout + proc.stderr
    return proc.stdout.strip() == "yes"


@pytest.fixture
def installed(cluster: ControlPlane, request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """A real `helm install` (CRDs off: the suite's CRDs are not Helm's); the pod is kept unschedulable."""
    scenario = request.param
    args = ["--kubeconfig", str(cluster.kubeconfig), "--namespace", NAMESPACE]
    proc = helm(
        "install", RELEASE, str(CHART), *args, *values_args(scenario),
        "--set", "crds.enabled=false", "--set", "nodeSelector.kubetune-chart-test=unschedulable",
    )  # fmt: skip
    assert "kubectl get ftj" in proc.stdout  # NOTES.txt rendered
    yield cluster
    helm("uninstall", RELEASE, *args, "--wait", "--timeout", "60s")
    assert cluster.kubectl("get", "clusterrole", f"{RELEASE}-trainer", check=False).returncode != 0


@pytest.mark.parametrize("installed", ["defaults"], indirect=True)
def test_cluster_wide_operator_rbac(installed: ControlPlane) -> None:
    cp = installed
    for ns in ("ml-team", "default"):
        assert can_i(cp, OPERATOR, "create", "jobs.batch", ns)
        assert can_i(cp, OPERATOR, "patch", "modeldeployments.kubetune.io/status", ns)
        assert can_i(cp, OPERATOR, "create", "httproutes.gateway.networking.k8s.io", ns)
        assert not can_i(cp, OPERATOR, "get", "secrets", ns)
        assert not can_i(cp, OPERATOR, "delete", "configmaps", ns)
        assert not can_i(cp, OPERATOR, "create", "pods", ns)
    assert can_i(cp, OPERATOR, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can_i(cp, OPERATOR, "create", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can_i(cp, OPERATOR, "create", "clusterroles.rbac.authorization.k8s.io")


@pytest.mark.parametrize("installed", ["namespaced"], indirect=True)
def test_namespaced_operator_and_trainer_rbac(installed: ControlPlane) -> None:
    cp = installed
    assert can_i(cp, OPERATOR, "create", "jobs.batch", "ml-team")
    assert can_i(cp, OPERATOR, "patch", "finetunejobs.kubetune.io/status", "ml-team")
    assert not can_i(cp, OPERATOR, "create", "jobs.batch", "default")  # only the watched namespace
    assert not can_i(cp, OPERATOR, "list", "finetunejobs.kubetune.io", "ml-research")
    assert can_i(cp, OPERATOR, "list", "customresourcedefinitions.apiextensions.k8s.io")
    assert can_i(cp, OPERATOR, "list", "namespaces")
    # The trainer in ml-team patches its FineTuneJob's status there; nothing else, nowhere else.
    trainer = "system:serviceaccount:ml-team:kubetune-trainer"
    assert can_i(cp, trainer, "get", "finetunejobs.kubetune.io", "ml-team")
    assert can_i(cp, trainer, "patch", "finetunejobs.kubetune.io/status", "ml-team")
    assert not can_i(cp, trainer, "patch", "finetunejobs.kubetune.io", "ml-team")
    assert not can_i(cp, trainer, "create", "pods", "ml-team")
    assert not can_i(cp, trainer, "patch", "finetunejobs.kubetune.io/status", "ml-research")
    assert can_i(
        cp,
        "system:serviceaccount:ml-research:kubetune-trainer",
        "patch",
        "finetunejobs.kubetune.io/status",
        "ml-research",
    )
    assert cp.kubectl("get", "serviceaccount", "kubetune-trainer", "-n", "ml-research", check=False).returncode == 0
