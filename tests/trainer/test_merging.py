"""Method merge: real peft adapters on the tiny model, combined on their weight deltas and checked numerically."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_api.stages import Merge
from tests.trainer.conftest import BASE_SPEC, GOLDEN, read_json

ATOL = 1e-5


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different non-zero LoRA adapters of the tiny model (as tests/k8s/test_canary_prometheus.py makes
    them); b has another rank and covers other modules, so a merge meets modules only one source has."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("merge-sources")
    out = {}
    for seed, name, r, targets in ((1, "a", 4, ["q_proj", "v_proj"]), (2, "b", 2, ["q_proj", "k_proj"])):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        cfg = peft.LoraConfig(
            task_type=peft.TaskType.CAUSAL_LM, r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False
        )
        peft.get_peft_model(model, cfg).save_pretrained(root / name)
        out[name] = root / name
    return out


def peft_deltas(base_dir: Path, adapter: Path) -> dict[str, Any]:
    """Each module's ΔW as peft itself computes it for the saved adapter (the independent reference)."""
    import peft
    from transformers import AutoModelForCausalLM

    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter)
    return {
        name.removeprefix("base_model.model."): m.get_delta_weight("default").detach()
        for name, m in model.named_modules()
        if isinstance(m, peft.tuners.lora.LoraLayer) and "default" in m.lora_A
    }


def merged_deltas(base_dir: Path, paths: list[Path], merge: Merge, weights: list[float]) -> dict[str, Any]:
    """The merged adapter applied to the base, read back through peft's get_delta_weight."""
    from transformers import AutoModelForCausalLM

    from kubetune_trainer import merging

    adapters = [merging.read_adapter(p, f"source {i}") for i, p in enumerate(paths)]
    factors, rank = merging.merged_factors(adapters, weights, merge, seed=42)
    model = merging.apply(AutoModelForCausalLM.from_pretrained(base_dir), factors, rank)
    return {p: model.get_submodule("base_model.model." + p).get_delta_weight("default").detach() for p in factors}


def _merge(**fields: Any) -> Merge:
    return Merge.model_validate({"sources": [{"uri": "/a"}, {"uri": "/b"}], **fields})


