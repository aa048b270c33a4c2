"""HTTP: routes, request bodies, JSON responses, and the metrics around each generation request.

The stdlib ``ThreadingHTTPServer`` is enough here: generation is serialised by the model's lock,
so an async framework would buy nothing but a dependency. Threads keep /healthz, /readyz and
/metrics answering while a long generation runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubetune_server import protocol
from kubetune_server.capture import Recorder
from kubetune_server.metrics import CONTENT_TYPE, ServerMetrics
from kubetune_server.model import LoadedModel
from kubetune_server.protocol import RequestError
from kubetune_server.settings import ServerSettings

log = logging.getLogger("kubetune_server")
MAX_BODY_BYTES = 1 << 20


class ErrorInjector:
    """Fail exactly ``rate`` of the requests, spread evenly: request k fails when floor(k * rate) steps up.

    Deterministic rather than random, so a test (or a rollout rehearsal) knows the error ratio it
    will see after N requests instead of a sample of it.

    >>> e = ErrorInjector(0.25)
    >>> [e.should_fail() for _ in range(8)]
    [False, False, False, True, False, False, False, True]
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._count = 0
        self._lock = threading.Lock()

    def should_fail(self) -> bool:
        if self.rate <= 0:
            return False
        with self._lock:
            before = math.floor(self._count * self.rate + 1e-9)
            self._count += 1
            return math.floor(self._count * self.rate + 1e-9) > before


@dataclass
class ServerState:
    settings: ServerSettings
    metrics: ServerMetrics
    model: LoadedModel | None = None  # set by the loader thread; None while loading
    load_error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    errors: ErrorInjector = field(default_factory=lambda: ErrorInjector(0.0))
    recorder: Recorder | None = None  # capture and feedback; None: /v1/feedback answers 503


class KubetuneHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks shutdown
    allow_reuse_address = True

    def __init__(self, state: ServerState) -> None:
        s = state.settings
        if ":" in s.host:
            self.address_family = socket.AF_INET6
        self.state = state
        super().__init__((s.host, s.port), Handler)


class Handler(BaseHTTPRequestHandler):
    server: KubetuneHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: load generators and Prometheus reuse connections
    server_version = "kubetune-server"
    timeout = 60  # seconds a client may stall mid-request (or idle on keep-alive) before its thread is freed

    # -- routing -----------------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        state = self.server.state
        if path == "/healthz":
            self._send_json(200, {"status": "ok"})
        elif path == "/readyz":
            ready = state.model is not None
            self._send_json(200 if ready else 503, {"status": "ready" if ready else "loading"})
        elif path == "/metrics":
            self._send(200, state.metrics.exposition(), CONTENT_TYPE)
        elif path == "/v1/models":
            names = state.model.names if state.model else []
            self._send_json(200, protocol.models_response(names, state.created))
        else:
            self._send_json(404, protocol.error_body(f"no route GET {path}", "invalid_request_error"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/v1/completions", "/v1/chat/completions"):
            self._generation(chat=path == "/v1/chat/completions")
        elif path == "/v1/feedback":
            self._feedback()
        else:
            self._discard_body()
            self._send_json(404, protocol.error_body(f"no route POST {path}", "invalid_request_error"))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- generation --------------------------------------------------------------------------------
    def _generation(self, chat: bool) -> None:
        metrics = self.server.state.metrics
        start = time.monotonic()
        metrics.in_flight.inc()
        try:
            status, body = self._generate(chat, start)
        except RequestError as e:
            status, body = e.status, e.body()
        except Exception:  # never let one request take the server down
            log.exception("request failed")
            status, body = 500, protocol.error_body("internal error while generating", "server_error")
        finally:
            metrics.in_flight.dec()
        metrics.observe_request(status, time.monotonic() - start)
        self._send_json(status, body)

    def _generate(self, chat: bool, start: float) -> tuple[int, dict[str, Any]]:
        state = self.server.state
        s = state.settings
        raw = self._read_body()
        if s.inject_latency_ms:
            time.sleep(s.inject_latency_ms / 1000)
        model = state.model
        if model is None:
            raise RequestError("the model is still loading; retry when /readyz is 200", 503, kind="server_error")
        body = protocol.parse_json(raw)
        req = (
            protocol.chat_request(body, s.max_new_tokens)
            if chat
            else protocol.completion_request(body, s.max_new_tokens)
        )
        name = model.resolve(req.model)
        if state.errors.should_fail():
            return 500, protocol.error_body("injected error (--inject-error-rate)", "server_error")
        prompt = model.render_chat(req.messages) if req.messages is not None else req.prompt or ""
        gen = model.generate(prompt, req, name)
        ttft = gen.first_token_at - start if gen.first_token_at is not None else None
        state.metrics.observe_generation(gen.prompt_tokens, gen.completion_tokens, ttft)
        rid = protocol.new_id(s.version)
        if state.recorder is not None:  # only a dict onto a queue here: the writer thread does the rest
            usage = (gen.prompt_tokens, gen.completion_tokens)
            latency = time.monotonic() - start
            state.recorder.response(rid, name, req.prompt, req.messages, gen.text, gen.finish_reason, usage, latency)
        make = protocol.chat_response if chat else protocol.completion_response
        return 200, make(name, gen.text, gen.finish_reason, gen.prompt_tokens, gen.completion_tokens, rid)

    def _feedback(self) -> None:
        recorder = self.server.state.recorder
        try:
            fb = protocol.feedback_request(protocol.parse_json(self._read_body()))
            if recorder is None:
                raise RequestError("feedback is not recorded by this server", 503, kind="server_error")
        except RequestError as e:
            self._send_json(e.status, e.body())
            return
        recorder.feedback(fb.response_id, fb.version, fb.rating, fb.correction)
        self._send_json(202, {"accepted": True})

    # -- bodies ------------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise RequestError("chunked request bodies are not supported; send Content-Length", 411)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as e:
            self.close_connection = True
            raise RequestError("invalid Content-Length header") from e
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would be parsed as the next request
            raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", 413)
        return self.rfile.read(length) if length > 0 else b""

    def _discard_body(self) -> None:
        with contextlib.suppress(RequestError):
            self._read_body()

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away before the response was sent")
            self.close_connection = True
