"""A two-node FineTuneJob end to end: the operator's gang (Indexed Job + headless Service), the real trainer in
both pods (gloo on loopback), one pod killed mid-run, the whole group restarted, and the run resumed from its
last checkpoint to Succeeded.

Real parts: the apiserver, the Job controller, the scheduler, the operator (its own process) and the local
executor running the trainer as two pods' processes. "Killing a pod" is what a node failure does to it: every
process of the pod gets SIGKILL at once (torchrun's agent and its worker), with no chance to checkpoint.
The output is an absolute path both pods see (as a ReadWriteMany claim would be), so node 0's checkpoints
are there for the restarted group.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune_dev.processes import free_port
from tests.k8s.conftest import wait_for
from tests.support.gang_specs import tiny_gang_spec

pytestmark = pytest.mark.slow
NODE = "local-gang-e2e"
INDEX = "batch.kubernetes.io/job-completion-index"
CHECKPOINT_STEPS = 10


def gang_spec(tiny: Path, out: Path, port: int) -> dict[str, Any]:
    training = {
        # Long enough that a pod can be killed between the first checkpoint and the end.
        "maxSteps": 60,
        "evalSteps": 60,
        "loggingSteps": 5,
        "checkpointSteps": CHECKPOINT_STEPS,
        "distributed": {"backend": "gloo", "rendezvousPort": port, "socketInterface": "lo"},
    }
    return {**tiny_gang_spec(tiny, NODE, str(out), training, nodes=2), "backoffLimit": 2}


def pod_pids(pod_dir: Path) -> list[int]:
    """Every process of one pod: those whose KUBETUNE_CACHE is the pod's own scratch folder (the executor sets
    it per pod, and torchrun's workers inherit it)."""
    marker = f"KUBETUNE_CACHE={pod_dir / 'cache'}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            pids.append(int(proc.name))
    return pids


def test_two_node_run_survives_a_killed_pod_and_resumes_from_its_checkpoint(k8s, operator, executor, tmp_path):
    from kubetune_trainer.tiny_model import ensure_tiny_model

    out = tmp_path / "out"
    k8s.create_ftj("gang", gang_spec(ensure_tiny_model(tmp_path / "tiny"), out, free_port()))
    job = "gang-run-1"
    service = wait_for(lambda: _service(k8s, job), 60, "the gang's headless Service")
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses

    def pods() -> dict[int, Any]:
        items = k8s.core.list_namespaced_pod(k8s.ns, label_selector=f"job-name={job}").items
        live = [p for p in items if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
        return {int(p.metadata.annotations[INDEX]): p for p in live}

    checkpoints = out / "run-1" / "checkpoints"
    started = time.monotonic()
    wait_for(lambda: len(pods()) == 2 and any(checkpoints.glob("step-*")), 240, "a first checkpoint", every=0.5)
    victim = pods()[1]
    pids = pod_pids(executor.workdir / k8s.ns / victim.metadata.name)
    assert pids, "no process of node 1's pod found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()

    status = wait_for(
        lambda: (s := k8s.get_ftj("gang").get("status", {})).get("phase") in ("Succeeded", "Failed") and s,
        300,
        "the run to end",
        every=1,
    )
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    group = status["group"]
    assert group["nodes"] == 2 and group["engine"] == "indexedJob"
    assert group["restarts"] == 1 and group["preemptions"] == 0, group
    card = json.loads((out / "run-1" / "artifact" / "model_card.json").read_text())["training"]
    # The restarted group went on from node 0's last checkpoint, not from step 0.
    assert card["resumedFrom"] and card["steps"] == 60, card
    resumed_step = int(Path(card["resumedFrom"]).name.removeprefix("step-"))
    assert resumed_step >= CHECKPOINT_STEPS and resumed_step % CHECKPOINT_STEPS == 0, card
    print(
        f"node 1 killed {killed - started:.0f} s after the pods ran (first checkpoint there); the group restarted"
        f" once, resumed from step {resumed_step} and succeeded {time.monotonic() - killed:.0f} s after the kill"
    )


def _service(k8s: Any, name: str) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return k8s.core.read_namespaced_service(name, k8s.ns)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
