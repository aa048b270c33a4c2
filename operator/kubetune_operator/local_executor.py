"""A kubelet stand-in for development (KUBETUNE_LOCAL_EXECUTOR_NODE): runs pods bound to one node as
local processes.

The demo has a real control plane but no container runtime. This executor registers a Node, and for
every pod the scheduler binds to it: materialises the pod's ConfigMap volumes, maps `/mnt/pvc/<claim>`
mounts to a local directory, runs the init containers in order and then the container's command
with the pod's env (secret references resolved), and reports the pod status (Running, then
Succeeded/Failed with the trainer's result as the termination message) the way a kubelet would.
The Job controller and the operator see ordinary pods.

A deleted or evicted pod ends as on a kubelet: SIGTERM to its process, SIGKILL when the pod's grace
period (``deletionGracePeriodSeconds``, from ``terminationGracePeriodSeconds``) runs out, the exit
status reported (a signal as 128 + its number), then the final delete with grace 0. Each pod has its
own scratch space, as a container has its own filesystem: the trainer's cache (``KUBETUNE_CACHE``) is
a folder of the pod's, so a retried pod starts as cold as one on another node.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException


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


Targets = list[tuple[str, dict[str, str]]]


def write_file_sd(path: Path, targets: Targets) -> None:
    """Prometheus file-based service discovery: one group per endpoint, written atomically."""
    groups = [{"targets": [endpoint], "labels": labels} for endpoint, labels in targets]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups, indent=1))
    tmp.replace(path)


def start_in_background(
    api: client.ApiClient, settings_node: str, pvc_root: str, workdir: str, targets_file: str
) -> LocalExecutor:
    """What the operator calls at startup when KUBETUNE_LOCAL_EXECUTOR_NODE is set."""
    kubeconfig = Path(os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")))
    executor = LocalExecutor(api, Path(workdir), Path(pvc_root), kubeconfig, node=settings_node)
    if targets_file:
        executor.targets_file = Path(targets_file)
        write_file_sd(executor.targets_file, [])
    executor.register_node()
    threading.Thread(target=executor.serve, name="local-executor", daemon=True).start()
    return executor


def _die_with_parent() -> None:
    """Linux: a pod process gets SIGTERM when the executor's thread goes away, even on SIGKILL."""
    import ctypes
    import signal as _signal

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, _signal.SIGTERM)


def exit_status(returncode: int) -> int:
    """A container's exit code: a process ended by signal N reports 128 + N, as container runtimes do.

    >>> exit_status(-signal.SIGTERM), exit_status(2)
    (143, 2)
    """
    return 128 - returncode if returncode < 0 else returncode


