"""`helm lint` and `helm template` in every scenario, and what the rendered objects must say."""

from __future__ import annotations

import json

import pytest

from tests.chart.helm import (
    CHART,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    HelmError,
    find,
    helm,
    one,
    render,
    rule_set,
    triples,
    values_args,
)

# What the operator calls (operator/kubetune_operator/kube.py) and Kopf needs; nothing more.
OPERATOR_NAMESPACED = triples(
    {
        ("kubetune.io", "finetunejobs"): "get list watch patch",
        ("kubetune.io", "modeldeployments"): "get list watch patch",
        ("kubetune.io", "finetunejobs/status"): "get patch",
        ("kubetune.io", "modeldeployments/status"): "get patch",
        ("batch", "jobs"): "create get list watch patch delete",
        ("", "configmaps"): "create get",
        ("", "pods"): "get list watch",
        ("", "services"): "create list patch",
        ("", "events"): "create",
        ("events.k8s.io", "events"): "create",
        ("apps", "deployments"): "create list patch delete",
        ("gateway.networking.k8s.io", "httproutes"): "create get patch",
        ("jobset.x-k8s.io", "jobsets"): "create get patch delete",
        ("trainer.kubeflow.org", "trainjobs"): "create get patch delete",
    }
)
OPERATOR_CLUSTER = triples(
    {
        ("apiextensions.k8s.io", "customresourcedefinitions"): "get list watch",
        ("", "namespaces"): "get list watch",
    }
)
TRAINER = triples({("kubetune.io", "finetunejobs"): "get", ("kubetune.io", "finetunejobs/status"): "get patch"})


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint(scenario: str) -> None:
    proc = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *values_args(scenario), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_renders_labelled_objects(scenario: str) -> None:
    objects = render(scenario)
    assert find(objects, "Deployment"), "no operator Deployment"
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, obj["metadata"]["name"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "kubetune-0.1.0"


def container(objects: list[dict]) -> dict:
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env(objects: list[dict]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(objects)["env"]}


def test_operator_deployment_defaults() -> None:
    objects = render()
    deploy = one(objects, "Deployment", RELEASE)
    spec, pod = deploy["spec"], deploy["spec"]["template"]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # Kopf runs standalone: never two operators at once
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == RELEASE
    c = container(objects)
    assert c["image"] == "ghcr.io/kubetune/operator:0.1.0"
    assert c["command"] == ["python", "-m", "kubetune_operator"]
    assert env(objects) == {
        "KUBETUNE_TRAINER_IMAGE": "ghcr.io/kubetune/trainer:0.1.0",
        "KUBETUNE_TRAINER_SERVICE_ACCOUNT": "kubetune-trainer",
        "KUBETUNE_TRAINER_TERMINATION_GRACE_SECONDS": "300",
        "KUBETUNE_TRAINING_ENGINE": "indexedJob",
        "KUBETUNE_TRAINJOB_RUNTIME": "torch-distributed",
        "KUBETUNE_SERVER_IMAGE": "ghcr.io/kubetune/trainer:0.1.0",
        "KUBETUNE_VLLM_IMAGE": "vllm/vllm-openai:v0.11.0",
        "KUBETUNE_WATCH_NAMESPACE": "",
        "KUBETUNE_ROLLOUT_CHECK_SECONDS": "5",
        "KUBETUNE_MLFLOW_TRACKING_URI": "",
        "KUBETUNE_METRICS_PORT": "8080",
        "KUBETUNE_LIVENESS_PORT": "8081",
    }
    assert c["ports"] == [
        {"name": "metrics", "containerPort": 8080, "protocol": "TCP"},
        {"name": "healthz", "containerPort": 8081, "protocol": "TCP"},
    ]
    # Kopf's own liveness endpoint (python -m kubetune_operator serves it on KUBETUNE_LIVENESS_PORT).
    assert c["livenessProbe"] == {
        "httpGet": {"path": "/healthz", "port": "healthz"},
        "initialDelaySeconds": 15,
        "periodSeconds": 20,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }


def test_mlflow_default_tracking_uri_and_the_operators_credentials_by_reference() -> None:
    objects = render(
        "defaults", "--set", "mlflow.trackingUri=http://mlflow.ml:5000", "--set", "mlflow.credentialsSecret=mlf"
    )
    assert env(objects)["KUBETUNE_MLFLOW_TRACKING_URI"] == "http://mlflow.ml:5000"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(objects)["env"] if "valueFrom" in e}
    assert refs == {
        f"KUBETUNE_MLFLOW_{key.upper()}": {"name": "mlf", "key": key, "optional": True}
        for key in ("username", "password", "token")
    }


