"""What one container of a pod becomes on the local executor: its command, environment and mounts.

A container image is not run here, only its command, so everything the image would provide is mapped
onto the local machine: ConfigMap and emptyDir volumes become folders of the pod's, `pvc` claims
become folders under the executor's pvc root, and paths under a mount in the command and in the
environment are rewritten to the local folder. Reads Secrets and ConfigMaps; writes only the pod's folder.
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException


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
    ns: str,
    container: Any,
    mounts: dict[str, str],
    root: Path,
    pvc_root: Path,
    kubeconfig: Path,
) -> dict[str, str]:
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KUBETUNE_PVC_ROOT": str(pvc_root),
        # The pod's own scratch (a container's writable layer): nothing cached survives the pod.
        "KUBETUNE_CACHE": str(root / "cache"),
    }
    env.update(_env_from(core, ns, container))  # as the kubelet does: envFrom first, env overrides it
    for var in container.env or []:
        env[var.name] = _env_value(core, ns, var)
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


def _env_value(core: client.CoreV1Api, ns: str, var: Any) -> str:
    if var.value is not None:
        return str(var.value)
    ref = var.value_from.secret_key_ref if var.value_from else None
    if ref is None:
        return ""
    secret = core.read_namespaced_secret(ref.name, ns)
    return base64.b64decode(secret.data[ref.key]).decode()
