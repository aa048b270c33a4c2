"""Session fixtures shared by every tier that needs the local control plane (k8s, chart)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client, config

from kubetune_dev.controlplane import ControlPlane, running_control_plane


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One real control plane for the whole run: etcd, apiserver, controllers, scheduler, kwok."""
    with running_control_plane(tmp_path_factory.mktemp("controlplane")) as cp:
        yield cp


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(str(control_plane.kubeconfig))
