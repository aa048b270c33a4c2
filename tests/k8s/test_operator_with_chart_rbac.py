"""The chart's RBAC is enough: the operator authenticates as the chart's ServiceAccount (a real
token from the TokenRequest API, not admin) and the FineTuneJob and ModelDeployment loops work."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubetune_dev.controlplane import ControlPlane
from tests.chart.helm import CHART, NAMESPACE, RELEASE, helm, helm_binary
from tests.k8s.conftest import OperatorProcess, wait_for


@pytest.fixture
def chart_operator(
    control_plane: ControlPlane, operator_process: OperatorProcess, tmp_path: Path
) -> Iterator[OperatorProcess]:
    if helm_binary() is None:
        pytest.skip("helm not built: run `bash hack/build-control-plane.sh --with-helm` (hack/setup.sh does)")
    args = ["--kubeconfig", str(control_plane.kubeconfig), "--namespace", NAMESPACE]
    # CRDs off (the suite installed them); the chart's own operator pod kept off the fake node.
    helm("install", RELEASE, str(CHART), *args, "--create-namespace", "--set", "crds.enabled=false",
         "--set", "nodeSelector.kubetune-chart-test=unschedulable")  # fmt: skip
    token = control_plane.kubectl("create", "token", RELEASE, "-n", NAMESPACE, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(control_plane.kubeconfig.read_text())
    admin["users"] = [{"name": "operator-sa", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "operator-sa"
    sa_kubeconfig = tmp_path / "operator-sa.kubeconfig"
    sa_kubeconfig.write_text(yaml.safe_dump(admin))
    operator_process.kill(signal.SIGTERM)  # one operator at a time
    op = OperatorProcess(sa_kubeconfig, tmp_path)
    op.start()
    yield op
    op.kill(signal.SIGTERM)
    helm("uninstall", RELEASE, *args, "--wait", "--timeout", "60s")
    operator_process.start()


def test_operator_runs_on_the_charts_rbac(k8s, chart_operator):
    k8s.create_ftj(
        "rbac-ftj",
        {
            "baseModel": {"name": "org/tiny-llama"},
            "dataset": {"uri": "/data/support.jsonl"},
            "output": {"uri": "/models/out"},
            "image": "kubetune.test/trainer:kwok-succeed",
            "evaluation": {"gates": {"maxPerplexity": 10}},  # without gates a run is never rolled out
        },
    )
    status = wait_for(lambda: (k8s.get_ftj("rbac-ftj").get("status") or {}).get("phase") == "Succeeded"
                      and k8s.get_ftj("rbac-ftj")["status"], 60, "FineTuneJob Succeeded")  # fmt: skip
    assert status["metrics"]["evalLoss"] == 1.25  # read from the pod's termination message (pods: get, list)
    wait_for(lambda: any(e.reason == "TrainingSucceeded" for e in k8s.events_for("rbac-ftj")), 20, "events")

    spec = {
        "baseModel": {"uri": "/models/base"},
        "adapter": {"fineTuneJobRef": {"name": "rbac-ftj"}},
        "resources": {"gpus": 0},
        "canary": {"steps": [50, 100], "interval": "1s"},
    }
    k8s.create_md("rbac-md", spec)
    wait_for(lambda: (k8s.get_md("rbac-md").get("status") or {}).get("phase") == "Stable", 30, "Stable")
    k8s.patch_md("rbac-md", {"adapter": {"fineTuneJobRef": None, "uri": "/adapters/v2"}})
    wait_for(lambda: k8s.get_md("rbac-md")["status"].get("phase") == "Promoted", 60, "Promoted")
    # RBAC denials name the user; other 403s (e.g. an earlier test's namespace terminating) are not ours.
    denials = [
        line for line in chart_operator.log_text().splitlines() if 'forbidden: User "system:serviceaccount' in line
    ]
    assert denials == [], denials[:3]
