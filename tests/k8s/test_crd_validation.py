"""Bad FineTuneJobs and ModelDeployments are refused by the real apiserver with a message naming the field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

GROUP, VERSION = "kubetune.io", "v1alpha1"

GOOD_FTJ: dict[str, Any] = {
    "baseModel": {"name": "org/tiny-llama"},
    "dataset": {"uri": "pvc://data/support.jsonl"},
    "output": {"uri": "pvc://models/support"},
}

GOOD_MDEP: dict[str, Any] = {
    "baseModel": {"name": "org/tiny-llama"},
    "adapter": {"fineTuneJobRef": {"name": "support"}},
    "canary": {"analysis": {"prometheus": {"address": "http://prometheus:9090"}}},
}


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def try_create(k8s, kind: str, plural: str, spec: dict[str, Any]) -> str | None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": "probe"}, "spec": spec}
    try:
        # Strict field validation, as `kubectl apply` asks for by default.
        k8s.custom.create_namespaced_custom_object(
            GROUP, VERSION, k8s.ns, plural, body, dry_run="All", field_validation="Strict"
        )
    except ApiException as err:
        assert err.status in (400, 422), err.body  # 400: strict decoding (unknown field)
        return str(json.loads(err.body)["message"])
    return None


BAD_FINETUNEJOBS = [
    ("qlora without quantization", {"method": "qlora"}, "method qlora requires spec.quantization"),
    ("quantization without qlora", {"quantization": {"bits": 4}}, "spec.quantization is only valid with method qlora"),
    ("alpha without r", {"lora": {"alpha": 32}}, "lora.alpha requires lora.r"),
    ("empty targetModules", {"lora": {"r": 8, "targetModules": []}}, "spec.lora.targetModules"),
    ("zero maxRowBytes", {"dataset": {"cleaning": {"maxRowBytes": 0}}}, "spec.dataset.cleaning.maxRowBytes"),
    ("lora block on full", {"method": "full", "lora": {"r": 8}}, "spec.lora is only valid with method lora or qlora"),
    ("unknown method", {"method": "dpo"}, 'spec.method: Unsupported value: "dpo"'),
    ("negative gpus", {"resources": {"gpus": -1}}, "spec.resources.gpus: Invalid value: -1"),
    ("validation fraction 1", {"dataset": {"split": {"validation": 1.0}}}, "spec.dataset.split.validation"),
    ("negative test fraction", {"dataset": {"split": {"test": -0.1}}}, "spec.dataset.split.test"),
    ("fractions sum to 1", {"dataset": {"split": {"validation": 0.5, "test": 0.5}}}, "must leave data to train on"),
    ("both name and uri", {"baseModel": {"name": "org/m", "uri": "/models/m"}}, "exactly one of name (hub id) or uri"),
    ("neither name nor uri", {"baseModel": {"name": None, "revision": "main"}}, "exactly one of name (hub id) or uri"),
    ("relative model path", {"baseModel": {"name": None, "uri": "models/m"}}, "spec.baseModel.uri"),
    ("unknown dataset scheme", {"dataset": {"uri": "ftp://x/y"}}, "spec.dataset.uri"),
    ("unknown format", {"dataset": {"uri": "/d", "format": "yaml"}}, 'spec.dataset.format: Unsupported value: "yaml"'),
    (
        "mix without text format",
        {"dataset": {"mix": {"uri": "/g", "fraction": 0.2}}},
        "only valid with dataset.format text",
    ),
    (
        "mix fraction 1",
        {"dataset": {"format": "text", "mix": {"uri": "/g", "fraction": 1}}},
        "spec.dataset.mix.fraction",
    ),
    ("zero learning rate", {"training": {"learningRate": 0}}, "spec.training.learningRate"),
    ("unknown precision", {"training": {"precision": "int8"}}, 'spec.training.precision: Unsupported value: "int8"'),
    ("zero batch size", {"training": {"batchSize": 0}}, "spec.training.batchSize"),
    ("no output", {"output": None}, "spec.output: Required value"),
    ("no dataset", {"dataset": None}, "spec.dataset: Required value"),
    ("bad cron shape", {"schedule": "every day"}, "spec.schedule"),
    (
        "exact match gate above 1",
        {"evaluation": {"gates": {"minExactMatch": 1.5}}},
        "spec.evaluation.gates.minExactMatch",
    ),
    ("unknown field", {"epochs": 3}, 'unknown field "spec.epochs"'),
    ("prompt tuning on lora", {"promptTuning": {"numVirtualTokens": 8}}, "spec.promptTuning is only valid"),
    ("maxChars below minChars", {"dataset": {"cleaning": {"minChars": 10, "maxChars": 5}}}, "cleaning.maxChars"),
    (
        "fsdp with prefix tuning",
        {"method": "prefix", "training": {"distributed": {"strategy": "fsdp"}}},
        "strategy fsdp supports method lora, full or ia3",
    ),
    (
        "fsdp with merged weights",
        {"training": {"distributed": {"strategy": "fsdp"}}, "output": {"uri": "/out", "mergeWeights": True}},
        "output.mergeWeights is not available with training.distributed.strategy fsdp",
    ),
    (
        "more processes than gpus",
        {"resources": {"gpus": 2}, "training": {"distributed": {"processesPerNode": 4}}},
        "processesPerNode cannot exceed resources.gpus",
    ),
    ("unknown strategy", {"training": {"distributed": {"strategy": "zero3"}}}, 'Unsupported value: "zero3"'),
    (
        "envFrom with both refs",
        {"envFrom": [{"secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}]},
        "each envFrom entry needs exactly one of secretRef or configMapRef",
    ),
]


@pytest.mark.parametrize(("case", "patch", "fragment"), BAD_FINETUNEJOBS, ids=[c[0] for c in BAD_FINETUNEJOBS])
def test_bad_finetunejob_rejected(k8s, case, patch, fragment):
    message = try_create(k8s, "FineTuneJob", "finetunejobs", merged(GOOD_FTJ, patch))
    assert message is not None, f"{case}: accepted"
    assert fragment in message, message


def test_table_is_big_enough():
    assert len(BAD_FINETUNEJOBS) >= 15


@pytest.mark.parametrize(
    "patch",
    [
        {},
        {"method": "qlora", "quantization": {}, "lora": {"r": 8, "alpha": 16}},
        {"method": "prefix", "promptTuning": {"numVirtualTokens": 8}},
        {"dataset": {"format": "text", "mix": {"uri": "/g", "fraction": 0.3}}},
        {"baseModel": {"name": None, "uri": "s3://bucket/llama"}, "schedule": "0 3 * * 1"},
        {"resources": {"gpus": 8}, "training": {"distributed": {"strategy": "fsdp", "processesPerNode": 8}}},
        {"resources": {"gpus": 0}, "training": {"distributed": {"processesPerNode": 2}}},
        {"envFrom": [{"secretRef": {"name": "s3-keys"}}, {"configMapRef": {"name": "s3"}, "prefix": "S3_"}]},
    ],
)
def test_good_finetunejob_accepted_with_defaults(k8s, patch):
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": "ok"}}
    body["spec"] = merged(GOOD_FTJ, patch)
    stored = k8s.custom.create_namespaced_custom_object(GROUP, VERSION, k8s.ns, "finetunejobs", body, dry_run="All")
    assert stored["spec"]["method"] in ("lora", "qlora", "prefix")
    assert stored["spec"]["training"]["learningRate"] == 0.0002
    assert stored["spec"]["resources"]["gpuResourceName"] == "nvidia.com/gpu"


BAD_MODELDEPLOYMENTS = [
    ("steps not increasing", {"canary": {"steps": [5, 50, 25]}}, "canary.steps must be strictly increasing"),
    ("duplicate steps", {"canary": {"steps": [10, 10, 100]}}, "canary.steps must be strictly increasing"),
    ("step above 100", {"canary": {"steps": [50, 150]}}, "spec.canary.steps[1]"),
    ("ratio zero", {"canary": {"analysis": {"latencyP99Ratio": 0}}}, "spec.canary.analysis.latencyP99Ratio"),
    ("analysis without prometheus", {"canary": {"analysis": {"prometheus": None}}}, "prometheus.address is required"),
    ("both adapter sources", {"adapter": {"uri": "/a"}}, "exactly one of fineTuneJobRef or uri"),
    ("unknown runtime", {"runtime": "tgi"}, 'spec.runtime: Unsupported value: "tgi"'),
    ("gateway traffic without gateway", {"traffic": "gatewayAPI"}, "traffic gatewayAPI requires spec.gateway"),
    (
        "cache for a uri base model",
        {"baseModel": {"name": None, "uri": "s3://b/m", "cacheUri": "pvc://hf/cache"}},
        "baseModel.cacheUri is the Hugging Face cache of a hub-id",
    ),
    ("cache not on a claim", {"baseModel": {"cacheUri": "/hf"}}, "spec.baseModel.cacheUri"),
    (
        "envFrom with both sources",
        {"envFrom": [{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}]},
        "exactly one of secretRef or configMapRef",
    ),
    (
        "custom query without bounds",
        {"canary": {"analysis": {"queries": [{"name": "q", "query": "up"}]}}},
        "needs min or max",
    ),
]


@pytest.mark.parametrize(("case", "patch", "fragment"), BAD_MODELDEPLOYMENTS, ids=[c[0] for c in BAD_MODELDEPLOYMENTS])
def test_bad_modeldeployment_rejected(k8s, case, patch, fragment):
    message = try_create(k8s, "ModelDeployment", "modeldeployments", merged(GOOD_MDEP, patch))
    assert message is not None, f"{case}: accepted"
    assert fragment in message, message


def test_good_modeldeployment_gets_canary_defaults(k8s):
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "ok"},
        "spec": GOOD_MDEP,
    }
    stored = k8s.custom.create_namespaced_custom_object(GROUP, VERSION, k8s.ns, "modeldeployments", body, dry_run="All")
    assert stored["spec"]["canary"]["steps"] == [5, 25, 50, 100]
    assert stored["spec"]["canary"]["analysis"]["latencyP99Ratio"] == 1.2
    assert stored["spec"]["canary"]["analysis"]["noDataPolicy"] == "pause"
