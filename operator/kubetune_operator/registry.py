"""MLflow's model registry as a rollout sees it: which alias points at which version of the served model.

Room: the operator. `actions_for` is pure: a rollout event (a version became stable, a canary started,
was promoted or rolled back) gives the registry calls that make MLflow show what is live. The rollout
records them in status.registry.pending (the same status write as the transition), and the next
reconcile hands them to `apply`, which calls the tracking server's REST API with a short timeout
(urllib: the operator image carries no MLflow). What fails stays pending and is retried after
`RETRY_SECONDS`; the rollout itself never waits on MLflow. Every call is idempotent (set an alias,
delete one, set a tag), so a call repeated after a lost status write does no harm.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

PRODUCTION, CANARY = "production", "canary"
RETRY_SECONDS = 30.0  # between attempts at what is still pending while the server is unreachable


def target(ftj_status: dict[str, Any], artifact_ref: str | None) -> dict[str, str] | None:
    """{trackingUri, registeredModel, version} of the FineTuneJob run whose artifact is ``artifact_ref``;
    None when that run was not tracked or registered (or the FineTuneJob has moved on to another run).

    >>> st = {"artifact": {"uri": "pvc://m/run-2/artifact"},
    ...       "tracking": {"trackingUri": "http://m:5000", "registeredModel": "bot", "modelVersion": "3"}}
    >>> target(st, "pvc://m/run-2/artifact#digest=sha256:ab"), target(st, "pvc://m/run-1/artifact")
    ({'trackingUri': 'http://m:5000', 'registeredModel': 'bot', 'version': '3'}, None)
    """
    tracking, artifact = ftj_status.get("tracking") or {}, ftj_status.get("artifact") or {}
    if not (tracking.get("trackingUri") and tracking.get("registeredModel") and tracking.get("modelVersion")):
        return None
    uris = {artifact.get("uri"), artifact.get("mergedUri")} - {None}
    if artifact_ref is None or artifact_ref.split("#", 1)[0] not in uris:
        return None
    return {
        "trackingUri": str(tracking["trackingUri"]),
        "registeredModel": str(tracking["registeredModel"]),
        "version": str(tracking["modelVersion"]),
    }


def actions_for(event: str, version: str, deployment: str) -> list[dict[str, str]]:
    """The registry calls for a rollout event on registered ``version``; ``deployment`` is namespace/name.

    stable (first deployment) and promote: alias production -> version; canary: alias canary -> version;
    rollback: the canary alias goes and the version is tagged rolledBack (production never moved to it).

    >>> [a["op"] + ":" + a.get("alias", a.get("key", "")) for a in actions_for("promote", "4", "ns/bot")]
    ['setAlias:production', 'deleteAlias:canary', 'setTag:kubetune.live']
    """
    live = {"op": "setTag", "version": version, "key": "kubetune.live", "value": f"{PRODUCTION} in {deployment}"}
    if event == "stable":
        return [{"op": "setAlias", "alias": PRODUCTION, "version": version}, live]
    if event == "canary":
        tag = {"op": "setTag", "version": version, "key": "kubetune.live", "value": f"{CANARY} in {deployment}"}
        return [{"op": "setAlias", "alias": CANARY, "version": version}, tag]
    if event == "promote":
        return [
            {"op": "setAlias", "alias": PRODUCTION, "version": version},
            {"op": "deleteAlias", "alias": CANARY},
            live,
        ]
    if event == "rollback":
        return [
            {"op": "deleteAlias", "alias": CANARY},
            {"op": "setTag", "version": version, "key": "rolledBack", "value": f"true ({deployment})"},
            {"op": "setTag", "version": version, "key": "kubetune.live", "value": "no"},
        ]
    raise ValueError(f"unknown rollout event {event!r}")


def _request(action: dict[str, str], model: str) -> tuple[str, str, dict[str, str]]:
    """(HTTP method, REST path, JSON body) of one action (MLflow's REST API 2.0)."""
    op = action["op"]
    if op == "setAlias":
        body = {"name": model, "alias": action["alias"], "version": action["version"]}
        return "POST", "/api/2.0/mlflow/registered-models/alias", body
    if op == "deleteAlias":
        return "DELETE", "/api/2.0/mlflow/registered-models/alias", {"name": model, "alias": action["alias"]}
    if op == "setTag":
        body = {"name": model, "version": action["version"], "key": action["key"], "value": action["value"]}
        return "POST", "/api/2.0/mlflow/model-versions/set-tag", body
    raise ValueError(f"unknown registry action {op!r}")


def _auth(username: str, password: str, token: str) -> dict[str, str]:
    if token:
        return {"Authorization": f"Bearer {token}"}
    if username:
        return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}
    return {}


def apply(
    uri: str,
    model: str,
    actions: list[dict[str, str]],
    timeout: float,
    username: str = "",
    password: str = "",
    token: str = "",
) -> tuple[list[dict[str, str]], str | None]:
    """Call the server for each action in order; (what is still pending, why it stopped or None).

    Stops at the first failure, so the order of an event's calls holds. Deleting an alias that is not
    there counts as done (RESOURCE_DOES_NOT_EXIST / 404): the registry already shows what it should."""
    headers = {"Content-Type": "application/json", **_auth(username, password, token)}
    for i, action in enumerate(actions):
        method, path, body = _request(action, model)
        req = urllib.request.Request(
            uri.rstrip("/") + path, data=json.dumps(body).encode(), headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                response.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")[:300]
            if action["op"] == "deleteAlias" and (e.code == 404 or "RESOURCE_DOES_NOT_EXIST" in text):
                continue
            return actions[i:], f"MLflow at {uri}: {action['op']} on {model}: HTTP {e.code}: {text}"
        except (urllib.error.URLError, OSError) as e:  # refused, timed out, DNS
            return actions[i:], f"MLflow at {uri}: {action['op']} on {model}: {getattr(e, 'reason', e)}"
    return [], None
