"""The capture writer on its own (a real thread, real files): what it drops, and that a request never waits."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from kubetune_server.capture import CaptureConfig, CaptureWriter
from kubetune_server.metrics import CaptureMetrics
from kubetune_trainer.captured import read_captures
from tests.serving.server_process import metric_value


def record(i: int, text: str = "ok") -> dict[str, object]:
    return {"kind": "request", "id": f"kt-v-{i:032x}", "time": "t", "version": "v", "prompt": "p", "response": text}


def test_a_full_queue_drops_and_counts_and_never_blocks_the_caller(tmp_path):
    registry = CollectorRegistry()
    writer = CaptureWriter(CaptureConfig(str(tmp_path), queue_size=2, pod="p"), "v", CaptureMetrics("v", registry))
    start = time.monotonic()
    for i in range(2000):
        writer.submit(record(i))
    assert time.monotonic() - start < 1.0  # put_nowait: the caller never waits for the disk
    writer.submit(record(9999, "x" * (9 << 20)))  # over maxFileBytes (8 MiB) on its own
    writer.close()
    dropped_queue = metric_value(registry_text(registry), "kubetune_capture_dropped_total", reason="queue")
    too_large = metric_value(registry_text(registry), "kubetune_capture_dropped_total", reason="too_large")
    written = metric_value(registry_text(registry), "kubetune_capture_records_total", kind="request")
    assert dropped_queue and dropped_queue > 0 and written and written + dropped_queue + (too_large or 0) == 2001
    assert len(read_captures(str(tmp_path), None)[0]) == written


def registry_text(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_a_record_over_max_file_bytes_is_dropped_as_too_large(tmp_path):
    registry = CollectorRegistry()
    writer = CaptureWriter(CaptureConfig(str(tmp_path), max_bytes=1024, pod="p"), "v", CaptureMetrics("v", registry))
    writer.submit(record(1, "x" * 2000))
    writer.submit(record(2))
    writer.close()
    text = registry_text(registry)
    assert metric_value(text, "kubetune_capture_dropped_total", reason="too_large") == 1
    assert [r["id"] for r in read_captures(str(tmp_path), None)[0]] == [f"kt-v-{2:032x}"]