def test_liveness_port_moves_the_endpoint_and_the_probe_together() -> None:
    objects = render("defaults", "--set", "livenessProbe.port=9091")
    c = container(objects)
    assert env(objects)["KUBETUNE_LIVENESS_PORT"] == "9091"
    assert {"name": "healthz", "containerPort": 9091, "protocol": "TCP"} in c["ports"]
    assert c["livenessProbe"]["httpGet"]["port"] == "healthz" and "port" not in c["livenessProbe"]


def test_security_defaults() -> None:
    objects = render()
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(objects)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root needs a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in container(objects)["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]


def test_custom_images_resources_and_scheduling() -> None:
    objects = render("custom-images")
    e = env(objects)
    assert container(objects)["image"] == "registry.example.com/kubetune/operator:0.1.0-rc1"
    assert container(objects)["imagePullPolicy"] == "Always"
    assert e["KUBETUNE_TRAINER_IMAGE"] == "registry.example.com/kubetune/trainer:0.1.0-cuda13"
    assert e["KUBETUNE_SERVER_IMAGE"] == "registry.example.com/kubetune/server:0.1.0"
    assert e["KUBETUNE_VLLM_IMAGE"] == "registry.example.com/vllm/vllm-openai:v0.11.0"
    assert e["KUBETUNE_TRAINER_SERVICE_ACCOUNT"] == "ml-trainer"
    assert e["KUBETUNE_PROMETHEUS_TIMEOUT_SECONDS"] == "10"
    assert container(objects)["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    deploy = one(objects, "Deployment", "kt")
    pod = deploy["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"example.com/owner": "ml-platform"}
    assert pod["metadata"]["labels"]["tier"] == "control"
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["spec"]["affinity"]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert all(o["metadata"]["labels"]["team"] == "ml-platform" for o in objects)


def test_rbac_cluster_wide_is_exactly_what_the_operator_uses() -> None:
    objects = render()
    assert not find(objects, "Role") and not find(objects, "RoleBinding")
    role = one(objects, "ClusterRole", RELEASE)
    assert rule_set(role["rules"]) == OPERATOR_NAMESPACED | OPERATOR_CLUSTER
    binding = one(objects, "ClusterRoleBinding", RELEASE)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": RELEASE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    assert one(objects, "ServiceAccount", RELEASE)["metadata"]["namespace"] == NAMESPACE


def test_rbac_namespaced_watch_uses_a_role_there() -> None:
    objects = render("namespaced")
    assert env(objects)["KUBETUNE_WATCH_NAMESPACE"] == "ml-team"
    assert env(objects)["KUBETUNE_ROLLOUT_CHECK_SECONDS"] == "2.5"
    role = one(objects, "Role", RELEASE)
    assert role["metadata"]["namespace"] == "ml-team"
    assert rule_set(role["rules"]) == OPERATOR_NAMESPACED
    binding = one(objects, "RoleBinding", RELEASE)
    assert binding["metadata"]["namespace"] == "ml-team"
    assert binding["roleRef"]["kind"] == "Role"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    # Cluster-wide, only the reads a Role cannot grant: nothing namespaced leaks into a ClusterRole.
    assert not find(objects, "ClusterRole", RELEASE)
    assert rule_set(one(objects, "ClusterRole", f"{RELEASE}-cluster")["rules"]) == OPERATOR_CLUSTER


def test_trainer_rbac() -> None:
    for scenario in ("defaults", "namespaced"):
        assert rule_set(one(render(scenario), "ClusterRole", f"{RELEASE}-trainer")["rules"]) == TRAINER
    # By default the chart binds it nowhere: FineTuneJob namespaces are the user's (NOTES.txt says how).
    defaults = render()
    assert not find(defaults, "RoleBinding")
    assert [sa["metadata"]["name"] for sa in find(defaults, "ServiceAccount")] == [RELEASE]
    # trainer.namespaces plus the watched namespace: a ServiceAccount and a RoleBinding in each.
    objects = render("namespaced")
    trainer_sas = [sa for sa in find(objects, "ServiceAccount") if sa["metadata"]["name"] == "kubetune-trainer"]
    assert sorted(sa["metadata"]["namespace"] for sa in trainer_sas) == ["ml-research", "ml-team"]
    bindings = find(objects, "RoleBinding", f"{RELEASE}-trainer")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml-research", "ml-team"]
    for b in bindings:
        ns = b["metadata"]["namespace"]
        assert b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": f"{RELEASE}-trainer",
        }
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "kubetune-trainer", "namespace": ns}]


