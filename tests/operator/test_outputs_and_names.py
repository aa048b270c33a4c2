"""Names and locations that must not be confused: label values, output ownership, location normalisation (pure)."""

from __future__ import annotations

import pytest

from kubetune_operator.builders.labels import label_value
from kubetune_operator.builders.names import trainer_job_name
from kubetune_operator.builders.trainer_job import build_trainer_job, run_labels
from kubetune_operator.settings import Settings
from kubetune_operator.specs import (
    FineTuneJobSpec,
    OutputClaim,
    normalize_location,
    output_claim,
    output_owner,
    overlaps,
)

LONG_A = "a-very-long-finetunejob-name-for-the-customer-support-assistant-v1-alpha"  # 72 characters
LONG_B = "a-very-long-finetunejob-name-for-the-customer-support-assistant-v1-bravo"


def test_long_names_sharing_63_characters_get_different_label_values():
    assert LONG_A[:63] == LONG_B[:63] and len(LONG_A) > 63
    a, b = label_value(LONG_A), label_value(LONG_B)
    assert a != b and len(a) <= 63 and len(b) <= 63
    assert a[0].isalnum() and a[-1].isalnum()
    assert label_value("support") == "support" and label_value("x" * 63) == "x" * 63


def test_every_name_and_label_of_two_long_finetunejobs_differs(ftj):
    jobs = []
    for name, uid in ((LONG_A, "uid-a"), (LONG_B, "uid-b")):
        body = {**ftj, "metadata": {**ftj["metadata"], "name": name, "uid": uid}}
        jobs.append(build_trainer_job(FineTuneJobSpec.from_dict(body["spec"]), body, 1, Settings()))
        assert run_labels(body, 1)["kubetune.io/finetunejob"] == label_value(name)
    a, b = jobs
    assert a["metadata"]["name"] != b["metadata"]["name"]
    assert a["metadata"]["name"] == trainer_job_name(LONG_A, 1) and len(a["metadata"]["name"]) <= 63
    for key in ("kubetune.io/finetunejob", "app.kubernetes.io/instance"):
        assert a["metadata"]["labels"][key] != b["metadata"]["labels"][key], key
        assert a["spec"]["template"]["metadata"]["labels"][key] != b["spec"]["template"]["metadata"]["labels"][key]


@pytest.mark.parametrize(
    ("uri", "normal"),
    [
        ("s3://bucket/runs/", "s3://bucket/runs"),
        ("s3://bucket//runs/./a", "s3://bucket/runs/a"),
        ("pvc://claim/x/../y/", "pvc://claim/y"),
        ("pvc://claim", "pvc://claim"),
        ("/models//out/", "/models/out"),
        ("//models/out", "/models/out"),
        ("/", "/"),
    ],
)
def test_normalize_location(uri, normal):
    assert normalize_location(uri) == normal


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("/models/out", "/models/out/", True),
        ("/models/out", "/models/out/run-1", True),  # one inside the other: run-N dirs would collide
        ("/models/out", "/models/output", False),  # a shared prefix is not a shared place
        ("s3://b/x", "s3://c/x", False),
        ("s3://b/x", "pvc://b/x", False),
    ],
)
def test_overlaps(a, b, expected):
    assert overlaps(a, b) is expected and overlaps(b, a) is expected


def claim(name: str, uri: str, created: str, started: bool = False, ns: str = "ml") -> OutputClaim:
    return OutputClaim(ns, name, f"uid-{name}", normalize_location(uri), created, started)


def test_the_oldest_finetunejob_owns_an_output_whatever_order_they_are_seen_in():
    old, new = claim("old", "/models/out", "2026-01-01T00:00:00Z"), claim("new", "/models/out/", "2026-01-02T00:00:00Z")
    for seen in ([old, new], [new, old]):
        assert output_owner(new, seen) == old
        assert output_owner(old, seen) is None


def test_a_started_finetunejob_keeps_its_output_over_an_older_newcomer():
    running = claim("running", "s3://b/runs", "2026-01-02T00:00:00Z", started=True)
    older = claim("older", "s3://b/runs/", "2026-01-01T00:00:00Z")
    assert output_owner(older, [older, running]) == running
    assert output_owner(running, [older, running]) is None


def test_pvc_and_path_outputs_are_per_namespace_and_s3_outputs_are_global():
    for uri in ("pvc://models/out", "/models/out"):
        a, b = claim("a", uri, "t1", ns="one"), claim("b", uri, "t2", ns="two")
        assert output_owner(b, [a, b]) is None
    a, b = claim("a", "s3://b/out", "t1", ns="one"), claim("b", "s3://b/out", "t2", ns="two")
    assert output_owner(b, [a, b]) == a


def test_output_claim_from_a_body(ftj):
    ftj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    ftj["spec"]["output"]["uri"] = "pvc://models//support-bot/"
    c = output_claim(ftj)
    assert c == OutputClaim("ml", "support-bot", "uid-1", "pvc://models/support-bot", "2026-01-01T00:00:00Z", False)
    ftj["status"] = {"run": 2}
    assert output_claim(ftj).started is True