def test_linear_is_the_exact_weighted_sum_of_the_deltas(tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    import torch

    da, db = peft_deltas(tiny_model_dir, adapters["a"]), peft_deltas(tiny_model_dir, adapters["b"])
    merged = merged_deltas(tiny_model_dir, [adapters["a"], adapters["b"]], _merge(), [0.7, -0.4])
    assert set(merged) == set(da) | set(db)  # q from both, v only from a, k only from b
    worst = 0.0
    for p, delta in merged.items():
        expected = 0.7 * da.get(p, torch.zeros_like(delta)) + -0.4 * db.get(p, torch.zeros_like(delta))
        assert expected.abs().max() > 1e-3  # the check compares something
        worst = max(worst, float((delta - expected).abs().max()))
    print(f"linear: max |merged - (0.7 a - 0.4 b)| = {worst:.3g}")
    assert worst < ATOL


def test_ties_trims_elects_sign_by_total_mass_and_takes_the_disjoint_mean() -> None:
    import torch

    from kubetune_trainer import merging

    # Per weight, keep the top half by magnitude of each delta, elect the sign of the summed (trimmed)
    # mass, average only the survivors that agree with it.
    d1 = torch.tensor([[4.0, -3.0, 0.1, 1.0], [0.0, 2.0, -6.0, 0.5]])
    d2 = torch.tensor([[-1.0, 2.0, 0.2, 5.0], [3.0, -7.0, -2.5, 0.1]])
    # trimmed (density 0.5, 4 of 8 kept): d1 -> [4,-3,0,0 | 0,2,-6,0]; d2 -> [0,0,0,5 | 3,-7,-2.5,0]
    # elected sign of the sums [4,-3,0,5 | 3,-5,-8.5,0]: + - + + | + - - +
    # survivors: [d1, d1, -, d2 | d2, d2, d1 and d2, -]; where both survive, their mean
    expected = torch.tensor([[4.0, -3.0, 0.0, 5.0], [3.0, -7.0, -4.25, 0.0]])
    got = merging.combine([d1, d2], [1.0, 1.0], _merge(combination="ties", density=0.5))
    assert torch.equal(got, expected), got
    # By count instead of mass, the weight where both survive with opposite signs is a tie (>= 0 elects +).
    frequency = merging.combine([d1, d2], [1.0, 1.0], _merge(combination="ties", density=0.5, majoritySign="frequency"))
    assert frequency[1, 1] == 2.0  # d1's +2 survives where total mass elected d2's -7
    # Back to an adapter: at full rank the SVD loses nothing.
    a, b = merging.factor(expected, rank=2)
    assert float((b @ a - expected).abs().max()) < ATOL


def test_ties_on_real_adapters_matches_the_rule_on_their_deltas(
    tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    """The same rule through read_adapter, merged_factors and peft: the SVD-truncated result of ties(Δa, Δb)."""
    import torch
    from peft.utils import merge_utils

    da, db = peft_deltas(tiny_model_dir, adapters["a"]), peft_deltas(tiny_model_dir, adapters["b"])
    merge = _merge(combination="ties", density=0.3, rank=64)  # rank 64: the tiny model's full width
    merged = merged_deltas(tiny_model_dir, [adapters["a"], adapters["b"]], merge, [1.0, 1.0])
    worst = 0.0
    for p, delta in merged.items():
        z = torch.zeros_like(delta)
        expected = merge_utils.ties([da.get(p, z), db.get(p, z)], torch.tensor([1.0, 1.0]), 0.3, "total")
        worst = max(worst, float((delta - expected).abs().max()))
    print(f"ties (full rank): max |merged - ties(a, b)| = {worst:.3g}")
    assert worst < 1e-4


def test_slerp_of_an_adapter_with_itself_is_itself(tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    da = peft_deltas(tiny_model_dir, adapters["a"])
    merged = merged_deltas(tiny_model_dir, [adapters["a"], adapters["a"]], _merge(combination="slerp", t=0.3), [1, 1])
    worst = max(float((merged[p] - da[p]).abs().max()) for p in da)
    print(f"slerp(a, a): max |merged - a| = {worst:.3g}")
    assert set(merged) == set(da) and worst < ATOL


def test_slerp_keeps_the_angle_path_between_two_deltas() -> None:
    import torch

    from kubetune_trainer import merging

    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mid = merging.slerp(x, y, 0.5)
    assert torch.allclose(mid, torch.tensor([[0.5**0.5, 0.5**0.5]]))  # on the unit circle, not at lerp's 0.5
    assert torch.allclose(merging.slerp(x, y, 0.0), x) and torch.allclose(merging.slerp(x, y, 1.0), y)


def test_dare_is_seeded(adapters: dict[str, Path]) -> None:
    import torch

    from kubetune_trainer import merging

    ads = [merging.read_adapter(adapters[n], n) for n in ("a", "b")]
    merge = _merge(combination="dare_ties", density=0.5)
    first, _ = merging.merged_factors(ads, [1.0, 1.0], merge, seed=7)
    again, _ = merging.merged_factors(ads, [1.0, 1.0], merge, seed=7)
    other, _ = merging.merged_factors(ads, [1.0, 1.0], merge, seed=8)
    p = sorted(first)[0]
    assert torch.equal(first[p][0], again[p][0]) and not torch.equal(first[p][0], other[p][0])


def _merge_job(tmp_path: Path, tiny_model_dir: Path, sources: list[dict[str, Any]], **merge: Any) -> Path:
    obj = copy.deepcopy(BASE_SPEC)
    spec = obj["spec"]
    spec["baseModel"]["uri"] = str(tiny_model_dir)
    spec["method"] = "merge"
    spec["merge"] = {"sources": sources, **merge}
    spec["training"] = {"batchSize": 8, "maxSeqLength": 128, "precision": "fp32", "seed": 3}
    spec["evaluation"].update(goldenDatasetUri=str(GOLDEN), gates={"maxPerplexity": 1e9})
    spec["output"] = {"uri": str(tmp_path / "output")}
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(obj))
    return path


def test_a_merge_job_evaluates_gates_and_exports_a_servable_adapter(
    tmp_path: Path, tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    from kubetune_trainer import export, recipe
    from kubetune_trainer.environment import TrainerEnv
    from tests.serving.server_process import ServerProcess

    sources = [{"uri": str(adapters["a"]), "weight": 0.6}, {"uri": str(adapters["b"]), "weight": 0.4}]
    spec = _merge_job(tmp_path, tiny_model_dir, sources)
    obj = yaml.safe_load(spec.read_text())
    obj["spec"]["output"]["mergeWeights"] = True
    spec.write_text(yaml.safe_dump(obj))
    out = tmp_path / "out"
    (tmp_path / "termination-log").touch()  # the kubelet makes it; the trainer writes only into an existing one
    outcome = recipe.run(str(spec), output=str(out), env=TrainerEnv(termination_log=tmp_path / "termination-log"))

    assert outcome["phase"] == "Succeeded" and outcome["steps"] == 0
    assert outcome["evalPassed"] is True and outcome["gateFailures"] == []
    report = read_json(out / "eval.json")
    assert set(report["base"]) >= {"evalLoss", "perplexity", "exactMatch"} and report["gates"]["maxPerplexity"] == 1e9
    assert report["tuned"]["evalLoss"] != report["base"]["evalLoss"]  # the merged adapter changes the model
    artifact = out / "artifact"
    assert outcome["artifact"]["digest"] == export.directory_digest(artifact)
    assert read_json(out / "result.json")["artifact"] == outcome["artifact"]
    assert outcome["artifact"]["mergedDigest"] == export.directory_digest(out / "merged")  # output.mergeWeights
    card = read_json(artifact / "model_card.json")
    assert card["method"] == "merge" and card["merge"]["combination"] == "linear" and card["merge"]["rank"] == 6
    assert [(s["uri"], s["weight"]) for s in card["merge"]["sources"]] == [(x["uri"], x["weight"]) for x in sources]
    assert card["merge"]["sources"][0]["digest"] == export.directory_digest(adapters["a"])
    handed = read_json(tmp_path / "termination-log")  # what the operator mirrors into status
    assert handed["artifact"]["uri"] == str(artifact)
    assert handed["baseMetrics"] == report["base"] and handed["metrics"] == report["tuned"]

    with ServerProcess(tiny_model_dir, version="merged", adapter=artifact) as server:
        status, body = server.post(
            "/v1/chat/completions",
            {"model": "lora", "messages": [{"role": "user", "content": "What is a pod?"}], "max_tokens": 3},
        )
    assert status == 200, body
    assert body["object"] == "chat.completion" and isinstance(body["choices"][0]["message"]["content"], str)


def test_a_source_changed_after_its_run_is_refused(
    tmp_path: Path, tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    """A fineTuneJobRef source carries the digest its run recorded: a different folder there fails the run."""
    from kubetune_trainer import merging
    from kubetune_trainer.config import ConfigError, parse_job

    obj = yaml.safe_load(
        _merge_job(tmp_path, tiny_model_dir, [{"fineTuneJobRef": {"name": "a"}}, {"uri": "/b"}]).read_text()
    )
    with pytest.raises(ConfigError, match=r"sources\[0\].fineTuneJobRef: FineTuneJob a was not resolved"):
        merging.sources(parse_job(obj))
    obj["status"] = {"mergeSources": [{"name": "a", "run": 2, "uri": str(adapters["a"]), "digest": "sha256:00"}]}
    (src, _) = merging.sources(parse_job(obj))
    assert (src.uri, src.run, src.digest) == (str(adapters["a"]), 2, "sha256:00")
    with pytest.raises(ConfigError, match="is not the artifact FineTuneJob a run 2 recorded"):
        merging.fetch(src)


def test_the_cli_runs_a_ties_merge_in_one_process(
    tmp_path: Path, tiny_model_dir: Path, adapters: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from kubetune_trainer import cli

    sources = [{"uri": str(adapters["a"])}, {"uri": str(adapters["b"])}]
    spec = _merge_job(tmp_path, tiny_model_dir, sources, combination="ties", density=0.4, rank=3)
    assert cli.main(["train", str(spec), "--output", str(tmp_path / "out")]) == 0
    card = read_json(tmp_path / "out" / "artifact" / "model_card.json")["merge"]
    assert (card["combination"], card["density"], card["majoritySign"], card["rank"]) == ("ties", 0.4, "total", 3)
    config = read_json(tmp_path / "out" / "artifact" / "adapter_config.json")
    assert config["r"] == 3 and config["lora_alpha"] == 3

    # An unresolved fineTuneJobRef (no operator wrote status.mergeSources) is the spec's fault: exit 2, one line.
    unresolved = _merge_job(tmp_path, tiny_model_dir, [{"fineTuneJobRef": {"name": "gone"}}, sources[1]])
    assert cli.main(["train", str(unresolved), "--output", str(tmp_path / "out2")]) == 2
    assert "spec.merge.sources[0].fineTuneJobRef: FineTuneJob gone was not resolved" in capsys.readouterr().err


def test_an_s3_source_is_downloaded_and_checked_against_its_digest(
    adapters: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same download as a model or dataset (uris.fetch_remote), against moto's S3 in its own process."""
    import torch

    from kubetune_trainer import export, merging
    from tests.support.s3 import S3Server

    with S3Server() as server:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
        fs = server.client()
        fs.mkdir("kt-merge")
        for file in adapters["a"].iterdir():
            fs.put_file(str(file), f"kt-merge/runs/a/run-1/artifact/{file.name}")
        digest = export.directory_digest(adapters["a"])
        source = merging.Source("spec.merge.sources[0]", "s3://kt-merge/runs/a/run-1/artifact", 1.0, "a", 1, digest)
        local = merging.fetch(source)
    assert local != adapters["a"] and export.directory_digest(local) == digest
    got, want = merging.read_adapter(local, "s3"), merging.read_adapter(adapters["a"], "local")
    assert all(torch.equal(got.delta(p), want.delta(p)) for p in want.modules)  # type: ignore[arg-type]
