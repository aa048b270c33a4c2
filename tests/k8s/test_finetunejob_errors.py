"""A careless user's FineTuneJob, end to end with real parts: the operator against the real apiserver,
the Job controller, the scheduler and the local executor running the real trainer as a process. What
`kubectl describe ftj` shows must be the trainer's own one-line error and the cleaning counts."""

from __future__ import annotations

import json

import pytest

from tests.k8s.conftest import wait_for
from tests.k8s.test_finetunejob_controller import condition

pytestmark = pytest.mark.slow
NODE = "local-errors"


def careless(tmp_path, rows: list[dict], **overrides) -> dict:
    from kubetune_trainer.tiny_model import ensure_tiny_model

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "baseModel": {"uri": str(ensure_tiny_model(tmp_path / "tiny"))},
        "dataset": {"uri": str(data)},
        "output": {"uri": str(tmp_path / "out")},
        "evaluation": {"gates": {"maxPerplexity": 1000}},
        "backoffLimit": 1,  # a retry would say the same: the message must not depend on how often it ran
        "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi", "nodeSelector": {"kubernetes.io/hostname": NODE}},
    }
    spec.update(overrides)
    return spec


def finished(k8s, name: str):
    return wait_for(
        lambda: (s := k8s.get_ftj(name).get("status", {})).get("phase") in ("Succeeded", "Failed") and s,
        timeout=240,
        what=f"{name} to finish",
    )


def test_a_dataset_empty_after_cleaning_says_so_in_the_status(k8s, operator, executor, tmp_path):
    k8s.create_ftj("blank", careless(tmp_path, [{"prompt": "  ", "response": "\t"}] * 7))
    status = finished(k8s, "blank")
    failed = condition(status, "Failed")
    assert status["phase"] == "Failed" and failed["reason"] == "InvalidData", failed
    assert "no rows left after cleaning (7 rows read; dropped: 7 empty; 0 kept)" in failed["message"]
    assert status["message"] == failed["message"]
    assert status["data"] == {"rowsRead": 7, "emptyDropped": 7, "rowsKept": 0}
    wait_for(lambda: [e for e in k8s.events_for("blank") if e.type == "Warning"], 10, "a Warning event")
    warnings = [e for e in k8s.events_for("blank") if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["InvalidData"] and "no rows left" in warnings[0].message


def test_a_field_mapping_naming_a_missing_column_names_it(k8s, operator, executor, tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)]
    k8s.create_ftj("mapped", careless(tmp_path, rows, dataset={"uri": str(tmp_path / "data.jsonl"),
                                                                 "fields": {"prompt": "question"}}))  # fmt: skip
    status = finished(k8s, "mapped")
    failed = condition(status, "Failed")
    assert failed["reason"] == "InvalidData", failed
    assert "row 1: field 'response' is missing" in failed["message"] and "'answer'" in failed["message"]
    assert status["data"] == {"rowsRead": 20}
