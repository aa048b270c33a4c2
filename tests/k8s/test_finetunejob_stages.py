"""Two-stage training against the real apiserver, with kwok playing the trainer (see test_finetunejob_controller).

A child FineTuneJob (spec.initFrom.fineTuneJobRef) waits for its parent without a Job, starts from the
parent's artifact once the parent's run has Succeeded with EvalPassed, and records it in status.lineage;
a parent's later run restarts only the child that asked for it (rerunOnParentSuccess).
"""

from __future__ import annotations

from typing import Any

from tests.k8s.conftest import wait_for
from tests.k8s.test_finetunejob_controller import HANG, SUCCEED, spec

GATED = {"evaluation": {"gates": {"maxPerplexity": 10}}}  # kwok's result (perplexity 3.49) passes


def stage(output: str, **overrides: Any) -> dict[str, Any]:
    return spec(output={"uri": output}, **GATED, **overrides)


def waiting_message(k8s, name: str, words: str):
    def check():
        status = k8s.get_ftj(name).get("status") or {}
        running = next((c for c in status.get("conditions") or [] if c["type"] == "Running"), {})
        ok = status.get("phase") == "Pending" and running.get("reason") == "WaitingForParent"
        return running["message"] if ok and words in running.get("message", "") else None

    return check


def status_of(k8s, name: str, check):
    def probe():
        status = k8s.get_ftj(name).get("status") or {}
        return status if check(status) else None

    return probe


def test_a_child_waits_for_its_parent_starts_from_its_artifact_and_reruns_only_when_asked(k8s, operator):
    ref = {"fineTuneJobRef": {"name": "cpt"}}
    k8s.create_ftj("sft", stage("/models/sft", initFrom=ref))
    k8s.create_ftj("nightly", stage("/models/nightly", initFrom={**ref, "rerunOnParentSuccess": True}))
    wait_for(waiting_message(k8s, "sft", "parent FineTuneJob cpt does not exist"), 30, "sft waits: no parent")
    wait_for(waiting_message(k8s, "nightly", "parent FineTuneJob cpt does not exist"), 30, "nightly waits")

    k8s.create_ftj("cpt", stage("/models/cpt", image=HANG, dataset={"uri": "/data/ops.txt", "format": "text"}))
    wait_for(waiting_message(k8s, "sft", "has not succeeded yet (phase Running)"), 60, "sft waits: parent running")
    assert sorted(j.metadata.name for j in k8s.jobs()) == ["cpt-run-1"], "a waiting child has no Job"

    k8s.patch_ftj("cpt", {"image": SUCCEED})  # run 2 replaces the hanging run 1 and succeeds
    parent = wait_for(status_of(k8s, "cpt", lambda s: s.get("run") == 2 and s.get("phase") == "Succeeded"), 90, "cpt")
    sft = wait_for(status_of(k8s, "sft", lambda s: s.get("phase") == "Succeeded"), 90, "sft Succeeded")
    expected = {
        "name": "cpt",
        "run": 2,
        "artifactUri": parent["artifact"]["uri"],
        "digest": parent["artifact"]["digest"],
        "kind": "adapter",
    }
    assert sft["run"] == 1 and sft["lineage"]["parent"] == expected
    frozen = k8s.core.read_namespaced_config_map("sft-run-1-spec", k8s.ns).data["finetunejob.yaml"]
    assert parent["artifact"]["digest"] in frozen, "the trainer is handed the parent's artifact"
    wait_for(status_of(k8s, "nightly", lambda s: s.get("phase") == "Succeeded"), 90, "nightly Succeeded")
    assert any(e.reason == "Created" and "from cpt run 2" in e.message for e in k8s.events_for("sft"))

    # The parent trains again: a new artifact (kwok's digest names the pod). Only nightly follows it.
    k8s.patch_ftj("cpt", {"training": {"learningRate": 0.0001}})
    parent = wait_for(status_of(k8s, "cpt", lambda s: s.get("run") == 3 and s.get("phase") == "Succeeded"), 90, "cpt 3")
    nightly = wait_for(
        status_of(k8s, "nightly", lambda s: s.get("run") == 2 and s.get("phase") == "Succeeded"), 60, "nightly run 2"
    )
    assert nightly["lineage"]["parent"]["run"] == 3
    assert nightly["lineage"]["parent"]["digest"] == parent["artifact"]["digest"]
    wait_for(lambda: any(e.reason == "ParentUpdated" for e in k8s.events_for("nightly")), 10, "ParentUpdated")
    sft = k8s.get_ftj("sft")["status"]
    assert sft["run"] == 1 and sft["lineage"]["parent"] == expected, "no silent re-trigger without rerunOnParentSuccess"
    assert not k8s.jobs("kubetune.io/finetunejob=sft,kubetune.io/run=2")
