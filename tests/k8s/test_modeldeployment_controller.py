"""The ModelDeployment controller against the real apiserver: stable, canary steps, promotion,
rollback, the FineTuneJob closed loop, vLLM and Gateway API manifests, and operator restarts.

Analysis here is off (steps advance on time); Prometheus-gated analysis is tested with a real
Prometheus in tests/serving.
"""

from __future__ import annotations

import itertools
import re
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


def watch_steps(k8s, name: str, until: str, timeout: float) -> list[tuple[int, float]]:
    """(nominal, achieved) canary weights seen (deduplicated, in order) until the phase is `until`."""
    seen: list[tuple[int, float]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = k8s.get_md(name).get("status") or {}
        step = (status.get("canaryWeight"), status.get("achievedCanaryWeight"))
        if status.get("canaryVersion") and step[0] and (not seen or seen[-1] != step):
            seen.append(step)
        if status.get("phase") == until:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"{name} did not reach {until}; steps {seen}; status {k8s.get_md(name).get('status')}")


def watch_weights(k8s, name: str, until: str, timeout: float) -> list[int]:
    """Nominal canary weights seen (deduplicated, in order) until the phase is `until`."""
    weights: list[int] = []
    for weight, _ in watch_steps(k8s, name, until, timeout):
        if not weights or weights[-1] != weight:
            weights.append(weight)
    return weights


def annotate(k8s, name: str, key: str, value: str | None) -> None:
    k8s.custom.patch_namespaced_custom_object(
        "kubetune.io", "v1alpha1", k8s.ns, "modeldeployments", name, {"metadata": {"annotations": {key: value}}}
    )


def annotations(k8s, name: str) -> dict[str, str]:
    """The rollout's own annotations (not kopf's bookkeeping)."""
    mine = ("kubetune.io/approve-step", "kubetune.io/promote", "kubetune.io/retry")
    return {k: v for k, v in (k8s.get_md(name)["metadata"].get("annotations") or {}).items() if k in mine}


def used_up(k8s, name: str, key: str, outcome: str):
    """The operator removed annotation `key` and recorded what it did with it."""

    def check():
        md = k8s.get_md(name)
        action = (md.get("status") or {}).get("lastManualAction") or {}
        gone = key not in (md["metadata"].get("annotations") or {})
        return md["status"] if gone and action.get("annotation") == key and action.get("outcome") == outcome else None

    return check


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
    assert "/adapters/v2" in args_of(canary) and canary.spec.replicas in (1, 2)  # 1 at 20% and 50%, 2 at 100%
    stable = k8s.deployment("chat-stable")
    assert "/adapters/v1" in args_of(stable)  # stable keeps its version during the canary...
    assert stable.spec.replicas == 1  # ...but gives up pods to it: 2 replicas carry 1:1, never 1:2
    steps = watch_steps(k8s, "chat", "Promoted", 60)
    # Two replicas cannot carry 20%: one canary pod of two is 50% of the requests; at 100% stable keeps one pod.
    assert steps == [(20, 50), (50, 50), (100, 66.7)]
    status = k8s.get_md("chat")["status"]
    assert status["achievedCanaryWeight"] == 0 and k8s.deployment("chat-stable").spec.replicas == 2
    assert status["stableVersion"] != v1 and status.get("canaryVersion") is None
    assert "/adapters/v2" in args_of(k8s.deployment("chat-stable"))
    wait_for(
        lambda: not any(d.metadata.name == "chat-canary" for d in k8s.apps.list_namespaced_deployment(k8s.ns).items),
        30,
        "canary removed",
    )
    reasons = k8s.reasons_once_posted("chat", "Promoted")
    assert reasons.count("StepAdvanced") == 2 and reasons.count("Promoted") == 1 and "CanaryStarted" in reasons
    rounded = [e.message for e in k8s.events_for("chat") if e.reason == "ShareRounded" and e.type == "Warning"]
    assert sorted(rounded) == [
        "step 100% rounded to 66.7% of requests: 2 canary and 1 stable pod(s) from replicas 2 (more replicas or "
        "traffic: gatewayAPI give finer shares)",
        "step 20% rounded to 50% of requests: 1 canary and 1 stable pod(s) from replicas 2 (more replicas or "
        "traffic: gatewayAPI give finer shares)",
    ]
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


