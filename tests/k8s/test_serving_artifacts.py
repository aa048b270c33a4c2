"""A FineTuneJob's s3:// artifacts served end to end, with real parts only.

The operator runs against the real apiserver; a real trainer (through the local executor) writes its
adapter and merged weights to moto's S3-compatible server. The ModelDeployment that references the
FineTuneJob gets pods whose init container downloads the merged weights (keys from the
ModelDeployment's envFrom Secret only) and checks them against the digest in the FineTuneJob's
status; a real `kubetune_server` process serves them as the model, with no adapter. Two more serve
the s3:// adapter: on an s3:// base model, and on a hub-id base model read from a pre-populated
Hugging Face cache on a claim with the hub switched off. A fourth, whose stored weights were altered
after training, never serves them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from kubetune_dev.local_executor import ExecutorProcess
from kubetune_trainer.export import directory_digest
from tests.k8s.conftest import wait_for
from tests.support.s3 import S3Server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
NODE = "local-serving"
HUB_ID = "kubetune/tiny-model"


def serving(ex: ExecutorProcess, ns: str, md: str) -> list[str]:
    return [
        ep
        for ep, labels in ex.targets()
        if labels.get("namespace") == ns and labels.get("app_kubernetes_io_instance") == md
    ]


def complete(endpoint: str, model: str) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"model": model, "prompt": "A pod is", "max_tokens": 4, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://{endpoint}/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read())


def pods_of(k8s, md: str) -> list[Any]:
    return k8s.core.list_namespaced_pod(k8s.ns, label_selector=f"app.kubernetes.io/instance={md}").items


def cache_claim(k8s, folder: Path) -> None:
    """The claim `hf-cache`, bound to a local folder (the executor mounts claims from its pvc root)."""
    gib = {"storage": "1Gi"}
    k8s.core.create_persistent_volume(
        {
            "metadata": {"name": f"hf-cache-{k8s.ns}"},
            "spec": {
                "capacity": gib,
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "local",
                "hostPath": {"path": str(folder)},
                "claimRef": {"namespace": k8s.ns, "name": "hf-cache"},
                "persistentVolumeReclaimPolicy": "Retain",
            },
        }
    )
    k8s.core.create_namespaced_persistent_volume_claim(
        k8s.ns,
        {
            "metadata": {"name": "hf-cache"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "local",
                "volumeName": f"hf-cache-{k8s.ns}",
                "resources": {"requests": gib},
            },
        },
    )


def md_spec(base: dict[str, Any], env_from: list[dict[str, Any]], adapter: dict[str, Any]) -> dict[str, Any]:
    return {
        "baseModel": base,
        "adapter": adapter,
        "replicas": 1,
        "envFrom": env_from,
        "builtin": {"extraArgs": ["--torch-threads", "1", "--max-new-tokens", "8"]},
        "resources": {"gpus": 0, "nodeSelector": {"kubernetes.io/hostname": NODE}},
    }


def test_s3_artifacts_of_a_finetunejob_are_downloaded_checked_and_served(k8s, operator, executor, tmp_path):
    from kubetune_trainer.tiny_model import ensure_tiny_model

    pvc_root = executor.pvc_root  # the folder the executor mounts claims from
    tiny = ensure_tiny_model(tmp_path / "tiny-model")
    with S3Server() as s3:
        assert not set(s3.env) & set(os.environ), "keys and endpoint must come from the Secret only"
        fs, bucket = s3.client(), f"kt-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        fs.put(str(REPO / "examples" / "data" / "glossary.jsonl"), f"{bucket}/data/glossary.jsonl")
        fs.put(str(tiny), f"{bucket}/models/tiny-model", recursive=True)
        secret = {k: base64.b64encode(v.encode()).decode() for k, v in s3.env.items()}
        k8s.core.create_namespaced_secret(k8s.ns, {"metadata": {"name": "s3-keys"}, "data": secret})
        keys = [{"secretRef": {"name": "s3-keys"}}]
        s3_base = {"uri": f"s3://{bucket}/models/tiny-model"}

        k8s.create_ftj(
            "support",
            {
                "baseModel": s3_base,
                "dataset": {"uri": f"s3://{bucket}/data/glossary.jsonl"},
                "output": {"uri": f"s3://{bucket}/runs/support", "mergeWeights": True},
                "lora": {"r": 4},
                "training": {"maxSteps": 2, "precision": "fp32", "evalSteps": 2},
                # A gate that passes: only runs whose EvalPassed is True are served.
                "evaluation": {"maxNewTokens": 4, "gates": {"maxPerplexity": 1e9}},
                "envFrom": keys,
                "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi", "nodeSelector": {"kubernetes.io/hostname": NODE}},
            },
        )
        done = wait_for(
            lambda: (s := k8s.get_ftj("support").get("status", {})).get("phase") in ("Succeeded", "Failed") and s,
            timeout=400,
            what="the FineTuneJob to finish",
        )
        assert done["phase"] == "Succeeded", done
        artifact = done["artifact"]
        run = f"s3://{bucket}/runs/support/run-1"
        assert artifact["uri"] == f"{run}/artifact" and artifact["kind"] == "adapter"
        assert artifact["mergedUri"] == f"{run}/merged" and artifact["mergedDigest"].startswith("sha256:")
        adapter = {"uri": artifact["uri"], "name": "support"}

        # 1. The FineTuneJob's merged weights: a whole model, fetched and checked, served instead of the base.
        k8s.create_md("merged", md_spec(s3_base, keys, {"fineTuneJobRef": {"name": "support"}}))
        # 2. Base model and adapter both on S3: two init containers, then the server.
        k8s.create_md("from-s3", md_spec(s3_base, keys, adapter))
        # 3. A hub-id base model through a cache claim the platform pre-populated; the hub is off.
        snapshot = pvc_root / "hf-cache" / "hf" / "hub" / "models--kubetune--tiny-model" / "snapshots" / ("a" * 40)
        shutil.copytree(tiny, snapshot)
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
        k8s.core.create_namespaced_config_map(
            k8s.ns, {"metadata": {"name": "offline"}, "data": {"HF_HUB_OFFLINE": "1"}}
        )  # fmt: skip
        cache_claim(k8s, pvc_root / "hf-cache")
        hub = {"name": HUB_ID, "cacheUri": "pvc://hf-cache/hf"}
        k8s.create_md("from-hub", md_spec(hub, [*keys, {"configMapRef": {"name": "offline"}}], adapter))

        expected = {
            "merged": (f"{run}/merged#kind=model&digest={artifact['mergedDigest']}", {"fetch-model"}, ["support"]),
            "from-s3": (artifact["uri"], {"fetch-base", "fetch-adapter"}, ["support", "tiny-model"]),
            "from-hub": (artifact["uri"], {"fetch-adapter"}, ["support", "tiny-model"]),
        }
        for md, (served, fetches, names) in expected.items():
            status = wait_for(lambda md=md: (k8s.get_md(md).get("status") or {}).get("phase") == "Stable"
                              and k8s.get_md(md)["status"], 60, f"{md} Stable")  # fmt: skip
            assert status["stableAdapterUri"] == served
            (endpoint,) = wait_for(lambda md=md: serving(executor, k8s.ns, md), 240, f"a ready {md} server process")
            with urllib.request.urlopen(f"http://{endpoint}/v1/models", timeout=10) as r:
                assert [m["id"] for m in json.loads(r.read())["data"]] == names
            status_code, body = complete(endpoint, "support")
            assert status_code == 200 and body["model"] == "support" and body["choices"][0]["text"], body
            (pod,) = pods_of(k8s, md)
            inits = {s.name: s.state.terminated for s in pod.status.init_container_statuses}
            assert set(inits) == fetches and all(t.exit_code == 0 for t in inits.values())
        verified = pods_of(k8s, "merged")[0].status.init_container_statuses[0].state.terminated.message
        assert f"({artifact['mergedDigest']} verified)" in verified
        # What the server loaded is byte for byte what the trainer recorded.
        local = executor.workdir / k8s.ns / pods_of(k8s, "merged")[0].metadata.name / "volumes" / "models"
        assert directory_digest(local / "model") == artifact["mergedDigest"]

        # 4. The stored weights altered after training: the download does not match, nothing serves them.
        fs.pipe(f"{bucket}/runs/support/run-1/merged/config.json", b'{"tampered": true}')
        k8s.create_md("tampered", md_spec(s3_base, keys, {"fineTuneJobRef": {"name": "support"}}))

        def failed_init() -> Any:
            for pod in pods_of(k8s, "tampered"):
                for s in pod.status.init_container_statuses or []:
                    if s.name == "fetch-model" and s.state.terminated and s.state.terminated.exit_code != 0:
                        return pod, s.state.terminated
            return None

        pod, terminated = wait_for(failed_init, 120, "the tampered model's download to be refused")
        assert pod.status.phase == "Failed" and "differs from the recorded" in terminated.message
        assert not serving(executor, k8s.ns, "tampered")
        k8s.custom.delete_namespaced_custom_object("kubetune.io", "v1alpha1", k8s.ns, "modeldeployments", "tampered")
    k8s.core.delete_persistent_volume(f"hf-cache-{k8s.ns}")
