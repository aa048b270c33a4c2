"""What `promote`, `approve`, `abort` and `retry` write (pure): a ModelDeployment in, a patch out.

Room: the kubectl plugin. The operator owns every decision (kubetune_operator.approvals): the plugin
only writes the version-named annotations and spec field it reads, after Argo Rollouts' verbs:

- `approve NAME [--step W]`: kubetune.io/approve-step=<canary>/<W, default the next step>;
- `promote NAME`: what Argo's promote does where Kubetune has the mechanism: at the end of an
  autoPromote: false rollout it promotes, at a manual gate it approves the next step; a canary that
  is running its analysis has no pause to skip, so it refuses and names `--full`;
- `promote NAME --full`: kubetune.io/promote=<canary>, skipping the remaining steps and their analysis;
- `retry NAME`: kubetune.io/retry=<rolled-back version>;
- `abort NAME`: spec.canary.abort true (edge-triggered: a flag left true from an earlier abort is
  set false first and, once the operator has re-armed it, true again; see main.abort).
"""

from __future__ import annotations

from typing import Any

from kubetune_cli.client import CliError

APPROVE, PROMOTE, RETRY = "kubetune.io/approve-step", "kubetune.io/promote", "kubetune.io/retry"


def _canary(obj: dict[str, Any], verb: str) -> str:
    canary = (obj.get("status") or {}).get("canaryVersion")
    if not canary:
        raise CliError(f"{verb}: modeldeployment {obj['metadata']['name']} has no canary in flight")
    return str(canary)


def next_weight(obj: dict[str, Any]) -> int:
    steps = ((obj.get("spec") or {}).get("canary") or {}).get("steps") or [100]
    step = int((obj.get("status") or {}).get("currentStep") or 0)
    return int(steps[min(step + 1, len(steps) - 1)])


Patch = list[dict[str, Any]]


def annotation_patch(obj: dict[str, Any], key: str, value: str, guard: str) -> Patch:
    """A JSON patch that adds one annotation only if status.`guard` still holds what was read, so a
    command typed for one version never lands on the next (the apiserver refuses a failed test).

    >>> ops = annotation_patch({"metadata": {}, "status": {"canaryVersion": "v2"}}, PROMOTE, "v2", "canaryVersion")
    >>> ops[0], ops[1]["value"]
    ({'op': 'test', 'path': '/status/canaryVersion', 'value': 'v2'}, {'kubetune.io/promote': 'v2'})
    """
    ops: Patch = [{"op": "test", "path": f"/status/{guard}", "value": obj["status"][guard]}]
    if obj["metadata"].get("annotations"):
        ops.append({"op": "add", "path": "/metadata/annotations/" + key.replace("/", "~1"), "value": value})
    else:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {key: value}})
    return ops


def approve(obj: dict[str, Any], step: int | None = None) -> tuple[Patch, str]:
    """The approval of step `step` (default the next) of the canary in flight.

    >>> md = {"metadata": {"name": "m"}, "spec": {"canary": {"steps": [30, 100]}},
    ...       "status": {"canaryVersion": "v2", "currentStep": 0}}
    >>> patch, said = approve(md)
    >>> patch[1]["value"], said
    ({'kubetune.io/approve-step': 'v2/100'}, 'approved step 100% of canary v2')
    """
    canary = _canary(obj, "approve")
    weight = next_weight(obj) if step is None else step
    patch = annotation_patch(obj, APPROVE, f"{canary}/{weight}", "canaryVersion")
    return patch, f"approved step {weight}% of canary {canary}"


def promote(obj: dict[str, Any], full: bool) -> tuple[Patch, str]:
    canary = _canary(obj, "promote")
    status, spec_canary = obj.get("status") or {}, (obj.get("spec") or {}).get("canary") or {}
    if full or status.get("awaitingPromotion"):
        return annotation_patch(obj, PROMOTE, canary, "canaryVersion"), f"promoting canary {canary} to stable"
    if spec_canary.get("manualGate"):
        return approve(obj)
    raise CliError(
        f"promote: canary {canary} is at {status.get('canaryWeight')}% and moves on when its analysis passes "
        "(no manual gate to open); `promote --full` promotes it now, skipping the remaining steps"
    )


def retry(obj: dict[str, Any]) -> tuple[Patch, str]:
    status, name = obj.get("status") or {}, obj["metadata"]["name"]
    version = status.get("rolledBackVersion")
    if not version:
        raise CliError(f"retry: modeldeployment {name} has no rolled-back version to retry")
    if status.get("canaryVersion"):
        raise CliError(f"retry: canary {status['canaryVersion']} of modeldeployment {name} is in flight")
    return annotation_patch(obj, RETRY, str(version), "rolledBackVersion"), f"retrying {version} from the first step"


def abort_patch(value: bool) -> dict[str, Any]:
    return {"spec": {"canary": {"abort": value}}}


def abort_plan(obj: dict[str, Any]) -> str:
    """ "set": write abort true; "rearm": it is true already and was used, so set it false first.

    >>> abort_plan({"metadata": {"name": "m"}, "spec": {"canary": {"abort": True}},
    ...             "status": {"canaryVersion": "v3", "abortObserved": True}})
    'rearm'
    """
    _canary(obj, "abort")
    flag = bool(((obj.get("spec") or {}).get("canary") or {}).get("abort"))
    return "rearm" if flag and (obj.get("status") or {}).get("abortObserved") else "set"
