"""A real tiny training run tracked in a real `mlflow server`, read back through MLflow's client; an
unreachable tracker leaves the run Succeeded with a warning; the run's PNGs decode and show its points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from kubetune_dev.processes import free_port
from kubetune_trainer import plots
from kubetune_trainer.cli import main

pytestmark = pytest.mark.slow

STEPS, LOGGING, EVAL = 6, 2, 2
POINTS = STEPS // LOGGING  # progress points the run records (train.train logs every loggingSteps)
TRAINING = {"maxSteps": STEPS, "loggingSteps": LOGGING, "evalSteps": EVAL}


def run_trainer(
    write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking: dict, on_claim: bool = True
) -> tuple[dict, Path]:
    """The CLI as the operator's Job runs it (run 3 on a claim), with spec.tracking; (termination message, run dir)."""
    log = tmp_path / "termination-log"
    log.write_text("")
    out = tmp_path / "pvc" / "artifacts" / "job" / "run-3" if on_claim else tmp_path / "plain" / "run-3"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(tmp_path / "pvc"))
    monkeypatch.setenv("KUBETUNE_OUTPUT_DIR", str(out))
    monkeypatch.setenv("KUBETUNE_RUN", "3")
    spec = write_spec({"training": TRAINING, "tracking": {"mlflow": tracking}})
    assert main(["train", "--spec", str(spec)]) == 0
    return json.loads(log.read_text()), out


def png_text(path: Path) -> tuple[tuple[int, int], dict[str, str]]:
    with Image.open(path) as im:
        im.load()  # decodes every pixel: a truncated or corrupt file raises here
        assert im.format == "PNG"
        return im.size, dict(im.text)


def assert_run_pictures(folder: Path) -> None:
    size, text = png_text(folder / plots.LOSS_PNG)
    assert size == (640, 400)
    assert text["kubetune.plot"] == "loss"
    assert int(text["kubetune.points"]) == POINTS and int(text["kubetune.evalPoints"]) == STEPS // EVAL
    size, text = png_text(folder / plots.METRICS_PNG)
    assert size == (640, 400)
    assert text["kubetune.metrics"].split(",") == ["evalLoss", "exactMatch", "perplexity"]


def test_a_tracked_run_is_in_mlflow_with_params_metrics_artifacts_and_a_registered_version(
    write_spec, tmp_path, monkeypatch, mlflow_server
):
    from mlflow.tracking import MlflowClient

    tracking = {"trackingUri": mlflow_server.url, "experiment": "team-a/glossary", "registeredModel": "glossary"}
    message, out = run_trainer(write_spec, tmp_path, monkeypatch, tracking)
    assert message["phase"] == "Succeeded"
    t = message["tracking"]
    assert "warning" not in t, t
    assert t["trackingUri"] == mlflow_server.url and t["registeredModel"] == "glossary" and t["modelVersion"]
    assert_run_pictures(out)

    client = MlflowClient(mlflow_server.url, mlflow_server.url)
    run = client.get_run(t["runId"])
    assert run.info.experiment_id == t["experimentId"] == client.get_experiment_by_name("team-a/glossary").experiment_id
    assert run.info.status == "FINISHED" and run.info.run_name == "test-job-run-3"
    params = run.data.params
    assert params["method"] == "lora" and params["lora.r"] == "16" and params["training.maxSteps"] == str(STEPS)
    assert params["dataset.sha256"] == message["lineage"]["datasetSha256"]
    assert params["baseModel.uri"].endswith("tiny-model")
    # One point per progress report, at its step; evalLoss at every evaluation.
    loss = client.get_metric_history(t["runId"], "loss")
    assert [m.step for m in sorted(loss, key=lambda m: m.step)] == list(range(LOGGING, STEPS + 1, LOGGING))
    assert len(client.get_metric_history(t["runId"], "evalLoss")) == STEPS // EVAL
    assert len(client.get_metric_history(t["runId"], "learningRate")) == POINTS
    assert run.data.metrics["tuned.evalLoss"] == pytest.approx(message["metrics"]["evalLoss"])
    assert "base.evalLoss" in run.data.metrics

    names = {a.path for a in client.list_artifacts(t["runId"])}
    assert names == {"eval.json", "model_card.json", "loss.png", "metrics.png"}
    downloaded = Path(client.download_artifacts(t["runId"], "", str(tmp_path / "downloaded")))
    assert json.loads((downloaded / "eval.json").read_text()) == json.loads((out / "eval.json").read_text())
    assert json.loads((downloaded / "model_card.json").read_text())["finetuneJob"]["run"] == "3"
    assert_run_pictures(downloaded)

    version = client.get_model_version("glossary", t["modelVersion"])
    assert version.source == message["artifact"]["uri"] == "pvc://artifacts/job/run-3/artifact"
    assert version.run_id == t["runId"]
    assert version.tags["datasetSha256"] == message["lineage"]["datasetSha256"]
    assert version.tags["evalPassed"] == "none"  # BASE_SPEC has no gates: nothing checked the model
    assert "parentArtifact" not in version.tags  # no spec.initFrom


def test_an_unreachable_tracker_leaves_the_run_succeeded_with_a_warning(write_spec, tmp_path, monkeypatch):
    # Nothing listens on a free port: every call is refused. One quick retry keeps the test short.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    message, out = run_trainer(write_spec, tmp_path, monkeypatch, {"trackingUri": uri})
    assert message["phase"] == "Succeeded" and message["artifact"]["digest"].startswith("sha256:")
    t = message["tracking"]
    assert t["trackingUri"] == uri and t["registeredModel"] == "test-job"
    assert "runId" not in t and "modelVersion" not in t
    assert "starting the run failed" in t["warning"] and uri in t["warning"]
    assert_run_pictures(out)  # the pictures do not depend on the tracker
    result = json.loads((out / "result.json").read_text())
    assert result["tracking"] == t


def test_a_refused_registration_is_a_warning_and_the_rest_of_the_run_is_still_in_mlflow(
    write_spec, tmp_path, monkeypatch, mlflow_server
):
    from mlflow.tracking import MlflowClient

    # An artifact at a plain path inside the pod: MLflow refuses a local path as a version's source.
    message, out = run_trainer(write_spec, tmp_path, monkeypatch, {"trackingUri": mlflow_server.url}, on_claim=False)
    assert message["phase"] == "Succeeded" and message["artifact"]["uri"] == str(out / "artifact")
    t = message["tracking"]
    assert "registering the artifact failed" in t["warning"] and "modelVersion" not in t
    run = MlflowClient(mlflow_server.url).get_run(t["runId"])
    assert run.info.status == "FINISHED"  # not left RUNNING after the failed call
    assert run.data.params["method"] == "lora"
    assert {a.path for a in MlflowClient(mlflow_server.url).list_artifacts(t["runId"])} >= {"eval.json", "loss.png"}
