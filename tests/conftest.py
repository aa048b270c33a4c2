"""Session fixtures shared by every tier that needs the local control plane (k8s, chart)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client, config

from kubetune_dev.controlplane import ControlPlane, running_control_plane
from kubetune_dev.mlflow_server import MlflowServer, mlflow_venv_or_skip


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One real control plane for the whole run: etcd, apiserver, controllers, scheduler, kwok."""
    with running_control_plane(tmp_path_factory.mktemp("controlplane")) as cp:
        yield cp


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(str(control_plane.kubeconfig))


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[MlflowServer]:
    """One real `mlflow server` (sqlite store, proxied artifacts, loopback) for every tracking test.

    Skipped only when hack/install-mlflow.sh (run by hack/setup.sh) has not built its virtualenv here."""
    with MlflowServer(mlflow_venv_or_skip()) as server:
        yield server
