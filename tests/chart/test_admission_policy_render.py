"""The chart's ValidatingAdmissionPolicies as rendered: on by default, one per kind with its binding, the
allow-lists from values baked into the CEL, and the schema guarding the values. What the policies do is
tested against the real apiserver in tests/k8s/test_admission_policy.py."""

from __future__ import annotations

import pytest

from tests.chart.helm import HelmError, find, one, render

POLICIES = ("kubetune-finetunejobs", "kubetune-modeldeployments")


def policy(objects: list[dict], name: str) -> dict:
    return one(objects, "ValidatingAdmissionPolicy", name)


def rule(p: dict, name: str) -> dict:
    """The validation whose message names `kubetune rule <name>:`."""
    found = [v for v in p["spec"]["validations"] if f'"kubetune rule {name}: "' in v["messageExpression"]]
    assert len(found) == 1, [v["messageExpression"][:40] for v in p["spec"]["validations"]]
    return found[0]


def test_policies_and_bindings_are_on_by_default() -> None:
    objects = render()
    for name in POLICIES:
        p = policy(objects, name)
        assert p["spec"]["failurePolicy"] == "Fail"
        (resource_rule,) = p["spec"]["matchConstraints"]["resourceRules"]
        assert resource_rule["apiGroups"] == ["kubetune.io"]
        assert resource_rule["operations"] == ["CREATE", "UPDATE"]
        assert resource_rule["resources"] == [name.removeprefix("kubetune-")]
        binding = one(objects, "ValidatingAdmissionPolicyBinding", name)
        assert binding["spec"] == {"policyName": name, "validationActions": ["Deny"]}
        assert all(v["reason"] == "Forbidden" for v in p["spec"]["validations"])


def test_each_kind_has_its_rules() -> None:
    objects = render()
    ftj, md = (policy(objects, n) for n in POLICIES)
    for name in ("image", "serviceAccountName", "trustRemoteCode", "secretRef", "configMapRef"):
        rule(ftj, name)
    for name in ("image", "trustRemoteCode", "secretRef", "configMapRef"):
        rule(md, name)
    assert not [v for v in md["spec"]["validations"] if "serviceAccountName" in v["messageExpression"]]
    assert "tokenSecretRef" in next(v["expression"] for v in ftj["spec"]["variables"] if v["name"] == "secretRefs")
    assert "--(trust[-_]remote[-_]code|config)" in str(md["spec"]["variables"])


def test_allow_lists_come_from_values_and_include_the_charts_own_images() -> None:
    objects = render(
        "defaults",
        "--set", "admissionPolicy.allowedImagePrefixes={registry.example.com/ml/}",
        "--set", "admissionPolicy.allowedServiceAccounts={shared-trainer}",
        "--set", "admissionPolicy.trustRemoteCodeModels={trusted-org/}",
    )  # fmt: skip
    ftj, md = (policy(objects, n) for n in POLICIES)
    image = rule(ftj, "image")["expression"]
    assert '["registry.example.com/ml/","ghcr.io/kubetune/trainer:","ghcr.io/kubetune/trainer@"]' in image
    assert "variables.canCreatePods" in image
    md_image = rule(md, "image")["expression"]
    assert '"ghcr.io/kubetune/trainer:"' in md_image and '"vllm/vllm-openai@"' in md_image
    sa = rule(ftj, "serviceAccountName")["expression"]
    assert '["shared-trainer","kubetune-trainer"]' in sa and "check('impersonate')" in sa
    assert '["trusted-org/"]' in rule(ftj, "trustRemoteCode")["expression"]
    assert "admissionPolicy.allowedImagePrefixes" in rule(ftj, "image")["messageExpression"]


def test_custom_images_are_the_allowed_defaults() -> None:
    ftj = policy(render("custom-images"), "kt-finetunejobs")
    assert '"registry.example.com/kubetune/trainer:"' in rule(ftj, "image")["expression"]
    assert '"ml-trainer"' in rule(ftj, "serviceAccountName")["expression"]


def test_watch_namespace_binds_the_policy_there_only() -> None:
    binding = one(render("namespaced"), "ValidatingAdmissionPolicyBinding", "kubetune-finetunejobs")
    selector = binding["spec"]["matchResources"]["namespaceSelector"]
    assert selector == {"matchLabels": {"kubernetes.io/metadata.name": "ml-team"}}


def test_policy_can_be_turned_off_or_made_to_warn() -> None:
    objects = render("defaults", "--set", "admissionPolicy.enabled=false")
    assert not find(objects, "ValidatingAdmissionPolicy") and not find(objects, "ValidatingAdmissionPolicyBinding")
    warn = render("defaults", "--set", "admissionPolicy.validationActions={Warn,Audit}")
    assert one(warn, "ValidatingAdmissionPolicyBinding", POLICIES[0])["spec"]["validationActions"] == ["Warn", "Audit"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "admissionPolicy.validationActions={Deny,Warn}"], "validationActions"),
        (["--set", "admissionPolicy.validationActions={Block}"], "validationActions"),
        (["--set", "admissionPolicy.allowedServiceAccounts={Not_An_SA}"], "allowedServiceAccounts"),
        (["--set", "admissionPolicy.bogus=1"], "additional properties 'bogus' not allowed"),
    ],
)
def test_schema_rejects_bad_policy_values(args: list[str], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        render("defaults", *args)
