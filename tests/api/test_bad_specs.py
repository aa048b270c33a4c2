"""The shared parser rejects every row of the bad-spec table with a message naming the field, and
accepts the good specs (the same table runs through the real apiserver in tests/k8s/test_crd_validation.py)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from kubetune_api import SpecError, crd, parse_finetunejob, parse_modeldeployment
from tests.support.bad_specs import BAD_SPECS, FTJ, GOOD_SPECS, Case, spec_of

PARSERS = {FTJ: parse_finetunejob, "ModelDeployment": parse_modeldeployment}


def test_the_table_covers_both_kinds():
    kinds = [c.kind for c in BAD_SPECS]
    assert len(BAD_SPECS) >= 40 and kinds.count(FTJ) >= 20 and kinds.count("ModelDeployment") >= 15
    assert len({(c.kind, c.id) for c in BAD_SPECS}) == len(BAD_SPECS), "row ids must be unique per kind"


@pytest.mark.parametrize("case", BAD_SPECS, ids=[f"{c.kind}-{c.id}" for c in BAD_SPECS])
def test_bad_spec_rejected_by_the_parser(case: Case):
    with pytest.raises(SpecError) as err:
        PARSERS[case.kind](spec_of(case))
    assert case.names in str(err.value), str(err.value)


@pytest.mark.parametrize(("name", "kind", "spec"), GOOD_SPECS, ids=[g[0] for g in GOOD_SPECS])
def test_good_spec_accepted_by_the_parser(name: str, kind: str, spec: dict[str, Any]):
    PARSERS[kind](spec)


def test_defaults_live_in_the_model():
    ftj = parse_finetunejob(GOOD_SPECS[2][2])
    assert (ftj.method, ftj.training.learning_rate, ftj.lora.r, ftj.lora.scaling) == ("lora", 2e-4, 16, 32.0)
    assert ftj.base_model.token_secret_ref is None and ftj.dataset.cleaning.max_row_bytes == 8 << 20
    md = parse_modeldeployment(GOOD_SPECS[3][2])
    assert md.canary.steps == [5, 25, 50, 100] and md.canary.analysis is not None
    assert md.canary.analysis.latency_p99_ratio == 1.2


def test_the_api_package_imports_neither_torch_nor_kubernetes():
    code = (
        "import sys, kubetune_api, kubetune_api.crd; sys.exit(bool({'torch', 'kubernetes', 'kopf'} & set(sys.modules)))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def _rule_messages(node: dict[str, Any]) -> list[str]:
    found = [v["message"] for v in node.get("x-kubernetes-validations", [])]
    for child in [*(node.get("properties") or {}).values(), *([node["items"]] if "items" in node else [])]:
        found += _rule_messages(child)
    return found


def test_every_cel_rule_has_a_row_that_breaks_it():
    """A rule added to a model without a row in the table fails here: the table is what keeps the CEL and
    the Python spelling of each rule saying the same thing."""
    said = set()
    for case in BAD_SPECS:
        with pytest.raises(SpecError) as err:
            PARSERS[case.kind](spec_of(case))
        said.add(str(err.value))
    for resource in crd.RESOURCES:
        for message in _rule_messages(crd.crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
            assert any(message in text for text in said), f"{resource.kind}: no row breaks {message!r}"