def _free_port() -> int:
    import socket

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
        on_targets: Callable[[Targets], None] | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.workdir, self.pvc_root, self.kubeconfig, self.node = workdir, pvc_root, kubeconfig, node
        self.running: dict[str, Running] = {}
        self.stop = threading.Event()
        # Called with every serving endpoint (host:port + pod labels) whenever the set changes: the
        # stand-in for Prometheus' Kubernetes service discovery and for a Service's endpoints.
        self.on_targets = on_targets
        self.targets_file: Path | None = None
        self._published: Targets = []

    def targets(self) -> Targets:
        # Like a Service's endpoints: only pods that passed their readiness probe, and are not being
        # deleted, get traffic.
        return [
            (r.endpoint, dict(r.labels or {}))
            for r in self.running.values()
            if r.endpoint and r.ready and r.kill_at is None
        ]

    def register_node(self) -> None:
        body = {
            "metadata": {"name": self.node, "labels": {"kubernetes.io/hostname": self.node}},
            "status": {
                "capacity": {"cpu": str(os.cpu_count() or 2), "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": str(os.cpu_count() or 2), "memory": "16Gi", "pods": "110"},
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "LocalExecutor", "message": "runs pods as processes"}
                ],
            },
        }
        try:
            self.core.create_node(body)
        except ApiException as err:
            if err.status != 409:
                raise
            self._cordon(False)  # an executor that ran here before cordoned it when it stopped

    def _cordon(self, unschedulable: bool) -> None:
        """A stopped executor runs nothing: cordon its Node, as a drained kubelet's is, so the scheduler
        does not bind pods to a node whose pods would never start."""
        with contextlib.suppress(Exception):  # best effort: at shutdown the apiserver may be gone first
            self.core.patch_node(self.node, {"spec": {"unschedulable": unschedulable}})

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                self._tick()
            except ApiException as err:  # the apiserver going away at shutdown is not a crash
                if self.stop.is_set():
                    return
                print(f"[executor] API error: {err.reason}", file=sys.stderr)
            self.stop.wait(0.5)
        self._cordon(True)
        for run in self.running.values():
            run.proc.terminate()

    def shutdown(self, timeout: float = 10) -> None:
        """Stop serving and end every process this executor started (what a drained node does)."""
        self.stop.set()
        runs = list(self.running.values())
        for run in runs:
            run.proc.terminate()
        for run in runs:
            try:
                run.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                run.proc.kill()

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
            elif key not in self.running and pod.status.phase == "Pending":
                self._start(pod, key)
        live = {f"{p.metadata.namespace}/{p.metadata.name}" for p in pods}
        for key, run in list(self.running.items()):
            if key not in live:  # deleted while we looked away
                run.proc.terminate()
                del self.running[key]
                continue
            code = run.proc.poll()
            ns, name = key.split("/", 1)
            if code is not None:
                self._finish(ns, name, exit_status(code), run)
                del self.running[key]
                if run.kill_at is not None:  # reported terminal first, so the Job controller sees the exit
                    self.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
            elif run.kill_at is not None:
                if time.monotonic() >= run.kill_at:
                    run.proc.kill()  # reported as 137 on the next tick
            elif not run.ready and run.endpoint and self._probe(run):
                run.ready = True
                pod = self.core.read_namespaced_pod(name, ns)
                self._patch(ns, name, "Running", pod.spec.containers[0], {"running": {"startedAt": _now()}}, ready=True)
        targets = sorted(self.targets())
        if targets != self._published:
            self._published = targets
            if self.on_targets is not None:
                self.on_targets(targets)
            if self.targets_file is not None:
                write_file_sd(self.targets_file, targets)

    def _terminate(self, pod: Any, key: str, run: Running) -> None:
        """A pod got a deletionTimestamp (delete, Eviction, preemption): SIGTERM now, SIGKILL after its grace."""
        grace = pod.metadata.deletion_grace_period_seconds
        if grace is None:
            grace = pod.spec.termination_grace_period_seconds
        grace = 30 if grace is None else int(grace)
        print(f"[executor] {key}: being deleted; SIGTERM, SIGKILL in {grace}s if still running", file=sys.stderr)
        run.proc.send_signal(signal.SIGTERM)
        run.kill_at = time.monotonic() + grace

    def _start(self, pod: Any, key: str) -> None:
        ns, name = pod.metadata.namespace, pod.metadata.name
        container = pod.spec.containers[0]
        root = self.workdir / ns / name
        if not self._run_init_containers(pod, root):
            return
        mounts = self._materialise_volumes(pod, container, root)
        env = self._container_env(ns, container, mounts, root)
        command = self._command(container, mounts)
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
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=open(log_path, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
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
            proc, Path(out) if out else None, log_path, endpoint, labels, path, ready=path is None
        )
        self._patch(ns, name, "Running", container, {"running": {"startedAt": _now()}}, ready=path is None)

    def _container_env(self, ns: str, container: Any, mounts: dict[str, str], root: Path) -> dict[str, str]:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBETUNE_PVC_ROOT": str(self.pvc_root),
            # The pod's own scratch (a container's writable layer): nothing cached survives the pod.
            "KUBETUNE_CACHE": str(root / "cache"),
        }
        env.update(self._env_from(ns, container))  # as the kubelet does: envFrom first, env overrides it
        for var in container.env or []:
            env[var.name] = self._env_value(ns, var)
        env["KUBETUNE_PVC_ROOT"] = str(self.pvc_root)  # claims live in local folders here
        for remote, local in mounts.items():
            for k, v in list(env.items()):
                if v.startswith(remote):
                    env[k] = local + v[len(remote) :]
        return env

    def _command(self, container: Any, mounts: dict[str, str]) -> list[str]:
        command = [self._local_path(arg, mounts) for arg in (container.command or []) + (container.args or [])]
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable
        return command

    def _run_init_containers(self, pod: Any, root: Path) -> bool:
        """Each init container to completion, in order, as a kubelet does; False (pod Failed) if one fails.

        They run here, on the executor's thread: the downloads of a development cluster are small.
        """
        ns, name = pod.metadata.namespace, pod.metadata.name
        statuses: list[dict[str, Any]] = []
        for init in pod.spec.init_containers or []:
            mounts = self._materialise_volumes(pod, init, root)
            log_path = root / f"init-{init.name}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "wb") as log:
                try:
                    code = subprocess.run(
                        self._command(init, mounts),
                        env=self._container_env(ns, init, mounts, root),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        preexec_fn=_die_with_parent,
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
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{run.endpoint}{run.readiness_path or '/'}", timeout=0.5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _finish(self, ns: str, name: str, code: int, run: Running) -> None:
        message = ""
        result = run.output_dir / "result.json" if run.output_dir else None
        if result is not None and result.exists():
            data = json.loads(result.read_text())
            # Like a kubelet's 4 KiB termination message: keep what the operator reads.
            keys = ("phase", "reason", "message", "metrics", "evalPassed", "artifact", "data")
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
        self._patch(
            ns, name, "Succeeded" if code == 0 else "Failed", pod.spec.containers[0], {"terminated": terminated}
        )

    def _patch(
        self,
        ns: str,
        name: str,
        phase: str,
        container: Any,
        state: dict[str, Any],
        ready: bool = False,
        init_statuses: list[dict[str, Any]] | None = None,
    ) -> None:
        now = _now()
        status = {
            "phase": phase,
            # Bookkeeping addresses only (EndpointSlices refuse loopback); traffic uses the executor's targets.
            "hostIP": "10.250.0.1",
            "podIP": f"10.250.{(hash(name) >> 8) % 250}.{hash(name) % 250 + 1}",
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
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }
        if init_statuses is not None:
            status["initContainerStatuses"] = init_statuses
        self.core.patch_namespaced_pod_status(name, ns, {"status": status})

    def _env_from(self, ns: str, container: Any) -> dict[str, str]:
        """Every key of the Secrets / ConfigMaps named in envFrom, with its prefix (optional ones may be absent)."""
        import base64

        out: dict[str, str] = {}
        for source in container.env_from or []:
            try:
                if source.secret_ref is not None:
                    ref = source.secret_ref
                    data = self.core.read_namespaced_secret(ref.name, ns).data or {}
                    values = {k: base64.b64decode(v).decode() for k, v in data.items()}
                else:
                    ref = source.config_map_ref
                    values = dict(self.core.read_namespaced_config_map(ref.name, ns).data or {})
            except ApiException as e:
                if e.status == 404 and ref.optional:
                    continue
                raise
            out.update({f"{source.prefix or ''}{k}": v for k, v in values.items()})
        return out

    def _env_value(self, ns: str, var: Any) -> str:
        if var.value is not None:
            return str(var.value)
        ref = var.value_from.secret_key_ref if var.value_from else None
        if ref is None:
            return ""
        import base64

        secret = self.core.read_namespaced_secret(ref.name, ns)
        return base64.b64decode(secret.data[ref.key]).decode()

    def _materialise_volumes(self, pod: Any, container: Any, root: Path) -> dict[str, str]:
        """mountPath -> local directory, for ConfigMap, emptyDir and PVC volumes."""
        volumes = {v.name: v for v in pod.spec.volumes or []}
        mounts: dict[str, str] = {}
        for m in container.volume_mounts or []:
            vol = volumes.get(m.name)
            if vol is None:
                continue
            if vol.config_map is not None:
                local = root / "volumes" / m.name
                local.mkdir(parents=True, exist_ok=True)
                data = self.core.read_namespaced_config_map(vol.config_map.name, pod.metadata.namespace).data or {}
                for key, text in data.items():
                    (local / key).write_text(text)
                mounts[m.mount_path] = str(local)
            elif vol.persistent_volume_claim is not None:
                mounts[m.mount_path] = str(self.pvc_root / vol.persistent_volume_claim.claim_name)
            elif vol.empty_dir is not None and m.mount_path not in ("/tmp", "/dev/shm"):
                local = root / "volumes" / m.name
                local.mkdir(parents=True, exist_ok=True)
                mounts[m.mount_path] = str(local)
        return mounts

    @staticmethod
    def _local_path(arg: str, mounts: dict[str, str]) -> str:
        for remote, local in mounts.items():
            if arg == remote or arg.startswith(remote + "/"):
                return local + arg[len(remote) :]
        return arg
