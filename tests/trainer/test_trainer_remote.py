"""Remote locations: s3:// against a real S3-compatible server (moto's, in its own process, reached
over HTTP through s3fs exactly as a pod reaches MinIO or S3: AWS_ENDPOINT_URL and AWS_* keys)."""

from __future__ import annotations

import doctest
import json
import logging
import re
import uuid
from pathlib import Path

import pytest

from kubetune_trainer import checkpoint
from kubetune_trainer.config import ConfigError, parse_job
from kubetune_trainer.model import resolve_model_source
from kubetune_trainer.recipe import run
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
    job = {
        "spec": {
            "baseModel": {"uri": f"s3://{bucket}/models/none"},
            "dataset": {"uri": "/d"},
            "output": {"uri": "/out"},
        }
    }
    with pytest.raises(ConfigError, match=r"spec\.baseModel\.uri: s3://.*/models/none: no such object"):
        resolve_model_source(parse_job(job))


def save_step(ckpt_dir: Path, step: int) -> Path:
    """A real checkpoint of a one-layer model (weights, AdamW and scheduler state) at ``step``."""
    import torch

    layer = torch.nn.Linear(4, 4)
    with torch.no_grad():
        layer.weight.fill_(step)
    optimizer = torch.optim.AdamW(layer.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    captured = {"trainable": {"weight": layer.weight.detach()}, "optimizer": optimizer.state_dict(),
                "optimizerKeys": "indices"}  # fmt: skip
    return checkpoint.save(ckpt_dir, step, captured, scheduler, {"history": [{"step": step}]})


def test_checkpoints_mirrored_to_s3_are_pulled_by_a_pod_with_an_empty_cache(s3, tmp_path):
    fs, bucket = s3
    remote = f"s3://{bucket}/runs/job/run-1/checkpoints"
    checkpoint.claim(tmp_path / "node-a", "uid-a", "1")
    for step in (5, 10, 15):
        assert checkpoint.push(save_step(tmp_path / "node-a", step), remote) == f"{remote}/step-{step}"
    # The remote copy keeps the newest two, like the local folder; each with its manifest.
    assert [s for s, _ in checkpoint.remote_complete(remote)] == [10, 15]
    assert json.loads(fs.cat(f"{bucket}/runs/job/run-1/checkpoints/step-15/manifest.json"))["step"] == 15

    fresh = tmp_path / "node-b" / "checkpoints"
    checkpoint.claim(fresh, "uid-a", "1")
    assert checkpoint.pull_latest(remote, fresh) == f"{remote}/step-15"
    local, original = fresh / "step-15", tmp_path / "node-a" / "step-15"
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in original.iterdir())
    for file in original.iterdir():
        assert (local / file.name).read_bytes() == file.read_bytes(), file.name
    assert checkpoint.complete(fresh) == [local] and not list(fresh.glob(".tmp-*"))
    assert checkpoint.pull_latest(remote, fresh) is None  # the local copy is as new: nothing to fetch


def test_a_half_uploaded_or_damaged_remote_checkpoint_is_never_used(s3, tmp_path):
    fs, bucket = s3
    remote = f"s3://{bucket}/out/checkpoints"
    checkpoint.claim(tmp_path / "a", "uid-a", "1")
    checkpoint.push(save_step(tmp_path / "a", 5), remote)
    checkpoint.push(save_step(tmp_path / "a", 10), remote)
    # A pod killed mid-upload: step-15's files are there, its manifest (uploaded last) is not.
    for file in save_step(tmp_path / "b", 15).iterdir():
        if file.name != checkpoint.MANIFEST:
            fs.put_file(str(file), f"{bucket}/out/checkpoints/step-15/{file.name}")
    # And step-10 was damaged after the fact: a file shorter than its manifest says.
    fs.pipe(f"{bucket}/out/checkpoints/step-10/trainable.pt", b"truncated")
    assert [s for s, _ in checkpoint.remote_complete(remote)] == [5, 10]
    fresh = tmp_path / "c" / "checkpoints"
    checkpoint.claim(fresh, "uid-a", "1")
    assert checkpoint.pull_latest(remote, fresh) == f"{remote}/step-5"
    assert [p.name for p in checkpoint.complete(fresh)] == ["step-5"] and not list(fresh.glob(".tmp-*"))


def test_remote_checkpoints_of_another_finetunejob_are_not_pulled(s3, tmp_path):
    """A FineTuneJob deleted and re-created under the same name and s3:// output has a new uid."""
    _, bucket = s3
    remote = f"s3://{bucket}/reused/run-1/checkpoints"
    checkpoint.claim(tmp_path / "old", "uid-old", "1")
    checkpoint.push(save_step(tmp_path / "old", 5), remote)
    for uid, run_, pulled in (("uid-new", "1", None), ("uid-old", "2", None), ("uid-old", "1", f"{remote}/step-5")):
        fresh = tmp_path / f"{uid}-{run_}" / "checkpoints"
        checkpoint.claim(fresh, uid, run_)
        assert checkpoint.pull_latest(remote, fresh) == pulled, (uid, run_)


