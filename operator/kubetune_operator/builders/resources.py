"""Container resources for GPU workloads (trainer pods and model servers alike)."""

from __future__ import annotations

from typing import Any


def container_resources(cpu: str | None, memory: str | None, gpus: int, gpu_resource_name: str) -> dict[str, Any]:
    """requests/limits: memory is both a request and a limit; GPUs go in limits only.

    >>> container_resources("4", "16Gi", 1, "nvidia.com/gpu")
    {'requests': {'cpu': '4', 'memory': '16Gi'}, 'limits': {'memory': '16Gi', 'nvidia.com/gpu': '1'}}
    >>> container_resources(None, None, 0, "nvidia.com/gpu")
    {}
    """
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = limits["memory"] = memory
    if gpus > 0:
        # Extended resources must have requests == limits; setting limits alone implies it.
        limits[gpu_resource_name] = str(gpus)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
