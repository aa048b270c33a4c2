"""The bad-spec table (tests/support/bad_specs.py) against the real apiserver: every row is refused with a
message naming the field, every good spec is accepted, and the stored object carries the model's defaults.
The same table runs through the shared parser in tests/api/test_bad_specs.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.support.bad_specs import BAD_SPECS, GOOD_FTJ, GOOD_MDEP, GOOD_SPECS, PLURALS, Case, spec_of

GROUP, VERSION = "kubetune.io", "v1alpha1"


def dry_run_create(k8s, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": "probe"}, "spec": spec}
    # Strict field validation, as `kubectl apply` asks for by default.
    return k8s.custom.create_namespaced_custom_object(
        GROUP, VERSION, k8s.ns, PLURALS[kind], body, dry_run="All", field_validation="Strict"
    )


@pytest.mark.parametrize("case", BAD_SPECS, ids=[f"{c.kind}-{c.id}" for c in BAD_SPECS])
def test_bad_spec_rejected_by_the_apiserver(k8s, case: Case):
    with pytest.raises(ApiException) as err:
        dry_run_create(k8s, case.kind, spec_of(case))
    assert err.value.status in (400, 422), err.value.body  # 400: strict decoding (unknown field)
    message = str(json.loads(err.value.body)["message"])
    assert case.names in message, message


@pytest.mark.parametrize(("name", "kind", "spec"), GOOD_SPECS, ids=[g[0] for g in GOOD_SPECS])
def test_good_spec_accepted_by_the_apiserver(k8s, name: str, kind: str, spec: dict[str, Any]):
    stored = dry_run_create(k8s, kind, spec)
    assert stored["spec"]["resources"]["gpuResourceName"] == "nvidia.com/gpu"  # a schema default, applied


def test_good_finetunejob_gets_the_model_defaults(k8s):
    stored = dry_run_create(k8s, "FineTuneJob", GOOD_FTJ)["spec"]
    assert stored["method"] == "lora" and stored["training"]["learningRate"] == 0.0002
    assert stored["dataset"]["split"] == {"validation": 0.1, "test": 0.1, "seed": 42}
    # Defaults the CRD must not store (they would change every stored spec's run hash on upgrade).
    assert "maxRowBytes" not in stored["dataset"]["cleaning"] and "lora" not in stored


def test_good_modeldeployment_gets_canary_defaults(k8s):
    stored = dry_run_create(k8s, "ModelDeployment", GOOD_MDEP)["spec"]
    assert stored["canary"]["steps"] == [5, 25, 50, 100]
    assert stored["canary"]["analysis"]["latencyP99Ratio"] == 1.2
    assert stored["canary"]["analysis"]["noDataPolicy"] == "pause"
