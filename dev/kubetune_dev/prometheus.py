"""A real Prometheus server for tests, scraping targets the test names through file-based discovery.

    with PrometheusServer() as prom:                 # loopback port, throwaway TSDB, 1 s scrapes
        prom.set_targets([("127.0.0.1:8001", {"role": "stable"})])
        prom.wait_for_targets(1)
        prom.query('sum(rate(kubetune_requests_total[30s]))')   # -> [({labels}, value), ...]

The binary comes from $KUBETUNE_PROMETHEUS, else PATH, else ``hack/install-prometheus.sh`` (Debian's
package; needs root). ``prometheus_binary_or_skip()`` turns "cannot get one" into a pytest skip with
the reason. Targets live in a JSON file re-read every second (``file_sd_configs``), which is how the
test moves traffic between "pods" without restarting Prometheus.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from kubetune_dev.processes import LoopbackServer, free_port

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "hack" / "install-prometheus.sh"

Sample = tuple[dict[str, str], float]


class PrometheusError(RuntimeError):
    pass


def find_prometheus(install: bool = True) -> Path:
    """The prometheus binary; runs the install script when there is none (raises PrometheusError if that fails)."""
    env = os.environ.get("KUBETUNE_PROMETHEUS")
    if env:
        if not os.access(env, os.X_OK):
            raise PrometheusError(f"KUBETUNE_PROMETHEUS={env} is not an executable")
        return Path(env)
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    if not install:
        raise PrometheusError("prometheus is not on PATH")
    proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PrometheusError(f"{INSTALL_SCRIPT.name} failed: {proc.stderr.strip()[-1000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def prometheus_binary_or_skip() -> Path:
    import pytest

    try:
        return find_prometheus()
    except PrometheusError as e:
        pytest.skip(f"no Prometheus binary: {e}")


def config(targets_file: Path, scrape_interval: str = "1s") -> dict[str, Any]:
    """The prometheus.yml: one job whose targets come from ``targets_file``.

    >>> config(Path("/t.json"))["scrape_configs"][0]["file_sd_configs"]
    [{'files': ['/t.json'], 'refresh_interval': '1s'}]
    """
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": "kubetune",
                "scrape_timeout": scrape_interval,
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
            }
        ],
    }


class PrometheusServer(LoopbackServer):
    name, ready_path, log_name, error = "prometheus", "/-/ready", "prometheus.log", PrometheusError

    def __init__(
        self, binary: Path | None = None, scrape_interval: str = "1s", targets_file: Path | None = None
    ) -> None:
        """``targets_file``: scrape what another program lists there (the local executor's Ready serving
        pods) instead of a file of its own that ``set_targets`` writes."""
        super().__init__()
        self.binary = binary or find_prometheus()
        self.scrape_interval = scrape_interval
        self.external_targets = targets_file

    @property
    def targets_file(self) -> Path:
        if self.external_targets is not None:
            return self.external_targets
        assert self.dir is not None, "start() first"
        return self.dir / "targets.json"

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> PrometheusServer:
        self.dir = Path(tempfile.mkdtemp(prefix="kubetune-prom-"))
        if self.external_targets is None:
            self.set_targets([])
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config(self.targets_file, self.scrape_interval)))
        self.port = free_port()
        args = [
            str(self.binary),
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
        ]
        with self.log_file.open("wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    # -- targets -----------------------------------------------------------------------------------
    def set_targets(self, targets: list[tuple[str, dict[str, str]]]) -> None:
        """Replace the scraped targets: [("host:port", {label: value}), ...]. Picked up within ~1 s."""
        groups = [{"targets": [addr], "labels": dict(labels)} for addr, labels in targets]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        os.replace(tmp, self.targets_file)  # atomic: Prometheus never reads half a file

    def active_targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets", {"state": "active"})["activeTargets"])

    def wait_for_targets(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        """Wait until ``count`` targets are up and each has been scraped at least once."""
        deadline = time.monotonic() + timeout
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = self.active_targets()
            if len(targets) == count and all(t.get("health") == "up" for t in targets):
                return targets
            time.sleep(0.25)
        raise PrometheusError(f"wanted {count} healthy targets, have {json.dumps(targets)[:2000]}")

    # -- queries -----------------------------------------------------------------------------------
    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """An instant query: [(labels, value), ...]; an empty list when no series matched (no data, not 0).

        Scalars come back as one sample with empty labels; NaN stays NaN (e.g. a quantile of no requests).
        """
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        kind, result = data["resultType"], data["result"]
        if kind == "vector":
            return [(dict(s["metric"]), float(s["value"][1])) for s in result]
        if kind == "scalar":
            return [({}, float(result[1]))]
        raise PrometheusError(f"unexpected result type {kind} for {promql}")

    def query_by(self, promql: str, label: str) -> dict[str, float]:
        """query() as {value of ``label``: value}, for results grouped by one label."""
        return {labels.get(label, ""): value for labels, value in self.query(promql)}

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400/422: bad PromQL; the body says why
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return dict(body["data"])
