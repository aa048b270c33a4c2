"""Capture: sampled request records and feedback records, written as rotating JSONL files off the request path.

Room: the serving side of issue 13 (writes only under the capture location, or a spool folder for s3://).
Layout (the contract kubetune_trainer.captured reads): ``<uri>/<version>/{requests,feedback}-<pod>-<UTC
stamp>-<seq>.jsonl``. A file is written as ``<name>.part`` and renamed when it rotates (a local or pvc
folder), or spooled locally and uploaded whole when it rotates (s3://). It rotates past ``max_bytes`` or
``max_seconds`` after its first record, and on shutdown.

A request thread only builds a dict and puts it on a bounded queue (``put_nowait``): redaction, JSON
and every disk or network call happen on one writer thread. A full queue, a full disk, a read-only
folder or an unreachable bucket drops the record and counts it (kubetune_capture_dropped_total{reason});
it never slows or fails a request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import itertools
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_server.metrics import CaptureMetrics
from kubetune_server.redact import Redactor

log = logging.getLogger("kubetune_server")
KINDS = {"request": "requests", "feedback": "feedback"}
_STOP = object()


def sampled(response_id: str, rate: float) -> bool:
    """Whether a response is recorded: a hash of its id under ``rate``, so the choice is the same wherever
    it is asked (a proxy and a test agree) and the share converges to ``rate``.

    >>> sampled("kt-v-" + "0" * 32, 1.0), sampled("kt-v-" + "0" * 32, 0.0)
    (True, False)
    """
    h = int(hashlib.sha256(response_id.encode()).hexdigest()[:16], 16) / 2**64
    return h < rate


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class CaptureConfig:
    uri: str  # a local folder (a mounted claim) or s3://bucket/prefix
    sample_rate: float = 0.1
    max_bytes: int = 8 << 20
    max_seconds: float = 300.0
    redact_fields: tuple[str, ...] = ()
    redact_patterns: tuple[str, ...] = ()
    queue_size: int = 1000
    pod: str = field(default_factory=lambda: os.environ.get("HOSTNAME") or "local")


@dataclass
class _File:
    path: Path  # the .part (local) or the spool file (s3)
    name: str  # the published name
    opened: float
    size: int = 0
    records: int = 0
    handle: Any = None


class CaptureWriter:
    def __init__(self, cfg: CaptureConfig, version: str, metrics: CaptureMetrics) -> None:
        self.cfg, self.version, self.metrics = cfg, version, metrics
        self.redactor = Redactor(cfg.redact_fields, cfg.redact_patterns)
        self.remote = cfg.uri.startswith("s3://")
        self.remote_dir = f"{cfg.uri.rstrip('/')}/{version}"
        # s3:// files are spooled on the pod's scratch space and uploaded whole when they rotate.
        self.folder = Path(tempfile.mkdtemp(prefix="kubetune-capture-")) if self.remote else Path(cfg.uri) / version
        self._queue: queue.Queue[Any] = queue.Queue(cfg.queue_size)
        self._files: dict[str, _File] = {}
        self._seq = itertools.count()
        self._fs: Any = None
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    # -- request side: never blocks --------------------------------------------------------------
    def sampled(self, response_id: str) -> bool:
        return sampled(response_id, self.cfg.sample_rate)

    def submit(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.metrics.dropped(self.version, "queue")

    def close(self, timeout: float = 20.0) -> None:
        """Publish the open files and stop; bounded, so a hung upload cannot keep a pod from stopping."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("capture queue still full at shutdown: its records are dropped")
        self._thread.join(timeout)
        if self.remote and not self._thread.is_alive():
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- writer thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._wait())
            except queue.Empty:
                item = None
            if item is _STOP:
                for kind in list(self._files):
                    self._publish(kind)
                return
            try:
                if item is not None:
                    self._write(item)
                self._rotate_expired()
            except Exception:  # the writer must outlive any one bad record
                log.exception("capture writer: unexpected error")

    def _wait(self) -> float:
        if not self._files:
            return 1.0
        oldest = min(f.opened for f in self._files.values())
        return max(0.01, oldest + self.cfg.max_seconds - time.monotonic())

    def _rotate_expired(self) -> None:
        now = time.monotonic()
        for kind, f in list(self._files.items()):
            if now - f.opened >= self.cfg.max_seconds:
                self._publish(kind)

    def _write(self, record: dict[str, Any]) -> None:
        import json

        kind = str(record["kind"])
        line = (json.dumps(self.redactor.record(record), ensure_ascii=False) + "\n").encode()
        if len(line) > self.cfg.max_bytes:
            self.metrics.dropped(self.version, "too_large")
            return
        f = self._files.get(kind)
        if f is not None and f.size + len(line) > self.cfg.max_bytes:
            self._publish(kind)
            f = None
        try:
            if f is None:
                f = self._open(kind)
            f.handle.write(line)
            f.handle.flush()
        except OSError as e:
            self._discard_failed(kind, f)
            self.metrics.dropped(self.version, "full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "unwritable")
            log.debug("capture: dropped a %s record: %s", kind, e)
            return
        f.size += len(line)
        f.records += 1
        if not self.remote:  # an s3:// record counts once its file is uploaded
            self.metrics.written(self.version, kind)

    def _open(self, kind: str) -> _File:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        name = f"{KINDS[kind]}-{self.cfg.pod}-{stamp}-{next(self._seq)}.jsonl"
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / (name if self.remote else name + ".part")
        f = _File(path, name, time.monotonic(), handle=path.open("ab"))
        self._files[kind] = f
        return f

    def _discard_failed(self, kind: str, f: _File | None) -> None:
        """After a failed write: cut the half-written line (a reader would count it malformed); keep
        what was whole, published at the next rotation."""
        if f is None:
            return
        try:
            f.handle.truncate(f.size)
            f.handle.seek(f.size)
        except OSError:
            pass

    def _publish(self, kind: str) -> None:
        f = self._files.pop(kind)
        with contextlib.suppress(OSError):
            f.handle.close()
        if f.records == 0:
            f.path.unlink(missing_ok=True)
            return
        if not self.remote:
            try:
                os.rename(f.path, f.path.with_name(f.name))
            except OSError as e:
                log.warning("capture: cannot publish %s: %s", f.path, e)
            return
        try:
            self._upload(f.path, f"{self.remote_dir}/{f.name}")
            self.metrics.written(self.version, kind, f.records)
        except Exception as e:  # botocore/aiohttp errors come untranslated
            self.metrics.dropped(self.version, "upload", f.records)
            log.warning("capture: upload of %s failed (%d records dropped): %s", f.name, f.records, e)
        finally:
            f.path.unlink(missing_ok=True)

    def _upload(self, local: Path, remote: str) -> None:
        if self._fs is None:
            import s3fs

            # Short timeouts: an unreachable bucket costs this thread seconds, not minutes, per file.
            config = {"connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 2}}
            self._fs = s3fs.S3FileSystem(skip_instance_cache=True, config_kwargs=config)
        self._fs.put_file(str(local), remote.removeprefix("s3://"))


class Recorder:
    """What a server (or the capture proxy) does after a response and on feedback; capture may be off."""

    def __init__(self, version: str, metrics: CaptureMetrics, cfg: CaptureConfig | None) -> None:
        self.version, self.metrics = version, metrics
        self.writer = CaptureWriter(cfg, version, metrics) if cfg is not None else None

    def response(
        self,
        response_id: str,
        model: str,
        prompt: str | None,
        messages: list[dict[str, Any]] | None,
        text: str,
        finish_reason: str,
        usage: tuple[int, int],
        latency: float,
    ) -> None:
        if self.writer is None or not self.writer.sampled(response_id):
            return
        record: dict[str, Any] = {"kind": "request", "id": response_id, "time": now_rfc3339()}
        record.update(version=self.version, model=model)
        if messages is not None:
            record.update(endpoint="chat", messages=messages)
        else:
            record.update(endpoint="completions", prompt=prompt)
        record.update(response=text, finishReason=finish_reason, promptTokens=usage[0], completionTokens=usage[1])
        record["latencySeconds"] = round(latency, 6)
        self.writer.submit(record)

    def feedback(self, response_id: str, version: str, rating: int | None, correction: str | None) -> None:
        self.metrics.feedback(version, rating, correction is not None)
        if self.writer is not None:
            record: dict[str, Any] = {"kind": "feedback", "responseId": response_id, "time": now_rfc3339()}
            record["version"] = version
            record.update(rating=rating, correction=correction)
            self.writer.submit(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
