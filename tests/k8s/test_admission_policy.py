"""The chart's ValidatingAdmissionPolicies in the real apiserver (RBAC on): users impersonated by the
admin client try every field that widens what the operator's pods may do.

alice may only edit FineTuneJobs and ModelDeployments (and read one Secret and one ConfigMap); bob may
also create pods; carol is the namespace's `admin`; dave may impersonate one ServiceAccount. A refusal is
a 403 whose message names the rule; an allowed request is checked with a server-side dry run, so every
case is one admission decision and leaves nothing behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kubetune_dev.controlplane import ControlPlane
from tests.chart.helm import CHART, NAMESPACE, RELEASE, helm, helm_binary
from tests.k8s.conftest import GROUP, VERSION, Api

ALLOW = {
    "admissionPolicy.allowedImagePrefixes": "{registry.example.com/ml/}",
    "admissionPolicy.allowedServiceAccounts": "{shared-trainer}",
    "admissionPolicy.trustRemoteCodeModels": "{trusted-org/}",
}
FTJ = {"baseModel": {"name": "org/tiny"}, "dataset": {"uri": "/data/x.jsonl"}, "output": {"uri": "/models/out"}}
MD = {"baseModel": {"name": "org/tiny"}, "adapter": {"uri": "/adapters/v1"}, "resources": {"gpus": 0}}
PLURAL = {"FineTuneJob": "finetunejobs", "ModelDeployment": "modeldeployments"}


@pytest.fixture(scope="module")
def policy(control_plane: ControlPlane) -> Iterator[None]:
    """The chart's policy objects, rendered by helm with allow-lists set, applied to the cluster."""
    if helm_binary() is None:
        pytest.skip("helm not built: run `bash hack/build-control-plane.sh --with-helm` (hack/setup.sh does)")
    sets = [a for key, value in ALLOW.items() for a in ("--set", f"{key}={value}")]
    text = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *sets,
                "--show-only", "templates/admission-policy.yaml").stdout  # fmt: skip
    control_plane.kubectl("apply", "--server-side", "-f", "-", input=text)
    yield
    control_plane.kubectl("delete", "-f", "-", "--wait=false", input=text, check=False)


def user_client(control_plane: ControlPlane, user: str) -> client.CustomObjectsApi:
    api = config.new_client_from_config(str(control_plane.kubeconfig))
    api.default_headers["Impersonate-User"] = user
    return client.CustomObjectsApi(api)


def grant(k8s: Api, name: str, user: str, rules: list[dict[str, Any]] | None, cluster_role: str | None = None) -> None:
    rbac = client.RbacAuthorizationV1Api(k8s.client)
    if rules is not None:
        rbac.create_namespaced_role(k8s.ns, {"metadata": {"name": name}, "rules": rules})
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole" if cluster_role else "Role",
           "name": cluster_role or name}  # fmt: skip
    subject = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
    rbac.create_namespaced_role_binding(k8s.ns, {"metadata": {"name": name}, "roleRef": ref, "subjects": [subject]})


CRS = {"apiGroups": [GROUP], "resources": ["finetunejobs", "modeldeployments"], "verbs": ["*"]}


@pytest.fixture
def users(k8s: Api, control_plane: ControlPlane, policy: None) -> dict[str, client.CustomObjectsApi]:
    grant(k8s, "alice", "alice", [
        CRS,
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["alice-token"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["alice-settings"]},
    ])  # fmt: skip
    grant(k8s, "bob", "bob", [CRS, {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}])
    grant(k8s, "carol", "carol", None, cluster_role="admin")  # the namespace admin (without our CRDs:
    grant(k8s, "carol-crs", "carol", [CRS])  # the chart ships no aggregate-to-admin role for them)
    grant(k8s, "dave", "dave", [CRS, {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"],
                                      "resourceNames": ["builder"]}])  # fmt: skip
    clients = {u: user_client(control_plane, u) for u in ("alice", "bob", "carol", "dave")}
    wait_until_enforced(k8s, clients["alice"])
    return clients


def submit(k8s: Api, api: client.CustomObjectsApi, kind: str, spec: dict[str, Any], dry_run: bool = True) -> str | None:
    """None when admitted, else the refusal's message (a 403 from the policy)."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"generateName": "p-"}, "spec": spec}
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, k8s.ns, PLURAL[kind], body,
                                            dry_run="All" if dry_run else None)  # fmt: skip
    except ApiException as err:
        assert err.status == 403, err.body
        return str(json.loads(err.body)["message"])
    return None


def wait_until_enforced(k8s: Api, alice: client.CustomObjectsApi) -> None:
    """A new policy takes effect when the apiserver's informer has it (about a second)."""
    deadline = time.monotonic() + 30
    while submit(k8s, alice, "FineTuneJob", {**FTJ, "image": "evil.example/x:1"}) is None:
        assert time.monotonic() < deadline, "the policy was never enforced"
        time.sleep(0.5)


