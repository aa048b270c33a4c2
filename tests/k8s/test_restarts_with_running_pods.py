"""Restarts with real pods running: the operator and the local executor are separate processes, and
each can die without taking the other's work with it.

A Stable ModelDeployment's serving pod is a real `kubetune_server` process run by the executor.
SIGKILL the operator: the process keeps answering, and the restarted operator (with Kopf's liveness
endpoint up) leaves the deployment Stable, on the same pod. SIGKILL the executor: its processes end
with it, as containers end with their node. What the API says until a kubelet comes back is the
control plane's business (a node lifecycle controller would mark the pods not Ready; this test
control plane runs none, see kubetune_dev/controlplane.py). A new executor for the same Node does
what a kubelet does for pods whose containers are gone: the Deployment's pod (restartPolicy Always)
is started again, reported not Ready with one restart until its probe answers, then serves; a bare
pod with restartPolicy Never is reported Failed with exit code 137.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kubetune_dev.loadgen import completion_body
from tests.k8s.conftest import wait_for
from tests.k8s.test_finetunejob_preemption import PodLog, condition, exit_code

pytestmark = pytest.mark.slow
NODE = "local-restarts"
SLEEP = "import time; time.sleep(600)"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny base model and an (untrained, non-zero) LoRA adapter for it."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.tiny_model import ensure_tiny_model

    root = tmp_path_factory.mktemp("restart-models")
    base = ensure_tiny_model(root / "base")
    torch.manual_seed(1)
    cfg = peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=4, target_modules=["q_proj"], init_lora_weights=False)
    peft.get_peft_model(AutoModelForCausalLM.from_pretrained(base), cfg).save_pretrained(root / "v1")
    return {"base": base, "v1": root / "v1"}


def endpoints(executor: Any, ns: str) -> list[str]:
    return [ep for ep, labels in executor.targets() if labels.get("namespace") == ns]


def complete(endpoint: str) -> int:
    body = json.dumps(completion_body(max_tokens=2)).encode()
    req = urllib.request.Request(f"http://{endpoint}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return int(r.status)


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as r:
        return int(r.status)


def refused(endpoint: str) -> bool:
    try:
        complete(endpoint)
    except (urllib.error.URLError, OSError):
        return True
    return False


def serving_pod(k8s: Any) -> Any:
    (pod,) = k8s.core.list_namespaced_pod(k8s.ns, label_selector="app.kubernetes.io/instance=chat").items
    return pod


def md_status(k8s: Any) -> dict[str, Any]:
    return dict(k8s.get_md("chat").get("status") or {})


def test_pods_outlive_the_operator_and_come_back_with_the_executor(k8s, operator, executor, models, control_plane):
    k8s.create_md(
        "chat",
        {
            "baseModel": {"uri": str(models["base"])},
            "adapter": {"uri": str(models["v1"])},
            "replicas": 1,
            "builtin": {"extraArgs": ["--torch-threads", "1", "--max-new-tokens", "4"]},
            "resources": {"gpus": 0, "nodeSelector": {"kubernetes.io/hostname": NODE}},
        },
    )
    stable = wait_for(lambda: (s := md_status(k8s)).get("phase") == "Stable" and s, 60, "Stable")
    (endpoint,) = wait_for(lambda: endpoints(executor, k8s.ns), 180, "a Ready server process")
    assert complete(endpoint) == 200
    pod = serving_pod(k8s).metadata.name

    # The operator dies mid-life: the pod it created is the executor's, and keeps serving.
    operator.kill(signal.SIGKILL)
    assert [complete(endpoint) for _ in range(3)] == [200, 200, 200]
    operator.start()
    healthz = f"http://127.0.0.1:{operator.liveness_port}/healthz"
    wait_for(lambda: http_status(healthz) == 200, 60, "Kopf's liveness endpoint")
    time.sleep(5)  # several rollout ticks (KUBETUNE_ROLLOUT_CHECK_SECONDS=1) of the new operator
    after = md_status(k8s)
    assert after["phase"] == "Stable" and after["stableVersion"] == stable["stableVersion"], after
    assert serving_pod(k8s).metadata.name == pod and endpoints(executor, k8s.ns) == [endpoint]
    assert complete(endpoint) == 200

    # A bare pod that must not be restarted, next to the serving one.
    k8s.core.create_namespaced_pod(
        k8s.ns,
        {
            "metadata": {"name": "once"},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": NODE},
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [{"name": "main", "image": "any", "command": ["python", "-c", SLEEP]}],
            },
        },
    )
    wait_for(lambda: k8s.core.read_namespaced_pod("once", k8s.ns).status.phase == "Running", 60, "the bare pod Running")

    # The executor dies: its processes end with it, as containers end with their node.
    pods = PodLog(k8s)
    try:
        executor.kill(signal.SIGKILL)
        wait_for(lambda: refused(endpoint), 30, "the server process to end with the executor")
        executor.start()
        (again,) = wait_for(lambda: endpoints(executor, k8s.ns), 180, "the server process started again")
        assert complete(again) == 200
        once = wait_for(lambda: (p := k8s.core.read_namespaced_pod("once", k8s.ns)).status.phase == "Failed" and p,
                        30, "the bare pod reported Failed")  # fmt: skip
    finally:
        pods.stop()
    restarted = serving_pod(k8s)
    assert restarted.metadata.name == pod  # the same pod, its container started again
    # The new executor's log endpoint has a new port; it re-published it on the Node it took over.
    logged = control_plane.kubectl("logs", pod, "-n", k8s.ns).stdout
    assert logged and (executor.workdir / k8s.ns / pod / "container.log").read_text().startswith(logged)
    assert restarted.status.container_statuses[0].restart_count == 1
    assert condition(restarted, "Ready").status == "True"
    # Between the restart and the probe answering, the pod was reported not Ready.
    seen = [(p.status.container_statuses or [None])[0] for p in pods.seen(pod)]
    assert any(cs is not None and cs.restart_count == 1 and not cs.ready for cs in seen), seen
    assert exit_code(once) == 137
    assert once.status.container_statuses[0].state.terminated.reason == "ContainerStatusUnknown"
    assert md_status(k8s)["phase"] == "Stable"
