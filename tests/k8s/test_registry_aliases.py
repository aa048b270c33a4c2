"""The ModelDeployment controller keeps a real MLflow registry in step: the stable version of a tracked
FineTuneJob run gets the alias production, set by the running operator through status.registry."""

from __future__ import annotations

from tests.k8s.conftest import wait_for
from tests.k8s.test_modeldeployment_controller import md_phase, md_spec


def test_the_served_runs_registered_version_becomes_production(k8s, operator, mlflow_server):
    from mlflow.tracking import MlflowClient

    ftj = {
        "baseModel": {"name": "org/tiny-llama"},
        "dataset": {"uri": "/data/support.jsonl"},
        "output": {"uri": "/models/out"},
        "image": "kubetune.test/trainer:kwok-succeed",
        "resources": {"gpus": 1},
        "evaluation": {"gates": {"maxPerplexity": 10}},
    }
    k8s.create_ftj("tracked", ftj)
    wait_for(lambda: (k8s.get_ftj("tracked").get("status") or {}).get("phase") == "Succeeded", 60, "run 1 done")
    # What the trainer reports after registering its artifact (the kwok trainer is a stand-in that does not).
    client = MlflowClient(mlflow_server.url, mlflow_server.url)
    client.create_registered_model("tracked")
    version = client.create_model_version("tracked", "pvc://models/out/run-1", await_creation_for=0).version
    tracking = {"trackingUri": mlflow_server.url, "registeredModel": "tracked", "modelVersion": str(version)}
    k8s.custom.patch_namespaced_custom_object_status(
        "kubetune.io", "v1alpha1", k8s.ns, "finetunejobs", "tracked", {"status": {"tracking": tracking}}
    )

    k8s.create_md("tracked-chat", md_spec(adapter={"fineTuneJobRef": {"name": "tracked"}}))
    wait_for(md_phase(k8s, "tracked-chat", "Stable"), 60, "Stable with run 1's adapter")
    wait_for(lambda: client.get_registered_model("tracked").aliases.get("production") == str(version), 30, "alias")

    def synced():
        r = k8s.get_md("tracked-chat")["status"].get("registry") or {}
        return r if r.get("productionVersion") and not r.get("pending") else None

    registry = wait_for(synced, 30, "status.registry with nothing pending")
    assert registry["productionVersion"] == str(version) and registry["registeredModel"] == "tracked"
    assert (
        client.get_model_version("tracked", str(version)).tags["kubetune.live"]
        == f"production in {k8s.ns}/tracked-chat"
    )
