"""A real S3-compatible server for tests: moto's standalone server, in its own process, on loopback.

    with S3Server() as s3:
        s3.make_bucket("data")
        monkeypatch.setattr(os, "environ", {**os.environ, **s3.env})  # or monkeypatch.setenv each

Clients find it the way pods find MinIO or any S3-compatible store: ``AWS_ENDPOINT_URL`` plus the
usual ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_DEFAULT_REGION`` variables (botocore,
and so s3fs, reads them).
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from kubetune_dev.processes import free_port, stop_process


class S3Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "kubetune-test",
            "AWS_SECRET_ACCESS_KEY": "kubetune-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> S3Server:
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._proc.returncode}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("moto server did not answer within 60 s")

    def __exit__(self, *_: Any) -> None:
        if self._proc is not None:
            stop_process(self._proc, timeout=10)
        # fsspec caches S3 filesystems by their arguments, and the trainer's carry none (the endpoint
        # comes from AWS_ENDPOINT_URL): a cached one would keep talking to this stopped server when the
        # next test's server is somewhere else.
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()

    def client(self) -> Any:
        """An s3fs filesystem talking to this server (a fresh instance: no fsspec cache)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.env["AWS_ACCESS_KEY_ID"],
            secret=self.env["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
        )
