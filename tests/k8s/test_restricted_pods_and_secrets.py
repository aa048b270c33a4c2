"""Trainer and server pods in a namespace that enforces the `restricted` Pod Security Standard, with
secrets planted in the spec's references: the apiserver admits the pods, the local executor runs a real
trainer and a real server in them, and no planted value shows up anywhere a user or the operator can read.

The S3 keys are real (the trainer reads and writes moto's S3 with them, through envFrom only); the
Hugging Face token is referenced by tokenSecretRef and handed to the trainer as HF_TOKEN.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune_dev.controlplane import ControlPlane
from kubetune_dev.local_executor import ExecutorProcess
from tests.k8s.conftest import Api, OperatorProcess, wait_for
from tests.support.s3 import S3Server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
NODE = "local-restricted"
# Values nobody should ever see again once they are in a Secret.
HF_TOKEN = f"hf_planted{uuid.uuid4().hex}"
KEY_ID = f"AKIAPLANTED{uuid.uuid4().hex[:12].upper()}"
SECRET_KEY = f"planted-secret-{uuid.uuid4().hex}"
PLANTED = (HF_TOKEN, KEY_ID, SECRET_KEY)


@dataclass
class Deployed:
    k8s: Api
    executor: ExecutorProcess
    operator: OperatorProcess
    s3: Any  # s3fs filesystem
    bucket: str


@pytest.fixture(scope="module")
def deployed(
    api: client.ApiClient,
    control_plane: ControlPlane,
    operator_process: OperatorProcess,
    executor: ExecutorProcess,
    tmp_path_factory: Any,
) -> Iterator[Deployed]:
    from kubetune_trainer.tiny_model import ensure_tiny_model

    ns = f"restricted-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    core.create_namespace({"metadata": {"name": ns, "labels": labels}})
    core.create_namespaced_service_account(ns, {"metadata": {"name": "kubetune-trainer"}})
    ex = executor  # its own process (tests/k8s/conftest.py), the kubelet of NODE
    if not operator_process.alive():
        operator_process.start()
    k8s = Api(api, ns)
    with S3Server() as s3:
        fs, bucket = s3.client(), f"kt-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        fs.put(str(REPO / "examples" / "data" / "glossary.jsonl"), f"{bucket}/data/glossary.jsonl")
        fs.put(str(ensure_tiny_model(tmp_path_factory.mktemp("tiny"))), f"{bucket}/models/tiny", recursive=True)
        keys = {**s3.env, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}  # moto takes any key
        for name, data in (("s3-keys", keys), ("hf-token", {"token": HF_TOKEN})):
            encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
            core.create_namespaced_secret(ns, {"metadata": {"name": name}, "data": encoded})
        env_from = [{"secretRef": {"name": "s3-keys"}}]
        scheduling = {"gpus": 0, "cpu": "1", "memory": "2Gi", "nodeSelector": {"kubernetes.io/hostname": NODE}}
        base = {"uri": f"s3://{bucket}/models/tiny"}
        k8s.create_ftj(
            "support",
            {
                "baseModel": {**base, "tokenSecretRef": {"name": "hf-token"}},
                "dataset": {"uri": f"s3://{bucket}/data/glossary.jsonl"},
                "output": {"uri": f"s3://{bucket}/runs/support"},
                "lora": {"r": 4},
                "training": {"maxSteps": 2, "precision": "fp32", "evalSteps": 2},
                "evaluation": {"maxNewTokens": 4, "gates": {"maxPerplexity": 1e9}},
                "envFrom": env_from,
                "resources": scheduling,
            },
        )
        done = wait_for(
            lambda: (s := k8s.get_ftj("support").get("status", {})).get("phase") in ("Succeeded", "Failed") and s,
            timeout=400,
            what="the FineTuneJob in the restricted namespace to finish",
        )
        assert done["phase"] == "Succeeded", done
        k8s.create_md(
            "chat",
            {
                "baseModel": base,
                "adapter": {"fineTuneJobRef": {"name": "support"}},
                "replicas": 1,
                "envFrom": env_from,
                "builtin": {"extraArgs": ["--torch-threads", "1", "--max-new-tokens", "8"]},
                "resources": scheduling,
            },
        )
        wait_for(lambda: (k8s.get_md("chat").get("status") or {}).get("phase") == "Stable", 120, "chat Stable")
        wait_for(lambda: [ep for ep, lb in ex.targets() if lb.get("namespace") == ns], 240, "a ready server process")
        yield Deployed(k8s, ex, operator_process, fs, bucket)
    core.delete_namespace(ns)


def test_the_namespace_really_enforces_restricted(deployed):
    """The label is not decoration: a pod without the restricted settings is refused there."""
    k8s = deployed.k8s
    plain = {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    with pytest.raises(ApiException) as refused:
        k8s.core.create_namespaced_pod(k8s.ns, plain)
    message = json.loads(refused.value.body)["message"]
    assert refused.value.status == 403 and 'violates PodSecurity "restricted:latest"' in message, message


def test_trainer_and_server_pods_are_admitted_and_run(deployed):
    k8s = deployed.k8s
    pods = k8s.core.list_namespaced_pod(k8s.ns).items
    trainer = [p for p in pods if p.metadata.labels.get("app.kubernetes.io/component") == "trainer"]
    server = [p for p in pods if p.metadata.labels.get("app.kubernetes.io/component") == "server"]
    assert [p.status.phase for p in trainer] == ["Succeeded"]
    assert server and all(p.status.phase == "Running" for p in server)
    assert all(c.ready for p in server for c in p.status.container_statuses)
    for pod in trainer + server:
        for c in (pod.spec.init_containers or []) + pod.spec.containers:
            assert c.security_context.read_only_root_filesystem is True, (pod.metadata.name, c.name)
    refusals = [e.message for e in k8s.core.list_namespaced_event(k8s.ns).items if e.reason == "FailedCreate"]
    assert refusals == []


def test_planted_secrets_appear_nowhere(deployed):
    k8s = deployed.k8s
    ns = k8s.ns
    seen: dict[str, str] = {}

    def dump(obj: Any) -> str:
        return yaml.safe_dump(k8s.client.sanitize_for_serialization(obj))

    for kind, plural in (("FineTuneJob", "finetunejobs"), ("ModelDeployment", "modeldeployments")):
        for obj in k8s.custom.list_namespaced_custom_object("kubetune.io", "v1alpha1", ns, plural)["items"]:
            seen[f"{kind} {obj['metadata']['name']}"] = dump(obj)  # spec and status
    seen["events"] = dump(k8s.core.list_namespaced_event(ns))
    seen["configmaps"] = dump(k8s.core.list_namespaced_config_map(ns))
    seen["jobs"] = dump(k8s.batch.list_namespaced_job(ns))
    seen["deployments"] = dump(k8s.apps.list_namespaced_deployment(ns))
    pods = k8s.core.list_namespaced_pod(ns).items
    seen["pods"] = dump(pods)  # env, termination messages, status
    seen["operator log"] = deployed.operator.log_text()
    for log in (deployed.executor.workdir / ns).glob("*/container.log"):
        seen[f"log {log.parent.name}"] = log.read_text(errors="replace")
    for key in deployed.s3.find(f"{deployed.bucket}/runs/support"):  # model card, result.json, adapter
        seen[key] = deployed.s3.cat(key).decode(errors="replace")
    assert any(k.endswith("model_card.json") for k in seen), "no model card to check"
    assert len([k for k in seen if k.startswith("log ")]) >= 2, "no trainer and server logs to check"
    leaks = [(where, value[:12]) for where, text in seen.items() for value in PLANTED if value in text]
    assert leaks == []

    # Every variable that carries one comes by reference: the token as a secretKeyRef, the keys by envFrom.
    for pod in pods:
        for c in (pod.spec.init_containers or []) + pod.spec.containers:
            assert all(e.value_from is not None for e in c.env or [] if e.name in ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY"))
            assert [ref.secret_ref.name for ref in c.env_from or []] == ["s3-keys"]
    (trainer,) = [p for p in pods if p.metadata.labels.get("app.kubernetes.io/component") == "trainer"]
    (token,) = [e for e in trainer.spec.containers[0].env if e.name == "HF_TOKEN"]
    assert token.value is None and token.value_from.secret_key_ref.name == "hf-token"
