"""Run ``python -m kubetune_server`` as a real subprocess on a free loopback port, and talk to it.

The server is started with ``--port 0`` and reports the port it got in its "listening on" log line,
so two servers (or a parallel test run) never race for a port.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kubetune_dev.processes import stop_process

LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")


class ServerProcess:
    def __init__(self, model: Path, *args: str, version: str = "test", adapter: Path | None = None) -> None:
        self.argv = [sys.executable, "-m", "kubetune_server", "--model", str(model), "--port", "0"]
        # One torch thread: the servers, Prometheus and pytest share two cores; more threads only contend.
        self.argv += ["--version", version, "--max-new-tokens", "8", "--torch-threads", "1", *args]
        if adapter is not None:
            self.argv += ["--adapter", str(adapter), "--adapter-name", "lora"]
        self.log = Path(tempfile.mkstemp(prefix=f"kubetune-server-{version}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.readyz_seen: list[int] = []  # /readyz statuses while waiting, oldest first

    @property
    def hostport(self) -> str:
        return self.url.removeprefix("http://")

    def start(self) -> ServerProcess:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def wait_listening(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTENING.search(self.log.read_text(errors="replace"))
            if m:
                self.url = f"http://{m.group(1)}:{m.group(2)}"
                return self.url
            self._check_alive()
            time.sleep(0.05)
        raise TimeoutError(f"server did not listen within {timeout}s:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 120) -> None:
        if not self.url:
            self.wait_listening()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            status, _ = get(self.url + "/readyz")
            self.readyz_seen.append(status)
            if status == 200:
                return
            time.sleep(0.1)
        raise TimeoutError(f"server not ready within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return stop_process(self.proc)

    def __enter__(self) -> ServerProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log.unlink(missing_ok=True)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")

    # -- HTTP --------------------------------------------------------------------------------------
    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return post(self.url + path, body)

    def get(self, path: str) -> tuple[int, Any]:
        return get(self.url + path)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return str(r.read().decode())


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, _decode(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _decode(e.read())
    except (urllib.error.URLError, OSError):
        return 0, None


def post(url: str, body: Any, timeout: float = 60) -> tuple[int, Any]:
    """POST ``body``: a dict is sent as JSON, bytes as they are (to send broken JSON)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, _decode(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _decode(e.read())


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text exposition, or None when absent.

    >>> metric_value('a_total{status="200",version="v"} 3.0', "a_total", status="200")
    3.0
    """
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None
