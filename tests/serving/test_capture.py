"""Capture and feedback on a real server process with the tiny model, under the bounded load generator.

The files are read back with the trainer's own reader (kubetune_trainer.captured), so what the serving
side writes is what the retraining side reads.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from kubetune_dev.loadgen import run_load
from kubetune_server.capture import sampled
from kubetune_trainer.captured import read_captures
from tests.serving.server_process import ServerProcess, metric_value

VERSION = "v1"


def capture_server(model: Path, uri: Path | str, *args: str) -> ServerProcess:
    return ServerProcess(model, "--capture-uri", str(uri), *args, version=VERSION)


def counted(server: ServerProcess, name: str, **labels: str) -> float:
    return metric_value(server.metrics(), name, version=VERSION, **labels) or 0.0


def wait_for(check, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_captures_at_the_sample_rate_under_load_and_the_trainer_reads_it(tiny_model_dir, tmp_path):
    root = tmp_path / "captures"
    n = 120
    with capture_server(tiny_model_dir, root, "--capture-sample-rate", "0.5") as server:
        result = run_load({server.url: 1}, max_requests=n, max_duration=120, concurrency=2)
        assert result.by_target()[server.url].statuses == {200: n}
        wait_for(lambda: counted(server, "kubetune_capture_records_total", kind="request") > 0)
        time.sleep(0.5)  # the writer thread drains the queue
        written = counted(server, "kubetune_capture_records_total", kind="request")
    requests, feedback, bad = read_captures(str(root), None)
    assert not any(p.name.endswith(".part") for p in files(root)), files(root)
    assert len(requests) == written and feedback == [] and bad == {VERSION: {"malformed": 0, "oversized": 0}}
    # Binomial(120, 0.5): 60 +- 5.5; the bounds are over 4 standard deviations wide.
    assert 35 <= len(requests) <= 85, len(requests)
    assert all(sampled(r["id"], 0.5) for r in requests)  # the choice is the id's hash, nothing else
    r = requests[0]
    assert r["kind"] == "request" and r["version"] == VERSION and r["endpoint"] == "completions"
    assert r["id"].startswith(f"kt-{VERSION}-") and r["prompt"] == "A pod is"
    assert r["finishReason"] in ("stop", "length")
    assert r["completionTokens"] >= 1 and r["latencySeconds"] > 0 and r["time"].endswith("Z")


def test_every_response_carries_its_id_and_feedback_becomes_lines_and_metrics(tiny_model_dir, tmp_path):
    root = tmp_path / "captures"
    with capture_server(tiny_model_dir, root, "--capture-sample-rate", "0") as server:
        status, chat = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and chat["object"] == "chat.completion" and chat["id"].startswith(f"kt-{VERSION}-")
        rid = chat["id"]
        other = "kt-canary-" + "b" * 32  # feedback for another version's response, reaching this pod
        for body in (
            {"id": rid, "rating": 5},
            {"id": rid, "rating": 1, "correction": "A better answer."},
            {"id": rid, "rating": 3},
            {"id": other, "correction": "Fixed."},
        ):
            assert server.post("/v1/feedback", body) == (202, {"accepted": True})
        for body, field in (
            ({"id": "cmpl-1", "rating": 5}, "id"),
            ({"rating": 5}, "id"),
            ({"id": rid, "rating": 6}, "rating"),
            ({"id": rid, "rating": True}, "rating"),
            ({"id": rid}, "rating"),
            ({"id": rid, "correction": ""}, "correction"),
            ({"id": rid, "correction": 3}, "correction"),
        ):
            status, err = server.post("/v1/feedback", body)
            assert status == 400 and err["error"]["param"] == field and f"'{field}'" in err["error"]["message"]
        assert server.post("/v1/feedback", b"{not json")[0] == 400
        text = server.metrics()
        assert metric_value(text, "kubetune_feedback_rating_sum", version=VERSION) == 9.0
        assert metric_value(text, "kubetune_feedback_rating_count", version=VERSION) == 3.0
        for kind, n in (("up", 1), ("down", 1), ("neutral", 1), ("correction", 1)):
            assert metric_value(text, "kubetune_feedback_total", version=VERSION, kind=kind) == n
        assert metric_value(text, "kubetune_feedback_total", version="canary", kind="correction") == 1
        assert metric_value(text, "kubetune_capture_records_total", version=VERSION, kind="request") == 0
    requests, feedback, _ = read_captures(str(root), None)
    assert requests == []  # sampleRate 0: no request recorded, feedback still is
    assert [(f["responseId"], f["rating"], f["correction"], f["version"]) for f in feedback] == [
        (rid, 5, None, VERSION),
        (rid, 1, "A better answer.", VERSION),
        (rid, 3, None, VERSION),
        (other, None, "Fixed.", "canary"),
    ]


def test_redaction_of_a_field_a_pattern_and_builtin_secrets(tiny_model_dir, tmp_path):
    root = tmp_path / "captures"
    args = ["--capture-sample-rate", "1", "--capture-redact-fields", '["model"]']
    args += ["--capture-redact-patterns", json.dumps([r"\b\d{3}-\d{4}\b"])]
    secret = "sk-proj-abcdefghijklmnopqrstuvwx"
    with capture_server(tiny_model_dir, root, *args) as server:
        prompt = "call 555-1234 with Bearer abc.def.ghijkl"
        status, body = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 2})
        assert status == 200
        messages = [{"role": "system", "content": "aws AKIAABCDEFGHIJKLMNOP"}, {"role": "user", "content": secret}]
        assert server.post("/v1/chat/completions", {"messages": messages, "max_tokens": 2})[0] == 200
        assert server.post("/v1/feedback", {"id": body["id"], "correction": f"use {secret} and 555-9876"})[0] == 202
    raw = "".join(p.read_text() for p in files(root))
    assert secret not in raw and "555-1234" not in raw and "AKIA" not in raw and "abc.def" not in raw, raw
    requests, feedback, _ = read_captures(str(root), None)
    completion = next(r for r in requests if r["endpoint"] == "completions")
    chat = next(r for r in requests if r["endpoint"] == "chat")
    assert completion["prompt"] == "call [REDACTED] with [REDACTED]" and completion["model"] == "[REDACTED]"
    assert [m["content"] for m in chat["messages"]] == ["aws [REDACTED]", "[REDACTED]"]
    assert feedback[0]["correction"] == "use [REDACTED] and [REDACTED]"
    assert completion["id"] == body["id"]  # ids are never masked: feedback must still find its response


def test_files_rotate_by_bytes_and_none_is_left_unfinished(tiny_model_dir, tmp_path):
    root = tmp_path / "captures"
    with capture_server(tiny_model_dir, root, "--capture-sample-rate", "1", "--capture-max-file-bytes", "1024") as s:
        result = run_load({s.url: 1}, max_requests=20, max_duration=60, concurrency=1)
        assert result.by_target()[s.url].statuses == {200: 20}
        wait_for(lambda: counted(s, "kubetune_capture_records_total", kind="request") == 20)
        while_running = files(root)
        assert any(p.name.endswith(".jsonl.part") for p in while_running)  # the open file is not published yet
    published = files(root)
    assert len(published) >= 3 and all(p.name.endswith(".jsonl") for p in published), published
    assert all(p.stat().st_size <= 1024 for p in published)
    assert all(p.name.startswith("requests-") and p.parent.name == VERSION for p in published)
    assert len(read_captures(str(root), None)[0]) == 20


def test_an_unwritable_capture_location_fails_no_request_and_counts_drops(tiny_model_dir, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the capture folder should be")  # root ignores chmod: this it cannot write
    with capture_server(tiny_model_dir, blocker, "--capture-sample-rate", "1") as server:
        result = run_load({server.url: 1}, max_requests=10, max_duration=60, concurrency=2)
        assert result.by_target()[server.url].statuses == {200: 10}
        assert server.post("/v1/feedback", {"id": f"kt-{VERSION}-" + "a" * 32, "rating": 4})[0] == 202
        wait_for(lambda: counted(server, "kubetune_capture_dropped_total", reason="unwritable") == 11)
        assert counted(server, "kubetune_capture_records_total", kind="request") == 0


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_no_request_and_counts_drops(tiny_model_dir, tiny_tmpfs):
    with capture_server(tiny_model_dir, tiny_tmpfs, "--capture-sample-rate", "1") as server:
        filler = tiny_tmpfs / "filler"
        with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):  # fill it to the last byte
            while True:
                f.write(b"x" * 512)
        result = run_load({server.url: 1}, max_requests=10, max_duration=60, concurrency=2)
        assert result.by_target()[server.url].statuses == {200: 10}
        wait_for(lambda: counted(server, "kubetune_capture_dropped_total", reason="full") == 10)


def test_s3_captures_are_uploaded_whole_on_rotation_and_an_unreachable_bucket_only_counts(
    tiny_model_dir, tmp_path, monkeypatch
):
    import uuid

    from tests.support.s3 import S3Server

    with S3Server() as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)  # the server process inherits them, as a pod gets them by envFrom
        fs, bucket = s3.client(), f"kt-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        uri = f"s3://{bucket}/caps"
        with capture_server(tiny_model_dir, uri, "--capture-sample-rate", "1", "--capture-max-file-seconds", "1") as s:
            result = run_load({s.url: 1}, max_requests=6, max_duration=60, concurrency=1)
            assert result.by_target()[s.url].statuses == {200: 6}
            wait_for(lambda: counted(s, "kubetune_capture_records_total", kind="request") == 6)  # counted when uploaded
        assert not fs.glob(f"{bucket}/caps/*/*.part") and fs.glob(f"{bucket}/caps/{VERSION}/requests-*.jsonl")
        requests, _, _ = read_captures(uri, None)  # the trainer's reader, over s3
        assert len(requests) == 6 and all(r["id"].startswith(f"kt-{VERSION}-") for r in requests)
    # The S3 server is gone now: the same server settings against nothing.
    with capture_server(tiny_model_dir, uri, "--capture-sample-rate", "1", "--capture-max-file-seconds", "1") as s:
        result = run_load({s.url: 1}, max_requests=4, max_duration=60, concurrency=2)
        assert result.by_target()[s.url].statuses == {200: 4}
        wait_for(lambda: counted(s, "kubetune_capture_dropped_total", reason="upload") == 4, timeout=90)
        assert counted(s, "kubetune_capture_records_total", kind="request") == 0


def test_posted_feedback_becomes_the_trainers_instruction_rows(tiny_model_dir, tmp_path):
    import datetime as dt

    from kubetune_trainer.capture_rows import Window, build_rows
    from kubetune_trainer.config import FieldsConfig

    root = tmp_path / "captures"
    with capture_server(tiny_model_dir, root, "--capture-sample-rate", "1") as server:
        ids = []
        for prompt in ("What is LoRA?", "What is a pod?", "What is DPO?"):
            status, body = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 3})
            assert status == 200
            ids.append(body["id"])
        last_answer = body["choices"][0]["text"]
        assert server.post("/v1/feedback", {"id": ids[0], "correction": "A low-rank adapter."})[0] == 202
        assert server.post("/v1/feedback", {"id": ids[1], "rating": 1})[0] == 202
        assert server.post("/v1/feedback", {"id": ids[2], "rating": 5})[0] == 202
    requests, feedback, _ = read_captures(str(root), None)
    # The window is the trainer's: records' times are parsed and must fall in the last hour.
    window = Window(4, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5), 3600.0)
    built = build_rows(requests, feedback, "instruction", FieldsConfig(), window)
    rows = sorted((row["prompt"], row["response"]) for _, row in built.rows)
    assert rows == [("What is DPO?", last_answer), ("What is LoRA?", "A low-rank adapter.")]
    assert built.sources[VERSION].dropped["belowMinRating"] == 1
