"""The ModelDeployment controller against the real apiserver: stable, canary steps, promotion,
rollback, the FineTuneJob closed loop, vLLM and Gateway API manifests, and operator restarts.

Analysis here is off (steps advance on time); Prometheus-gated analysis is tested with a real
Prometheus in tests/serving.
"""

from __future__ import annotations

import itertools
import signal
import time
import urllib.request
from typing import Any

from tests.k8s.conftest import wait_for


def md_spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "baseModel": {"uri": "/models/base"},
        "adapter": {"uri": "/adapters/v1"},
        "replicas": 2,
        "resources": {"gpus": 0},
        "canary": {"steps": [20, 50, 100], "interval": "2s"},
    }
    base.update(overrides)
    return base


def md_phase(k8s, name: str, *phases: str):
    def check():
        status = k8s.get_md(name).get("status") or {}
        return status if status.get("phase") in phases else None

    return check


def args_of(dep) -> list[str]:
    return dep.spec.template.spec.containers[0].args


def watch_weights(k8s, name: str, until: str, timeout: float) -> list[int]:
    """Canary weights seen (deduplicated, in order) until the phase is `until`."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = k8s.get_md(name).get("status") or {}
        weight = status.get("canaryWeight")
        if status.get("canaryVersion") and weight and (not seen or seen[-1] != weight):
            seen.append(weight)
        if status.get("phase") == until:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"{name} did not reach {until}; weights {seen}; status {k8s.get_md(name).get('status')}")


def test_new_adapter_rolls_out_step_by_step_and_is_promoted(k8s, operator):
    k8s.create_md("chat", md_spec())
    status = wait_for(md_phase(k8s, "chat", "Stable"), 30, "Stable")
    stable = k8s.deployment("chat-stable")
    assert "/adapters/v1" in args_of(stable) and stable.spec.replicas == 2
    assert {s.metadata.name for s in k8s.core.list_namespaced_service(k8s.ns).items} == {
        "chat",
        "chat-stable",
        "chat-canary",
    }
    v1 = status["stableVersion"]

    k8s.patch_md("chat", {"adapter": {"uri": "/adapters/v2"}})
    wait_for(md_phase(k8s, "chat", "Progressing"), 30, "Progressing")
    canary = k8s.deployment("chat-canary")
    assert "/adapters/v2" in args_of(canary) and canary.spec.replicas == 1  # 20% of 2, at least one
    assert "/adapters/v1" in args_of(k8s.deployment("chat-stable"))  # stable untouched during the canary
    weights = watch_weights(k8s, "chat", "Promoted", 60)
    assert weights == [20, 50, 100]
    status = k8s.get_md("chat")["status"]
    assert status["stableVersion"] != v1 and status.get("canaryVersion") is None
    assert "/adapters/v2" in args_of(k8s.deployment("chat-stable"))
    wait_for(
        lambda: not any(d.metadata.name == "chat-canary" for d in k8s.apps.list_namespaced_deployment(k8s.ns).items),
        30,
        "canary removed",
    )
    reasons = [e.reason for e in k8s.events_for("chat")]
    assert reasons.count("StepAdvanced") == 2 and "Promoted" in reasons and "CanaryStarted" in reasons
    # The operator's own metrics count the decisions (dashboards and alerts read these).
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as resp:
        families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    decisions = {
        s.labels["decision"]: s.value
        for s in families["kubetune_rollouts"].samples
        if s.name == "kubetune_rollouts_total" and s.labels["namespace"] == k8s.ns and s.labels["name"] == "chat"
    }
    assert decisions == {"start": 1.0, "advance": 2.0, "promote": 1.0}


def test_abort_rolls_back_and_keeps_stable(k8s, operator):
    k8s.create_md("abortme", md_spec(canary={"steps": [10, 100], "interval": "1h"}))
    wait_for(md_phase(k8s, "abortme", "Stable"), 30, "Stable")
    k8s.patch_md("abortme", {"adapter": {"uri": "/adapters/bad"}})
    wait_for(md_phase(k8s, "abortme", "Progressing"), 30, "Progressing")
    k8s.patch_md("abortme", {"canary": {"abort": True}})
    status = wait_for(md_phase(k8s, "abortme", "RolledBack"), 30, "RolledBack")
    assert "aborted" in status["message"] and status["canaryWeight"] == 0 and status["rolledBackVersion"]
    assert k8s.deployment("abortme-canary").spec.replicas == 0
    assert "/adapters/v1" in args_of(k8s.deployment("abortme-stable"))
    assert any(e.reason == "RolledBack" and e.type == "Warning" for e in k8s.events_for("abortme"))
    time.sleep(3)  # the rolled-back version is not retried until the spec changes again
    assert k8s.get_md("abortme")["status"]["phase"] == "RolledBack"


def run_ref(run: int) -> str:
    """What a ModelDeployment serves from run N of the kwok trainer: its adapter, with the recorded digest."""
    return f"/models/out/run-{run}#digest=sha256:kwok"


def test_finetunejob_runs_that_pass_evaluation_roll_out_and_failed_gates_do_not(k8s, operator):
    ftj = {
        "baseModel": {"name": "org/tiny-llama"},
        "dataset": {"uri": "/data/support.jsonl"},
        "output": {"uri": "/models/out"},
        "image": "kubetune.test/trainer:kwok-succeed",
        "resources": {"gpus": 1},
        "evaluation": {"gates": {"maxPerplexity": 10}},  # without gates a run is never rolled out
    }
    k8s.create_ftj("support", ftj)
    k8s.create_md("support-chat", md_spec(adapter={"fineTuneJobRef": {"name": "support"}}))
    status = wait_for(md_phase(k8s, "support-chat", "Stable"), 60, "Stable with run 1's adapter")
    assert status["stableAdapterUri"] == run_ref(1)

    k8s.patch_ftj("support", {"training": {"learningRate": 0.0001}})  # retrain: run 2 passes its gates
    status = wait_for(md_phase(k8s, "support-chat", "Promoted"), 90, "run 2 promoted")
    assert status["stableAdapterUri"] == run_ref(2)

    k8s.patch_ftj("support", {"image": "kubetune.test/trainer:kwok-evalfail"})  # run 3 fails its gates
    wait_for(lambda: (k8s.get_ftj("support").get("status") or {}).get("run") == 3
             and k8s.get_ftj("support")["status"].get("phase") == "Succeeded", 60, "run 3 done")  # fmt: skip
    wait_for(lambda: k8s.get_md("support-chat")["status"].get("skippedAdapterUri") == run_ref(3), 30, "skip")
    time.sleep(3)
    status = k8s.get_md("support-chat")["status"]
    assert status["phase"] == "Promoted" and status["stableAdapterUri"] == run_ref(2)
    assert status.get("canaryVersion") is None
    assert any(e.reason == "EvalGateFailed" for e in k8s.events_for("support-chat"))


def test_vllm_runtime_and_gateway_route_are_accepted_by_the_apiserver(k8s, operator):
    spec = md_spec(
        runtime="vllm",
        resources={"gpus": 1},
        vllm={"gpuMemoryUtilization": 0.85},
        traffic="gatewayAPI",
        gateway={"parentRefs": [{"name": "inference-gateway"}]},
        canary={"steps": [25, 100], "interval": "1h"},
    )
    k8s.create_md("llm", spec)
    wait_for(md_phase(k8s, "llm", "Stable"), 30, "Stable")
    container = k8s.deployment("llm-stable").spec.template.spec.containers[0]
    assert container.command == ["vllm", "serve"] and "--enable-lora" in container.args
    assert "adapter=/adapters/v1" in container.args
    k8s.patch_md("llm", {"adapter": {"uri": "/adapters/v2"}})
    wait_for(md_phase(k8s, "llm", "Progressing"), 30, "Progressing")

    def route_weights():
        route = k8s.custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", k8s.ns, "httproutes", "llm")
        return [(b["name"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]]

    assert wait_for(lambda: route_weights() == [("llm-stable", 75), ("llm-canary", 25)], 20, "route 75/25")


def test_operator_restart_mid_rollout_continues_from_status(k8s, operator):
    k8s.create_md("resilient", md_spec(canary={"steps": [10, 40, 70, 100], "interval": "3s"}))
    wait_for(md_phase(k8s, "resilient", "Stable"), 30, "Stable")
    k8s.patch_md("resilient", {"adapter": {"uri": "/adapters/v2"}})
    wait_for(lambda: (k8s.get_md("resilient")["status"].get("canaryWeight") or 0) >= 40, 30, "step 40%")
    operator.kill(signal.SIGKILL)
    before = k8s.get_md("resilient")["status"]
    time.sleep(4)
    operator.start()
    weights = watch_weights(k8s, "resilient", "Promoted", 60)
    assert weights == sorted(weights) and weights[0] >= before["canaryWeight"]  # never restarted from step 0
    assert k8s.get_md("resilient")["status"]["stableVersion"] == before["canaryVersion"]


def test_operator_killed_between_steps_posts_each_step_once_and_skips_none(k8s, operator):
    """On restart the resume handler and the timer both reconcile; with the step already due, both
    would advance it. The status patch is conditional on the resourceVersion read, so one wins."""
    steps = [10, 40, 70, 100]
    k8s.create_md("restarted", md_spec(canary={"steps": steps, "interval": "3s"}))
    wait_for(md_phase(k8s, "restarted", "Stable"), 30, "Stable")
    k8s.patch_md("restarted", {"adapter": {"uri": "/adapters/v2"}})
    for _ in range(2):  # two restarts, each with a step due the moment the operator is back
        weight = wait_for(lambda: k8s.get_md("restarted")["status"].get("canaryWeight"), 30, "a canary step")
        wait_for(lambda w=weight: k8s.get_md("restarted")["status"].get("canaryWeight") != w, 30, "the next step")
        operator.kill(signal.SIGKILL)
        time.sleep(4)  # longer than the interval: the step is due at restart
        operator.start()
    weights = watch_weights(k8s, "restarted", "Promoted", 60)
    assert weights == sorted(weights)

    def advanced() -> list[str]:
        events = [e for e in k8s.events_for("restarted") if e.reason == "StepAdvanced"]
        return [e.message for e in events for _ in range(e.count or 1)]

    expected = [f"step {a}% passed; moving to {b}%" for a, b in itertools.pairwise(steps)]
    assert wait_for(lambda: sorted(advanced()) == sorted(expected) or None, 15, "one StepAdvanced per step")
    promoted = [e for e in k8s.events_for("restarted") if e.reason == "Promoted"]
    assert len(promoted) == 1


def test_manual_gate_and_manual_promotion_wait_for_annotations(k8s, operator):
    spec = md_spec(canary={"steps": [30, 100], "interval": "1s", "manualGate": True, "autoPromote": False})
    k8s.create_md("gated", spec)
    wait_for(md_phase(k8s, "gated", "Stable"), 30, "Stable")
    k8s.patch_md("gated", {"adapter": {"uri": "/adapters/v2"}})
    status = wait_for(md_phase(k8s, "gated", "Paused"), 30, "Paused at the gate")
    assert "kubetune.io/approve-step=100" in status["message"] and status["canaryWeight"] == 30
    time.sleep(3)
    assert k8s.get_md("gated")["status"]["canaryWeight"] == 30  # no approval, no progress

    def annotate(key: str, value: str) -> None:
        k8s.custom.patch_namespaced_custom_object(
            "kubetune.io", "v1alpha1", k8s.ns, "modeldeployments", "gated", {"metadata": {"annotations": {key: value}}}
        )

    annotate("kubetune.io/approve-step", "100")
    status = wait_for(
        lambda: k8s.get_md("gated")["status"].get("awaitingPromotion") and k8s.get_md("gated")["status"],
        30,
        "all steps done",
    )
    assert (
        status["phase"] == "Paused"
        and status["canaryWeight"] == 100
        and "kubetune.io/promote=true" in status["message"]
    )
    time.sleep(2)
    assert k8s.get_md("gated")["status"]["phase"] == "Paused"
    annotate("kubetune.io/promote", "true")
    status = wait_for(md_phase(k8s, "gated", "Promoted"), 30, "Promoted by annotation")
    assert "/adapters/v2" in args_of(k8s.deployment("gated-stable"))
