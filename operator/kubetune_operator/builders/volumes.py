"""Mounting `pvc://claim/path` locations into pods: one volume per claim, at <root>/<claim>."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def claim_of(pvc_uri: str) -> str:
    """The claim a pvc:// location lives on.

    >>> claim_of("pvc://models/llama/v1")
    'models'
    """
    return pvc_uri.removeprefix("pvc://").split("/", 1)[0]


def pvc_volumes(
    uris: list[str], mount_root: str, writable: str | Collection[str | None] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) for every distinct claim among `uris`; read-only unless named in `writable`."""
    writable_claims = {writable} if isinstance(writable, str) else set(writable or ())
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    seen: list[str] = []
    for uri in uris:
        if not uri.startswith("pvc://"):
            continue
        claim = claim_of(uri)
        if claim in seen:
            continue
        seen.append(claim)
        name = f"pvc-{len(seen)}"
        read_only = claim not in writable_claims
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        mounts.append({"name": name, "mountPath": f"{mount_root}/{claim}", "readOnly": read_only})
    return volumes, mounts
