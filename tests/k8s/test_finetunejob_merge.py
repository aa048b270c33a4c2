"""method merge against the real apiserver: the merge run waits for its source FineTuneJobs (kwok-faked
trainer Jobs) and starts once both have an artifact that passed evaluation, with those artifacts in its spec
ConfigMap, where the trainer reads them."""

from __future__ import annotations

import yaml

from tests.k8s.conftest import wait_for
from tests.k8s.test_finetunejob_controller import condition, phase_is, spec

GATED = {"gates": {"maxPerplexity": 10}}  # kwok's succeeding trainer reports perplexity 3.49: EvalPassed True


def test_a_merge_waits_for_its_sources_then_runs_with_their_artifacts(k8s, operator):
    merge = {"sources": [{"fineTuneJobRef": {"name": "src-a"}}, {"fineTuneJobRef": {"name": "src-b"}, "weight": 0.5}]}
    k8s.create_ftj("merged", spec(method="merge", merge=merge, output={"uri": "/models/merged"}, evaluation=GATED))

    def waiting_on(text: str, absent: str = "never in a message"):
        def check():
            st = k8s.get_ftj("merged").get("status") or {}
            c = next((c for c in st.get("conditions") or [] if c["type"] == "SourcesReady"), None)
            return st if c and c["status"] == "False" and text in c["message"] and absent not in c["message"] else None

        return check

    status = wait_for(waiting_on("spec.merge.sources[0]: FineTuneJob src-a not found"), 30, "WaitingForSources")
    assert status["phase"] == "Pending" and condition(status, "SourcesReady")["reason"] == "WaitingForSources"
    assert "FineTuneJob src-b not found" in status["message"]
    assert not k8s.jobs("kubetune.io/finetunejob=merged")

    k8s.create_ftj("src-a", spec(output={"uri": "/models/src-a"}, evaluation=GATED))
    k8s.create_ftj("src-b", spec(output={"uri": "/models/src-b"}, evaluation=GATED, suspend=True))
    wait_for(phase_is(k8s, "src-a", "Succeeded"), 60, "src-a Succeeded")
    # The timer looks again: once src-a has its artifact, only src-b is waited for.
    status = wait_for(waiting_on("FineTuneJob src-b run 1 is Suspended", absent="src-a"), 30, "waiting on src-b only")
    assert status["phase"] == "Pending"
    assert not k8s.jobs("kubetune.io/finetunejob=merged")

    k8s.patch_ftj("src-b", {"suspend": False})
    a = wait_for(phase_is(k8s, "src-a", "Succeeded"), 5, "src-a")["artifact"]
    b = wait_for(phase_is(k8s, "src-b", "Succeeded"), 60, "src-b Succeeded")["artifact"]
    wait_for(lambda: k8s.batch.read_namespaced_job("merged-run-1", k8s.ns), 30, "the merge's trainer Job")

    frozen = yaml.safe_load(k8s.core.read_namespaced_config_map("merged-run-1-spec", k8s.ns).data["finetunejob.yaml"])
    expected = [
        {"name": "src-a", "run": 1, "uri": a["uri"], "digest": a["digest"], "weight": 1.0},
        {"name": "src-b", "run": 1, "uri": b["uri"], "digest": b["digest"], "weight": 0.5},
    ]
    assert frozen["status"]["mergeSources"] == expected
    assert a["digest"] != b["digest"] and a["digest"].startswith("sha256:kwok-")
    status = k8s.get_ftj("merged")["status"]
    assert status["mergeSources"] == expected and status["run"] == 1
    ready = condition(status, "SourcesReady")
    assert ready["status"] == "True" and "src-a run 1, src-b run 1" in ready["message"]
