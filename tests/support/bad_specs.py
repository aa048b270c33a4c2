"""One table of bad specs, run through both the real apiserver (tests/k8s/test_crd_validation.py) and the
shared parser (tests/api/test_bad_specs.py): every row must be rejected by both, with a message that
contains the row's `names` (the field, or the rule's words about it).

A row is a patch on a known-good spec: a `None` value deletes that key. Good specs (`GOOD_SPECS`) must be
accepted by both. Operator-only checks (cron semantics, overlapping locations) are not here: the
apiserver cannot make them (tests/operator/test_specs_and_settings.py has those).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple

import yaml

FTJ, MDEP = "FineTuneJob", "ModelDeployment"
PLURALS = {FTJ: "finetunejobs", MDEP: "modeldeployments"}
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

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
GOOD = {FTJ: GOOD_FTJ, MDEP: GOOD_MDEP}


class Case(NamedTuple):
    id: str
    kind: str
    patch: dict[str, Any]
    names: str  # what both rejections must say: the field's path, or the rule's words about it


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


def spec_of(case: Case) -> dict[str, Any]:
    return merged(GOOD[case.kind], case.patch)


_DPO: dict[str, Any] = {"method": "dpo", "dataset": {"format": "preference"}}


def _captures(captures: dict[str, Any]) -> dict[str, Any]:
    """spec.dataset with captures instead of the good spec's uri."""
    return {"uri": None, "captures": captures}


_ORPO: dict[str, Any] = {"method": "orpo", "dataset": {"format": "preference"}}
# method merge (issue 12): a patch onto GOOD_FTJ made a merge of two adapters.
_TWO = [{"fineTuneJobRef": {"name": "a"}}, {"uri": "pvc://models/b/run-1/artifact", "weight": 0.5}]
_MERGE = {"method": "merge", "merge": {"sources": _TWO}}


def _merge(patch: dict[str, Any]) -> dict[str, Any]:
    return merged(_MERGE, {"merge": merged(_MERGE["merge"], patch.pop("merge", {})), **patch})


_MERGE_ROWS: list[tuple[str, dict[str, Any], str]] = [
    ("merge without spec.merge", {"method": "merge"}, "method merge requires spec.merge"),
    ("spec.merge without method merge", {"merge": {"sources": _TWO}}, "spec.merge is only valid with method merge"),
    ("merge of one source", _merge({"merge": {"sources": _TWO[:1]}}), "spec.merge.sources"),
    ("merge of nine sources", _merge({"merge": {"sources": _TWO * 4 + _TWO[:1]}}), "spec.merge.sources"),
    ("merge source with both", _merge({"merge": {"sources": [{**_TWO[0], "uri": "/a"}, _TWO[1]]}}), "exactly one of"),
    ("merge source with neither", _merge({"merge": {"sources": [{"weight": 1.0}, _TWO[1]]}}), "exactly one of"),
    ("merge source climbs out", _merge({"merge": {"sources": [{"uri": "pvc://m/../x"}, _TWO[1]]}}), "sources[0].uri"),
    ("merge source not a location", _merge({"merge": {"sources": [{"uri": "adapter"}, _TWO[1]]}}), "sources[0].uri"),
    ("unknown combination", _merge({"merge": {"combination": "mean"}}), "spec.merge.combination"),
    ("slerp of three", _merge({"merge": {"combination": "slerp", "sources": [*_TWO, _TWO[0]]}}), "exactly 2"),
    ("slerp with weights", _merge({"merge": {"combination": "slerp"}}), "weight does not apply to combination slerp"),
    ("density with linear", _merge({"merge": {"density": 0.5}}), "merge.density is only valid"),
    ("density 0", _merge({"merge": {"combination": "ties", "density": 0}}), "spec.merge.density"),
    ("density above 1", _merge({"merge": {"combination": "dare_ties", "density": 1.5}}), "spec.merge.density"),
    (
        "majoritySign with dare_linear",
        _merge({"merge": {"combination": "dare_linear", "majoritySign": "total"}}),
        "merge.majoritySign is only valid",
    ),
    ("unknown majoritySign", _merge({"merge": {"combination": "ties", "majoritySign": "mean"}}), "majoritySign"),
    ("t with svd", _merge({"merge": {"combination": "svd", "t": 0.3}}), "merge.t is only valid"),
    ("t above 1", _merge({"merge": {"combination": "slerp", "sources": _TWO[:1] * 2, "t": 2}}), "spec.merge.t"),
    ("rank with linear", _merge({"merge": {"rank": 8}}), "merge.rank does not apply"),
    ("merge with lora", _merge({"lora": {"r": 8}}), "spec.lora is only valid with method lora or qlora"),
    ("merge with promptTuning", _merge({"promptTuning": {}}), "spec.promptTuning is only valid"),
    ("merge with quantization", _merge({"quantization": {}}), "spec.quantization is only valid with method qlora"),
    ("merge with maxSteps", _merge({"training": {"maxSteps": 10}}), "method merge trains nothing"),
    ("merge with distributed", _merge({"training": {"distributed": {}}}), "method merge trains nothing"),
    ("merge on two nodes", _merge({"resources": {"nodes": 2}}), "resources.nodes must be 1"),
    ("merge with initFrom", _merge({"initFrom": {"uri": "/models/a"}}), "spec.initFrom does not apply to method merge"),
]

