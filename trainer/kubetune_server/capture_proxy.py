"""``python -m kubetune_server.capture_proxy --upstream http://127.0.0.1:8001``: capture in front of vLLM.

Room: the serving side of issue 13 for engines that cannot capture themselves (writes only through
kubetune_server.capture). It speaks the OpenAI-compatible API on the pod's port and forwards every
request to the engine beside it in the pod. A non-streaming completion or chat answer gets a Kubetune
response id (``kt-<version>-<32 hex>``, in place of the engine's) and is recorded at the sample rate;
``POST /v1/feedback`` is answered here; a streamed answer is relayed as it comes and not recorded.
``/metrics`` is the engine's exposition followed by the proxy's feedback and capture series, so one
scrape of the pod's port sees both. ``/readyz`` is the engine's health. The capture flags are the
server's (``KUBETUNE_SERVER_CAPTURE_*``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from kubetune_server import protocol, settings
from kubetune_server.capture import Recorder
from kubetune_server.metrics import CONTENT_TYPE, CaptureMetrics
from kubetune_server.protocol import RequestError

log = logging.getLogger("kubetune_server.capture_proxy")
CAPTURED = {"/v1/completions": False, "/v1/chat/completions": True}  # path -> chat
MAX_BODY_BYTES = 16 << 20
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade"}


@dataclass(frozen=True)
class ProxySettings:
    upstream: str = "http://127.0.0.1:8001"
    upstream_health: str = "/health"
    host: str = "127.0.0.1"
    port: int = 8000
    version: str = "unknown"
    capture_uri: str | None = None
    capture_sample_rate: float = 0.1
    capture_max_file_bytes: int = 8 << 20
    capture_max_file_seconds: float = 300.0
    capture_redact_fields: str = ""
    capture_redact_patterns: str = ""
    capture_queue: int = 1000


FLAGS: list[tuple[str, type, str]] = [
    ("upstream", str, "the engine's base URL (loopback, in the same pod)"),
    ("upstream-health", str, "the engine's health path, for /readyz (vLLM: /health)"),
    ("host", str, "address to listen on (0.0.0.0 inside a pod)"),
    ("port", int, "port to listen on; 0 picks a free one"),
    ("version", str, "the serving version: response ids and metric labels carry it"),
    *settings.CAPTURE_FLAGS,
]


def parse(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ProxySettings:
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(prog="python -m kubetune_server.capture_proxy", description=__doc__.splitlines()[0])
    defaults = ProxySettings()
    for flag, kind, text in FLAGS:
        raw = env.get(settings.env_name(flag))
        default = getattr(defaults, flag.replace("-", "_")) if raw is None else raw
        p.add_argument(f"--{flag}", type=kind, default=default, help=f"{text} [env {settings.env_name(flag)}]")
    ns = vars(p.parse_args(argv))
    ns["capture_uri"] = ns["capture_uri"] or None
    s = ProxySettings(**ns)
    if not s.version:
        raise settings.SettingsError("--version must not be empty")
    settings.check_capture(s)
    return s


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, s: ProxySettings) -> None:
        self.settings = s
        self.registry = CollectorRegistry()
        self.recorder = Recorder(s.version, CaptureMetrics(s.version, self.registry), settings.capture_config(s))
        up = urllib.parse.urlsplit(s.upstream)
        self.upstream = (up.hostname or "127.0.0.1", up.port or 80)
        super().__init__((s.host, s.port), ProxyHandler)


class ProxyHandler(BaseHTTPRequestHandler):
    server: ProxyServer
    protocol_version = "HTTP/1.1"
    server_version = "kubetune-capture-proxy"
    timeout = 600

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b'{"status": "ok"}', "application/json")
        elif path == "/readyz":
            status, _, _ = self._upstream("GET", self.server.settings.upstream_health, None)
            self._send(200 if status == 200 else 503, json.dumps({"upstream": status}).encode(), "application/json")
        elif path == "/metrics":
            status, _, engine = self._upstream("GET", "/metrics", None)
            own = generate_latest(self.server.registry)
            self._send(200, (engine if status == 200 else b"") + own, CONTENT_TYPE)
        else:
            self._forward(None)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            raw = self._read_body()
        except RequestError as e:
            self._send(e.status, json.dumps(e.body()).encode(), "application/json")
            return
        if path == "/v1/feedback":
            self._feedback(raw)
        elif path in CAPTURED:
            self._generation(raw, CAPTURED[path])
        else:
            self._forward(raw)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- the captured path -------------------------------------------------------------------------
    def _generation(self, raw: bytes, chat: bool) -> None:
        try:
            request = json.loads(raw)
        except ValueError:
            request = None
        if not isinstance(request, dict) or request.get("stream"):
            self._forward(raw)  # the engine answers bad JSON itself; a stream is relayed, not recorded
            return
        start = time.monotonic()
        status, headers, body = self._upstream("POST", self.path, raw)
        answer = _json(body) if status == 200 else None
        if not isinstance(answer, dict) or not answer.get("choices"):
            self._send(status or 502, body, headers.get("content-type", "application/json"))
            return
        rid = protocol.new_id(self.server.settings.version)
        answer["id"] = rid
        choice = answer["choices"][0]
        text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        usage = answer.get("usage") or {}
        self.server.recorder.response(
            rid,
            str(answer.get("model") or request.get("model") or ""),
            None if chat else _prompt(request.get("prompt")),
            request.get("messages") if chat else None,
            text if isinstance(text, str) else "",
            str(choice.get("finish_reason") or ""),
            (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
            time.monotonic() - start,
        )
        self._send(200, json.dumps(answer).encode(), "application/json")

    def _feedback(self, raw: bytes) -> None:
        try:
            fb = protocol.feedback_request(protocol.parse_json(raw))
        except RequestError as e:
            self._send(e.status, json.dumps(e.body()).encode(), "application/json")
            return
        self.server.recorder.feedback(fb.response_id, fb.version, fb.rating, fb.correction)
        self._send(202, b'{"accepted": true}', "application/json")

    # -- plumbing ----------------------------------------------------------------------------------
    def _upstream(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        except OSError as e:
            return 0, {}, json.dumps(protocol.error_body(f"engine unreachable: {e}", "server_error")).encode()
        finally:
            conn.close()

    def _forward(self, body: bytes | None) -> None:
        """Relay a request as it is, and its answer as it comes (chunk by chunk: a stream stays a stream)."""
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=self.timeout)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := resp.read1(65536):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError as e:
            self.close_connection = True
            if not isinstance(e, BrokenPipeError | ConnectionResetError):
                with _quiet():
                    body = json.dumps(protocol.error_body(f"engine unreachable: {e}", "server_error")).encode()
                    self._send(502, body, "application/json")
        finally:
            conn.close()

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as e:
            self.close_connection = True
            raise RequestError("invalid Content-Length header") from e
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", 413)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        with _quiet():
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)


class _quiet:
    """A client gone before its answer is not an error of the proxy."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, BrokenPipeError | ConnectionResetError)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _prompt(value: Any) -> str | None:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, str) else json.dumps(value)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        s = parse(argv)
    except settings.SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    server = ProxyServer(s)
    host, port = server.server_address[:2]
    log.info("listening on http://%s:%d (version %s, upstream %s)", host, port, s.version, s.upstream)

    def stop(signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        server.recorder.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
