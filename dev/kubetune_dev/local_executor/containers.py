"""What one container of a pod becomes on the local executor: its command, environment and mounts.

A container image is not run here, only its command, so everything the image would provide is mapped
onto the local machine: ConfigMap and emptyDir volumes become folders of the pod's, `pvc` claims
become folders under the executor's pvc root, and paths under a mount in the command and in the
environment are rewritten to the local folder. The environment gets what a kubelet and cluster DNS
would give it (cluster_env.py). Reads Secrets, ConfigMaps and Services; writes only the pod's folder.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune_dev.local_executor import cluster_env


def materialise_volumes(core: client.CoreV1Api, pod: Any, container: Any, root: Path, pvc_root: Path) -> dict[str, str]:
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
            data = core.read_namespaced_config_map(vol.config_map.name, pod.metadata.namespace).data or {}
            for key, text in data.items():
                (local / key).write_text(text)
            mounts[m.mount_path] = str(local)
        elif vol.persistent_volume_claim is not None:
            mounts[m.mount_path] = str(pvc_root / vol.persistent_volume_claim.claim_name)
        elif vol.empty_dir is not None and m.mount_path not in ("/tmp", "/dev/shm"):
            local = root / "volumes" / m.name
            local.mkdir(parents=True, exist_ok=True)
            mounts[m.mount_path] = str(local)
    return mounts


def container_env(
    core: client.CoreV1Api,
    pod: Any,
    container: Any,
    mounts: dict[str, str],
    root: Path,
    pvc_root: Path,
    kubeconfig: Path,
) -> dict[str, str]:
    ns = pod.metadata.namespace
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KUBETUNE_PVC_ROOT": str(pvc_root),
        # The pod's own scratch (a container's writable layer): nothing cached survives the pod.
        "KUBETUNE_CACHE": str(root / "cache"),
    }
    own = _env_from(core, ns, container)  # as the kubelet does: envFrom first, env overrides it
    for var in container.env or []:
        own[var.name] = _env_value(core, pod, var)
    headless = _headless_services(core)
    env.update({k: cluster_env.cluster_dns(v, headless) for k, v in own.items()})  # what cluster DNS answers
    env["KUBETUNE_PVC_ROOT"] = str(pvc_root)  # claims live in local folders here
    for remote, local in mounts.items():
        for k, v in list(env.items()):
            if v.startswith(remote):
                env[k] = local + v[len(remote) :]
    return env


def command(container: Any, mounts: dict[str, str]) -> list[str]:
    argv = [local_path(arg, mounts) for arg in (container.command or []) + (container.args or [])]
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def local_path(arg: str, mounts: dict[str, str]) -> str:
    """A path under a mount, as the local folder that stands for it.

    Only a path that stays under its mount once normalised is mapped: these are host folders, and
    ``/mnt/pvc/a/../../etc/passwd`` must not become the host's file (it is left as it was).

    >>> local_path("/mnt/pvc/a/data", {"/mnt/pvc/a": "/tmp/pvc/a"}), local_path("/mnt/pvcx", {"/mnt/pvc": "/t"})
    ('/tmp/pvc/a/data', '/mnt/pvcx')
    >>> local_path("/mnt/pvc/a/../../etc/passwd", {"/mnt/pvc/a": "/tmp/pvc/a"})
    '/mnt/pvc/a/../../etc/passwd'
    """
    for remote, local in mounts.items():
        if arg == remote or arg.startswith(remote + "/"):
            inside = os.path.normpath(arg)
            if inside == remote or inside.startswith(remote.rstrip("/") + "/"):
                return local + arg[len(remote) :]
    return arg


def _env_from(core: client.CoreV1Api, ns: str, container: Any) -> dict[str, str]:
    """Every key of the Secrets / ConfigMaps named in envFrom, with its prefix (optional ones may be absent)."""
    out: dict[str, str] = {}
    for source in container.env_from or []:
        try:
            if source.secret_ref is not None:
                ref = source.secret_ref
                data = core.read_namespaced_secret(ref.name, ns).data or {}
                values = {k: base64.b64decode(v).decode() for k, v in data.items()}
            else:
                ref = source.config_map_ref
                values = dict(core.read_namespaced_config_map(ref.name, ns).data or {})
        except ApiException as e:
            if e.status == 404 and ref.optional:
                continue
            raise
        out.update({f"{source.prefix or ''}{k}": v for k, v in values.items()})
    return out


def _env_value(core: client.CoreV1Api, pod: Any, var: Any) -> str:
    if var.value is not None:
        return str(var.value)
    source = var.value_from
    if source is not None and source.field_ref is not None:  # the pod's own name, labels, annotations
        return cluster_env.field_ref(pod, source.field_ref.field_path)
    ref = source.secret_key_ref if source else None
    if ref is None:
        return ""
    secret = core.read_namespaced_secret(ref.name, pod.metadata.namespace)
    return base64.b64decode(secret.data[ref.key]).decode()


def _headless_services(core: client.CoreV1Api) -> Callable[[str, str], bool]:
    """``headless(namespace, name)``: whether that Service exists with clusterIP None (read once each)."""
    seen: dict[tuple[str, str], bool] = {}

    def headless(ns: str, name: str) -> bool:
        if (ns, name) not in seen:
            try:
                seen[ns, name] = core.read_namespaced_service(name, ns).spec.cluster_ip == "None"
            except ApiException as e:
                if e.status != 404:
                    raise
                seen[ns, name] = False  # no such Service: cluster DNS would not answer either
        return seen[ns, name]

    return headless


def die_with_parent() -> None:
    """Linux: a pod process gets SIGTERM when the executor goes away, even on SIGKILL."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def exit_status(returncode: int) -> int:
    """A container's exit code: a process ended by signal N reports 128 + N, as container runtimes do.

    >>> exit_status(-signal.SIGTERM), exit_status(2)
    (143, 2)
    """
    return 128 - returncode if returncode < 0 else returncode
