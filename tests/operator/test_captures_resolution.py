"""spec.dataset.captures in the operator: resolving the ModelDeployment, freezing it for the trainer, mounting
its claim, and a Skipped run as the trainer reports it. Pure functions, no cluster."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import yaml

from kubetune_operator import captures, job_state
from kubetune_operator.builders.trainer_job import build_spec_configmap, build_trainer_job
from kubetune_operator.settings import Settings
from kubetune_operator.specs import FineTuneJobSpec, validate

REF = {"modelDeploymentRef": {"name": "support"}}


def test_a_model_deployment_resolves_to_its_capture_uri_or_a_reason():
    md = {"spec": {"capture": {"uri": "pvc://captures/support", "sampleRate": 0.5}}}
    assert captures.resolve(REF, md) == captures.CaptureSource("pvc://captures/support", "support")
    missing = captures.resolve(REF, None)
    off = captures.resolve(REF, {"spec": {"adapter": {"uri": "/a"}}})
    assert isinstance(missing, captures.Unavailable) and missing.reason == captures.MD_NOT_FOUND
    assert isinstance(off, captures.Unavailable) and off.reason == captures.CAPTURE_OFF
    assert off.message.startswith("spec.dataset.captures.modelDeploymentRef: ModelDeployment support")
    assert captures.resolve(None, None) is None
    patch = captures.unavailable_patch({}, missing, 3, "t0", keep_phase=False)
    assert patch["phase"] == "Pending" and captures.waits(patch)
    assert "phase" not in captures.unavailable_patch({}, missing, 3, "t0", keep_phase=True)


def test_the_resolved_location_is_frozen_for_the_trainer_and_its_claim_mounted_read_only(ftj: dict[str, Any]):
    ftj["spec"]["dataset"] = {"captures": REF}
    spec = FineTuneJobSpec.from_dict(ftj["spec"])
    assert spec.captures == {**REF, "minRating": 4} and spec.captures_uri is None and not validate(spec)
    source = captures.CaptureSource("pvc://captures/support", "support")
    job = build_trainer_job(replace(spec, captures_uri=source.uri), ftj, 1, Settings())
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims["captures"] is True
    cm = build_spec_configmap(ftj, 1, captures=source.for_trainer("2026-12-02T00:00:00Z"))
    frozen = yaml.safe_load(cm["data"]["finetunejob.yaml"])
    assert frozen["captures"] == {
        "uri": "pvc://captures/support",
        "runStart": "2026-12-02T00:00:00Z",
        "modelDeployment": "support",
    }


def test_a_captures_uri_overlapping_the_output_is_refused(ftj: dict[str, Any]):
    ftj["spec"]["dataset"] = {"captures": {"uri": ftj["spec"]["output"]["uri"] + "/caps"}}
    assert "spec.dataset.captures.uri" in validate(FineTuneJobSpec.from_dict(ftj["spec"]))[0]


def test_a_skipped_run_is_terminal_keeps_the_reported_artifact_and_its_source_counts():
    done = job_state.RunState(job_state.SUCCEEDED, "TrainingSucceeded", "ok")
    result = {
        "phase": "Skipped",
        "reason": "NoNewData",
        "message": "no new rows to train on",
        "artifact": {"uri": "/out/run-1/artifact", "digest": "sha256:a"},
        "data": {"rowsRead": 4, "usedBeforeDropped": 3, "sources": [{"version": "v1", "rows": 4}]},
    }
    state = job_state.with_trainer_result(done, result)
    assert state.phase == job_state.SKIPPED and state.phase in job_state.TERMINAL
    patch = job_state.status_for_run({"phase": "Running"}, state, 2, "t1", result)
    assert patch["phase"] == "Skipped" and patch["artifact"] == result["artifact"]
    assert patch["data"]["sources"] == [{"version": "v1", "rows": 4}] and "evalPassed" not in patch
    skipped = next(c for c in patch["conditions"] if c["type"] == "Skipped")
    assert skipped["status"] == "True" and skipped["reason"] == "NoNewData"
    assert not job_state.moves_forward("Skipped", "Running")