def with_(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    spec = json.loads(json.dumps(base))
    for path, value in fields.items():
        node = spec
        *parents, last = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return spec


F, M = "FineTuneJob", "ModelDeployment"
NO_PODS = "alice dave"  # neither may create pods
CASES = [
    # (kind, spec, users refused, rule named, what the message tells them to ask for)
    (F, with_(FTJ, image="evil.example/miner:1"), NO_PODS, "image", "allowedImagePrefixes"),
    (F, with_(FTJ, image="registry.example.com/ml-evil/x:1"), NO_PODS, "image", "allowedImagePrefixes"),
    (F, with_(FTJ, image="registry.example.com/ml/trainer:2"), "", "image", ""),
    (F, with_(FTJ, image="ghcr.io/kubetune/trainer:0.2.0"), "", "image", ""),
    (F, with_(FTJ, serviceAccountName="builder"), "alice", "serviceAccountName", "allowedServiceAccounts"),
    (F, with_(FTJ, serviceAccountName="deployer"), NO_PODS, "serviceAccountName", "impersonating"),
    (F, with_(FTJ, serviceAccountName="shared-trainer"), "", "serviceAccountName", ""),
    (F, with_(FTJ, serviceAccountName="kubetune-trainer"), "", "serviceAccountName", ""),
    (F, with_(FTJ, baseModel__trustRemoteCode=True), NO_PODS, "trustRemoteCode", "trustRemoteCodeModels"),
    (F, with_(FTJ, baseModel={"name": "trusted-org/m", "trustRemoteCode": True}), "", "trustRemoteCode", ""),
    (F, with_(FTJ, baseModel__tokenSecretRef={"name": "hf-token"}), NO_PODS, "secretRef", "getting"),
    (F, with_(FTJ, baseModel__tokenSecretRef={"name": "alice-token"}), "dave", "secretRef", "getting"),
    (F, with_(FTJ, envFrom=[{"secretRef": {"name": "s3-keys"}}]), NO_PODS, "secretRef", "getting"),
    (F, with_(FTJ, envFrom=[{"configMapRef": {"name": "proxy"}}]), NO_PODS, "configMapRef", "getting"),
    (F, with_(FTJ, envFrom=[{"configMapRef": {"name": "alice-settings"}}]), "dave", "configMapRef", ""),
    (M, with_(MD, image="evil.example/server:1"), NO_PODS, "image", "allowedImagePrefixes"),
    (M, with_(MD, runtime="vllm", image="vllm/vllm-openai:v0.12.0"), "", "image", ""),
    (M, with_(MD, baseModel__trustRemoteCode=True), NO_PODS, "trustRemoteCode", "pods"),
    (M, with_(MD, runtime="vllm", vllm={"extraArgs": ["--trust-remote-code"]}), NO_PODS, "trustRemoteCode", "pods"),
    (M, with_(MD, runtime="vllm", vllm={"extraArgs": ["--config", "/mnt/pvc/x/c.yaml"]}), NO_PODS,
     "trustRemoteCode", "pods"),
    (M, with_(MD, runtime="vllm", vllm={"extraArgs": ["--max-num-seqs", "4"]}), "", "trustRemoteCode", ""),
    (M, with_(MD, envFrom=[{"secretRef": {"name": "hf-token"}}]), NO_PODS, "secretRef", "getting"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "spec", "refused", "rule", "ask"), CASES, ids=[f"{c[0]}-{c[3]}-{i}" for i, c in
                                                                                 enumerate(CASES)])  # fmt: skip
def test_widening_fields_need_the_right_to_do_it_directly(k8s, users, kind, spec, refused, rule, ask):
    for user, api in users.items():
        message = submit(k8s, api, kind, spec)
        if user in refused.split():
            assert message is not None, f"{user} was allowed {spec}"
            assert f"kubetune rule {rule}: {user} may not" in message, message
            assert ask in message and "To get access" in message, message
        else:
            assert message is None, f"{user} was refused: {message}"


def test_the_plain_spec_is_everyones(k8s, users):
    for api in users.values():
        assert submit(k8s, api, "FineTuneJob", FTJ) is None
        assert submit(k8s, api, "ModelDeployment", MD) is None


def test_an_admins_values_survive_edits_by_others_but_cannot_be_changed_by_them(k8s, users):
    """Unchanged values pass: alice may edit other fields of a job carol set an image on (the operator's
    own finalizer and annotation patches are such edits), not set a new image, service account or secret."""
    spec = with_(FTJ, image="evil.example/miner:1", serviceAccountName="builder",
                 envFrom=[{"secretRef": {"name": "s3-keys"}}])  # fmt: skip
    carol, alice = users["carol"], users["alice"]
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": "set-by-admin"},
        "spec": spec,
    }
    carol.create_namespaced_custom_object(GROUP, VERSION, k8s.ns, "finetunejobs", body)

    def patch(who: client.CustomObjectsApi, change: dict[str, Any]) -> str | None:
        try:
            who.patch_namespaced_custom_object(GROUP, VERSION, k8s.ns, "finetunejobs", "set-by-admin",
                                               {"spec": change})  # fmt: skip
        except ApiException as err:
            assert err.status == 403, err.body
            return str(json.loads(err.body)["message"])
        return None

    assert patch(alice, {"training": {"epochs": 3}}) is None
    alice.patch_namespaced_custom_object(GROUP, VERSION, k8s.ns, "finetunejobs", "set-by-admin",
                                         {"metadata": {"annotations": {"note": "x"}}})  # fmt: skip
    assert "kubetune rule image:" in (patch(alice, {"image": "evil.example/miner:2"}) or "")
    assert "kubetune rule serviceAccountName:" in (patch(alice, {"serviceAccountName": "deployer"}) or "")
    added = [{"secretRef": {"name": "s3-keys"}}, {"secretRef": {"name": "db-password"}}]
    assert "may not pass Secret(s) db-password " in (patch(alice, {"envFrom": added}) or "")
    assert patch(users["bob"], {"image": "evil.example/miner:2"}) is None
