"""Shared fixtures: one tiny model per test session, and a spec writer."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GLOSSARY = REPO / "examples" / "data" / "glossary.jsonl"
GOLDEN = REPO / "examples" / "data" / "golden.jsonl"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The tiny model's ops are too small to gain from intra-op threads, and on a shared CPU the threads'
    synchronisation costs far more than the ops (this tier took ~5x longer with 2 threads than with 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", "0")  # no HTTP server per test
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # trainer subprocesses too (see _one_torch_thread)
    monkeypatch.delenv("KUBETUNE_FINETUNEJOB_NAME", raising=False)
    monkeypatch.delenv("KUBETUNE_OUTPUT_DIR", raising=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubetune_trainer.tiny_model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("cache") / "tiny-model")


BASE_SPEC: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "test-job", "namespace": "default"},
    "spec": {
        "baseModel": {"uri": "PLACEHOLDER"},
        "dataset": {"uri": str(GLOSSARY), "split": {"validation": 0.1, "test": 0.1, "seed": 42}},
        "method": "lora",
        "training": {
            "maxSteps": 4,
            "learningRate": 5e-3,
            "batchSize": 8,
            "maxSeqLength": 128,
            "precision": "fp32",
            "evalSteps": 2,
            "loggingSteps": 2,
            "checkpointSteps": 100,
        },
        "evaluation": {"metrics": ["perplexity", "exactMatch"], "maxNewTokens": 6},
    },
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
def write_spec(tmp_path: Path, tiny_model_dir: Path):
    """write_spec({"method": "ia3"}) -> path of a FineTuneJob YAML using the tiny model."""

    def _write(spec_override: dict[str, Any] | None = None, name: str = "job.yaml") -> Path:
        obj = copy.deepcopy(BASE_SPEC)
        obj["spec"]["baseModel"]["uri"] = str(tiny_model_dir)
        obj["spec"]["output"] = {"uri": str(tmp_path / "output")}  # required by the API; --output overrides it
        obj["spec"] = merge(obj["spec"], spec_override or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(obj))
        return path

    return _write


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