def test_hf_model_uri_prefers_a_local_copy(tmp_path, monkeypatch):
    (tmp_path / "acme" / "tiny").mkdir(parents=True)
    monkeypatch.setenv("KUBETUNE_HF_ROOT", str(tmp_path))
    job = {"spec": {"baseModel": {"uri": "hf://acme/tiny"}, "dataset": {"uri": "/d"}, "output": {"uri": "/out"}}}
    assert resolve_model_source(parse_job(job)) == str(tmp_path / "acme" / "tiny")
    job["spec"]["baseModel"]["uri"] = "hf://acme/other"
    assert resolve_model_source(parse_job(job)) == "acme/other"  # a hub id, fetched with HF_TOKEN


def test_no_rows_left_after_cleaning_is_a_data_error(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "  ", "response": "x"}\n{"prompt": "a", "response": " "}\n')
    cfg = parse_job({"spec": {"baseModel": {"name": "m"}, "dataset": {"uri": str(data)}, "output": {"uri": "/out"}}})
    with pytest.raises(DataError, match="no rows left after cleaning"):
        prepare(cfg, tmp_path / "out")


def test_splits_are_written_once_and_reused(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(20)))
    cfg = parse_job({"spec": {"baseModel": {"name": "m"}, "dataset": {"uri": str(data)}, "output": {"uri": "/out"}}})
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
            # Checkpoints mirrored during training: the run's remote folder exists before the final upload.
            "training": {"maxSteps": 2, "checkpointSteps": 1},
        }
    )
    outcome = run(str(spec))
    assert [step for step, _ in checkpoint.remote_complete(f"s3://{bucket}/runs/job/checkpoints")] == [1, 2]
    assert outcome["artifact"]["uri"] == f"s3://{bucket}/runs/job/artifact"
    assert fs.exists(f"{bucket}/runs/job/artifact/adapter_model.safetensors")
    assert json.loads(fs.cat(f"{bucket}/runs/job/result.json"))["phase"] == "Succeeded"
    card = json.loads(fs.cat(f"{bucket}/runs/job/artifact/model_card.json"))
    assert card["dataset"]["uri"] == f"s3://{bucket}/data/glossary.jsonl"
    assert card["dataset"]["sha256"].startswith("sha256:")
    assert card["baseModel"]["uri"] == f"s3://{bucket}/models/tiny"


def test_a_download_reports_its_progress_in_the_log(s3, tmp_path, caplog, monkeypatch):
    """Bytes done of the total, every few seconds, then the whole count: counted from what s3fs really
    copied (its per-chunk callbacks), not from the listing."""
    from kubetune_trainer import transfers, uris

    fs, bucket = s3
    fs.pipe(f"{bucket}/model/weights.bin", b"w" * 300_000)
    fs.pipe(f"{bucket}/model/config.json", b"{}")
    fs.pipe(f"{bucket}/one.bin", b"x" * 70_000)
    monkeypatch.setattr(transfers, "EVERY_SECONDS", 0.0)  # a line on every chunk, so a small copy shows them
    caplog.set_level(logging.INFO, logger="kubetune_trainer")
    status: list[str | None] = []  # what status.progress.transfer was set to (StatusReporter.transfer)
    transfers.report_to(status.append)
    try:
        uris.fetch_remote(f"s3://{bucket}/model", tmp_path / "cache")
        uris.fetch_remote(f"s3://{bucket}/one.bin", tmp_path / "cache")
    finally:
        transfers.report_to(None)
    # Status shows each copy while it runs and is cleared (None) when it is over.
    assert f"fetching s3://{bucket}/model: 293.0 KiB of 293.0 KiB (100%)" in status, status
    assert status.count(None) == 2 and status[-1] is None, status
    assert [line for line in status if line] == [m for m in caplog.messages if m.startswith("fetching") and "%)" in m]
    said = [m for m in caplog.messages if m.startswith("fetching s3://")]
    assert f"fetching s3://{bucket}/model: 293.0 KiB of 293.0 KiB (100%)" in said, said
    assert any(re.fullmatch(rf"fetching s3://{bucket}/model: 293\.0 KiB in \d+\.\ds", m) for m in said), said
    assert len([m for m in said if "/model: " in m and "%)" in m]) > 2  # lines while it was under way
    assert said[-2] == f"fetching s3://{bucket}/one.bin: 68.4 KiB of 68.4 KiB (100%)", said
    assert said[-1].startswith(f"fetching s3://{bucket}/one.bin: 68.4 KiB in "), said
    assert doctest.testmod(transfers).failed == 0


def test_an_upload_reports_the_bytes_it_copied(s3, tmp_path, caplog):
    from kubetune_trainer import export

    fs, bucket = s3
    (tmp_path / "out" / "artifact").mkdir(parents=True)
    (tmp_path / "out" / "artifact" / "adapter.bin").write_bytes(b"a" * 200_000)
    (tmp_path / "out" / "result.json").write_text("{}")
    caplog.set_level(logging.INFO, logger="kubetune_trainer")
    export.upload(tmp_path / "out", f"s3://{bucket}/runs/up")
    assert fs.cat(f"{bucket}/runs/up/artifact/adapter.bin") == b"a" * 200_000
    (done,) = [m for m in caplog.messages if m.startswith(f"uploading s3://{bucket}/runs/up: ")]
    assert re.fullmatch(rf"uploading s3://{bucket}/runs/up: 195\.3 KiB in \d+\.\ds", done)