def test_rbac_and_service_accounts_can_be_left_to_the_user() -> None:
    objects = render("defaults", "--set", "rbac.create=false", "--set", "serviceAccount.create=false",
                     "--set", "serviceAccount.name=existing")  # fmt: skip
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "ServiceAccount"}
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


def test_crds_rendered_and_kept_by_default() -> None:
    crds = find(render(), "CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == ["finetunejobs.kubetune.io", "modeldeployments.kubetune.io"]
    for crd in crds:
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_crds_absent_when_disabled() -> None:
    assert not find(render("crds-disabled"), "CustomResourceDefinition")
    assert find(render("crds-disabled"), "Deployment")


def test_crds_not_kept_when_keep_is_false() -> None:
    crds = find(render("custom-images"), "CustomResourceDefinition")
    assert len(crds) == 2
    for crd in crds:
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_metrics_service_and_service_monitor() -> None:
    assert not find(render(), "ServiceMonitor")
    objects = render("monitoring")
    service = one(objects, "Service", f"{RELEASE}-metrics")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert container(objects)["ports"][0]["containerPort"] == 9090
    assert env(objects)["KUBETUNE_METRICS_PORT"] == "9090"
    monitor = one(objects, "ServiceMonitor", RELEASE)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "5s"}
    ]


def test_service_monitor_without_service_fails_clearly() -> None:
    with pytest.raises(HelmError, match=r"needs metrics\.service\.enabled"):
        render("monitoring", "--set", "metrics.service.enabled=false")


def test_grafana_dashboard_configmap() -> None:
    assert not find(render(), "ConfigMap")
    cm = one(render("monitoring"), "ConfigMap", f"{RELEASE}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Kubetune"}
    dashboard = json.loads(cm["data"]["kubetune.json"])
    assert dashboard["uid"] == "kubetune"
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Progress", "P99 latency ratio canary / stable", "Rollbacks in range"} <= titles


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "bogus=1"], "additional properties 'bogus' not allowed"),
        (["--set", "image.registry=x"], "additional properties 'registry' not allowed"),
        (["--set", "metrics.port=0"], "metrics/port"),
        (["--set", "livenessProbe.port=70000"], "livenessProbe/port"),
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "watchNamespace=Not_A_Namespace"], "watchNamespace"),
        (["--set", "mlflow.trackingUri=mlflow:5000"], "mlflow/trackingUri"),
    ],
)
def test_schema_rejects_bad_values(args: list[str], message: str) -> None:
    proc = helm("template", RELEASE, str(CHART), *args, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr
