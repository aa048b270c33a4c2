"""A kubelet stand-in for development: runs the pods bound to one Node as local processes.

The demo and the tests have a real control plane but no container runtime. This executor registers
a Node, and for every pod the scheduler binds to it: materialises the pod's volumes, runs the init
containers in order and then the container's command with the pod's env (see containers.py), and
reports the pod status (Running, Ready once the readiness probe answers, then Succeeded/Failed with
the trainer's result as the termination message) the way a kubelet would, and serves their logs to
`kubectl logs` (kubelet_api.py). The Job controller and the operator see ordinary pods. It is its
own program (``python -m kubetune_dev.local_executor``), so the operator can be killed and restarted
while the pods it created keep running.

A deleted or evicted pod ends as on a kubelet: SIGTERM to its process, SIGKILL when the pod's grace
period (``deletionGracePeriodSeconds``, from ``terminationGracePeriodSeconds``) runs out, the exit
status reported (a signal as 128 + its number), then the final delete with grace 0. Each pod has its
own scratch space, as a container has its own filesystem: the trainer's cache (``KUBETUNE_CACHE``) is
a folder of the pod's, so a retried pod starts as cold as one on another node.

The pods' processes are the executor's children and end with it (even on SIGKILL), as containers
end when their node goes down. A restarted executor finds its pods still Running in the API with
nothing behind them, and does what a kubelet does for a pod whose containers are gone: a pod with
``restartPolicy: Always`` (a Deployment's) is started again, with one more restart and not Ready
until its probe answers; any other is reported Failed (exit 137, ``ContainerStatusUnknown``), so
its Job decides what comes next.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubetune_dev.local_executor import cluster_env, containers
from kubetune_dev.local_executor.kubelet_api import KubeletLogServer


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    output_dir: Path | None
    log_path: Path
    endpoint: str | None = None  # host:port when the container serves on a port
    labels: dict[str, str] | None = None
    readiness_path: str | None = None
    ready: bool = False
    kill_at: float | None = None  # monotonic time of the SIGKILL, once the pod is being deleted
    restarts: int = 0


Targets = list[tuple[str, dict[str, str]]]


def write_file_sd(path: Path, targets: Targets) -> None:
    """Prometheus file-based service discovery: one group per endpoint, written atomically."""
    groups = [{"targets": [endpoint], "labels": labels} for endpoint, labels in targets]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups, indent=1))
    tmp.replace(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalExecutor:
    def __init__(
        self,
        api: client.ApiClient,
        workdir: Path,
        pvc_root: Path,
        kubeconfig: Path,
        node: str = "local",
        targets_file: Path | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.workdir, self.pvc_root, self.kubeconfig, self.node = workdir, pvc_root, kubeconfig, node
        self.running: dict[str, Running] = {}
        self.stop = threading.Event()
        # Rewritten with every serving endpoint (host:port + pod labels) whenever the set changes: the
        # stand-in for Prometheus' Kubernetes service discovery and for a Service's endpoints.
        self.targets_file = targets_file
        self._published: Targets | None = None
        self.kubelet = KubeletLogServer(workdir, self._is_running, node)

    def _is_running(self, key: str) -> bool:
        run = self.running.get(key)
        return run is not None and run.proc.poll() is None

    def targets(self) -> Targets:
        # Like a Service's endpoints: only pods that passed their readiness probe, and are not being
        # deleted, get traffic.
        return [
            (r.endpoint, dict(r.labels or {}))
            for r in self.running.values()
            if r.endpoint and r.ready and r.kill_at is None
        ]

    def register_node(self) -> None:
        """Create (or take over) the Node, with the address of this executor's kubelet log endpoint."""
        self.kubelet.start()
        status = {
            "capacity": {"cpu": str(os.cpu_count() or 2), "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": str(os.cpu_count() or 2), "memory": "16Gi", "pods": "110"},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "LocalExecutor", "message": "runs pods as processes"}
            ],
            # Only InternalIP: a Hostname address comes first in the apiserver's preferred types, and
            # the Node's name does not resolve.
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet.port}},
        }
        try:
            self.core.create_node({"metadata": {"name": self.node, "labels": {"kubernetes.io/hostname": self.node}},
                                   "status": status})  # fmt: skip
        except ApiException as err:
            if err.status != 409:
                raise
            self._cordon(False)  # an executor that ran here before cordoned it when it stopped
            self.core.patch_node_status(self.node, {"status": status})  # its log endpoint has a new port

    def _cordon(self, unschedulable: bool) -> None:
        """A stopped executor runs nothing: cordon its Node, as a drained kubelet's is, so the scheduler
        does not bind pods to a node whose pods would never start."""
        with contextlib.suppress(Exception):  # best effort: at shutdown the apiserver may be gone first
            self.core.patch_node(self.node, {"spec": {"unschedulable": unschedulable}})

    def serve(self) -> None:
        """Play the kubelet until `stop` is set, then end every process, as a drained node does."""
        while not self.stop.is_set():
            try:
                self._tick()
            except (ApiException, HTTPError, OSError) as err:  # an apiserver away for a while is not a crash
                if self.stop.is_set():
                    break
                print(f"[executor] API error: {err}", file=sys.stderr)
            self.stop.wait(0.5)
        self._cordon(True)
        self._end_all()
        self.kubelet.stop()

    def _end_all(self, timeout: float = 10) -> None:
        runs = list(self.running.items())
        for _, run in runs:
            run.proc.terminate()
        for key, run in runs:
            try:
                run.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                run.proc.kill()
            # Best effort, like the cordon: what the API says must not outlive the process.
            ns, name = key.split("/", 1)
            with contextlib.suppress(Exception):
                not_ready = [{"type": t, "status": "False", "reason": "ExecutorStopped", "lastTransitionTime": _now()}
                             for t in ("Ready", "ContainersReady")]  # fmt: skip
                self.core.patch_namespaced_pod_status(name, ns, {"status": {"conditions": not_ready}})
        if self.targets_file is not None:
            write_file_sd(self.targets_file, [])

    def _tick(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node}").items
        for pod in pods:
            key = f"{pod.metadata.namespace}/{pod.metadata.name}"
            if pod.metadata.deletion_timestamp is not None:
                run = self.running.get(key)
                if run is None:  # nothing runs (any more): the kubelet's final delete
                    self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
                elif run.kill_at is None:
                    self._terminate(pod, key, run)
            elif key in self.running:
                continue
            elif pod.status.phase == "Pending":
                self._start(pod, key)
            elif pod.status.phase == "Running":  # its process ended with an executor that ran before us
                self._recover(pod, key)
        live = {f"{p.metadata.namespace}/{p.metadata.name}" for p in pods}
        for key, run in list(self.running.items()):
            if key not in live:  # deleted while we looked away
                run.proc.terminate()
                del self.running[key]
                continue
            code = run.proc.poll()
            ns, name = key.split("/", 1)
            if code is not None:
                self._finish(ns, name, containers.exit_status(code), run)
                del self.running[key]
                if run.kill_at is not None:  # reported terminal first, so the Job controller sees the exit
                    self.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
            elif run.kill_at is not None:
                if time.monotonic() >= run.kill_at:
                    run.proc.kill()  # reported as 137 on the next tick
            elif not run.ready and run.endpoint and self._probe(run):
                run.ready = True
                pod = self.core.read_namespaced_pod(name, ns)
                self._patch(ns, name, "Running", pod.spec.containers[0], {"running": {"startedAt": _now()}},
                            ready=True, restarts=run.restarts)  # fmt: skip
        targets = sorted(self.targets())
        if targets != self._published:
            self._published = targets
            if self.targets_file is not None:
                write_file_sd(self.targets_file, targets)

    def _recover(self, pod: Any, key: str) -> None:
        """A Running pod with no process here: what a kubelet does when a pod's containers are gone."""
        ns, name = pod.metadata.namespace, pod.metadata.name
        previous = max((cs.restart_count or 0 for cs in pod.status.container_statuses or []), default=0)
        if pod.spec.restart_policy == "Always":
            print(f"[executor] {key}: Running without a process; starting it again", file=sys.stderr)
            self._start(pod, key, restarts=previous + 1)
            return
        print(f"[executor] {key}: Running without a process; reporting it Failed", file=sys.stderr)
        terminated = {"exitCode": 137, "reason": "ContainerStatusUnknown", "finishedAt": _now(),
                      "message": "the container could not be located when the pod was terminated"}  # fmt: skip
        self._patch(ns, name, "Failed", pod.spec.containers[0], {"terminated": terminated}, restarts=previous)

    def _terminate(self, pod: Any, key: str, run: Running) -> None:
        """A pod got a deletionTimestamp (delete, Eviction, preemption): SIGTERM now, SIGKILL after its grace."""
        grace = pod.metadata.deletion_grace_period_seconds
        if grace is None:
            grace = pod.spec.termination_grace_period_seconds
        grace = 30 if grace is None else int(grace)
        print(f"[executor] {key}: being deleted; SIGTERM, SIGKILL in {grace}s if still running", file=sys.stderr)
        run.proc.send_signal(signal.SIGTERM)
        run.kill_at = time.monotonic() + grace

    def _start(self, pod: Any, key: str, restarts: int = 0) -> None:
        ns, name = pod.metadata.namespace, pod.metadata.name
        container = pod.spec.containers[0]
        root = self.workdir / ns / name
        if not self._run_init_containers(pod, root):
            return
        mounts = containers.materialise_volumes(self.core, pod, container, root, self.pvc_root)
        env = containers.container_env(self.core, pod, container, mounts, root, self.pvc_root, self.kubeconfig)
        command = containers.command(container, mounts)
        endpoint = None
        if "--port" in command:
            # Every pod has its own network namespace; processes here share one: give each a port.
            port = _free_port()
            command[command.index("--port") + 1] = str(port)
            if "--host" in command:
                command[command.index("--host") + 1] = "127.0.0.1"
            endpoint = f"127.0.0.1:{port}"
        log_path = root / "container.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # A kubelet creates the container's terminationMessagePath before it starts; here the trainer is
        # told where (its default, /dev/termination-log, is the kubelet's mount).
        termination_log = root / "termination-log"
        termination_log.write_text("")
        env["KUBETUNE_TERMINATION_LOG"] = str(termination_log)
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=open(log_path, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            preexec_fn=containers.die_with_parent,
        )
        out = env.get("KUBETUNE_OUTPUT_DIR")
        labels = {
            "namespace": ns,
            "pod": name,
            **{
                k.replace(".", "_").replace("/", "_").replace("-", "_"): v
                for k, v in (pod.metadata.labels or {}).items()
            },
        }
        probe = container.readiness_probe
        path = probe.http_get.path if probe is not None and probe.http_get is not None else None
        self.running[key] = Running(
            proc, Path(out) if out else None, log_path, endpoint, labels, path, ready=path is None, restarts=restarts
        )
        self._patch(ns, name, "Running", container, {"running": {"startedAt": _now()}}, ready=path is None,
                    restarts=restarts)  # fmt: skip

    def _run_init_containers(self, pod: Any, root: Path) -> bool:
        """Each init container to completion, in order, as a kubelet does; False (pod Failed) if one fails.

        They run here, on the executor's thread: the downloads of a development cluster are small.
        """
        ns, name = pod.metadata.namespace, pod.metadata.name
        statuses: list[dict[str, Any]] = []
        for init in pod.spec.init_containers or []:
            mounts = containers.materialise_volumes(self.core, pod, init, root, self.pvc_root)
            log_path = root / f"init-{init.name}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "wb") as log:
                try:
                    code = subprocess.run(
                        containers.command(init, mounts),
                        env=containers.container_env(
                            self.core, pod, init, mounts, root, self.pvc_root, self.kubeconfig
                        ),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        preexec_fn=containers.die_with_parent,
                        check=False,
                    ).returncode
                except OSError as err:  # no such executable: what a runtime reports as a failed start
                    log.write(f"cannot start: {err}\n".encode())
                    code = 128
            message = log_path.read_text(errors="replace")[-1000:]
            state = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message}
            statuses.append({"name": init.name, "image": init.image, "imageID": "", "ready": code == 0,
                             "restartCount": 0, "state": {"terminated": {**state, "finishedAt": _now()}}})  # fmt: skip
            if code != 0:
                # One write: a reader never sees the failed init container on a pod still Pending.
                waiting = {"waiting": {"reason": "PodInitializing", "message": f"init container {init.name} failed"}}
                self._patch(ns, name, "Failed", pod.spec.containers[0], waiting, init_statuses=statuses)
                return False
            self.core.patch_namespaced_pod_status(name, ns, {"status": {"initContainerStatuses": statuses}})
        return True

    @staticmethod
    def _probe(run: Running) -> bool:
        try:
            with urllib.request.urlopen(f"http://{run.endpoint}{run.readiness_path or '/'}", timeout=0.5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _finish(self, ns: str, name: str, code: int, run: Running) -> None:
        termination_log = run.log_path.parent / "termination-log"
        message = termination_log.read_text(errors="replace")[:4096] if termination_log.exists() else ""
        result = run.output_dir / "result.json" if run.output_dir else None
        if not message and result is not None and result.exists():
            data = json.loads(result.read_text())
            # A program that wrote no termination message: keep what the operator reads of its result.
            keys = ("phase", "reason", "message", "metrics", "baseMetrics", "evalPassed", "artifact", "data", "steps")
            message = json.dumps({k: data[k] for k in keys if k in data})
        if not message:
            message = run.log_path.read_text(errors="replace")[-1000:]
        pod = self.core.read_namespaced_pod(name, ns)
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": message,
            "finishedAt": _now(),
            "startedAt": _now(),
        }
        phase = "Succeeded" if code == 0 else "Failed"
        self._patch(ns, name, phase, pod.spec.containers[0], {"terminated": terminated}, restarts=run.restarts)

    def _patch(
        self,
        ns: str,
        name: str,
        phase: str,
        container: Any,
        state: dict[str, Any],
        ready: bool = False,
        init_statuses: list[dict[str, Any]] | None = None,
        restarts: int = 0,
    ) -> None:
        now = _now()
        status = {
            "phase": phase,
            # Bookkeeping addresses only (EndpointSlices refuse loopback); traffic uses the executor's targets.
            "hostIP": cluster_env.HOST_IP,
            "podIP": cluster_env.pod_ip(name),
            "startTime": now,
            "conditions": [
                {"type": "Ready", "status": str(ready), "lastTransitionTime": now},
                {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
                    "imageID": "",
                    "ready": ready,
                    "restartCount": restarts,
                    "state": state,
                }
            ],
        }
        if init_statuses is not None:
            status["initContainerStatuses"] = init_statuses
        self.core.patch_namespaced_pod_status(name, ns, {"status": status})
