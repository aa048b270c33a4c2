"""Pure tests of the serving manifests: Deployments per track, Services, HTTPRoute."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune_operator.builders.serving import (
    Split,
    build_deployment,
    build_httproute,
    build_services,
    canary_replicas,
    replica_split,
    track_selector,
    traffic_split,
)
from kubetune_operator.serving_spec import ModelDeploymentSpec, Served, parse_duration, serving_version
from kubetune_operator.settings import Settings

MD: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "chat", "namespace": "ml", "uid": "uid-9", "generation": 1},
    "spec": {"baseModel": {"uri": "pvc://models/base"}, "adapter": {"fineTuneJobRef": {"name": "support"}}},
}


@pytest.fixture
def md() -> dict[str, Any]:
    return copy.deepcopy(MD)


def parsed(md: dict[str, Any]) -> ModelDeploymentSpec:
    """The typed spec the builders take: parsed once, as the reconcile does."""
    return ModelDeploymentSpec.from_dict(md["spec"])


def deployment(md: dict[str, Any], *args: Any) -> dict[str, Any]:
    return build_deployment(parsed(md), md, *args)


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]["containers"][0]


def pod(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"]}


def claims(dep: dict[str, Any]) -> dict[str, bool]:
    """claim -> mounted read-only."""
    return {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in pod(dep)["volumes"]
        if "persistentVolumeClaim" in v
    }


def test_builtin_deployment(md):
    dep = deployment(md, "canary", "v2", "pvc://adapters/run-3/artifact", 1, Settings(server_image="srv:1"))
    c = container(dep)
    assert dep["metadata"]["name"] == "chat-canary" and dep["spec"]["replicas"] == 1
    assert c["image"] == "srv:1" and c["command"] == ["python", "-m", "kubetune_server"]
    args = c["args"]
    assert args[args.index("--model") + 1] == "/mnt/pvc/models/base"
    assert args[args.index("--adapter") + 1] == "/mnt/pvc/adapters/run-3/artifact"
    assert args[args.index("--version") + 1] == "v2"
    assert args[args.index("--adapter-name") + 1] == "support"
    claims = sorted(
        v["persistentVolumeClaim"]["claimName"]
        for v in dep["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    )
    assert claims == ["adapters", "models"]
    assert dep["spec"]["selector"]["matchLabels"] == track_selector("chat", "canary")
    assert dep["spec"]["template"]["metadata"]["labels"]["kubetune.io/version"] == "v2"
    assert c["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-9"


def test_vllm_deployment_enables_lora(md):
    md["spec"].update(
        runtime="vllm", vllm={"gpuMemoryUtilization": 0.85, "maxModelLen": 4096, "extraArgs": ["--enforce-eager"]}
    )
    md["spec"]["resources"] = {"gpus": 2}
    c = container(deployment(md, "stable", "v1", "s3://bucket/adapter", 2, Settings(vllm_image="vllm:x")))
    assert c["image"] == "vllm:x" and c["command"] == ["vllm", "serve"]
    args = c["args"]
    assert args[0] == "/mnt/pvc/models/base"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.85"
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--max-model-len") + 1] == "4096"
    # vLLM reads local folders: the s3:// adapter is downloaded by an init container of the server image.
    assert "--enable-lora" in args and args[args.index("--lora-modules") + 1] == "support=/models/adapter"
    assert args[-1] == "--enforce-eager"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_services_select_both_tracks_and_each(md):
    main, stable, canary = build_services(parsed(md), md)
    assert main["metadata"]["name"] == "chat" and "kubetune.io/track" not in main["spec"]["selector"]
    assert stable["spec"]["selector"]["kubetune.io/track"] == "stable"
    assert canary["spec"]["selector"]["kubetune.io/track"] == "canary"


def test_httproute_weights(md):
    md["spec"]["gateway"] = {"parentRefs": [{"name": "gw"}], "hostnames": ["chat.example"]}
    route = build_httproute(parsed(md), md, 25)
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [("chat-stable", 75), ("chat-canary", 25)]
    assert route["spec"]["parentRefs"] == [{"name": "gw"}] and route["spec"]["hostnames"] == ["chat.example"]


@pytest.mark.parametrize(
    ("total", "weight", "expected"), [(2, 5, 1), (2, 50, 1), (4, 25, 1), (4, 75, 3), (10, 100, 10)]
)
def test_canary_replicas_carry_the_share_at_stable_load_per_pod(total, weight, expected):
    assert canary_replicas(total, weight) == expected


@pytest.mark.parametrize(
    ("total", "weight", "split"),
    [
        (1, 5, Split(1, 1, 50.0)),  # one replica: a canary pod beside the stable one, half the requests
        (1, 100, Split(1, 1, 50.0)),
        (2, 5, Split(1, 1, 50.0)),
        (2, 50, Split(1, 1, 50.0)),
        (2, 100, Split(1, 2, 66.7)),  # stable keeps a pod until promotion
        (4, 5, Split(3, 1, 25.0)),
        (4, 25, Split(3, 1, 25.0)),
        (4, 50, Split(2, 2, 50.0)),
        (4, 75, Split(1, 3, 75.0)),
        (4, 100, Split(1, 4, 80.0)),
        (10, 5, Split(9, 1, 10.0)),
        (10, 25, Split(8, 2, 20.0)),  # 20% and 30% are equally near: the smaller canary
        (10, 33, Split(7, 3, 30.0)),
        (10, 100, Split(1, 10, 90.9)),
        (20, 5, Split(19, 1, 5.0)),
        (20, 25, Split(15, 5, 25.0)),
        (1000, 1, Split(990, 10, 1.0)),
    ],
)
def test_replica_split_holds_the_total_and_reports_the_share_it_achieves(total, weight, split):
    got = replica_split(total, weight)
    assert got == split
    assert got.stable >= 1 and got.canary >= 1
    assert got.stable + got.canary == max(total, got.canary + 1)  # R pods, R + 1 only when the canary has R
    assert got.achieved == round(100 * got.canary / (got.stable + got.canary), 1)


@pytest.mark.parametrize("total", [1, 2, 3, 4, 7, 10, 20, 50])
def test_replica_split_is_the_nearest_achievable_share_and_grows_with_the_weight(total):
    splits = [replica_split(total, w) for w in range(1, 101)]
    achievable = {round(100 * c / (c + max(1, total - c)), 1) for c in range(1, total + 1)}
    for w, got in enumerate(splits, start=1):
        assert got.achieved in achievable
        assert abs(got.achieved - w) <= min(abs(a - w) for a in achievable) + 0.05
    assert [s.canary for s in splits] == sorted(s.canary for s in splits)


@pytest.mark.parametrize("bad", [(0, 50), (4, 0), (4, 101)])
def test_replica_split_refuses_impossible_input(bad):
    with pytest.raises(ValueError):
        replica_split(*bad)


def test_gateway_api_weights_are_exact_and_stable_keeps_every_replica():
    assert traffic_split("gatewayAPI", 4, 5) == Split(4, 1, 5.0)
    assert traffic_split("gatewayAPI", 4, 100) == Split(4, 4, 100.0)
    assert traffic_split("replicas", 4, 100) == replica_split(4, 100)


def test_version_ignores_rollout_settings(md):
    v = serving_version(md["spec"], "/a")
    assert serving_version({**md["spec"], "canary": {"steps": [50, 100]}, "replicas": 7}, "/a") == v
    assert serving_version({**md["spec"], "runtime": "vllm"}, "/a") != v


def test_spec_defaults_and_durations(md):
    spec = ModelDeploymentSpec.from_dict(md["spec"])
    assert spec.canary.steps == (5, 25, 50, 100) and spec.canary.interval_seconds == 60
    assert spec.canary.analysis.enabled is False  # no analysis block: steps advance on time
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("5 minutes")


S3_KEYS = [{"secretRef": {"name": "s3-keys"}}]


def test_s3_adapter_is_downloaded_by_an_init_container_and_checked_against_its_digest(md):
    md["spec"]["envFrom"] = S3_KEYS
    ref = Served("s3://bucket/runs/support/run-2/artifact", "adapter", "sha256:abc").ref()
    dep = deployment(md, "canary", "v2", ref, 1, Settings(server_image="srv:1"))
    (init,) = pod(dep)["initContainers"]
    assert init["name"] == "fetch-adapter" and init["image"] == "srv:1"
    assert init["command"] == ["python", "-m", "kubetune_server.fetch"]
    assert init["args"] == ["s3://bucket/runs/support/run-2/artifact", "/models/adapter", "--digest", "sha256:abc"]
    assert init["envFrom"] == S3_KEYS and container(dep)["envFrom"] == S3_KEYS  # keys by reference only
    assert "nvidia.com/gpu" not in str(init["resources"])  # a download needs no GPU
    models = {"name": "models", "mountPath": "/models"}
    assert models in init["volumeMounts"] and models in container(dep)["volumeMounts"]
    assert {"name": "models", "emptyDir": {}} in pod(dep)["volumes"]
    args = container(dep)["args"]
    assert flag(args, "--adapter") == "/models/adapter" and flag(args, "--model") == "/mnt/pvc/models/base"
    assert claims(dep) == {"models": True}  # the base stays on its claim, read-only


@pytest.mark.parametrize(
    ("ref", "model", "fetched"),
    [
        (Served("pvc://adapters/run-3/artifact", "model").ref(), "/mnt/pvc/adapters/run-3/artifact", None),
        (
            Served("s3://bucket/runs/support/run-3/merged", "model", "sha256:m").ref(),
            "/models/model",
            ["s3://bucket/runs/support/run-3/merged", "/models/model", "--digest", "sha256:m"],
        ),
    ],
    ids=["full-fine-tune-on-pvc", "merged-weights-on-s3"],
)
@pytest.mark.parametrize("runtime", ["builtin", "vllm"])
def test_a_whole_model_replaces_the_base_and_is_served_under_the_adapter_name(md, ref, model, fetched, runtime):
    md["spec"]["runtime"] = runtime
    dep = deployment(md, "stable", "v3", ref, 2, Settings())
    args = container(dep)["args"]
    assert "--adapter" not in args and "--enable-lora" not in args and "--lora-modules" not in args
    if runtime == "vllm":
        assert args[0] == model and flag(args, "--served-model-name") == "support"
    else:
        assert flag(args, "--model") == model and flag(args, "--model-name") == "support"
    assert "models" not in claims(dep)  # nothing of the base model is mounted
    inits = pod(dep).get("initContainers", [])
    assert [i["args"] for i in inits] == ([fetched] if fetched else [])


def test_s3_base_model_is_downloaded_and_keeps_its_name(md):
    md["spec"]["baseModel"] = {"uri": "s3://bucket/models/tiny-llama/"}
    dep = deployment(md, "stable", "v1", "pvc://adapters/run-1/artifact", 2, Settings())
    assert [i["args"] for i in pod(dep)["initContainers"]] == [["s3://bucket/models/tiny-llama/", "/models/base"]]
    args = container(dep)["args"]
    assert flag(args, "--model") == "/models/base" and flag(args, "--model-name") == "tiny-llama"
    assert flag(args, "--adapter") == "/mnt/pvc/adapters/run-1/artifact"


def test_hub_id_base_model_loads_through_the_cache_claim(md):
    md["spec"]["baseModel"] = {
        "name": "Qwen/Qwen2.5-0.5B",
        "revision": "v1.0",
        "cacheUri": "pvc://hf-cache/hub/",
        "trustRemoteCode": True,
    }
    md["spec"]["envFrom"] = [{"configMapRef": {"name": "offline"}}]  # e.g. HF_HUB_OFFLINE=1
    for runtime in ("builtin", "vllm"):
        md["spec"]["runtime"] = runtime
        dep = deployment(md, "stable", "v1", "pvc://adapters/run-1/artifact", 2, Settings())
        c = container(dep)
        model = flag(c["args"], "--model") if runtime == "builtin" else c["args"][0]
        assert model == "Qwen/Qwen2.5-0.5B" and flag(c["args"], "--revision") == "v1.0"
        assert env(c)["HF_HOME"] == "/mnt/pvc/hf-cache/hub"
        assert claims(dep) == {"hf-cache": False, "adapters": True}  # a cache is written on a miss
        assert {"name": "pvc-1", "mountPath": "/mnt/pvc/hf-cache", "readOnly": False} in c["volumeMounts"]
        assert "initContainers" not in pod(dep) and c["envFrom"] == md["spec"]["envFrom"]
        assert ("--trust-remote-code" in c["args"]) == (runtime == "vllm")  # builtin never runs a model's code


def test_hub_id_without_a_cache_claim_uses_the_pods_scratch_space(md):
    md["spec"]["baseModel"] = {"name": "org/model"}
    dep = deployment(md, "stable", "v1", None, 2, Settings())
    c = container(dep)
    assert flag(c["args"], "--model") == "org/model" and "--revision" not in c["args"]
    assert env(c)["HF_HOME"] == "/tmp/hf" and claims(dep) == {} and "envFrom" not in c


def test_what_a_finetunejob_artifact_serves():
    adapter = {"uri": "s3://b/run-1/artifact", "digest": "sha256:a", "kind": "adapter"}
    assert Served.from_artifact(adapter) == Served("s3://b/run-1/artifact", "adapter", "sha256:a")
    assert Served.from_artifact({"uri": "pvc://a/run-1/artifact"}) == Served("pvc://a/run-1/artifact")  # older trainer
    full = {**adapter, "kind": "model"}
    assert Served.from_artifact(full) == Served("s3://b/run-1/artifact", "model", "sha256:a")
    merged = {**adapter, "mergedUri": "s3://b/run-1/merged", "mergedDigest": "sha256:m"}
    assert Served.from_artifact(merged) == Served("s3://b/run-1/merged", "model", "sha256:m")
    assert Served.from_artifact({}) is None
    for served in (Served.from_artifact(adapter), Served.from_artifact(merged)):
        assert served is not None and Served.parse(served.ref()) == served
    assert Served.from_artifact(merged).ref() == "s3://b/run-1/merged#kind=model&digest=sha256:m"  # type: ignore[union-attr]


def test_version_changes_with_the_kind_and_digest_of_what_is_served(md):
    refs = [Served("pvc://a/x").ref(), Served("pvc://a/x", "model").ref(), Served("pvc://a/x", digest="sha256:1").ref()]
    assert len({serving_version(md["spec"], r) for r in refs}) == 3


def test_readme_share_table_is_what_replica_split_gives():
    from pathlib import Path

    steps = (5, 25, 50, 100)
    rows = ["| replicas | " + " | ".join(f"step {w}%" for w in steps) + " |", "|---|" + "---|" * len(steps)]
    for total in (2, 4, 10, 20):
        cells = [f"{s.achieved:g}% ({s.canary}:{s.stable})" for s in (replica_split(total, w) for w in steps)]
        rows.append(f"| {total} | " + " | ".join(cells) + " |")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("<!-- share-table:start -->\n")[1].split("\n<!-- share-table:end -->")[0]
    assert table == "\n".join(rows), "\n".join(rows)