def test_abort_stops_the_canary_in_flight_and_no_later_version(k8s, operator):
    k8s.create_md("abortme", md_spec(canary={"steps": [10, 100], "interval": "1h"}))
    wait_for(md_phase(k8s, "abortme", "Stable"), 30, "Stable")
    k8s.patch_md("abortme", {"adapter": {"uri": "/adapters/bad"}})
    bad = wait_for(md_phase(k8s, "abortme", "Progressing"), 30, "Progressing")["canaryVersion"]
    k8s.patch_md("abortme", {"canary": {"abort": True}})
    status = wait_for(md_phase(k8s, "abortme", "RolledBack"), 30, "RolledBack")
    assert "aborted" in status["message"] and status["canaryWeight"] == 0 and status["rolledBackVersion"] == bad
    assert status["abortedVersion"] == bad and status["abortObserved"] is True
    assert k8s.deployment("abortme-canary").spec.replicas == 0
    stable = k8s.deployment("abortme-stable")
    assert "/adapters/v1" in args_of(stable) and stable.spec.replicas == 2  # back to full size
    k8s.reasons_once_posted("abortme", "RolledBack")
    assert any(e.reason == "RolledBack" and e.type == "Warning" for e in k8s.events_for("abortme"))
    time.sleep(3)  # the rolled-back version is not retried until the spec changes again, or a retry names it
    assert k8s.get_md("abortme")["status"]["phase"] == "RolledBack"

    # Argo's retry: the annotation names the version; abort (still true) already did its work and does not stop it.
    annotate(k8s, "abortme", "kubetune.io/retry", bad)
    status = wait_for(used_up(k8s, "abortme", "kubetune.io/retry", "Used"), 30, "retry used")
    status = wait_for(md_phase(k8s, "abortme", "Progressing"), 30, "the retried canary")
    assert status["canaryVersion"] == bad and status["currentStep"] == 0 and not status.get("rolledBackVersion")

    # A later version, with abort still true in the spec (as a GitOps repo would leave it), rolls out normally.
    k8s.patch_md("abortme", {"adapter": {"uri": "/adapters/v3"}, "canary": {"interval": "1s"}})
    status = wait_for(md_phase(k8s, "abortme", "Promoted"), 60, "v3 promoted with abort still true")
    assert "/adapters/v3" in args_of(k8s.deployment("abortme-stable")) and status["abortedVersion"] == bad
    assert [e.reason for e in k8s.events_for("abortme")].count("RolledBack") == 1

    # Set false, abort is armed again: set true, it stops the version in flight then.
    k8s.patch_md("abortme", {"canary": {"abort": False}})
    wait_for(lambda: not k8s.get_md("abortme")["status"].get("abortObserved"), 30, "abort re-armed")
    k8s.patch_md("abortme", {"adapter": {"uri": "/adapters/v4"}, "canary": {"interval": "1h"}})
    v4 = wait_for(md_phase(k8s, "abortme", "Progressing"), 30, "v4 canary")["canaryVersion"]
    k8s.patch_md("abortme", {"canary": {"abort": True}})
    status = wait_for(md_phase(k8s, "abortme", "RolledBack"), 30, "v4 aborted")
    assert status["abortedVersion"] == v4 == status["rolledBackVersion"]
    assert "/adapters/v3" in args_of(k8s.deployment("abortme-stable"))


