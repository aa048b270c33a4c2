"""The rollout's registry calls: pure actions per event, applied to a real `mlflow server` over its REST API."""

from __future__ import annotations

import pytest

from kubetune_dev.processes import free_port
from kubetune_operator import registry


def test_a_rollback_never_touches_production_and_tags_the_version():
    ops = registry.actions_for("rollback", "5", "ns/bot")
    assert all(a.get("alias") != registry.PRODUCTION for a in ops)
    assert {"op": "setTag", "version": "5", "key": "rolledBack", "value": "true (ns/bot)"} in ops
    with pytest.raises(ValueError, match="unknown rollout event"):
        registry.actions_for("pause", "5", "ns/bot")


def test_the_target_is_the_served_runs_registered_version_only():
    st = {
        "artifact": {"uri": "s3://b/bot/run-2/artifact", "mergedUri": "s3://b/bot/run-2/merged"},
        "tracking": {"trackingUri": "http://m:5000", "registeredModel": "bot", "modelVersion": "7"},
    }
    assert registry.target(st, "s3://b/bot/run-2/merged#kind=model")["version"] == "7"
    assert registry.target({**st, "tracking": {"trackingUri": "http://m:5000"}}, "s3://b/bot/run-2/artifact") is None
    assert registry.target({"artifact": st["artifact"]}, "s3://b/bot/run-2/artifact") is None


@pytest.mark.slow
def test_promotion_and_rollback_move_the_aliases_on_a_real_mlflow_server(mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.url, mlflow_server.url)
    client.create_registered_model("alias-bot")
    for run in (1, 2, 3):
        client.create_model_version("alias-bot", f"pvc://models/bot/run-{run}/artifact", await_creation_for=0)

    def apply(event: str, version: str) -> None:
        pending, error = registry.apply(
            mlflow_server.url, "alias-bot", registry.actions_for(event, version, "ns/bot"), timeout=10
        )
        assert (pending, error) == ([], None)

    def alias(name: str) -> str | None:
        return client.get_registered_model("alias-bot").aliases.get(name)

    apply("stable", "1")
    assert alias("production") == "1"
    apply("canary", "2")
    assert (alias("production"), alias("canary")) == ("1", "2")
    apply("rollback", "2")
    assert (alias("production"), alias("canary")) == ("1", None)
    assert client.get_model_version("alias-bot", "2").tags["rolledBack"] == "true (ns/bot)"
    apply("rollback", "2")  # repeated after a lost status write: deleting the missing alias is no error
    apply("canary", "3")
    apply("promote", "3")
    assert (alias("production"), alias("canary")) == ("3", None)
    assert client.get_model_version_by_alias("alias-bot", "production").source == "pvc://models/bot/run-3/artifact"
    assert client.get_model_version("alias-bot", "3").tags["kubetune.live"] == "production in ns/bot"

    # A version the server does not have: the call fails with the server's words and stays pending.
    pending, error = registry.apply(mlflow_server.url, "alias-bot", registry.actions_for("promote", "9", "ns/bot"), 10)
    assert pending[0]["op"] == "setAlias" and "HTTP" in error and alias("production") == "3"


def test_an_unreachable_server_leaves_every_action_pending():
    actions = registry.actions_for("promote", "3", "ns/bot")
    uri = f"http://127.0.0.1:{free_port()}"
    pending, error = registry.apply(uri, "bot", actions, timeout=2)
    assert pending == actions and uri in error


T = {"trackingUri": "http://m:5000", "registeredModel": "bot"}


def test_status_registry_follows_the_rollout_and_keeps_what_is_not_sent_yet():
    from kubetune_operator.reconcile.md_registry import queue

    r = queue(None, "stable", {**T, "version": "1"}, "ns/md")
    assert (r["productionVersion"], [a["op"] for a in r["pending"]]) == ("1", ["setAlias", "setTag"])
    r = queue(r, "canary", {**T, "version": "2"}, "ns/md")
    assert (r["productionVersion"], r["canaryVersion"], len(r["pending"])) == ("1", "2", 4)
    r = queue(r, "rollback", {**T, "version": "2"}, "ns/md")
    assert (r["productionVersion"], r["canaryVersion"], len(r["pending"])) == ("1", None, 7)
    # Another registered model (the FineTuneJob's spec changed): the old record and its calls go.
    other = queue(r, "stable", {**T, "registeredModel": "bot-v2", "version": "1"}, "ns/md")
    assert other["registeredModel"] == "bot-v2" and len(other["pending"]) == 2
    assert queue(None, "stable", None, "ns/md") == {}  # an untracked rollout has no registry record
    assert "not registered" in queue(r, "canary", None, "ns/md")["message"]


@pytest.mark.slow
def test_sync_sends_the_pending_calls_and_retries_later_when_the_server_is_down(mlflow_server):
    import datetime as dt

    from mlflow.tracking import MlflowClient

    from kubetune_operator.reconcile.md_registry import queue, sync
    from kubetune_operator.settings import Settings

    client = MlflowClient(mlflow_server.url, mlflow_server.url)
    client.create_registered_model("sync-bot")
    client.create_model_version("sync-bot", "s3://b/bot/run-1/artifact", await_creation_for=0)
    now = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC)
    settings = Settings(mlflow_timeout_seconds=2)

    down = {"trackingUri": f"http://127.0.0.1:{free_port()}", "registeredModel": "sync-bot", "version": "1"}
    r = sync(queue(None, "stable", down, "ns/md"), settings, now)
    assert r["pending"] and r["lastAttemptTime"] == "2026-12-03T08:00:00Z" and down["trackingUri"] in r["message"]
    assert sync(r, settings, now + dt.timedelta(seconds=10)) is None  # not before registry.RETRY_SECONDS

    up = {**down, "trackingUri": mlflow_server.url}
    r = sync(queue(None, "stable", up, "ns/md"), settings, now)
    assert (r["pending"], r["message"], r["productionVersion"]) == (None, None, "1")
    assert client.get_registered_model("sync-bot").aliases == {"production": "1"}
    assert sync(r, settings, now) is None  # nothing pending: no call, no write
