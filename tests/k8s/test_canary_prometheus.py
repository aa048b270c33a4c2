"""Prometheus-gated canaries end to end, with real parts only.

The operator runs against the real apiserver; the local executor (a kubelet stand-in) runs each
stable and canary pod as a real `kubetune_server` process serving the tiny model with a LoRA
adapter; a real Prometheus scrapes those processes through file-based service discovery; a
bounded load generator sends completions to every serving pod alike (a Service's replica-ratio
split). Analysis queries are the operator's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune_operator.local_executor import LocalExecutor, Targets
from tests.k8s.conftest import wait_for
from tests.support.loadgen import completion_body, run_load
from tests.support.prometheus import PrometheusServer, prometheus_binary_or_skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny base model and two different (untrained, non-zero) LoRA adapters for it."""
    import peft
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.tiny_model import ensure_tiny_model

    root = tmp_path_factory.mktemp("serving-models")
    base = ensure_tiny_model(root / "base")
    out = {"base": base}
    for seed, name in ((1, "v1"), (2, "v2")):
        import torch

        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base)
        cfg = peft.LoraConfig(
            task_type=peft.TaskType.CAUSAL_LM, r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        peft.get_peft_model(model, cfg).save_pretrained(root / name)
        out[name] = root / name
    return out


class Fanout:
    """Forwards the executor's serving endpoints to whichever Prometheus the current test runs."""

    def __init__(self) -> None:
        self.prometheus: PrometheusServer | None = None
        self.latest: Targets = []

    def __call__(self, targets: Targets) -> None:
        self.latest = targets
        if self.prometheus is not None:
            self.prometheus.set_targets(targets)


@pytest.fixture(scope="module")
def executor(api, control_plane, tmp_path_factory) -> Iterator[tuple[LocalExecutor, Fanout]]:
    fanout = Fanout()
    ex = LocalExecutor(api, tmp_path_factory.mktemp("pods"), tmp_path_factory.mktemp("pvc"), control_plane.kubeconfig,
                       node="local", on_targets=fanout)  # fmt: skip
    ex.register_node()
    thread = threading.Thread(target=ex.serve, daemon=True)
    thread.start()
    yield ex, fanout
    ex.stop.set()
    thread.join(timeout=15)


@pytest.fixture
def prometheus(executor) -> Iterator[PrometheusServer]:
    prometheus_binary_or_skip()
    _, fanout = executor
    with PrometheusServer(scrape_interval="1s") as prom:
        fanout.prometheus = prom
        prom.set_targets(fanout.latest)
        yield prom
        fanout.prometheus = None


class Load:
    """Completions to every serving pod of one ModelDeployment, in small bounded batches, until stopped."""

    def __init__(self, executor: LocalExecutor, namespace: str, max_seconds: float = 240) -> None:
        self.executor, self.ns = executor, namespace
        self.stop = threading.Event()
        self.sent = 0
        self.deadline = time.monotonic() + max_seconds
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            urls = {f"http://{ep}": 1.0 for ep, labels in self.executor.targets() if labels.get("namespace") == self.ns}
            if not urls:
                time.sleep(0.5)
                continue
            result = run_load(
                urls, max_requests=16, max_duration=2.0, concurrency=2, body=completion_body(max_tokens=4), timeout=20
            )
            self.sent += len(result.records)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def md_spec(models: dict[str, Path], prometheus: PrometheusServer, **canary: Any) -> dict[str, Any]:
    analysis = {
        "prometheus": {"address": prometheus.url},
        "minRequests": 5,
        "latencyP99Ratio": 2.0,
        "maxErrorRate": 0.05,
        "noDataLimit": 30,
    }
    return {
        "baseModel": {"uri": str(models["base"])},
        "adapter": {"uri": str(models["v1"])},
        "replicas": 2,
        "resources": {"gpus": 0, "nodeSelector": {"kubernetes.io/hostname": "local"}},
        "canary": {"steps": [50, 100], "interval": "10s", "analysis": analysis, **canary},
    }


def phase(k8s, name: str, *phases: str):
    def check():
        status = k8s.get_md(name).get("status") or {}
        return status if status.get("phase") in phases else None

    return check


def serving(executor: LocalExecutor, ns: str, track: str) -> int:
    return sum(
        1
        for _, labels in executor.targets()
        if labels.get("namespace") == ns and labels.get("kubetune_io_track") == track
    )


def start_stable(k8s, executor, models, prometheus, name: str) -> None:
    k8s.create_md(name, md_spec(models, prometheus))
    wait_for(phase(k8s, name, "Stable"), 30, "Stable")
    wait_for(lambda: serving(executor, k8s.ns, "stable") == 2, 60, "two stable server processes")


def test_healthy_canary_is_promoted_step_by_step(k8s, operator, executor, prometheus, models):
    ex, _ = executor
    start_stable(k8s, ex, models, prometheus, "healthy")
    with Load(ex, k8s.ns):
        k8s.patch_md("healthy", {"adapter": {"uri": str(models["v2"])}})
        wait_for(lambda: serving(ex, k8s.ns, "canary") == 1, 60, "a canary server process")
        status = wait_for(phase(k8s, "healthy", "Promoted", "RolledBack"), 180, "a decision")
    assert status["phase"] == "Promoted", status.get("message")
    checks = [a for a in status["analysis"] if a["check"] == "latencyP99Ratio" and a["verdict"] == "Pass"]
    assert {a["step"] for a in checks} == {50, 100}
    assert all(0 < a["value"] <= 2.0 for a in checks)
    assert any(a["check"] == "requests" and a["verdict"] == "Pass" and a["value"] >= 5 for a in status["analysis"])


def test_slow_canary_is_rolled_back_at_the_first_step(k8s, operator, executor, prometheus, models):
    ex, _ = executor
    start_stable(k8s, ex, models, prometheus, "slow")
    with Load(ex, k8s.ns):
        k8s.patch_md("slow", {"builtin": {"extraArgs": ["--inject-latency-ms", "1500"]}})
        status = wait_for(phase(k8s, "slow", "RolledBack", "Promoted"), 180, "a decision")
    assert status["phase"] == "RolledBack"
    assert "analysis failed at 50%" in status["message"] and "latencyP99Ratio" in status["message"]
    failed = [a for a in status["analysis"] if a["verdict"] == "Fail"]
    assert (
        failed
        and failed[0]["check"] == "latencyP99Ratio"
        and failed[0]["value"] > 2.0
        and failed[0]["threshold"] == "<= 2"
    )
    assert k8s.deployment("slow-canary").spec.replicas == 0
    # Posted right after the status patch, so it may trail the status this test just read.
    wait_for(lambda: any(e.reason == "RolledBack" for e in k8s.events_for("slow")), 15, "a RolledBack event")


def test_canary_without_traffic_pauses_and_never_promotes(k8s, operator, executor, prometheus, models):
    ex, _ = executor
    start_stable(k8s, ex, models, prometheus, "idle")
    k8s.patch_md("idle", {"adapter": {"uri": str(models["v2"])}})
    status = wait_for(phase(k8s, "idle", "Paused"), 60, "Paused for lack of data")
    assert "waiting for data" in status["message"] and "requests" in status["message"]
    time.sleep(15)
    status = k8s.get_md("idle")["status"]
    assert status["phase"] == "Paused" and status["currentStep"] == 0
    assert not [a for a in status["analysis"] if a["verdict"] == "Pass" and a["check"] == "latencyP99Ratio"]


def test_prometheus_down_mid_rollout_pauses_instead_of_promoting(k8s, operator, executor, prometheus, models):
    ex, fanout = executor
    start_stable(k8s, ex, models, prometheus, "blind")
    with Load(ex, k8s.ns):
        k8s.patch_md("blind", {"adapter": {"uri": str(models["v2"])}, "canary": {"interval": "20s"}})
        wait_for(phase(k8s, "blind", "Progressing"), 30, "Progressing")
        fanout.prometheus = None
        prometheus.stop()
        status = wait_for(phase(k8s, "blind", "Paused", "Promoted", "RolledBack"), 90, "a decision without Prometheus")
        assert status["phase"] == "Paused"
        errors = [a for a in status["analysis"] if a["verdict"] == "Error"]
        assert errors and "Prometheus unavailable" in errors[0]["message"]
        time.sleep(10)
        assert k8s.get_md("blind")["status"]["phase"] == "Paused"


def advertise_gpus(k8s, count: int | None) -> None:
    """Let the local node accept GPU pods (its processes still run on CPU), or stop that (None)."""
    value = None if count is None else str(count)
    k8s.core.patch_node_status(
        "local", {"status": {"capacity": {"nvidia.com/gpu": value}, "allocatable": {"nvidia.com/gpu": value}}}
    )


def test_too_few_requests_gate_every_verdict_and_say_why(k8s, operator, executor, prometheus, models):
    """One slow canary with more checks than data: minRequests never met (so the latency Fail it would
    get is not acted on), a GPU gate on a server that exports no GPU series (Skipped), and a custom
    query with a PromQL syntax error (Error, with Prometheus' own message)."""
    ex, _ = executor
    advertise_gpus(k8s, 4)
    try:
        spec = md_spec(models, prometheus)
        spec["resources"]["gpus"] = 1
        spec["canary"]["analysis"].update(
            minRequests=100000,
            noDataLimit=50,
            queries=[{"name": "typo", "query": "sum(rate(kubetune_requests_total{ {{canary}} }[1m])", "max": 1}],
        )
        k8s.create_md("gated", spec)
        stable = wait_for(phase(k8s, "gated", "Stable"), 30, "Stable")["stableVersion"]
        wait_for(lambda: serving(ex, k8s.ns, "stable") == 2, 60, "two stable server processes")

        def gated_fail():
            status = k8s.get_md("gated").get("status") or {}
            entries = status.get("analysis") or []
            latency = [a for a in entries if a["check"] == "latencyP99Ratio" and "would be Fail" in a["message"]]
            return status if latency else None

        with Load(ex, k8s.ns):
            k8s.patch_md("gated", {"builtin": {"extraArgs": ["--inject-latency-ms", "1500"]}})
            status = wait_for(gated_fail, 120, "an analysis whose latency Fail was not acted on")
    finally:
        advertise_gpus(k8s, None)
    assert status["phase"] == "Paused" and status["currentStep"] == 0 and status["stableVersion"] == stable
    assert not status.get("failures") and status["canaryVersion"]
    assert "waiting for data" in status["message"] and "minRequests" in status["message"]
    last = {a["check"]: a for a in status["analysis"] if a["time"] == status["analysis"][-1]["time"]}
    assert last["requests"]["verdict"] == "NoData" and "canary requests in the window" in last["requests"]["message"]
    latency = last["latencyP99Ratio"]
    assert latency["verdict"] == "NoData" and "not acted on" in latency["message"]
    assert latency["value"] > 1.2 and latency["low"] <= latency["value"] <= latency["high"]
    assert last["gpuMemoryUtilization"]["verdict"] == "Skipped"
    assert "exports no GPU memory series" in last["gpuMemoryUtilization"]["message"]
    typo = last["typo"]
    assert typo["verdict"] == "Error" and "Prometheus rejected the query" in typo["message"]
    assert "parse error" in typo["message"] and "unavailable" not in typo["message"]
    # Nothing was decided on any of it.
    assert not [a for a in status["analysis"] if a["verdict"] in ("Pass", "Fail")]
    assert not [e for e in k8s.events_for("gated") if e.reason in ("RolledBack", "Promoted", "StepAdvanced")]


def test_canary_that_never_gets_ready_is_rolled_back_at_its_progress_deadline(
    k8s, operator, executor, prometheus, models
):
    ex, _ = executor
    start_stable(k8s, ex, models, prometheus, "stuck")
    stable = k8s.get_md("stuck")["status"]["stableVersion"]
    # The new version's pods ask for a node that does not exist: Pending, never Ready.
    nowhere = {"gpus": 0, "nodeSelector": {"kubernetes.io/hostname": "nowhere"}}
    k8s.patch_md("stuck", {"resources": nowhere, "canary": {"progressDeadline": "15s"}})

    def waiting():
        status = k8s.get_md("stuck").get("status") or {}
        return status if status.get("canaryNotReadySince") else None

    status = wait_for(waiting, 30, "the canary seen not Ready")
    assert status["phase"] == "Progressing" and "waiting for canary pods to be Ready (0/1)" in status["message"]
    status = wait_for(phase(k8s, "stuck", "RolledBack", "Promoted"), 60, "a decision")
    assert status["phase"] == "RolledBack" and status["stableVersion"] == stable
    assert "canary pods not Ready within progressDeadline 15s: 0/1 Ready" in status["message"]
    assert not status.get("analysis")  # no analysis ran on pods that never served
    assert not status.get("canaryNotReadySince")
    assert k8s.deployment("stuck-canary").spec.replicas == 0
    wait_for(lambda: any(e.reason == "RolledBack" for e in k8s.events_for("stuck")), 15, "a RolledBack event")
