"""The tiny FineTuneJob spec both multi-node k8s tests train: small enough for two CPU pods on one machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def tiny_gang_spec(
    tiny: Path, node: str, output_uri: str, training: dict[str, Any], **resources: Any
) -> dict[str, Any]:
    """LoRA r 4 on the glossary data, fp32, 64 tokens, batchSize 4, pods of 1 CPU / 2Gi pinned to ``node``.

    ``training`` adds to (or overrides) the training block, ``resources`` the resources block.
    """
    return {
        "baseModel": {"uri": str(tiny)},
        "dataset": {
            "uri": str(REPO / "examples" / "data" / "glossary.jsonl"),
            "split": {"validation": 0.1, "test": 0.1, "seed": 42},
        },
        # No dropout: each rank draws its own masks, so with dropout no two layouts of a step agree.
        "lora": {"r": 4, "dropout": 0.0},
        "training": {"batchSize": 4, "learningRate": 5e-3, "maxSeqLength": 64, "precision": "fp32", **training},
        "evaluation": {"metrics": ["perplexity"], "maxNewTokens": 2},
        "output": {"uri": output_uri},
        "resources": {
            "gpus": 0,
            "cpu": "1",
            "memory": "2Gi",
            "nodeSelector": {"kubernetes.io/hostname": node},
            **resources,
        },
    }
