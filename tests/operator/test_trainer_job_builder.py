"""Pure builder tests: FineTuneJob dict in, Job / ConfigMap manifests out (no cluster)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from kubetune_operator import api
from kubetune_operator.builders.names import bounded, spec_configmap_name, trainer_job_name
from kubetune_operator.builders.trainer_job import build_spec_configmap, build_trainer_job, resolve_uri
from kubetune_operator.settings import Settings
from kubetune_operator.specs import FineTuneJobSpec

SETTINGS = Settings(trainer_image="registry.example/trainer:1", trainer_service_account="trainer-sa")


def built(ftj: dict[str, Any], run: int, settings: Settings) -> dict[str, Any]:
    """The builder with the typed spec, parsed once as the reconcile does."""
    return build_trainer_job(FineTuneJobSpec.from_dict(ftj["spec"]), ftj, run, settings)


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def container(job: dict[str, Any]) -> dict[str, Any]:
    return pod_spec(job)["containers"][0]


def env(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job)["env"]}


def test_job_name_and_owner(ftj):
    job = built(ftj, 3, SETTINGS)
    assert job["metadata"]["name"] == "support-bot-run-3"
    owner = job["metadata"]["ownerReferences"][0]
    assert owner == {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "name": "support-bot",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_labels_on_job_and_pod(ftj):
    job = built(ftj, 1, SETTINGS)
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels[api.LABEL_MANAGED_BY] == "kubetune"
        assert labels[api.LABEL_COMPONENT] == "trainer"
        assert labels[api.LABEL_INSTANCE] == "support-bot"
        assert labels[api.LABEL_FINETUNEJOB] == "support-bot"
        assert labels[api.LABEL_RUN] == "1"


def test_defaults_image_sa_and_gpu(ftj):
    job = built(ftj, 1, SETTINGS)
    assert container(job)["image"] == "registry.example/trainer:1"
    assert pod_spec(job)["serviceAccountName"] == "trainer-sa"
    assert container(job)["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["suspend"] is False


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"gpus": 0}, {}),
        ({"gpus": 4}, {"limits": {"nvidia.com/gpu": "4"}}),
        ({"gpus": 2, "gpuResourceName": "amd.com/gpu"}, {"limits": {"amd.com/gpu": "2"}}),
        (
            {"gpus": 1, "cpu": "8", "memory": "64Gi"},
            {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "64Gi", "nvidia.com/gpu": "1"}},
        ),
    ],
)
def test_resources(ftj, resources, expected):
    ftj["spec"]["resources"] = resources
    assert container(built(ftj, 1, SETTINGS))["resources"] == expected


def test_scheduling_fields_pass_through(ftj):
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    ftj["spec"]["resources"] = {
        "nodeSelector": {"gpu": "a100"},
        "tolerations": tolerations,
        "affinity": affinity,
        "priorityClassName": "training",
    }
    ftj["spec"].update(
        {"image": "mine:2", "serviceAccountName": "own", "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 60}
    )
    job = built(ftj, 1, SETTINGS)
    spec = pod_spec(job)
    assert spec["nodeSelector"] == {"gpu": "a100"}
    assert spec["tolerations"] == tolerations
    assert spec["affinity"] == affinity
    assert spec["priorityClassName"] == "training"
    assert spec["serviceAccountName"] == "own"
    assert container(job)["image"] == "mine:2"
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["ttlSecondsAfterFinished"] == 60


def test_optional_scheduling_fields_absent_by_default(ftj):
    spec = pod_spec(built(ftj, 1, SETTINGS))
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert key not in spec


def test_token_secret_by_reference_only(ftj):
    ftj["spec"]["baseModel"]["tokenSecretRef"] = {"name": "hf", "key": "tok"}
    job = built(ftj, 1, SETTINGS)
    assert env(job)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "tok"}}
    assert "tok" not in yaml.safe_dump(container(job)["command"])


def test_env_from_secrets_by_reference(ftj):
    assert "envFrom" not in container(built(ftj, 1, SETTINGS))
    refs = [{"secretRef": {"name": "s3-keys"}}, {"configMapRef": {"name": "s3-endpoint"}, "prefix": "X_"}]
    ftj["spec"]["envFrom"] = refs
    assert container(built(ftj, 1, SETTINGS))["envFrom"] == refs


def test_env_tells_trainer_who_it_is(ftj):
    e = env(built(ftj, 7, SETTINGS))
    assert e["KUBETUNE_FINETUNEJOB_NAME"] == "support-bot"
    assert e["KUBETUNE_NAMESPACE"] == "ml"
    assert e["KUBETUNE_RUN"] == "7"
    assert e["KUBETUNE_OUTPUT_DIR"] == "/mnt/pvc/models/support-bot/run-7"


def test_pvc_volumes_one_per_claim_output_writable(ftj):
    ftj["spec"]["baseModel"] = {"uri": "pvc://models/base/llama"}
    job = built(ftj, 1, SETTINGS)
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v for v in pod_spec(job)["volumes"] if "persistentVolumeClaim" in v
    }
    assert set(claims) == {"models", "data"}
    assert claims["models"]["persistentVolumeClaim"]["readOnly"] is False  # output lives on it
    assert claims["data"]["persistentVolumeClaim"]["readOnly"] is True
    mounts = {m["mountPath"]: m for m in container(job)["volumeMounts"]}
    assert mounts["/mnt/pvc/data"]["readOnly"] is True
    assert mounts["/etc/kubetune"]["readOnly"] is True


def test_spec_is_mounted_from_run_configmap(ftj):
    job = built(ftj, 2, SETTINGS)
    spec_volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == "spec")
    assert spec_volume["configMap"]["name"] == "support-bot-run-2-spec"
    assert container(job)["command"][-1] == "/etc/kubetune/finetunejob.yaml"


def test_configmap_freezes_the_spec(ftj):
    cm = build_spec_configmap(ftj, 2)
    assert cm["metadata"]["name"] == spec_configmap_name("support-bot", 2)
    frozen = yaml.safe_load(cm["data"]["finetunejob.yaml"])
    assert frozen["spec"] == ftj["spec"]
    assert frozen["metadata"] == {"name": "support-bot", "namespace": "ml", "uid": "uid-1"}
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_suspend_passes_to_job(ftj):
    ftj["spec"]["suspend"] = True
    assert built(ftj, 1, SETTINGS)["spec"]["suspend"] is True


def test_pod_security_defaults(ftj):
    job = built(ftj, 1, SETTINGS)
    assert pod_spec(job)["securityContext"]["runAsNonRoot"] is True
    assert container(job)["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("length", [1, 40, 56, 57, 63, 200, 253])
def test_job_names_fit_a_label_and_are_stable(length):
    name = "a" * length
    first = trainer_job_name(name, 12)
    assert len(first) <= 63
    assert first == trainer_job_name(name, 12)
    assert first.endswith("-run-12")


def test_bounded_names_of_different_parents_differ():
    assert bounded("a" * 70 + "x", "run-1") != bounded("a" * 70 + "y", "run-1")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("pvc://c/p/q", "/mnt/pvc/c/p/q"), ("/data/x", "/data/x"), ("s3://b/k", "s3://b/k")],
)
def test_resolve_uri(uri, expected):
    assert resolve_uri(uri, Settings()) == expected


def test_pod_failure_policy_fails_fast_on_bad_config_and_ignores_disruptions(ftj):
    from kubetune_trainer import cli

    job = built(ftj, 1, SETTINGS)
    assert pod_spec(job)["restartPolicy"] == "Never"  # the apiserver refuses a podFailurePolicy otherwise
    bad_config, disrupted = job["spec"]["podFailurePolicy"]["rules"]
    # The exit status the trainer really uses for a bad spec, on the container that runs it.
    assert bad_config == {
        "action": "FailJob",
        "onExitCodes": {"containerName": container(job)["name"], "operator": "In", "values": [cli.EXIT_BAD_CONFIG]},
    }
    assert disrupted == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert cli.EXIT_PREEMPTED not in bad_config["onExitCodes"]["values"]


def test_termination_grace_period_comes_from_the_setting(ftj):
    assert pod_spec(built(ftj, 1, SETTINGS))["terminationGracePeriodSeconds"] == 300
    settings = Settings.from_env({"KUBETUNE_TRAINER_TERMINATION_GRACE_SECONDS": "45"})
    assert pod_spec(built(ftj, 1, settings))["terminationGracePeriodSeconds"] == 45


def test_tracking_reaches_the_trainer_with_the_defaults_filled_in_and_credentials_by_reference(ftj):
    ftj["spec"]["tracking"] = {"mlflow": {"credentialsSecretRef": {"name": "mlflow-creds"}}}
    # No trackingUri in the spec: the operator's default is used.
    e = env(built(ftj, 1, Settings(mlflow_tracking_uri="http://mlflow.ml:5000")))
    assert e["KUBETUNE_MLFLOW_TRACKING_URI"] == "http://mlflow.ml:5000"
    assert e["KUBETUNE_MLFLOW_EXPERIMENT"] == f"{ftj['metadata']['namespace']}/{ftj['metadata']['name']}"
    assert e["KUBETUNE_MLFLOW_REGISTERED_MODEL"] == ftj["metadata"]["name"]
    for key, var in (("username", "USERNAME"), ("password", "PASSWORD"), ("token", "TOKEN")):
        ref = {"name": "mlflow-creds", "key": key, "optional": True}
        assert e[f"MLFLOW_TRACKING_{var}"] == {"secretKeyRef": ref}


def test_the_spec_tracking_uri_and_names_beat_the_operator_default(ftj):
    mlflow = {"trackingUri": "https://team.mlflow:443", "experiment": "exp", "registeredModel": "bot"}
    ftj["spec"]["tracking"] = {"mlflow": mlflow}
    e = env(built(ftj, 1, Settings(mlflow_tracking_uri="http://default:5000")))
    assert (e["KUBETUNE_MLFLOW_TRACKING_URI"], e["KUBETUNE_MLFLOW_EXPERIMENT"]) == ("https://team.mlflow:443", "exp")
    assert e["KUBETUNE_MLFLOW_REGISTERED_MODEL"] == "bot"
    assert not any(n.startswith("MLFLOW_TRACKING_") for n in e), "no credentials Secret, no credential variables"


def test_no_tracking_without_a_uri_in_the_spec_or_the_settings(ftj):
    assert not any("MLFLOW" in n for n in env(built(ftj, 1, SETTINGS)))
    ftj["spec"]["tracking"] = {"mlflow": {"experiment": "exp"}}
    assert not any("MLFLOW" in n for n in env(built(ftj, 1, SETTINGS)))
