"""Fixtures for tests against the real local control plane (marker `k8s`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune_dev.controlplane import ControlPlane
from kubetune_dev.local_executor import ExecutorProcess
from kubetune_dev.processes import free_port

GROUP, VERSION = "kubetune.io", "v1alpha1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.k8s)


class Api:
    """The typed clients the tests need, plus FineTuneJob helpers."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.client = api_client
        self.ns = namespace
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def create_ftj(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, "finetunejobs", body)

    def get_ftj(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "finetunejobs", name)

    def patch_ftj(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, "finetunejobs", name, {"spec": spec})

    def create_md(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, "modeldeployments", body)

    def get_md(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "modeldeployments", name)

    def patch_md(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, "modeldeployments", name, {"spec": spec}
        )

    def deployment(self, name: str) -> Any:
        return client.AppsV1Api(self.client).read_namespaced_deployment(name, self.ns)

    def jobs(self, selector: str = "app.kubernetes.io/managed-by=kubetune") -> list[Any]:
        return self.batch.list_namespaced_job(self.ns, label_selector=selector).items

    def events_for(self, name: str) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(self.ns).items if e.involved_object.name == name]

    def reasons_once_posted(self, name: str, reason: str, at_least: int = 1, timeout: float = 15) -> list[str]:
        """The reasons of `name`'s events once `at_least` of them are `reason`. The operator posts an event
        after the status write it announces, so a test that has just seen the status can list a moment early."""

        def reasons() -> list[str] | None:
            out = [e.reason for e in self.events_for(name) for _ in range(e.count or 1)]
            return out if out.count(reason) >= at_least else None

        return wait_for(reasons, timeout, f"{at_least} {reason} event(s) on {name}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def k8s(request: pytest.FixtureRequest, api: client.ApiClient, control_plane: ControlPlane) -> Iterator[Api]:
    """A fresh namespace with the trainer service account (the ServiceAccount admission plugin is on)."""
    ns = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": ns}})
    core.create_namespaced_service_account(ns, {"metadata": {"name": "kubetune-trainer"}})
    yield Api(api, ns)
    if request.node.stash.get(FAILED, False):
        # What a person would look at first: the objects, their events, the operator's log.
        state = control_plane.kubectl("get", "ftj,mdep,jobs,deploy,pods,events", "-n", ns, "-o", "wide", check=False)
        print(f"--- namespace {ns} ---\n{state.stdout}{state.stderr}")
        ftjs = control_plane.kubectl("get", "ftj,mdep", "-n", ns, "-o", "yaml", check=False)
        print(ftjs.stdout[-6000:])
        op = request.getfixturevalue("operator_process")
        print(f"--- operator log ---\n{op.log_text()[-6000:]}")
        if "executor" in request.fixturenames:
            print(f"--- executor log ---\n{request.getfixturevalue('executor').log_text()[-4000:]}")
    core.delete_namespace(ns)


class OperatorProcess:
    """`python -m kubetune_operator` against the test control plane, killable at any moment."""

    def __init__(self, kubeconfig: Path, logdir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.logdir = logdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.metrics_port = free_port()
        self.liveness_port = free_port()

    def start(self) -> None:
        self.starts += 1
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBETUNE_TRAINER_IMAGE": "kubetune.test/trainer:kwok-succeed",
            "KUBETUNE_SCHEDULE_CHECK_SECONDS": "2",
            "KUBETUNE_ROLLOUT_CHECK_SECONDS": "1",
            "KUBETUNE_METRICS_PORT": str(self.metrics_port),
            "KUBETUNE_LIVENESS_PORT": str(self.liveness_port),
        }
        log = open(self.logdir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune_operator"], env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logdir.glob("operator-*.log")))


@pytest.fixture(scope="session")
def operator_process(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(control_plane.kubeconfig, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.kill(signal.SIGTERM)


@pytest.fixture
def operator(operator_process: OperatorProcess) -> Iterator[OperatorProcess]:
    """The running operator; restarted if a test left it dead. Fails the test if it crashed on its own."""
    if not operator_process.alive():
        operator_process.start()
    yield operator_process
    if operator_process.proc is not None and operator_process.proc.poll() not in (None, -signal.SIGKILL):
        pytest.fail(f"operator exited with {operator_process.proc.returncode}:\n{operator_process.log_text()[-3000:]}")


@pytest.fixture(scope="module")
def executor(
    request: pytest.FixtureRequest,
    api: client.ApiClient,
    control_plane: ControlPlane,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ExecutorProcess]:
    """The local executor, its own process, playing the kubelet for the Node the test module names in
    `NODE` (its pods' nodeSelector says kubernetes.io/hostname: NODE); one per module, so a module's
    pods never wait behind another's."""
    node: str = request.module.NODE
    ex = ExecutorProcess(control_plane.kubeconfig, node, tmp_path_factory.mktemp(f"executor-{node}")).start()
    yield ex
    # Every test namespace is deleted by now, but the namespace controller reaches their pods a few
    # seconds later, and only a kubelet confirms a pod gone: with none left on the Node, those
    # namespaces would stay Terminating for the rest of the session. So the executor stays up until
    # the Node's pods are gone; what is still there after that is force-deleted, as the pod garbage
    # collector does for a lost node.
    core = client.CoreV1Api(api)

    def pods_on_node() -> list[Any]:
        return list(core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items)

    deadline = time.monotonic() + 60
    while pods_on_node() and time.monotonic() < deadline:
        time.sleep(0.5)
    ex.stop()
    for pod in pods_on_node():
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "condition", every: float = 0.3) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as err:  # a 404 while objects appear is part of waiting
            last_error = err
        time.sleep(every)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")
