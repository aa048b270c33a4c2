"""What every pod the operator creates runs with: the `restricted` Pod Security Standard, plus a read-only
root filesystem whose only writable places are the pod's emptyDir scratch (/tmp, the HF cache under it)."""

from __future__ import annotations

from typing import Any

#: HOME for every container: images set HOME to a folder on the (now read-only) root filesystem, and
#: libraries write caches there (torch, triton, vLLM, matplotlib). /tmp is the pod's emptyDir.
SCRATCH_HOME = "/tmp"


def pod_security_context() -> dict[str, Any]:
    """Pod level: no root user (the image's USER must be a uid, not 0) and the runtime's seccomp profile."""
    return {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    """Container level (the restricted standard checks each container, init containers included)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def home_env() -> dict[str, str]:
    return {"name": "HOME", "value": SCRATCH_HOME}
