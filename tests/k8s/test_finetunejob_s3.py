"""A FineTuneJob whose model, data and output live on S3, end to end with real parts.

The operator runs against the real apiserver and creates the trainer Job; the scheduler binds its pod
to a node played by the local executor, which runs the trainer as a process with the pod's
environment, the S3 keys and endpoint included only through the FineTuneJob's ``envFrom`` Secret; the
trainer talks HTTP to moto's S3-compatible server. This test process sets none of those variables.
"""

from __future__ import annotations

import base64
import json
import math
import os
import uuid
from pathlib import Path

import pytest

from tests.k8s.conftest import wait_for
from tests.support.s3 import S3Server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
NODE = "local-s3"


def test_trainer_reads_and_writes_s3_with_keys_from_env_from(k8s, operator, executor, tmp_path):
    from kubetune_trainer.tiny_model import ensure_tiny_model

    with S3Server() as s3:
        assert not set(s3.env) & set(os.environ), "keys and endpoint must come from the Secret only"
        fs, bucket = s3.client(), f"kt-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        fs.put(str(REPO / "examples" / "data" / "glossary.jsonl"), f"{bucket}/data/glossary.jsonl")
        fs.put(str(ensure_tiny_model(tmp_path / "tiny")), f"{bucket}/models/tiny", recursive=True)
        secret = {k: base64.b64encode(v.encode()).decode() for k, v in s3.env.items()}
        k8s.core.create_namespaced_secret(k8s.ns, {"metadata": {"name": "s3-keys"}, "data": secret})

        k8s.create_ftj(
            "from-s3",
            {
                "baseModel": {"uri": f"s3://{bucket}/models/tiny"},
                "dataset": {"uri": f"s3://{bucket}/data/glossary.jsonl"},
                "output": {"uri": f"s3://{bucket}/runs/from-s3"},
                "lora": {"r": 4},
                "training": {"maxSteps": 2, "precision": "fp32", "evalSteps": 2},
                "evaluation": {"maxNewTokens": 4},
                "envFrom": [{"secretRef": {"name": "s3-keys"}}],
                "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi", "nodeSelector": {"kubernetes.io/hostname": NODE}},
            },
        )
        done = wait_for(
            lambda: (s := k8s.get_ftj("from-s3").get("status", {})).get("phase") in ("Succeeded", "Failed") and s,
            timeout=300,
            what="the S3 FineTuneJob to finish",
        )
        assert done["phase"] == "Succeeded", done
        # The trainer's plan reached status.progress through the real apiserver (not pruned): batchSize 8
        # (the default) means 8 examples per step, so an epoch is ceil(train rows / 8) steps.
        progress, train_rows = done["progress"], done["data"]["train"]
        assert progress["stepsPerEpoch"] == math.ceil(train_rows / 8), done
        assert progress["examplesPerStep"] == round(train_rows / progress["stepsPerEpoch"], 2)
        assert progress["tokensPerStep"] > 0
        artifact = f"s3://{bucket}/runs/from-s3/run-1/artifact"
        assert done["artifact"]["uri"] == artifact
        assert fs.exists(f"{bucket}/runs/from-s3/run-1/artifact/adapter_model.safetensors")
        result = json.loads(fs.cat(f"{bucket}/runs/from-s3/run-1/result.json"))
        assert result["phase"] == "Succeeded" and result["artifact"]["uri"] == artifact