_FTJ_ROWS: list[tuple[str, dict[str, Any], str]] = [
    ("qlora without quantization", {"method": "qlora"}, "method qlora requires spec.quantization"),
    ("quantization without qlora", {"quantization": {"bits": 4}}, "spec.quantization is only valid with method qlora"),
    ("qlora without a gpu", {"method": "qlora", "quantization": {}, "resources": {"gpus": 0}}, "spec.resources.gpus"),
    ("alpha without r", {"lora": {"alpha": 32}}, "lora.alpha requires lora.r"),
    ("empty targetModules", {"lora": {"r": 8, "targetModules": []}}, "spec.lora.targetModules"),
    ("lora dropout 1", {"lora": {"dropout": 1}}, "spec.lora.dropout"),
    ("lora rank 0", {"lora": {"r": 0}}, "spec.lora.r"),
    ("lora block on ia3", {"method": "ia3", "lora": {"r": 8}}, "spec.lora is only valid with method lora or qlora"),
    ("dataset without uri", {"dataset": {"uri": None, "format": "chat"}}, "spec.dataset.uri"),
    ("dataset with uri and captures", {"dataset": {"captures": {"uri": "/c"}}}, "spec.dataset.captures"),
    (
        "captures with ref and uri",
        {"dataset": _captures({"uri": "/c", "modelDeploymentRef": {"name": "m"}})},
        "exactly one of modelDeploymentRef or uri",
    ),
    ("captures with neither", {"dataset": _captures({})}, "spec.dataset.captures"),
    ("captures minRating 0", {"dataset": _captures({"uri": "/c", "minRating": 0})}, "spec.dataset.captures.minRating"),
    ("captures minRating 6", {"dataset": _captures({"uri": "/c", "minRating": 6})}, "spec.dataset.captures.minRating"),
    ("captures since in days", {"dataset": _captures({"uri": "/c", "since": "7d"})}, "spec.dataset.captures.since"),
    ("captures bad version", {"dataset": _captures({"uri": "/c", "versions": ["v 1"]})}, "captures.versions"),
    ("captures bad uri", {"dataset": _captures({"uri": "hf://org/x"})}, "spec.dataset.captures.uri"),
    ("captures as text", {"dataset": {**_captures({"uri": "/c"}), "format": "text"}}, "spec.dataset.captures"),
    ("maxChars 0", {"dataset": {"cleaning": {"maxChars": 0}}}, "spec.dataset.cleaning.maxChars"),
    ("unknown scheduler", {"training": {"scheduler": "step"}}, "spec.training.scheduler"),
    ("zero maxRowBytes", {"dataset": {"cleaning": {"maxRowBytes": 0}}}, "spec.dataset.cleaning.maxRowBytes"),
    ("lora block on full", {"method": "full", "lora": {"r": 8}}, "spec.lora is only valid with method lora or qlora"),
    ("unknown method", {"method": "rlhf"}, "spec.method"),
    ("negative gpus", {"resources": {"gpus": -1}}, "spec.resources.gpus"),
    ("cpu not a quantity", {"resources": {"cpu": "lots"}}, "spec.resources.cpu"),
    ("unknown toleration operator", {"resources": {"tolerations": [{"operator": "In"}]}}, "tolerations[0].operator"),
    ("validation fraction 1", {"dataset": {"split": {"validation": 1.0}}}, "spec.dataset.split.validation"),
    ("negative test fraction", {"dataset": {"split": {"test": -0.1}}}, "spec.dataset.split.test"),
    ("fractions sum to 1", {"dataset": {"split": {"validation": 0.5, "test": 0.5}}}, "split.validation + split.test"),
    ("both name and uri", {"baseModel": {"name": "org/m", "uri": "/models/m"}}, "baseModel needs exactly one of name"),
    ("neither name nor uri", {"baseModel": {"name": None, "revision": "main"}}, "baseModel needs exactly one of name"),
    ("relative model path", {"baseModel": {"name": None, "uri": "models/m"}}, "spec.baseModel.uri"),
    ("token secret without a name", {"baseModel": {"tokenSecretRef": {"key": "t"}}}, "tokenSecretRef.name"),
    ("unknown dataset scheme", {"dataset": {"uri": "ftp://x/y"}}, "spec.dataset.uri"),
    ("unknown format", {"dataset": {"uri": "/d", "format": "yaml"}}, "spec.dataset.format"),
    ("mix without text format", {"dataset": {"mix": {"uri": "/g", "fraction": 0.2}}}, "spec.dataset.mix"),
    (
        "mix fraction 1",
        {"dataset": {"format": "text", "mix": {"uri": "/g", "fraction": 1}}},
        "spec.dataset.mix.fraction",
    ),
    (
        "mix fraction 0",
        {"dataset": {"format": "text", "mix": {"uri": "/g", "fraction": 0}}},
        "spec.dataset.mix.fraction",
    ),
    ("mix without fraction", {"dataset": {"format": "text", "mix": {"uri": "/g"}}}, "spec.dataset.mix.fraction"),
    ("zero learning rate", {"training": {"learningRate": 0}}, "spec.training.learningRate"),
    ("learning rate above 1", {"training": {"learningRate": 2}}, "spec.training.learningRate"),
    ("fractional epochs", {"training": {"epochs": 1.5}}, "spec.training.epochs"),
    ("maxSeqLength below 16", {"training": {"maxSeqLength": 8}}, "spec.training.maxSeqLength"),
    ("unknown precision", {"training": {"precision": "int8"}}, "spec.training.precision"),
    ("zero batch size", {"training": {"batchSize": 0}}, "spec.training.batchSize"),
    ("batch size as a string", {"training": {"batchSize": "8"}}, "spec.training.batchSize"),
    ("packing as a string", {"training": {"packing": "yes"}}, "spec.training.packing"),
    ("layerwise decay above 1", {"training": {"layerwiseLrDecay": 1.5}}, "spec.training.layerwiseLrDecay"),
    ("negative patience", {"training": {"earlyStopping": {"patience": -1}}}, "spec.training.earlyStopping.patience"),
    ("no output", {"output": None}, "spec.output"),
    ("no dataset", {"dataset": None}, "spec.dataset"),
    ("bad cron shape", {"schedule": "every day"}, "spec.schedule"),
    ("exact match gate above 1", {"evaluation": {"gates": {"minExactMatch": 1.5}}}, "evaluation.gates.minExactMatch"),
    ("unknown metric", {"evaluation": {"metrics": ["bleu"]}}, "spec.evaluation.metrics[0]"),
    (
        "perplexity gate without the metric",
        {"evaluation": {"metrics": ["exactMatch"], "gates": {"maxPerplexity": 10}}},
        "evaluation.gates.maxPerplexity needs perplexity",
    ),
    (
        "exact-match gate without the metric",
        {"evaluation": {"metrics": ["perplexity"], "gates": {"minExactMatch": 0.5}}},
        "evaluation.gates.minExactMatch needs exactMatch",
    ),
    (
        "judge with url and ref",
        {"evaluation": {"judge": {"url": "http://j", "modelDeploymentRef": {"name": "j"}}}},
        "judge needs exactly one of url or modelDeploymentRef",
    ),
    (
        "judge with neither",
        {"evaluation": {"judge": {"rubric": "be fair"}}},
        "exactly one of url or modelDeploymentRef",
    ),
    ("judge url not http", {"evaluation": {"judge": {"url": "ftp://judge"}}}, "spec.evaluation.judge.url"),
    (
        "judge baseline unknown",
        {"evaluation": {"judge": {"url": "http://j", "baseline": "stable"}}},
        "spec.evaluation.judge.baseline",
    ),
    (
        "judge maxPrompts 0",
        {"evaluation": {"judge": {"url": "http://j", "maxPrompts": 0}}},
        "spec.evaluation.judge.maxPrompts",
    ),
    (
        "judge maxPrompts too many",
        {"evaluation": {"judge": {"url": "http://j", "maxPrompts": 1001}}},
        "spec.evaluation.judge.maxPrompts",
    ),
    (
        "judge key without secret name",
        {"evaluation": {"judge": {"url": "http://j", "apiKeySecretRef": {"key": "k"}}}},
        "spec.evaluation.judge.apiKeySecretRef.name",
    ),
    (
        "win-rate gate without judge",
        {"evaluation": {"gates": {"minJudgeWinRate": 0.5}}},
        "minJudgeWinRate needs evaluation.judge",
    ),
    (
        "win-rate gate above 1",
        {"evaluation": {"judge": {"url": "http://j"}, "gates": {"minJudgeWinRate": 1.5}}},
        "spec.evaluation.gates.minJudgeWinRate",
    ),
    (
        "regex check without pattern",
        {"evaluation": {"checks": [{"name": "r", "type": "regex"}]}},
        "type regex needs a pattern",
    ),
    (
        "jsonValid check with pattern",
        {"evaluation": {"checks": [{"name": "j", "type": "jsonValid", "pattern": "x"}]}},
        "pattern is only for types regex and contains",
    ),
    (
        "unknown check type",
        {"evaluation": {"checks": [{"name": "b", "type": "bleu"}]}},
        "spec.evaluation.checks[0].type",
    ),
    (
        "check min above 1",
        {"evaluation": {"checks": [{"name": "j", "type": "jsonValid", "min": 2}]}},
        "spec.evaluation.checks[0].min",
    ),
    (
        "check name with dot",
        {"evaluation": {"checks": [{"name": "a.b", "type": "jsonValid"}]}},
        "spec.evaluation.checks[0].name",
    ),
    (
        "duplicate check names",
        {"evaluation": {"checks": [{"name": "a", "type": "jsonValid"}, {"name": "a", "type": "exactMatch"}]}},
        "each name may appear once",
    ),
    ("unknown field", {"epochs": 3}, "spec.epochs"),
    # spec.tracking (MLflow)
    ("tracking uri not http", {"tracking": {"mlflow": {"trackingUri": "mlflow:5000"}}}, "tracking.mlflow.trackingUri"),
    ("tracking uri file", {"tracking": {"mlflow": {"trackingUri": "file:///mlruns"}}}, "tracking.mlflow.trackingUri"),
    ("registered model with a slash", {"tracking": {"mlflow": {"registeredModel": "a/b"}}}, "registeredModel"),
    ("empty experiment", {"tracking": {"mlflow": {"experiment": ""}}}, "spec.tracking.mlflow.experiment"),
    ("credentials without a name", {"tracking": {"mlflow": {"credentialsSecretRef": {}}}}, "credentialsSecretRef.name"),
    ("unknown tracking field", {"tracking": {"mlflow": {"uri": "http://m:5000"}}}, "spec.tracking.mlflow.uri"),
    ("unknown nested field", {"lora": {"rank": 8}}, "spec.lora.rank"),
    ("prompt tuning on lora", {"promptTuning": {"numVirtualTokens": 8}}, "spec.promptTuning is only valid"),
    ("maxChars below minChars", {"dataset": {"cleaning": {"minChars": 10, "maxChars": 5}}}, "cleaning.maxChars"),
    (
        "merged weights with prompt tuning",
        {"method": "prompt", "output": {"mergeWeights": True}},
        "spec.output.mergeWeights is not available with method prefix or prompt",
    ),
    (
        "fsdp with prefix tuning",
        {"method": "prefix", "training": {"distributed": {"strategy": "fsdp"}}},
        "strategy fsdp supports method lora, full or ia3",
    ),
    (
        "fsdp with merged weights",
        {"training": {"distributed": {"strategy": "fsdp"}}, "output": {"mergeWeights": True}},
        "output.mergeWeights is not available with training.distributed.strategy fsdp",
    ),
    (
        "more processes than gpus",
        {"resources": {"gpus": 2}, "training": {"distributed": {"processesPerNode": 4}}},
        "training.distributed.processesPerNode",
    ),
    ("zero processes", {"training": {"distributed": {"processesPerNode": 0}}}, "training.distributed.processesPerNode"),
    ("unknown strategy", {"training": {"distributed": {"strategy": "zero3"}}}, "spec.training.distributed.strategy"),
    # Multi-node (issue 15).
    ("cpu gang without gloo", {"resources": {"nodes": 2, "gpus": 0}}, "resources.nodes > 1 needs resources.gpus"),
    (
        "cpu gang with nccl",
        {"resources": {"nodes": 2, "gpus": 0}, "training": {"distributed": {"backend": "nccl"}}},
        "training.distributed.backend nccl needs resources.gpus",
    ),
    ("zero nodes", {"resources": {"nodes": 0}}, "spec.resources.nodes"),
    ("too many nodes", {"resources": {"nodes": 65}}, "spec.resources.nodes"),
    ("unknown engine", {"training": {"distributed": {"engine": "mpiJob"}}}, "spec.training.distributed.engine"),
    ("rendezvous port too low", {"training": {"distributed": {"rendezvousPort": 80}}}, "rendezvousPort"),
    ("socket interface with a space", {"training": {"distributed": {"socketInterface": "eth0 x"}}}, "socketInterface"),
    (
        "envFrom with both refs",
        {"envFrom": [{"secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}]},
        "each envFrom entry needs exactly one of secretRef or configMapRef",
    ),
    # A pvc:// path cannot leave its claim (issue 11): '..' segments or a '/' right after the claim.
    ("dataset climbs out of its claim", {"dataset": {"uri": "pvc://data/../../etc/passwd"}}, "spec.dataset.uri"),
    ("dataset path ends in ..", {"dataset": {"uri": "pvc://data/a/.."}}, "spec.dataset.uri"),
    ("dataset absolute after claim", {"dataset": {"uri": "pvc://data//etc/passwd"}}, "spec.dataset.uri"),
    ("model climbs out of its claim", {"baseModel": {"name": None, "uri": "pvc://m/x/../../y"}}, "spec.baseModel.uri"),
    (
        "mix climbs out of its claim",
        {"dataset": {"format": "text", "mix": {"uri": "pvc://g/../h", "fraction": 0.1}}},
        "spec.dataset.mix.uri",
    ),
    ("golden set climbs out", {"evaluation": {"goldenDatasetUri": "pvc://d/../x"}}, "spec.evaluation.goldenDatasetUri"),
    ("output climbs out of its claim", {"output": {"uri": "pvc://models/../other"}}, "spec.output.uri"),
    ("image with a space", {"image": "ghcr.io/x y"}, "spec.image"),
    ("image with a shell command", {"image": "trainer:1;rm -rf /"}, "spec.image"),
    ("image with an upper-case repository", {"image": "ghcr.io/Org/trainer"}, "spec.image"),
    # Preference tuning (dpo, orpo).
    ("dpo without pairs", {"method": "dpo"}, "spec.dataset.format must be preference"),
    ("pairs without dpo", {"dataset": {"format": "preference"}}, "spec.dataset.format preference is only valid"),
    ("preference block on lora", {"preference": {"beta": 0.2}}, "spec.preference is only valid with method dpo"),
    ("beta 0", {**_DPO, "preference": {"beta": 0}}, "spec.preference.beta"),
    ("unknown loss type", {**_DPO, "preference": {"lossType": "kto"}}, "spec.preference.lossType"),
    ("label smoothing above 0.5", {**_DPO, "preference": {"labelSmoothing": 0.6}}, "spec.preference.labelSmoothing"),
    (
        "label smoothing with ipo",
        {**_DPO, "preference": {"lossType": "ipo", "labelSmoothing": 0.1}},
        "preference.labelSmoothing is only valid with preference.lossType sigmoid",
    ),
    ("orpo lambda 0", {**_ORPO, "preference": {"orpoLambda": 0}}, "spec.preference.orpoLambda"),
    ("unknown policy", {**_DPO, "preference": {"policy": "qlora"}}, "spec.preference.policy"),
    (
        "lora block on full-policy dpo",
        {**_DPO, "preference": {"policy": "full"}, "lora": {"r": 8}},
        "spec.lora is only valid with method lora or qlora",
    ),
    (
        "preference gate without the metric",
        {**_DPO, "evaluation": {"gates": {"minPreferenceAccuracy": 0.6}}},
        "evaluation.gates.minPreferenceAccuracy needs preferenceAccuracy",
    ),
    (
        "preference gate above 1",
        {**_DPO, "evaluation": {"metrics": ["preferenceAccuracy"], "gates": {"minPreferenceAccuracy": 1.5}}},
        "evaluation.gates.minPreferenceAccuracy",
    ),
    (
        "preference metric on lora",
        {"evaluation": {"metrics": ["preferenceAccuracy"]}},
        "evaluation.metrics preferenceAccuracy is only valid with method dpo or orpo",
    ),
    *_MERGE_ROWS,
    # stages: spec.initFrom
    (
        "initFrom with both sources",
        {"initFrom": {"fineTuneJobRef": {"name": "cpt"}, "uri": "/models/cpt/run-1"}},
        "initFrom needs exactly one of fineTuneJobRef or uri",
    ),
    ("initFrom with neither source", {"initFrom": {}}, "initFrom needs exactly one of fineTuneJobRef or uri"),
    (
        "rerunOnParentSuccess without a parent",
        {"initFrom": {"uri": "/models/cpt/run-1", "rerunOnParentSuccess": True}},
        "initFrom.rerunOnParentSuccess needs initFrom.fineTuneJobRef",
    ),
    ("initFrom uri climbs out of its claim", {"initFrom": {"uri": "pvc://m/../x"}}, "spec.initFrom.uri"),
    ("initFrom uri relative", {"initFrom": {"uri": "models/run-1"}}, "spec.initFrom.uri"),
    ("initFrom ref without a name", {"initFrom": {"fineTuneJobRef": {}}}, "spec.initFrom.fineTuneJobRef.name"),
]

_MDEP_ROWS: list[tuple[str, dict[str, Any], str]] = [
    ("steps not increasing", {"canary": {"steps": [5, 50, 25]}}, "canary.steps must be strictly increasing"),
    ("duplicate steps", {"canary": {"steps": [10, 10, 100]}}, "canary.steps must be strictly increasing"),
    ("no steps", {"canary": {"steps": []}}, "spec.canary.steps"),
    ("step above 100", {"canary": {"steps": [50, 150]}}, "spec.canary.steps[1]"),
    ("interval not a duration", {"canary": {"interval": "1 minute"}}, "spec.canary.interval"),
    ("ratio zero", {"canary": {"analysis": {"latencyP99Ratio": 0}}}, "spec.canary.analysis.latencyP99Ratio"),
    ("unknown no-data policy", {"canary": {"analysis": {"noDataPolicy": "retry"}}}, "analysis.noDataPolicy"),
    ("rating drop zero", {"canary": {"analysis": {"maxUserRatingDrop": 0}}}, "analysis.maxUserRatingDrop"),
    ("rating drop above 4", {"canary": {"analysis": {"maxUserRatingDrop": 4.5}}}, "analysis.maxUserRatingDrop"),
    ("min feedback zero", {"canary": {"analysis": {"minFeedback": 0}}}, "spec.canary.analysis.minFeedback"),
    (
        "rating check on vllm without capture",
        {"runtime": "vllm", "canary": {"analysis": {"maxUserRatingDrop": 1.0}}},
        "maxUserRatingDrop with runtime vllm needs spec.capture",
    ),
    ("analysis without prometheus", {"canary": {"analysis": {"prometheus": None}}}, "prometheus.address is required"),
    (
        "prometheus not a url",
        {"canary": {"analysis": {"prometheus": {"address": "prometheus:9090"}}}},
        "spec.canary.analysis.prometheus.address",
    ),
    ("both adapter sources", {"adapter": {"uri": "/a"}}, "adapter needs exactly one of fineTuneJobRef or uri"),
    ("adapter ref without a name", {"adapter": {"fineTuneJobRef": {"name": None}}}, "fineTuneJobRef.name"),
    ("unknown runtime", {"runtime": "tgi"}, "spec.runtime"),
    ("port zero", {"port": 0}, "spec.port"),
    ("zero replicas", {"replicas": 0}, "spec.replicas"),
    ("gpu memory budget zero", {"runtime": "vllm", "vllm": {"gpuMemoryUtilization": 0}}, "vllm.gpuMemoryUtilization"),
    ("gateway traffic without gateway", {"traffic": "gatewayAPI"}, "traffic gatewayAPI requires spec.gateway"),
    ("gateway without parents", {"traffic": "gatewayAPI", "gateway": {"parentRefs": []}}, "spec.gateway.parentRefs"),
    (
        "cache for a uri base model",
        {"baseModel": {"name": None, "uri": "s3://b/m", "cacheUri": "pvc://hf/cache"}},
        "baseModel.cacheUri is the Hugging Face cache of a hub-id",
    ),
    ("cache not on a claim", {"baseModel": {"cacheUri": "/hf"}}, "spec.baseModel.cacheUri"),
    ("no base model", {"baseModel": None}, "spec.baseModel"),
    ("unknown field", {"replica": 3}, "spec.replica"),
    (
        "envFrom with both sources",
        {"envFrom": [{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}]},
        "exactly one of secretRef or configMapRef",
    ),
    (
        "custom query without bounds",
        {"canary": {"analysis": {"queries": [{"name": "q", "query": "up"}]}}},
        "a custom analysis query needs min or max",
    ),
    ("model climbs out of its claim", {"baseModel": {"name": None, "uri": "pvc://m/../x"}}, "spec.baseModel.uri"),
    ("cache climbs out of its claim", {"baseModel": {"cacheUri": "pvc://hf/../x"}}, "spec.baseModel.cacheUri"),
    (
        "adapter climbs out of its claim",
        {"adapter": {"fineTuneJobRef": None, "uri": "pvc://a/run-1/../../b"}},
        "spec.adapter.uri",
    ),
    ("server image with an empty tag", {"image": "ghcr.io/kubetune/server:"}, "spec.image"),
    ("capture to a path in the image", {"capture": {"uri": "/captures"}}, "spec.capture.uri"),
    ("capture without a uri", {"capture": {"sampleRate": 0.5}}, "spec.capture.uri"),
    ("capture rate above 1", {"capture": {"uri": "s3://caps/md", "sampleRate": 1.5}}, "spec.capture.sampleRate"),
    (
        "capture files too small",
        {"capture": {"uri": "pvc://caps/md", "maxFileBytes": 100}},
        "spec.capture.maxFileBytes",
    ),
    ("capture climbs out of its claim", {"capture": {"uri": "pvc://caps/../x"}}, "spec.capture.uri"),
    (
        "capture redacts too many fields",
        {"capture": {"uri": "pvc://caps/md", "redact": {"fields": [f"f{i}" for i in range(33)]}}},
        "spec.capture.redact.fields",
    ),
]

BAD_SPECS: list[Case] = [Case(i, FTJ, p, n) for i, p, n in _FTJ_ROWS] + [Case(i, MDEP, p, n) for i, p, n in _MDEP_ROWS]


def _example(name: str) -> tuple[str, dict[str, Any]]:
    obj = yaml.safe_load((EXAMPLES / name).read_text())
    return obj["kind"], obj["spec"]


def _stages(name: str) -> list[dict[str, Any]]:
    return [obj["spec"] for obj in yaml.safe_load_all((EXAMPLES / name).read_text()) if obj]


# Specs both must accept: the examples, and the shapes the other tests rely on.
GOOD_SPECS: list[tuple[str, str, dict[str, Any]]] = [
    ("example finetunejob", *_example("finetunejob.yaml")),
    ("example modeldeployment", *_example("modeldeployment.yaml")),
    ("minimal finetunejob", FTJ, GOOD_FTJ),
    ("minimal modeldeployment", MDEP, GOOD_MDEP),
    ("example dpo finetunejob", *_example("finetunejob-dpo.yaml")),
    ("example orpo finetunejob", *_example("finetunejob-orpo.yaml")),
    ("example merge finetunejob", *_example("finetunejob-merge.yaml")),
    ("example multinode finetunejob", *_example("finetunejob-multinode.yaml")),
    *((f"example stage {i}", FTJ, spec) for i, spec in enumerate(_stages("finetunejob-stages.yaml"))),
    *(
        (f"finetunejob {i}", FTJ, merged(GOOD_FTJ, patch))
        for i, patch in enumerate(
            [
                {"method": "qlora", "quantization": {}, "lora": {"r": 8, "alpha": 16}},
                {"method": "prefix", "promptTuning": {"numVirtualTokens": 8}},
                {"dataset": {"format": "text", "mix": {"uri": "/g", "fraction": 0.3}}},
                {"baseModel": {"name": None, "uri": "s3://bucket/llama"}, "schedule": "0 3 * * 1"},
                {"baseModel": {"name": None, "uri": "hf://org/tiny"}},
                {"resources": {"gpus": 8}, "training": {"distributed": {"strategy": "fsdp", "processesPerNode": 8}}},
                {"resources": {"gpus": 0}, "training": {"distributed": {"processesPerNode": 2}}},
                {"resources": {"nodes": 4, "gpus": 8}, "training": {"distributed": {"engine": "jobSet"}}},
                {
                    "resources": {"nodes": 2, "gpus": 0},
                    "training": {"distributed": {"backend": "gloo", "rendezvousPort": 29400, "socketInterface": "lo"}},
                },
                {"envFrom": [{"secretRef": {"name": "s3-keys"}}, {"configMapRef": {"name": "s3"}, "prefix": "S3_"}]},
                {"evaluation": {"metrics": ["perplexity"], "gates": {"maxPerplexity": 20, "maxEvalLoss": 3}}},
                {"resources": {"cpu": "500m", "memory": "2Gi", "tolerations": [{"operator": "Exists"}]}},
                {
                    "evaluation": {
                        "judge": {"url": "https://judge.example:8443", "apiKeySecretRef": {"name": "judge-key"}},
                        "gates": {"minJudgeWinRate": 0.55},
                        "checks": [
                            {"name": "json", "type": "jsonValid", "min": 0.9},
                            {"name": "ticket", "type": "regex", "pattern": "^T-[0-9]+"},
                            {"name": "exact", "type": "exactMatch"},
                            {"name": "polite", "type": "contains", "pattern": "please"},
                            {"name": "ref", "type": "contains"},
                        ],
                    }
                },
                {"evaluation": {"judge": {"modelDeploymentRef": {"name": "judge"}, "model": "m", "maxPrompts": 5}}},
                {"tracking": {"mlflow": {}}},
                {
                    "tracking": {
                        "mlflow": {
                            "trackingUri": "https://mlflow.example:5000/prefix",
                            "experiment": "team-a/support bot",
                            "registeredModel": "support-bot.v2",
                            "credentialsSecretRef": {"name": "mlflow-creds"},
                        }
                    }
                },
                {**_DPO, "lora": {"r": 8}, "preference": {"beta": 0.2, "labelSmoothing": 0.1}},
                {**_DPO, "preference": {"policy": "full", "lossType": "ipo"}},
                {
                    **_ORPO,
                    "dataset": {"format": "preference", "fields": {"chosen": "good", "rejected": "bad"}},
                    "evaluation": {"metrics": ["preferenceAccuracy"], "gates": {"minPreferenceAccuracy": 0.7}},
                },
                _MERGE,
                _merge({"merge": {"combination": "ties", "density": 0.3, "majoritySign": "frequency", "rank": 4}}),
                _merge({"merge": {"combination": "dare_linear", "density": 0.9}, "training": {"seed": 7}}),
                _merge({"merge": {"combination": "slerp", "sources": _TWO[:1] * 2, "t": 0.25, "rank": 8}}),
                _merge({"merge": {"combination": "svd"}, "output": {"mergeWeights": True}, "schedule": "@daily"}),
                {"initFrom": {"fineTuneJobRef": {"name": "cpt"}, "rerunOnParentSuccess": True}},
                {"initFrom": {"uri": "s3://bucket/cpt/run-1/adapter"}, "method": "ia3"},
                {"dataset": _captures({"modelDeploymentRef": {"name": "support"}, "since": "168h"})},
                {"dataset": _captures({"uri": "s3://caps/support", "minRating": 5, "versions": ["v1", "v2.1"]})},
                {**_DPO, "dataset": {**_captures({"uri": "pvc://captures/support"}), "format": "preference"}},
            ]
        )
    ),
    *(
        (f"modeldeployment {i}", MDEP, merged(GOOD_MDEP, patch))
        for i, patch in enumerate(
            [
                {"canary": {"analysis": {"enabled": False, "prometheus": None}}},
                {"canary": None},
                {"traffic": "gatewayAPI", "gateway": {"parentRefs": [{"name": "gw"}]}},
                {"runtime": "vllm", "vllm": {"maxModelLen": 4096}, "resources": {"cpu": 2}},
                {"adapter": {"fineTuneJobRef": None, "uri": "s3://b/adapter"}, "baseModel": {"cacheUri": "pvc://hf/c"}},
                {"capture": {"uri": "pvc://captures/support"}},
                {"canary": {"analysis": {"maxUserRatingDrop": 0.5, "minFeedback": 30}}},
                {
                    "runtime": "vllm",
                    "capture": {"uri": "s3://caps/support"},
                    "canary": {"analysis": {"maxUserRatingDrop": 1.0}},
                },
                {
                    "capture": {
                        "uri": "s3://caps/support",
                        "sampleRate": 1.0,
                        "maxFileBytes": 1024,
                        "maxFileSeconds": 60,
                        "redact": {"fields": ["email"], "patterns": ["[0-9]{3}-[0-9]{4}"]},
                    }
                },
            ]
        )
    ),
]
