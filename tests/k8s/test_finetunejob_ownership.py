"""FineTuneJobs that must not be confused for each other, and runs that must not roll out unchecked,
against the real apiserver, controller-manager, scheduler and kwok (dev/kubetune_dev/kwok/stages.yaml:
a succeeding pod reports the digest ``sha256:kwok-<its pod uid>``, so each result has an author)."""

from __future__ import annotations

import time

from tests.k8s.conftest import wait_for
from tests.k8s.test_finetunejob_controller import condition, phase_is, spec

# 70 characters each, the same first 63: truncated label values of these used to be equal.
LONG_A = "support-assistant-for-the-platform-team-in-the-emea-region-2026-q1-alpha"[:70]
LONG_B = "support-assistant-for-the-platform-team-in-the-emea-region-2026-q1-bravo"[:70]
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"


def own_pod(k8s, ftj_name: str):
    """The pod of the FineTuneJob's current Job, found through the Job's uid (not any name label)."""
    job = k8s.batch.read_namespaced_job(k8s.get_ftj(ftj_name)["status"]["jobName"], k8s.ns)
    (pod,) = k8s.core.list_namespaced_pod(k8s.ns, label_selector=f"{CONTROLLER_UID}={job.metadata.uid}").items
    return pod


def test_two_long_names_sharing_63_characters_each_get_their_own_artifact(k8s, operator):
    assert len(LONG_A) == len(LONG_B) == 70 and LONG_A[:63] == LONG_B[:63]
    gates = {"gates": {"maxPerplexity": 10}}
    for name in (LONG_A, LONG_B):
        k8s.create_ftj(name, spec(output={"uri": f"/models/{name}"}, evaluation=gates))
    for name in (LONG_A, LONG_B):
        status = wait_for(phase_is(k8s, name, "Succeeded"), 90, f"{name} Succeeded")
        pod = own_pod(k8s, name)
        assert status["artifact"]["digest"] == f"sha256:kwok-{pod.metadata.uid}", (name, status["artifact"])
    a, b = own_pod(k8s, LONG_A), own_pod(k8s, LONG_B)
    for key in ("kubetune.io/finetunejob", "app.kubernetes.io/instance"):
        assert a.metadata.labels[key] != b.metadata.labels[key] and len(a.metadata.labels[key]) <= 63
    assert a.metadata.uid != b.metadata.uid


def test_an_output_location_belongs_to_one_finetunejob(k8s, operator):
    k8s.create_ftj("first", spec(output={"uri": "/models/shared"}))
    wait_for(phase_is(k8s, "first", "Succeeded"), 60, "first Succeeded")
    # The same place spelled differently: compared after normalisation.
    k8s.create_ftj("second", spec(output={"uri": "//models/./shared/"}))
    status = wait_for(phase_is(k8s, "second", "Failed"), 30, "second refused")
    failed = condition(status, "Failed")
    assert failed["reason"] == "OutputInUse", failed
    assert "spec.output.uri '//models/./shared/'" in failed["message"]
    assert f"FineTuneJob {k8s.ns}/first" in failed["message"]
    assert [j.metadata.name for j in k8s.jobs()] == ["first-run-1"]  # refused before any pod started
    time.sleep(3)  # the retry timer re-checks: still one Warning event, not one per check
    assert [e.reason for e in k8s.events_for("second") if e.type == "Warning"] == ["OutputInUse"]

    # The owner goes away: the location is free and the waiting FineTuneJob starts on its own.
    k8s.custom.delete_namespaced_custom_object("kubetune.io", "v1alpha1", k8s.ns, "finetunejobs", "first")
    status = wait_for(phase_is(k8s, "second", "Succeeded"), 90, "second starts once the output is free")
    assert status["run"] == 1 and condition(status, "Failed")["status"] == "False"


def test_a_run_without_gates_is_not_eval_passed_and_is_not_rolled_out(k8s, operator):
    k8s.create_ftj("ungated-by-accident", spec())  # kwok's trainer says evalPassed: true; no gate checked it
    status = wait_for(phase_is(k8s, "ungated-by-accident", "Succeeded"), 60, "Succeeded")
    cond = condition(status, "EvalPassed")
    assert (cond["status"], cond["reason"]) == ("Unknown", "NoGates") and "evalPassed" not in status
    md = {
        "baseModel": {"uri": "/models/base"},
        "adapter": {"fineTuneJobRef": {"name": "ungated-by-accident"}},
        "resources": {"gpus": 0},
    }
    k8s.create_md("closed-loop", md)
    wait_for(
        lambda: "has no evaluation gates" in ((k8s.get_md("closed-loop").get("status") or {}).get("message") or ""),
        30,
        "the ModelDeployment says why it waits",
    )
    wait_for(lambda: any(e.reason == "NoEvalGates" for e in k8s.events_for("closed-loop")), 10, "NoEvalGates event")
    time.sleep(2)
    assert k8s.apps.list_namespaced_deployment(k8s.ns).items == []  # nothing serves the unevaluated model


def test_opting_out_of_gates_is_explicit_and_visible(k8s, operator):
    k8s.create_ftj("ungated", spec(evaluation={"requireGates": False}))
    status = wait_for(phase_is(k8s, "ungated", "Succeeded"), 60, "Succeeded")
    cond = condition(status, "EvalPassed")
    assert (cond["status"], cond["reason"]) == ("True", "Ungated") and status["evalPassed"] is True
    wait_for(
        lambda: [e.type for e in k8s.events_for("ungated") if e.reason == "Ungated"] == ["Warning"], 10, "one Warning"
    )
