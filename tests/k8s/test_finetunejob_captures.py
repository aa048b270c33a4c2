"""spec.dataset.captures end to end with real parts: the operator against the real apiserver, the Job
controller, the scheduler and the local executor running the real trainer as a process.

A FineTuneJob reading captured files trains; its next run, with nothing new captured, ends Skipped
(NoNewData) and keeps the first run's artifact. A modelDeploymentRef naming a missing ModelDeployment, or
one that captures nothing, says so in status and starts no Job.
"""

from __future__ import annotations

import pytest

from tests.k8s.conftest import wait_for
from tests.k8s.test_finetunejob_controller import condition
from tests.support.captures import CaptureWriter

pytestmark = pytest.mark.slow
NODE = "local-captures"


def captures_spec(tmp_path, captures: dict) -> dict:
    from kubetune_trainer.tiny_model import ensure_tiny_model

    return {
        "baseModel": {"uri": str(ensure_tiny_model(tmp_path / "tiny"))},
        "dataset": {"captures": captures},
        "output": {"uri": str(tmp_path / "out")},
        "training": {"maxSteps": 2, "batchSize": 8, "maxSeqLength": 64, "precision": "fp32", "evalSteps": 2},
        "evaluation": {"metrics": ["perplexity"], "gates": {"maxPerplexity": 1e9}},
        "backoffLimit": 0,
        "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi", "nodeSelector": {"kubernetes.io/hostname": NODE}},
    }


def finished(k8s, name: str, run: int):
    def check():
        s = k8s.get_ftj(name).get("status", {})
        return s if s.get("run") == run and s.get("phase") in ("Succeeded", "Failed", "Skipped") else None

    return wait_for(check, timeout=240, what=f"{name} run {run} to finish")


def test_captured_rows_train_and_a_run_with_nothing_new_is_skipped(k8s, operator, executor, tmp_path):
    cap = CaptureWriter(tmp_path / "caps")
    for i in range(30):
        cap.feedback(cap.request("v1", f"What is term {i}?", f"Term {i} is a thing."), rating=5)
    cap.close()
    k8s.create_ftj("loop", captures_spec(tmp_path, {"uri": str(tmp_path / "caps")}))
    first = finished(k8s, "loop", 1)
    assert first["phase"] == "Succeeded", first
    assert first["data"]["sources"][0]["rows"] == 30 and first["lineage"]["capturesUri"] == str(tmp_path / "caps")
    assert condition(first, "CapturesReady")["reason"] == "CapturesResolved"

    k8s.patch_ftj("loop", {"training": {"learningRate": 0.0001}})  # a new run of the same FineTuneJob
    second = finished(k8s, "loop", 2)
    assert second["phase"] == "Skipped", second
    assert condition(second, "Skipped")["reason"] == "NoNewData" and "no new rows" in second["message"]
    assert second["data"]["usedBeforeDropped"] == first["data"]["train"]
    assert second["artifact"] == first["artifact"], "the latest artifact stays"


def test_a_missing_model_deployment_or_one_without_capture_says_so_and_starts_nothing(k8s, operator):
    spec = {
        "baseModel": {"name": "org/tiny"},
        "dataset": {"captures": {"modelDeploymentRef": {"name": "support"}}},
        "output": {"uri": "/models/from-captures"},
    }
    k8s.create_ftj("retrain", spec)

    def reason_is(reason: str):
        def check():
            status = k8s.get_ftj("retrain").get("status") or {}
            ready = next((c for c in status.get("conditions") or [] if c["type"] == "CapturesReady"), {})
            return status if ready.get("reason") == reason else None

        return check

    status = wait_for(reason_is("ModelDeploymentNotFound"), 30, "ModelDeploymentNotFound")
    assert status["phase"] == "Pending"
    assert "spec.dataset.captures.modelDeploymentRef: ModelDeployment support not found" in status["message"]
    assert not k8s.jobs(), "no trainer Job without captures to read"
    k8s.create_md("support", {"baseModel": {"name": "org/tiny"}, "adapter": {"uri": "/a"}})
    status = wait_for(reason_is("CaptureNotEnabled"), 30, "CaptureNotEnabled")
    assert "does not capture traffic" in status["message"] and not k8s.jobs()
