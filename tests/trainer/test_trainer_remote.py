"""Remote locations: s3:// against a real S3-compatible server (moto's, in its own process, reached
over HTTP through s3fs exactly as a pod reaches MinIO or S3: AWS_ENDPOINT_URL and AWS_* keys)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from kubetune_trainer.cli import run
from kubetune_trainer.config import ConfigError, parse_job
from kubetune_trainer.model import resolve_model_source
from kubetune_trainer.sources import DataError, load_rows
from kubetune_trainer.splits import prepare
from tests.support.s3 import S3Server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3_server():
    with S3Server() as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """(filesystem, bucket): a fresh bucket per test; the trainer finds the server through the env."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    fs = s3_server.client()
    bucket = f"kt-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return fs, bucket


def test_s3_dataset_is_fetched_once_per_uri(s3, tmp_path):
    fs, bucket = s3
    for name, answer in (("a", "r1"), ("b", "r2")):  # the same file name under two prefixes
        fs.pipe(f"{bucket}/{name}/rows.jsonl", (json.dumps({"prompt": "p", "response": answer}) + "\n").encode())
    assert load_rows(f"s3://{bucket}/a/rows.jsonl") == [{"prompt": "p", "response": "r1"}]
    assert load_rows(f"s3://{bucket}/b/rows.jsonl") == [{"prompt": "p", "response": "r2"}]
    fs.rm(f"{bucket}/a/rows.jsonl")
    # A retried pod reuses its whole local copy instead of fetching again.
    assert load_rows(f"s3://{bucket}/a/rows.jsonl") == [{"prompt": "p", "response": "r1"}]


def test_missing_s3_data_and_model_are_clear_errors(s3):
    _, bucket = s3
    with pytest.raises(DataError, match=f"s3://{bucket}/nope.jsonl: no such object"):
        load_rows(f"s3://{bucket}/nope.jsonl")
    job = {"spec": {"baseModel": {"uri": f"s3://{bucket}/models/none"}, "dataset": {"uri": "d"}}}
    with pytest.raises(ConfigError, match=r"spec\.baseModel\.uri: s3://.*/models/none: no such object"):
        resolve_model_source(parse_job(job))


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
def test_job_reads_model_and_data_from_s3_and_uploads_its_output(s3, write_spec, tiny_model_dir):
    fs, bucket = s3
    fs.put(str(REPO / "examples" / "data" / "glossary.jsonl"), f"{bucket}/data/glossary.jsonl")
    fs.put(str(tiny_model_dir), f"{bucket}/models/tiny", recursive=True)
    spec = write_spec(
        {
            "baseModel": {"uri": f"s3://{bucket}/models/tiny"},
            "dataset": {"uri": f"s3://{bucket}/data/glossary.jsonl"},
            "output": {"uri": f"s3://{bucket}/runs/job"},
            "training": {"maxSteps": 2},
        }
    )
    outcome = run(str(spec))
    assert outcome["artifact"]["uri"] == f"s3://{bucket}/runs/job/artifact"
    assert fs.exists(f"{bucket}/runs/job/artifact/adapter_model.safetensors")
    assert json.loads(fs.cat(f"{bucket}/runs/job/result.json"))["phase"] == "Succeeded"
    card = json.loads(fs.cat(f"{bucket}/runs/job/artifact/model_card.json"))
    assert card["dataset"]["uri"] == f"s3://{bucket}/data/glossary.jsonl"
    assert card["dataset"]["sha256"].startswith("sha256:")
    assert card["baseModel"]["uri"] == f"s3://{bucket}/models/tiny"
