"""spec.evaluation.judge.modelDeploymentRef: the judge URL a run's trainer asks, or why a run cannot start.

Room: the operator's pure decisions (no API calls, no kopf). The judge is the named ModelDeployment's stable
Service: its name is deterministic (`<md>-stable`, builders/serving.build_services), but its port is that
ModelDeployment's spec.port, so the reconcile layer reads the ModelDeployment and hands it here (None when
it does not exist). The answer goes into the trainer's environment (KUBETUNE_JUDGE_URL); a missing
ModelDeployment sets JudgeReady False before any pod starts, and the WaitingForSources timer looks again.
"""

from __future__ import annotations

from typing import Any

from kubetune_operator.builders.names import bounded
from kubetune_operator.captures import Unavailable
from kubetune_operator.conditions import set_condition, waiting_patch

JUDGE_READY = "JudgeReady"
RESOLVED = "JudgeResolved"
MD_NOT_FOUND = "ModelDeploymentNotFound"
FIELD = "spec.evaluation.judge.modelDeploymentRef"
DEFAULT_PORT = 8000  # ModelDeploymentSpec.port's default


def service_url(model_deployment: str, namespace: str, port: int) -> str:
    """The URL of a ModelDeployment's stable Service, from inside the cluster.

    >>> service_url("judge", "ml", 8000)
    'http://judge-stable.ml.svc:8000'
    """
    return f"http://{bounded(model_deployment, 'stable')}.{namespace}.svc:{port}"


def resolve(ref: str | None, md: dict[str, Any] | None, namespace: str) -> str | Unavailable | None:
    """``ref``: the judge's modelDeploymentRef.name (None: a url or no judge, nothing to resolve); ``md``: that
    ModelDeployment as read, None when there is none.

    >>> resolve("judge", {"spec": {"port": 9000}}, "ml")
    'http://judge-stable.ml.svc:9000'
    >>> resolve("judge", None, "ml").reason
    'ModelDeploymentNotFound'
    >>> resolve(None, None, "ml") is None
    True
    """
    if not ref:
        return None
    if md is None:
        return Unavailable(MD_NOT_FOUND, f"{FIELD}: ModelDeployment {ref} not found (create it, or name another)")
    port = (md.get("spec") or {}).get("port") or DEFAULT_PORT
    return service_url(ref, namespace, int(port))


def unavailable_patch(
    status: dict[str, Any], why: Unavailable, generation: int, now: str, keep_phase: bool
) -> dict[str, Any]:
    """JudgeReady False with the reason (conditions.waiting_patch)."""
    return waiting_patch(status, JUDGE_READY, why.reason, why.message, generation, now, keep_phase)


def ready_conditions(conditions: list[dict[str, Any]], ref: str, url: str, generation: int, now: str) -> list[Any]:
    message = f"the judge is ModelDeployment {ref}'s stable Service at {url}"
    return set_condition(conditions, JUDGE_READY, True, RESOLVED, message, generation, now)


def waits(status: dict[str, Any]) -> bool:
    """Whether the status says a run waits for its judge's ModelDeployment (a timer looks again)."""
    return any(c.get("type") == JUDGE_READY and c.get("status") == "False" for c in status.get("conditions") or [])
