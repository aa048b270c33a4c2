"""Remote locations go through fsspec; the in-memory filesystem stands in for s3:// here."""

from __future__ import annotations

import json
import shutil

import fsspec
import pytest

from kubetune_trainer.cli import run
from kubetune_trainer.config import parse_job
from kubetune_trainer.model import resolve_model_source
from kubetune_trainer.sources import DataError, load_rows
from kubetune_trainer.splits import prepare


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    yield fs
    fs.store.clear()


def test_remote_dataset_is_fetched_through_fsspec(memfs, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path))
    with memfs.open("/bucket/data/rows.jsonl", "w") as f:
        f.write(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    assert load_rows("memory://bucket/data/rows.jsonl") == [{"prompt": "p", "response": "r"}]


def test_hf_model_uri_prefers_a_local_copy(tmp_path, monkeypatch):
    (tmp_path / "acme" / "tiny").mkdir(parents=True)
    monkeypatch.setenv("KUBETUNE_HF_ROOT", str(tmp_path))
    job = {"spec": {"baseModel": {"uri": "hf://acme/tiny"}, "dataset": {"uri": "d"}}}
    assert resolve_model_source(parse_job(job)) == str(tmp_path / "acme" / "tiny")
    job["spec"]["baseModel"]["uri"] = "hf://acme/other"
    assert resolve_model_source(parse_job(job)) == "acme/other"  # a hub id, fetched with HF_TOKEN


def test_no_rows_left_after_cleaning_is_a_data_error(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "  ", "response": "x"}\n{"prompt": "a", "response": " "}\n')
    cfg = parse_job({"spec": {"baseModel": {"name": "m"}, "dataset": {"uri": str(data)}}})
    with pytest.raises(DataError, match="no rows left after cleaning"):
        prepare(cfg, tmp_path / "out")


def test_splits_are_written_once_and_reused(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(20)))
    cfg = parse_job({"spec": {"baseModel": {"name": "m"}, "dataset": {"uri": str(data)}}})
    info = tmp_path / "out" / "data" / "split.json"
    first = prepare(cfg, tmp_path / "out")
    written = info.stat().st_mtime_ns
    again = prepare(cfg, tmp_path / "out")  # a retry of the same job reads the files back
    assert again.splits == first.splits and info.stat().st_mtime_ns == written
    cfg.dataset.split.seed = 7  # a different split setting is a different job: split again
    assert prepare(cfg, tmp_path / "out").splits != first.splits


@pytest.mark.slow
def test_remote_output_is_uploaded(memfs, write_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    spec = write_spec({"output": {"uri": "memory://bucket/runs/job"}, "training": {"maxSteps": 2}})
    outcome = run(str(spec))
    assert outcome["artifact"]["uri"] == "memory://bucket/runs/job/artifact"
    assert memfs.exists("/bucket/runs/job/artifact/adapter_model.safetensors")
    assert json.loads(memfs.cat("/bucket/runs/job/result.json"))["phase"] == "Succeeded"
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