def is_run(served: str | None, run: int) -> bool:
    """Whether a ModelDeployment serves run N of the kwok trainer: its adapter, with the digest that run's
    pod recorded (`sha256:kwok-<pod uid>`; the eval-fail stage records plain `sha256:kwok`)."""
    return re.fullmatch(rf"/models/out/run-{run}#digest=sha256:kwok(-[0-9a-f-]+)?", served or "") is not None


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
    assert is_run(status["stableAdapterUri"], 1), status

    k8s.patch_ftj("support", {"training": {"learningRate": 0.0001}})  # retrain: run 2 passes its gates
    status = wait_for(md_phase(k8s, "support-chat", "Promoted"), 90, "run 2 promoted")
    assert is_run(status["stableAdapterUri"], 2), status

    k8s.patch_ftj("support", {"image": "kubetune.test/trainer:kwok-evalfail"})  # run 3 fails its gates
    wait_for(lambda: (k8s.get_ftj("support").get("status") or {}).get("run") == 3
             and k8s.get_ftj("support")["status"].get("phase") == "Succeeded", 60, "run 3 done")  # fmt: skip
    wait_for(lambda: is_run(k8s.get_md("support-chat")["status"].get("skippedAdapterUri"), 3), 30, "skip")
    time.sleep(3)
    status = k8s.get_md("support-chat")["status"]
    assert status["phase"] == "Promoted" and is_run(status["stableAdapterUri"], 2)
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
    assert k8s.reasons_once_posted("restarted", "Promoted").count("Promoted") == 1


def test_approvals_and_promotion_name_their_version_and_are_used_once(k8s, operator, control_plane):
    spec = md_spec(canary={"steps": [30, 100], "interval": "1s", "manualGate": True, "autoPromote": False})
    k8s.create_md("gated", spec)
    wait_for(md_phase(k8s, "gated", "Stable"), 30, "Stable")
    k8s.patch_md("gated", {"adapter": {"uri": "/adapters/v2"}})
    status = wait_for(md_phase(k8s, "gated", "Paused"), 30, "Paused at the gate")
    v2 = status["canaryVersion"]
    assert f"kubetune.io/approve-step={v2}/100" in status["message"] and status["canaryWeight"] == 30
    assert status["achievedCanaryWeight"] == 50  # one canary pod beside one stable pod
    table = control_plane.kubectl("get", "mdep", "gated", "-n", k8s.ns).stdout.split("\n")
    assert table[0].split()[:5] == ["NAME", "RUNTIME", "PHASE", "CANARY", "ACHIEVED"]
    assert table[1].split()[:5] == ["gated", "builtin", "Paused", "30", "50"]
    time.sleep(3)
    assert k8s.get_md("gated")["status"]["canaryWeight"] == 30  # no approval, no progress

    # The old unversioned form is removed unused, and says what to write instead.
    annotate(k8s, "gated", "kubetune.io/approve-step", "100")
    status = wait_for(used_up(k8s, "gated", "kubetune.io/approve-step", "Ignored"), 30, "unversioned approval ignored")
    assert f"must be <version>/<weight>, e.g. {v2}/100" in status["lastManualAction"]["message"]
    assert status["canaryWeight"] == 30

    # A new version replaces the gated canary; the approval written for the old one does not open its gate.
    k8s.patch_md("gated", {"adapter": {"uri": "/adapters/v3"}})
    status = wait_for(lambda: k8s.get_md("gated")["status"].get("canaryVersion") not in (None, v2)
                      and md_phase(k8s, "gated", "Paused")(), 30, "v3 at the gate")  # fmt: skip
    v3 = status["canaryVersion"]
    annotate(k8s, "gated", "kubetune.io/approve-step", f"{v2}/100")
    status = wait_for(used_up(k8s, "gated", "kubetune.io/approve-step", "Ignored"), 30, "stale approval ignored")
    assert f"names version {v2}, but the canary in flight is {v3}" in status["lastManualAction"]["message"]
    time.sleep(2)
    status = k8s.get_md("gated")["status"]
    assert status["canaryVersion"] == v3 and status["canaryWeight"] == 30 and status["phase"] == "Paused"
    assert any(e.reason == "AnnotationIgnored" and e.type == "Warning" for e in k8s.events_for("gated"))

    annotate(k8s, "gated", "kubetune.io/approve-step", f"{v3}/100")
    status = wait_for(
        lambda: k8s.get_md("gated")["status"].get("awaitingPromotion") and k8s.get_md("gated")["status"],
        30,
        "all steps done",
    )
    assert status["phase"] == "Paused" and status["canaryWeight"] == 100
    assert f"kubetune.io/promote={v3}" in status["message"]
    assert "kubetune.io/approve-step" not in annotations(k8s, "gated")  # used once, then removed
    assert status["lastManualAction"]["outcome"] == "Used" and status["lastManualAction"]["value"] == f"{v3}/100"

    annotate(k8s, "gated", "kubetune.io/promote", "true")  # the old form names no version
    wait_for(used_up(k8s, "gated", "kubetune.io/promote", "Ignored"), 30, "promote=true ignored")
    time.sleep(2)
    assert k8s.get_md("gated")["status"]["phase"] == "Paused"
    annotate(k8s, "gated", "kubetune.io/promote", v3)
    status = wait_for(md_phase(k8s, "gated", "Promoted"), 30, "Promoted by annotation")
    assert "/adapters/v3" in args_of(k8s.deployment("gated-stable")) and status["stableVersion"] == v3
    assert status["lastManualAction"]["annotation"] == "kubetune.io/promote"
    assert status["lastManualAction"]["outcome"] == "Used"
    assert annotations(k8s, "gated") == {}

    # The promotion was used up: the next version waits at its gate again.
    k8s.patch_md("gated", {"adapter": {"uri": "/adapters/v4"}})
    status = wait_for(lambda: k8s.get_md("gated")["status"].get("canaryVersion") not in (None, v3)
                      and md_phase(k8s, "gated", "Paused")(), 30, "v4 at the gate")  # fmt: skip
    time.sleep(3)
    assert k8s.get_md("gated")["status"]["phase"] == "Paused" and k8s.get_md("gated")["status"]["canaryWeight"] == 30


