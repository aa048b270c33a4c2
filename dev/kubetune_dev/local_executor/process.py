"""The local executor as a child process of the demo or of a test session, next to the control plane.

ex = ExecutorProcess(kubeconfig, "local", tmp / "executor").start()   # returns once the Node exists
ex.targets()             # [("127.0.0.1:41234", {"namespace": ..., "pod": ..., labels...}), ...]
ex.kill()                # SIGKILL: the pods' processes end with it, the API still says Running
ex.start()               # a new executor for the same Node picks the pods up again
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kubetune_dev.local_executor.executor import Targets


class ExecutorProcess:
    def __init__(
        self,
        kubeconfig: Path,
        node: str,
        root: Path,
        pvc_root: Path | None = None,
        targets_file: Path | None = None,
    ) -> None:
        self.kubeconfig, self.node, self.root = kubeconfig, node, root
        self.workdir = root / "pods"
        self.pvc_root = pvc_root or root / "pvc"
        self.targets_file = targets_file or root / "targets.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60) -> ExecutorProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        self.pvc_root.mkdir(parents=True, exist_ok=True)
        self.targets_file.unlink(missing_ok=True)
        self.starts += 1
        args = [sys.executable, "-m", "kubetune_dev.local_executor", "--node", self.node,
                "--kubeconfig", str(self.kubeconfig), "--workdir", str(self.workdir),
                "--pvc-root", str(self.pvc_root), "--targets-file", str(self.targets_file)]  # fmt: skip
        with open(self.root / f"executor-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + timeout
        while not self.targets_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the local executor for {self.node} did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM: the executor ends its pods' processes (up to 10 s each) and cordons its Node."""
        try:
            self.kill(signal.SIGTERM, timeout=60)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)

    def targets(self) -> Targets:
        """The Ready serving pods' endpoints, as the executor last published them."""
        try:
            groups = json.loads(self.targets_file.read_text())
        except (OSError, ValueError):  # not written yet, or the executor is down
            return []
        return [(g["targets"][0], dict(g["labels"])) for g in groups]

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.root.glob("executor-*.log")))
