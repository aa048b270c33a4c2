"""The kubelet's container-log endpoint, for the local executor: what `kubectl logs` reaches through the apiserver.

A real kubelet serves HTTPS on its Node's address (``status.addresses``, port
``status.daemonEndpoints.kubeletEndpoint.Port``) and the apiserver dials it for a pod's log. This
serves ``GET /containerLogs/<namespace>/<pod>/<container>`` (``tailLines``, ``limitBytes``,
``follow``) on loopback from the log files the executor writes for each pod's processes, with a
self-signed certificate: the control plane's apiserver has no ``--kubelet-certificate-authority``,
so, like any apiserver without one, it does not verify kubelet serving certificates. Reads only the
executor's pod folders; writes only its own temporary certificate folder.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, urlsplit


def log_file(workdir: Path, ns: str, pod: str, container: str) -> Path:
    """Where the executor writes a container's output: ``init-<name>.log`` for an init container, else
    ``container.log`` (a pod's one main container). The apiserver has already checked that the pod
    has a container of that name."""
    init = workdir / ns / pod / f"init-{container}.log"
    return init if init.exists() else workdir / ns / pod / "container.log"


def tail(data: bytes, lines: int | None) -> bytes:
    """The last `lines` lines, as the kubelet's ``tailLines`` (a last line without newline counts).

    >>> tail(b"a\\nb\\nc\\n", 2), tail(b"a\\nb", 1), tail(b"a\\n", None), tail(b"a\\n", 0)
    (b'b\\nc\\n', b'b', b'a\\n', b'')
    """
    if lines is None:
        return data
    return b"".join(data.splitlines(keepends=True)[-lines:]) if lines > 0 else b""


def _int(query: dict[str, list[str]], key: str) -> int | None:
    value = query.get(key, [""])[0]
    return int(value) if value.lstrip("-").isdigit() else None


class KubeletLogServer:
    """HTTPS on 127.0.0.1 (a free port) until `stop()`; `running(key)` says whether the process of pod
    ``namespace/name`` still runs, so a followed log ends when its container does."""

    def __init__(self, workdir: Path, running: Callable[[str], bool], node: str = "local") -> None:
        self.workdir, self.running = workdir, running
        self._pki = Path(tempfile.mkdtemp(prefix=f"kubetune-kubelet-{node}-"))
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", "kubelet.key", "-out", "kubelet.crt", "-subj", f"/CN={node}",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            cwd=self._pki, check=True, capture_output=True,
        )  # fmt: skip
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._pki / "kubelet.crt", self._pki / "kubelet.key")
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="kubelet-api", daemon=True)

    def start(self) -> KubeletLogServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # followed logs end too
        self._httpd.shutdown()
        self._httpd.server_close()
        shutil.rmtree(self._pki, ignore_errors=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # one line per request would drown the executor's own log

            def do_GET(self) -> None:  # http.server's name for it
                url = urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404, "only /containerLogs/<namespace>/<pod>/<container> is served here")
                    return
                _, ns, pod, container = parts
                query = parse_qs(url.query)
                if query.get("previous", ["false"])[0] == "true":
                    # A restarted container's log is started afresh here; the previous one is gone.
                    self.send_error(400, f"previous terminated container {container!r} in pod {pod!r} not found")
                    return
                path = log_file(server.workdir, ns, pod, container)
                if not path.exists():
                    self.send_error(404, f"container {container!r} in pod {pod!r} has not started")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()  # HTTP/1.0: the body ends when the connection does, as a stream may
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    server._write(self.wfile, path, f"{ns}/{pod}", query)

        return Handler

    def _write(self, out: BinaryIO, path: Path, key: str, query: dict[str, list[str]]) -> None:
        limit = _int(query, "limitBytes")
        data = path.read_bytes()
        offset = len(data)  # what follows starts right after what was read, not after a later stat
        sent = 0

        def send(chunk: bytes) -> bool:
            nonlocal sent
            if limit is not None:
                chunk = chunk[: max(limit - sent, 0)]
            out.write(chunk)
            out.flush()
            sent += len(chunk)
            return limit is None or sent < limit

        if not send(tail(data, _int(query, "tailLines"))) or query.get("follow", ["false"])[0] != "true":
            return
        # Follow: new output as it is written, until the pod's process has ended and all of it is sent.
        while not self._stopping.is_set():
            alive = self.running(key)
            with open(path, "rb") as f:
                f.seek(0, 2)
                if f.tell() < offset:  # the file was started again: a restarted container's new log
                    return
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            if chunk and not send(chunk):
                return
            if not chunk and not alive:
                return
            time.sleep(0.2)
