"""A real MLflow tracking server for tests: ``mlflow server`` with a sqlite store, on a loopback port.

    with MlflowServer() as mlf:                       # throwaway sqlite db and artifact folder
        mlf.url                                       # http://127.0.0.1:<port>, the trackingUri
        MlflowClient(mlf.url).get_run(run_id)         # read back through MLflow's own client

Room: development programs (never the operator or trainer images). The server is a development tool
like Prometheus: the full ``mlflow`` package (Flask, SQLAlchemy, alembic, pandas...) lives in its own
virtualenv, which ``hack/install-mlflow.sh`` builds once per version ($KUBETUNE_MLFLOW_VENV overrides
it). ``mlflow_venv_or_skip()`` turns "there is none" into a pytest skip with the reason. Artifacts are
proxied by the server (``--artifacts-destination``): clients upload over HTTP, as in a cluster.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from kubetune_dev.processes import LoopbackServer, free_port

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "hack" / "install-mlflow.sh"


class MlflowError(RuntimeError):
    pass


def _version() -> str:
    """The version install-mlflow.sh installs (its KUBETUNE_MLFLOW_VERSION default)."""
    for line in INSTALL_SCRIPT.read_text().splitlines():
        if line.startswith('VERSION="${KUBETUNE_MLFLOW_VERSION:-'):
            return line.split(":-", 1)[1].split("}", 1)[0]
    raise MlflowError(f"no VERSION line in {INSTALL_SCRIPT}")


def find_mlflow_venv() -> Path:
    """The virtualenv with ``mlflow`` in it; raises MlflowError when hack/install-mlflow.sh has not built it.

    Never installs: a cold install takes minutes and needs the network, which a test must not."""
    env = os.environ.get("KUBETUNE_MLFLOW_VENV")
    cache = Path(os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune"))
    venv = Path(env) if env else cache / "mlflow-venv" / os.environ.get("KUBETUNE_MLFLOW_VERSION", _version())
    if not (venv / "bin" / "mlflow").exists() or (not env and not (venv / ".complete").exists()):
        raise MlflowError(f"no mlflow virtualenv at {venv} (run hack/install-mlflow.sh; hack/setup.sh does)")
    return venv


def mlflow_venv_or_skip() -> Path:
    import pytest

    try:
        return find_mlflow_venv()
    except MlflowError as e:
        pytest.skip(str(e))


class MlflowServer(LoopbackServer):
    name, ready_path, log_name, error = "mlflow server", "/health", "mlflow.log", MlflowError
    ready_timeout, poll_seconds = 120.0, 0.3

    def __init__(self, venv: Path | None = None) -> None:
        super().__init__()
        self.venv = venv or find_mlflow_venv()

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def start(self) -> MlflowServer:
        self.dir = Path(tempfile.mkdtemp(prefix="kubetune-mlflow-"))
        self.port = free_port()
        args = [
            str(self.venv / "bin" / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.dir / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.dir / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        with self.log_file.open("wb") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.dir
            )
        return self