def test_promote_names_the_canary_and_skips_the_remaining_steps(k8s, operator):
    """Argo's `promote --full`: every remaining step and its analysis is skipped, for that version only."""
    k8s.create_md("hurry", md_spec(canary={"steps": [10, 50, 100], "interval": "1h"}))
    wait_for(md_phase(k8s, "hurry", "Stable"), 30, "Stable")
    k8s.patch_md("hurry", {"adapter": {"uri": "/adapters/v2"}})
    v2 = wait_for(md_phase(k8s, "hurry", "Progressing"), 30, "Progressing")["canaryVersion"]
    annotate(k8s, "hurry", "kubetune.io/promote", v2)
    status = wait_for(md_phase(k8s, "hurry", "Promoted"), 30, "promoted at once")
    assert status["stableVersion"] == v2 and "skipping steps [50, 100]" in status["lastManualAction"]["message"]
    assert annotations(k8s, "hurry") == {} and k8s.deployment("hurry-stable").spec.replicas == 2


def test_an_annotation_is_consumed_once_and_only_with_the_value_read(k8s, api):
    """The operator acts on an annotation only after removing it with a test of its value (one atomic
    JSON patch), so two reconciles cannot both act on it and a value changed meanwhile is kept."""
    from kubetune_operator.kube import Kube

    k8s.create_md("once", md_spec())
    annotate(k8s, "once", "kubetune.io/promote", "v-new")
    kube = Kube(api)
    assert kube.remove_annotation("modeldeployments", k8s.ns, "once", "kubetune.io/promote", "v-old") is None
    assert annotations(k8s, "once") == {"kubetune.io/promote": "v-new"}
    assert kube.remove_annotation("modeldeployments", k8s.ns, "once", "kubetune.io/promote", "v-new") is not None
    assert kube.remove_annotation("modeldeployments", k8s.ns, "once", "kubetune.io/promote", "v-new") is None
    assert annotations(k8s, "once") == {}
