"""Preemption-safe training, end to end with real parts: an evicted trainer resumes on a fresh pod.

The operator creates the trainer Job (podFailurePolicy: DisruptionTarget -> Ignore, exit 2 -> FailJob);
the local executor runs the real trainer as a process and, when the pod is evicted through the
policy/v1 Eviction API, delivers a real SIGTERM as a kubelet would. The trainer checkpoints at the next
step boundary, mirrors the checkpoint to its s3:// output (moto's S3 server) and exits 143; the Job
controller does not count the disrupted pod and starts another, whose scratch space is empty (as on
another node), so it can only resume from the remote checkpoint.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import watch

from kubetune_trainer.export import directory_digest
from tests.k8s.conftest import wait_for
from tests.support.s3 import S3Server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
NODE = "local-preempt"
RESOURCES = {"gpus": 0, "cpu": "1", "memory": "2Gi", "nodeSelector": {"kubernetes.io/hostname": NODE}}


class PodLog:
    """Every pod event of a namespace, from a watch (a pod that lives a moment is still seen)."""

    def __init__(self, k8s: Any) -> None:
        self.events: list[tuple[str, Any]] = []
        self.error: Exception | None = None  # the stream cut at teardown (namespace or apiserver gone)
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(k8s,), daemon=True)
        self._thread.start()

    def _run(self, k8s: Any) -> None:
        try:
            for event in self._watch.stream(k8s.core.list_namespaced_pod, k8s.ns, timeout_seconds=600):
                self.events.append((event["type"], event["object"]))
        except Exception as e:
            self.error = e

    def names(self) -> list[str]:
        return list(dict.fromkeys(pod.metadata.name for _, pod in self.events))

    def seen(self, name: str) -> list[Any]:
        return [pod for _, pod in self.events if pod.metadata.name == name]

    def stop(self) -> None:
        self._watch.stop()


@pytest.fixture
def pods(k8s) -> Iterator[PodLog]:
    log = PodLog(k8s)
    yield log
    log.stop()


def exit_code(pod: Any) -> int | None:
    for cs in pod.status.container_statuses or []:
        if cs.state and cs.state.terminated:
            return int(cs.state.terminated.exit_code)
    return None


def condition(pod: Any, type_: str) -> Any:
    return next((c for c in pod.status.conditions or [] if c.type == type_), None)


def test_evicted_trainer_resumes_from_its_s3_checkpoint_without_using_a_retry(k8s, operator, executor, pods, tmp_path):
    from kubetune_trainer.tiny_model import ensure_tiny_model

    with S3Server() as s3:
        fs, bucket = s3.client(), f"kt-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        fs.put(str(REPO / "examples" / "data" / "glossary.jsonl"), f"{bucket}/data/glossary.jsonl")
        fs.put(str(ensure_tiny_model(tmp_path / "tiny")), f"{bucket}/models/tiny", recursive=True)
        secret = {k: base64.b64encode(v.encode()).decode() for k, v in s3.env.items()}
        k8s.core.create_namespaced_secret(k8s.ns, {"metadata": {"name": "s3-keys"}, "data": secret})
        # Long enough that the eviction lands mid-training: a step of the tiny model takes ~30 ms, and
        # status -> this poll -> Eviction -> the executor's SIGTERM takes up to a second on a busy machine.
        steps = 200
        k8s.create_ftj(
            "preempted",
            {
                "baseModel": {"uri": f"s3://{bucket}/models/tiny"},
                "dataset": {"uri": f"s3://{bucket}/data/glossary.jsonl"},
                "output": {"uri": f"s3://{bucket}/runs/preempted"},
                "lora": {"r": 4},
                "training": {
                    "maxSteps": steps,
                    "checkpointSteps": 5,
                    "loggingSteps": 5,
                    "evalSteps": steps,
                    "precision": "fp32",
                },
                "evaluation": {"maxNewTokens": 4},
                # No retry to spare: the eviction must not count as one.
                "backoffLimit": 0,
                "envFrom": [{"secretRef": {"name": "s3-keys"}}],
                "resources": RESOURCES,
            },
        )
        remote = f"s3://{bucket}/runs/preempted/run-1/checkpoints"
        seen = wait_for(
            lambda: (c := k8s.get_ftj("preempted")["status"].get("lastCheckpoint", "")).startswith(remote) and c,
            timeout=300,
            what="a checkpoint mirrored to S3",
            every=0.1,
        )
        checkpoint_step = int(seen.rsplit("-", 1)[-1])
        first = k8s.core.list_namespaced_pod(k8s.ns).items[0].metadata.name
        k8s.core.create_namespaced_pod_eviction(first, k8s.ns, {"metadata": {"name": first, "namespace": k8s.ns}})

        done = wait_for(
            lambda: (s := k8s.get_ftj("preempted").get("status", {})).get("phase") in ("Succeeded", "Failed") and s,
            timeout=400,
            what="the preempted FineTuneJob to finish",
        )
        assert done["phase"] == "Succeeded", done

        # The evicted pod: the apiserver marked it DisruptionTarget, the trainer got SIGTERM and exited 143.
        evicted = pods.seen(first)
        disruption = next(c for p in evicted if (c := condition(p, "DisruptionTarget")) is not None)
        assert disruption.status == "True" and disruption.reason == "EvictionByEvictionAPI"
        assert 143 in [exit_code(p) for p in evicted if p.status.phase == "Failed"]
        first_log = (executor.workdir / k8s.ns / first / "container.log").read_text()
        stopped = re.search(r"preempted: stopped by SIGTERM at step (\d+); checkpoint written", first_log)
        assert stopped, first_log[-3000:]
        stopped_at = int(stopped.group(1))
        assert checkpoint_step <= stopped_at < steps

        # One retry pod, with an empty cache: it resumed from the SIGTERM checkpoint it fetched from S3.
        names = pods.names()
        assert len(names) == 2 and names[0] == first, names
        retry_log = (executor.workdir / k8s.ns / names[1] / "container.log").read_text()
        assert f"resumed from step {stopped_at}/{steps} ({remote}/step-{stopped_at})" in retry_log, retry_log[-3000:]

        # backoffLimit 0 and still Complete: the disrupted pod was not counted as a failure.
        job = k8s.jobs()[0]
        assert any(c.type == "Complete" and c.status == "True" for c in job.status.conditions), job.status
        assert not job.status.failed, job.status

        # The artifact is whole: its files on S3 have the digest the status reports.
        artifact = f"s3://{bucket}/runs/preempted/run-1/artifact"
        assert done["artifact"]["uri"] == artifact
        local = tmp_path / "artifact"
        fs.invalidate_cache()  # this client listed the bucket before the trainer wrote the artifact
        fs.get(f"{bucket}/runs/preempted/run-1/artifact", str(local), recursive=True)
        assert directory_digest(local) == done["artifact"]["digest"]
        result = json.loads(fs.cat(f"{bucket}/runs/preempted/run-1/result.json"))
        assert result["steps"] == steps and result["phase"] == "Succeeded"


def test_a_bad_config_exit_fails_the_job_at_once(k8s, operator, executor, pods, tmp_path):
    k8s.create_ftj(
        "bad-data",
        {
            "baseModel": {"uri": str(tmp_path / "never-loaded")},
            # Passes admission; the trainer finds it missing and exits 2 (bad data: final).
            "dataset": {"uri": str(tmp_path / "missing.jsonl")},
            "output": {"uri": str(tmp_path / "out")},
            "backoffLimit": 3,
            "resources": RESOURCES,
        },
    )
    done = wait_for(
        lambda: (s := k8s.get_ftj("bad-data").get("status", {})).get("phase") == "Failed" and s,
        timeout=120,
        what="the FineTuneJob to fail",
    )
    job = k8s.jobs()[0]
    failed = next(c for c in job.status.conditions if c.type == "Failed")
    assert failed.status == "True" and failed.reason == "PodFailurePolicy", failed
    assert done["conditions"] and next(c for c in done["conditions"] if c["type"] == "Failed")["status"] == "True"
    names = pods.names()
    assert len(names) == 1, names  # three retries allowed, none used
    assert 2 in [exit_code(p) for p in pods.seen(names[0])]


def test_a_process_that_ignores_sigterm_is_killed_when_the_grace_period_ends(k8s, executor, pods):
    ignore_sigterm = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
    )
    k8s.core.create_namespaced_pod(
        k8s.ns,
        {
            "metadata": {"name": "stubborn"},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": NODE},
                "terminationGracePeriodSeconds": 3,
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [{"name": "main", "image": "any", "command": ["python", "-c", ignore_sigterm]}],
            },
        },
    )
    log = executor.workdir / k8s.ns / "stubborn" / "container.log"
    wait_for(lambda: log.exists() and "up" in log.read_text(), 60, "the process to start")
    started = time.monotonic()
    k8s.core.delete_namespaced_pod("stubborn", k8s.ns)
    wait_for(lambda: any(t == "DELETED" for t, _ in pods.events), 30, "the pod to be gone")
    waited = time.monotonic() - started
    final = [p for p in pods.seen("stubborn") if p.status.phase == "Failed"]
    assert final and exit_code(final[-1]) == 137, [p.status for p in pods.seen("stubborn")][-1]
    assert 3 <= waited < 15, waited  # SIGTERM ignored: SIGKILL came when the 3 s were up, not before
