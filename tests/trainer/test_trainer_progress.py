"""Status patches and metrics: reported when possible, never fatal."""

from __future__ import annotations

import pytest

from kubetune_trainer.environment import TrainerEnv
from kubetune_trainer.progress import Metrics, StatusReporter

P = {"step": 10, "totalSteps": 100, "epoch": 0.5, "loss": 1.5, "evalLoss": None, "tokensPerSecond": 900.0}


class FakeApi:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    def patch_namespaced_custom_object_status(self, *args, **kwargs):
        if self.fail:
            raise RuntimeError("apiserver unavailable")
        self.calls.append((args, kwargs))


def reporter(api) -> StatusReporter:
    r = StatusReporter.__new__(StatusReporter)
    r.name, r.namespace, r.api = "job", "team-a", api
    return r


def test_progress_is_a_merge_patch_of_status_progress():
    api = FakeApi()
    reporter(api).progress(P)
    ((args, kwargs),) = api.calls
    assert args[:5] == ("kubetune.io", "v1alpha1", "team-a", "finetunejobs", "job")
    body = args[5]["status"]["progress"]
    assert body["step"] == 10 and body["totalSteps"] == 100 and body["stepText"] == "10/100"
    assert "evalLoss" not in body and "updateTime" in body
    assert kwargs["_content_type"] == "application/merge-patch+json"


def test_plan_is_patched_before_training_and_kept_in_every_progress_patch():
    api = FakeApi()
    r = reporter(api)
    r.plan({"examplesPerStep": 8.0, "tokensPerStep": 1234.5, "stepsPerEpoch": 184, "batchSize": 8})
    first = api.calls[0][0][5]["status"]["progress"]
    assert {k: first[k] for k in ("examplesPerStep", "tokensPerStep", "stepsPerEpoch")} == {
        "examplesPerStep": 8.0,
        "tokensPerStep": 1234.5,
        "stepsPerEpoch": 184,
    }
    assert "batchSize" not in first  # not a status.progress field: the API server would prune it
    r.progress(P)
    later = api.calls[1][0][5]["status"]["progress"]
    assert later["stepsPerEpoch"] == 184 and later["step"] == 10


def test_final_patch_carries_metrics_and_eval_passed():
    api = FakeApi()
    r = reporter(api)
    r.final({"perplexity": 3.0}, True)
    assert api.calls[0][0][5] == {"status": {"metrics": {"perplexity": 3.0}, "evalPassed": True}}
    r.final({}, False, {"uri": "pvc://a/b", "digest": "sha256:x"})
    assert api.calls[1][0][5]["status"]["artifact"] == {"uri": "pvc://a/b", "digest": "sha256:x"}
    r.checkpoint("/out/checkpoints/step-5")
    assert api.calls[2][0][5] == {"status": {"lastCheckpoint": "/out/checkpoints/step-5"}}


def test_patch_failures_never_raise(caplog):
    r = reporter(FakeApi(fail=True))
    r.progress(P)
    assert r.patch({"x": 1}) is False
    assert "could not patch" in caplog.text


def test_outside_a_cluster_it_only_logs(monkeypatch, caplog):
    env = TrainerEnv.from_environ({"KUBETUNE_FINETUNEJOB_NAME": "job", "KUBETUNE_NAMESPACE": "ns"})
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    r = StatusReporter(env.finetunejob_name, env.namespace)
    assert r.name == "job" and r.api is None and r.patch({"a": 1}) is False
    assert StatusReporter().name is None  # e.g. torchrun ranks other than 0


def test_metrics_gauges():
    m = Metrics(port=0)
    m.update({**P, "evalLoss": 2.0})
    value = m.registry.get_sample_value
    assert value("kubetune_trainer_loss") == pytest.approx(1.5)
    assert value("kubetune_trainer_eval_loss") == pytest.approx(2.0)
    assert value("kubetune_trainer_tokens_per_second") == pytest.approx(900.0)
    assert value("kubetune_trainer_step") == 10


def test_metrics_endpoint_serves_prometheus_text():
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = Metrics(port=port)
    m.update(P)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "kubetune_trainer_tokens_per_second 900.0" in body


def test_reported_fields_are_status_progress_fields():
    """Anything else would be pruned by the API server (the CRD's status schema comes from this model)."""
    from kubetune_api.status import Progress
    from kubetune_trainer.progress import PLAN_FIELDS, PROGRESS_FIELDS

    names = {f.alias or n for n, f in Progress.model_fields.items()}
    assert set(PROGRESS_FIELDS) | set(PLAN_FIELDS) | {"stepText", "updateTime"} == names
