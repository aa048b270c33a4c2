"""What a careless user gets back: the trainer's error, reason and cleaning counts in its termination
message (the operator's only source for the FineTuneJob's status), and bounded memory per row."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from kubetune_trainer import checkpoint
from kubetune_trainer.cli import main
from kubetune_trainer.config import parse_job
from kubetune_trainer.sources import DataError, read
from kubetune_trainer.splits import prepare


@pytest.fixture
def termination_log(tmp_path, monkeypatch) -> Path:
    log = tmp_path / "termination-log"
    log.write_text("")  # the kubelet creates the file; the trainer writes into it
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    return log


def fail(write_spec, termination_log, tmp_path, spec: dict) -> dict:
    assert main(["train", str(write_spec(spec)), "--output", str(tmp_path / "out")]) == 2
    message = json.loads(termination_log.read_text())
    assert message["phase"] == "Failed"
    assert json.loads((tmp_path / "out" / "result.json").read_text())["message"] == message["message"]
    return message


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_field_mapping_naming_a_missing_column(write_spec, termination_log, tmp_path):
    msg = fail(write_spec, termination_log, tmp_path, {"dataset": {"fields": {"prompt": "question"}}})
    assert msg["reason"] == "InvalidData"
    assert "row 1: field 'question' is missing" in msg["message"] and "spec.dataset.fields" in msg["message"]
    assert "'prompt'" in msg["message"]  # the columns the row does have
    assert msg["data"]["rowsRead"] == 260


def test_a_dataset_empty_after_cleaning(write_spec, termination_log, tmp_path):
    uri = jsonl(tmp_path / "blank.jsonl", [{"prompt": " ", "response": "\t"}] * 7)
    msg = fail(write_spec, termination_log, tmp_path, {"dataset": {"uri": uri}})
    assert msg["reason"] == "InvalidData"
    assert msg["message"] == f"{uri}: no rows left after cleaning (7 rows read; dropped: 7 empty; 0 kept)"
    assert msg["data"] == {"rowsRead": 7, "emptyDropped": 7, "rowsKept": 0}


def test_a_failed_split_still_reports_the_cleaning_counts(write_spec, termination_log, tmp_path):
    rows = [{"prompt": "What is a canary?", "response": "A small share of traffic."}] * 1000
    uri = jsonl(tmp_path / "dupes.jsonl", [*rows, {"prompt": "What is a gate?", "response": "A threshold."}])
    msg = fail(write_spec, termination_log, tmp_path, {"dataset": {"uri": uri}})
    assert "too few to split" in msg["message"] and "999 duplicates" in msg["message"]
    assert msg["data"] == {"rowsRead": 1001, "duplicatesDropped": 999, "rowsKept": 2}


def test_undecodable_bytes_name_the_line(write_spec, termination_log, tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "x"}\n')
    msg = fail(write_spec, termination_log, tmp_path, {"dataset": {"uri": str(bad)}})
    assert msg["reason"] == "InvalidData"
    assert msg["message"] == f"{bad} line 2: not UTF-8 text (byte 0xe9 at column 16); re-encode the file as UTF-8"


def test_an_empty_target_modules_list(write_spec, termination_log, tmp_path):
    msg = fail(write_spec, termination_log, tmp_path, {"lora": {"r": 4, "targetModules": []}})
    assert msg == {
        "phase": "Failed",
        "reason": "InvalidConfig",
        "message": "spec.lora.targetModules: List should have at least 1 item after validation, not 0",
        "evalPassed": False,
        "metrics": {},
    }


def test_a_huge_row_is_dropped_and_counted_without_being_loaded(tmp_path):
    path = tmp_path / "huge.jsonl"
    with path.open("w") as f:
        f.write(json.dumps({"prompt": "short", "response": "row"}) + "\n")
        f.write(json.dumps({"prompt": "x" * (20 << 20), "response": "y"}) + "\n")  # one 20 MiB line
        f.write(json.dumps({"prompt": "last", "response": "row"}))  # no newline at the end
    tracemalloc.start()
    loaded = read(str(path), max_row_bytes=64 << 10)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [r["prompt"] for r in loaded.rows] == ["short", "last"] and loaded.oversized == 1
    assert peak < 4 << 20, f"reading a 20 MiB line under a 64 KiB cap peaked at {peak} bytes"


def test_oversized_rows_are_in_the_cleaning_counts(tmp_path):
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(20)]
    uri = jsonl(tmp_path / "d.jsonl", [*rows, {"prompt": "p" * 5000, "response": "r"}])
    spec = {
        "baseModel": {"name": "m"},
        "dataset": {"uri": uri, "cleaning": {"maxRowBytes": 1000}},
        "output": {"uri": str(tmp_path / "out")},
    }
    prepared = prepare(parse_job({"metadata": {"name": "j"}, "spec": spec}), tmp_path / "out")
    counts = prepared.counts()
    assert counts["rowsRead"] == 21 and counts["oversizedDropped"] == 1 and counts["rowsKept"] == 20
    assert counts["train"] + counts["validation"] + counts["test"] == 20


def test_a_directory_of_files_counts_oversized_rows_of_each(tmp_path):
    (tmp_path / "d").mkdir()
    jsonl(tmp_path / "d" / "a.jsonl", [{"text": "a" * 100}, {"text": "ok"}])
    (tmp_path / "d" / "b.txt").write_text("fine\n\n" + "b" * 100)
    loaded = read(str(tmp_path / "d"), max_row_bytes=50)
    assert loaded.rows == [{"text": "ok"}, {"text": "fine"}] and loaded.oversized == 2


def test_data_errors_raised_before_cleaning_carry_the_rows_read(tmp_path):
    uri = jsonl(tmp_path / "d.jsonl", [{"q": "a", "a": "b"}] * 3)
    with pytest.raises(DataError) as err:
        prepare(
            parse_job({"spec": {"baseModel": {"name": "m"}, "dataset": {"uri": uri}, "output": {"uri": "/out"}}}),
            tmp_path / "out",
        )
    assert err.value.data == {"rowsRead": 3}


def test_checkpoints_of_another_finetunejob_are_set_aside_not_resumed(tmp_path):
    ckpt = tmp_path / "run-1" / "checkpoints"
    assert checkpoint.claim(ckpt, "uid-old", "1")  # first use: nothing there, now marked as ours
    (ckpt / "step-80").mkdir()
    (ckpt / "step-80" / "state.json").write_text('{"step": 80}')
    assert checkpoint.claim(ckpt, "uid-old", "1") and checkpoint.complete(ckpt)  # a retry of the same run keeps them

    # Deleted and re-created under the same name and output: a new uid.
    assert checkpoint.claim(ckpt, "uid-new", "1") is False
    assert checkpoint.complete(ckpt) == []
    aside = list((tmp_path / "run-1" / "checkpoints-foreign").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("uid-old-") and (aside[0] / "step-80").is_dir()
    assert json.loads((ckpt / checkpoint.OWNER_FILE).read_text()) == {"uid": "uid-new", "run": "1"}


def test_unmarked_checkpoints_are_not_trusted(tmp_path):
    ckpt = tmp_path / "checkpoints"
    (ckpt / "step-5").mkdir(parents=True)
    (ckpt / "step-5" / "state.json").write_text('{"step": 5}')
    assert checkpoint.claim(ckpt, "uid-1", "1") is False and checkpoint.complete(ckpt) == []


@pytest.mark.slow
def test_a_recreated_finetunejob_does_not_resume_from_the_old_ones_checkpoint(
    write_spec, tmp_path, monkeypatch, caplog
):
    import yaml

    from kubetune_trainer.recipe import run

    monkeypatch.setenv("KUBETUNE_RUN", "1")
    spec_path = write_spec({"training": {"maxSteps": 4, "checkpointSteps": 2}})
    obj = yaml.safe_load(spec_path.read_text())

    def as_uid(uid: str) -> str:
        obj["metadata"]["uid"] = uid  # what the operator's frozen spec ConfigMap carries
        path = tmp_path / f"{uid}.yaml"
        path.write_text(yaml.safe_dump(obj))
        return str(path)

    def resumed_from(out: Path) -> str | None:
        return json.loads((out / "artifact" / "model_card.json").read_text())["training"]["resumedFrom"]

    out = tmp_path / "support" / "run-1"  # the same name and output: the same run-1 directory
    run(as_uid("uid-deleted"), str(out))
    assert checkpoint.complete(out / "checkpoints")
    # Deleted before it finished: its checkpoints are there, no Succeeded result (that one is kept: see below).
    (out / "result.json").unlink()

    caplog.set_level("WARNING", logger="kubetune_trainer")
    outcome = run(as_uid("uid-recreated"), str(out))
    assert resumed_from(out) is None and outcome["steps"] == 4  # trained its own steps from zero
    assert "ignoring checkpoints" in caplog.text and "uid-deleted" in caplog.text
    (aside,) = (out / "checkpoints-foreign").iterdir()
    assert aside.name.startswith("uid-deleted-")

    # A retry of the re-created FineTuneJob's own run does resume from its own checkpoint.
    run(as_uid("uid-recreated"), str(out))
    assert resumed_from(out) is not None and "step-4" in resumed_from(out)


@pytest.mark.slow
def test_a_recreated_finetunejob_never_overwrites_the_finished_run_of_the_old_one(
    write_spec, tmp_path, monkeypatch, termination_log
):
    import yaml

    from kubetune_trainer.export import directory_digest

    monkeypatch.setenv("KUBETUNE_RUN", "1")
    obj = yaml.safe_load(write_spec({"training": {"maxSteps": 2}}).read_text())
    out = tmp_path / "support" / "run-1"

    def train_as(uid: str) -> int:
        obj["metadata"]["uid"] = uid
        (tmp_path / f"{uid}.yaml").write_text(yaml.safe_dump(obj))
        return main(["train", str(tmp_path / f"{uid}.yaml"), "--output", str(out)])

    assert train_as("uid-deleted") == 0
    result, digest = (out / "result.json").read_text(), directory_digest(out / "artifact")
    assert json.loads(result)["owner"] == {"uid": "uid-deleted", "run": "1"}

    assert train_as("uid-recreated") == 2  # final: retrying cannot help
    message = json.loads(termination_log.read_text())
    assert message["reason"] == "OutputTaken" and "spec.output.uri" in message["message"]
    assert "uid-deleted" in message["message"]
    # Nothing stored was touched: the old run's result and the artifact its digest names.
    assert (out / "result.json").read_text() == result and directory_digest(out / "artifact") == digest
