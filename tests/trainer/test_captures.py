"""spec.dataset.captures in the trainer: capture files (the serving side's format) -> rows -> a run.

Pure parts first (rows, join, filters, the stable split, the ledger), then a real tiny training run through
the trainer CLI from captured files, and a second run of the same FineTuneJob that finds nothing new and
ends Skipped (NoNewData) with the first run's artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubetune_trainer import captured
from kubetune_trainer.capture_rows import Window, build_rows, parse_time
from kubetune_trainer.config import FieldsConfig, parse_job
from tests.support.captures import CaptureWriter

START = parse_time("2026-12-02T00:00:00Z")


def records(root: Path, versions=None):
    requests, feedback, bad = captured.read_captures(str(root), versions)
    return requests, feedback, bad


def test_corrections_and_well_rated_answers_become_instruction_rows_and_the_rest_say_why(tmp_path):
    cap = CaptureWriter(tmp_path / "caps")
    fixed = cap.request("v1", "2+2?", "5")
    cap.feedback(fixed, rating=1)
    cap.feedback(fixed, correction="4", folder="v2")  # feedback reached a v2 pod: still v1's response
    good = cap.request("v1", "Capital of France?", "Paris")
    cap.feedback(good, rating=5)
    cap.feedback(cap.request("v1", "Colour of grass?", "blue"), rating=3)
    cap.request("v1", "Unrated?", "yes")
    cap.feedback(cap.request("v2", [{"role": "user", "content": "hi"}], "hello"), rating=5)
    cap.feedback("kt-v1-" + "0" * 32, rating=5)  # its request was never captured
    cap.close()
    requests, feedback, _ = records(tmp_path / "caps")
    assert all(r["id"] != "kt-part-0" for r in requests), ".part files are never read"
    built = build_rows(requests, feedback, "instruction", FieldsConfig(), Window(4, START))
    assert sorted(row["response"] for _, row in built.rows) == ["4", "Paris"]
    v1, v2 = built.sources["v1"].status(), built.sources["v2"].status()
    assert v1 == {
        "version": "v1",
        "requests": 4,
        "feedback": 4,
        "rows": 2,
        "dropped": {"belowMinRating": 1, "noFeedback": 1, "unmatchedFeedback": 1},
    }
    assert v2["dropped"] == {"otherEndpoint": 1} and v2["rows"] == 0

    chat = build_rows(requests, feedback, "chat", FieldsConfig(), Window(4, START))
    turns = [row["messages"] for version, row in chat.rows if version == "v2"]
    assert turns == [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]


def test_preference_pairs_come_from_corrections_and_from_up_vs_down_answers_to_one_prompt(tmp_path):
    cap = CaptureWriter(tmp_path / "caps")
    cap.feedback(cap.request("v1", "2+2?", "5"), correction="4")
    cap.feedback(cap.request("v1", "Name a prime", "7"), rating=5)
    cap.feedback(cap.request("v2", "name a PRIME!", "8"), rating=1)  # the same prompt, normalised
    cap.feedback(cap.request("v2", "Alone?", "x"), rating=5)  # nothing to pair it with
    cap.close()
    requests, feedback, _ = records(tmp_path / "caps")
    built = build_rows(requests, feedback, "preference", FieldsConfig(), Window(4, START))
    pairs = sorted((row["chosen"], row["rejected"]) for _, row in built.rows)
    assert pairs == [("4", "5"), ("7", "8")]
    assert built.sources["v2"].dropped["unpaired"] == 1


def test_since_versions_and_the_run_start_bound_the_records(tmp_path):
    cap = CaptureWriter(tmp_path / "caps")
    for version, time in (("v1", "2026-11-01T00:00:00Z"), ("v1", "2026-12-01T12:00:00Z"), ("v2", TIME2)):
        cap.feedback(cap.request(version, f"q {version} {time}", "a", time=time), rating=5)
    cap.close()
    requests, feedback, _ = records(tmp_path / "caps")
    week = Window(4, START, since_seconds=7 * 24 * 3600)
    built = build_rows(requests, feedback, "instruction", FieldsConfig(), week)
    assert len(built.rows) == 1 and built.sources["v1"].dropped == {"beforeSince": 1}
    assert built.sources["v2"].dropped == {"afterRunStart": 1}
    only_v2 = Window(4, None, versions=("v2",))
    requests, feedback, _ = records(tmp_path / "caps", ("v2",))
    assert [v for v, _ in build_rows(requests, feedback, "instruction", FieldsConfig(), only_v2).rows] == ["v2"]


TIME2 = "2026-12-03T00:00:00Z"  # after START


def job(tmp_path: Path, caps: Path, seed: int = 42, **dataset) -> dict:
    return {
        "metadata": {"name": "loop", "uid": "uid-1"},
        "spec": {
            "baseModel": {"uri": "/unused"},
            "dataset": {"captures": {"uri": str(caps)}, "split": {"seed": seed, "test": 0.2}, **dataset},
            "output": {"uri": str(tmp_path / "out")},
        },
        "captures": {"uri": str(caps), "runStart": "2026-12-02T00:00:00Z"},
    }


def many(cap: CaptureWriter, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        cap.feedback(cap.request("v1", f"What is term {i}?", f"Term {i} is a thing."), rating=5)


def test_a_prompt_keeps_its_split_across_seeds_and_runs(tmp_path):
    cap = CaptureWriter(tmp_path / "caps")
    many(cap, 60)
    cap.close()
    first, _, _ = captured.build(parse_job(job(tmp_path, tmp_path / "caps", seed=1), cuda_available=False), 1)
    other, _, _ = captured.build(parse_job(job(tmp_path, tmp_path / "caps", seed=7), cuda_available=False), 1)
    assert first == other, "the seed does not move a prompt"
    assert first["test"] and first["train"], first
    many(cap, 60, start=60)  # more traffic: the old prompts stay where they were
    cap.close()
    later, _, _ = captured.build(parse_job(job(tmp_path, tmp_path / "caps"), cuda_available=False), 1)
    for name in ("train", "validation", "test"):
        assert all(row in later[name] for row in first[name]), name


def test_the_ledger_drops_rows_earlier_runs_trained_on_and_nothing_new_is_no_new_data(tmp_path):
    cap = CaptureWriter(tmp_path / "caps")
    many(cap, 30)
    cap.close()
    cfg = parse_job(job(tmp_path, tmp_path / "caps"), cuda_available=False)
    splits, _, ledger = captured.build(cfg, 1)
    run1 = tmp_path / "out" / "run-1"
    captured.write_ledger(run1 / "data", ledger, {"uid": "uid-1", "run": "1"})
    assert captured.build(cfg, 2)[0] == splits, "run 1 did not succeed (no result.json): its ledger is not read"
    (run1 / "result.json").write_text(json.dumps({"phase": "Succeeded", "owner": {"uid": "uid-1"}}))
    with pytest.raises(captured.NoNewData) as skipped:
        captured.build(cfg, 2)
    assert skipped.value.data["usedBeforeDropped"] == len(splits["train"])
    assert skipped.value.data["test"] == len(splits["test"]), "held-out rows stay held out, every run"
    many(cap, 5, start=100)
    cap.close()
    again, _, new_ledger = captured.build(cfg, 2)
    assert 0 < len(again["train"]) <= 5 and not set(new_ledger) & set(ledger)


def test_a_run_trains_on_captured_files_and_the_next_run_with_nothing_new_is_skipped(
    tmp_path, tiny_model_dir, monkeypatch
):
    """Through the trainer CLI, with the environment the operator gives each run (KUBETUNE_RUN, output)."""
    from kubetune_trainer.cli import main

    cap = CaptureWriter(tmp_path / "caps")
    many(cap, 40)
    cap.close()
    obj = job(tmp_path, tmp_path / "caps")
    obj.update(apiVersion="kubetune.io/v1alpha1", kind="FineTuneJob")
    obj["spec"].update(
        baseModel={"uri": str(tiny_model_dir)},
        training={"maxSteps": 3, "batchSize": 8, "maxSeqLength": 64, "precision": "fp32", "evalSteps": 3},
        evaluation={"metrics": ["perplexity"], "gates": {"maxPerplexity": 1e9}},
    )
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(obj))

    def run(n: int) -> dict:
        monkeypatch.setenv("KUBETUNE_RUN", str(n))
        monkeypatch.setenv("KUBETUNE_OUTPUT_DIR", str(tmp_path / "out" / f"run-{n}"))
        monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(tmp_path / f"termination-{n}"))
        (tmp_path / f"termination-{n}").touch()  # the kubelet makes it; the trainer only writes an existing one
        assert main(["train", "--spec", str(spec)]) == 0
        return json.loads((tmp_path / f"termination-{n}").read_text())

    first = run(1)
    assert first["phase"] == "Succeeded", first
    data = first["data"]
    assert data["rowsRead"] == 40 and data["train"] + data["validation"] + data["test"] == 40
    assert data["sources"] == [{"version": "v1", "requests": 40, "feedback": 40, "rows": 40,
                                "uri": str(tmp_path / "caps" / "v1")}]  # fmt: skip
    ledger = json.loads((tmp_path / "out" / "run-1" / "data" / "ledger.json").read_text())
    assert len(ledger["rows"]) == data["train"] and ledger["owner"] == {"uid": "uid-1", "run": "1"}

    second = run(2)
    assert second["phase"] == "Skipped" and second["reason"] == "NoNewData", second
    assert "no new rows to train on" in second["message"]
    assert second["data"]["usedBeforeDropped"] == data["train"]
    assert second["artifact"] == first["artifact"], "the latest artifact stays"
    assert not (tmp_path / "out" / "run-2" / "artifact").exists()


def test_captures_and_ledgers_on_a_real_s3_server(tmp_path, monkeypatch):
    """The same reading from s3:// (moto's server): new files are seen on the next run, .part never."""
    import uuid

    from tests.support.s3 import S3Server

    with S3Server() as server:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        fs, bucket = server.client(), f"kt-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        cap = CaptureWriter(tmp_path / "caps")
        many(cap, 20)
        cap.close()
        fs.put(str(tmp_path / "caps"), f"{bucket}/caps", recursive=True)
        obj = job(tmp_path, tmp_path / "unused")
        obj["spec"]["dataset"]["captures"] = {"uri": f"s3://{bucket}/caps"}
        obj["spec"]["output"] = {"uri": f"s3://{bucket}/out"}
        obj["captures"] = {"uri": f"s3://{bucket}/caps", "runStart": "2026-12-02T00:00:00Z"}
        cfg = parse_job(obj, cuda_available=False)
        splits, _, ledger = captured.build(cfg, 1)
        assert sum(len(v) for v in splits.values()) == 20
        fs.pipe(
            f"{bucket}/out/run-1/result.json", json.dumps({"phase": "Succeeded", "owner": {"uid": "uid-1"}}).encode()
        )
        fs.pipe(f"{bucket}/out/run-1/data/ledger.json", json.dumps({"rows": ledger}).encode())
        with pytest.raises(captured.NoNewData):
            captured.build(cfg, 2)
        many(cap, 10, start=20)
        for path in cap.close():
            fs.put(str(path), f"{bucket}/caps/{path.parent.name}/{path.name}")
        assert captured.build(cfg, 2)[0]["train"], "the files published since run 1 are read"
