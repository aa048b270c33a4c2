"""Run ``python -m kubetune_dev.judge`` as a real subprocess on a free loopback port (it prints its URL)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubetune_dev.processes import stop_process

LISTENING = re.compile(r"judge listening on (http://[\d.]+:\d+)")


class JudgeProcess:
    def __init__(self, *args: str) -> None:
        self.argv = [sys.executable, "-m", "kubetune_dev.judge", "--port", "0", *args]
        self.log = Path(tempfile.mkstemp(prefix="kubetune-judge-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> JudgeProcess:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = LISTENING.search(self.log.read_text(errors="replace"))
            if m:
                self.url = m.group(1)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"judge exited: {self.log.read_text()}")
            time.sleep(0.05)
        raise TimeoutError(f"judge did not listen: {self.log.read_text()}")

    def __exit__(self, *_: Any) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/stats", timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data
