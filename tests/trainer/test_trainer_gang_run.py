"""A gang on one machine: two trainer processes with a gang's environment (KUBETUNE_NODES=2, a node rank
each, node 0 at 127.0.0.1), each with a cache of its own as pods on two nodes have, and an s3:// output
(moto's server). The pods' own command is run (no torchrun here): each trainer relaunches itself.

A gang started again from scratch (the operator's group restart: new pods, empty disks) resumes on both
nodes from the remote checkpoint, because node 1's first process pulls it for its own disk too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune_dev.processes import free_port
from tests.support.s3 import S3Server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def s3() -> Iterator[tuple[S3Server, str]]:
    with S3Server() as server:
        bucket = f"kt-{uuid.uuid4().hex[:12]}"
        server.client().mkdir(bucket)
        yield server, bucket


def start_node(spec: Path, rank: int, port: int, disk: Path, s3: S3Server) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_")}
    environ.update(
        s3.env,
        KUBETUNE_NODES="2",
        KUBETUNE_NODE_RANK=str(rank),
        KUBETUNE_MASTER_ADDR="127.0.0.1",
        KUBETUNE_MASTER_PORT=str(port),
        KUBETUNE_DIST_BACKEND="gloo",
        GLOO_SOCKET_IFNAME="lo",
        KUBETUNE_RUN="1",
        KUBETUNE_CACHE=str(disk),  # this pod's own disk: where an s3:// output's run folder is
        KUBETUNE_METRICS_PORT="0",
        OMP_NUM_THREADS="1",
        PYTHONPATH=f"{REPO / 'trainer'}{os.pathsep}{REPO / 'api'}",
    )
    cmd = [sys.executable, "-m", "kubetune_trainer", "train", "--spec", str(spec)]
    return subprocess.Popen(cmd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_gang(spec: Path, disks: tuple[Path, Path], s3: S3Server) -> tuple[str, str]:
    """Both nodes to the end; their logs."""
    port = free_port()
    nodes = [start_node(spec, rank, port, disk, s3) for rank, disk in enumerate(disks)]
    logs = [proc.communicate(timeout=400)[0] for proc in nodes]
    for rank, (proc, log) in enumerate(zip(nodes, logs, strict=True)):
        assert proc.returncode == 0, f"node {rank}:\n{log[-4000:]}"
    return logs[0], logs[1]


def test_a_restarted_gang_resumes_on_every_node_from_the_remote_checkpoint(s3, write_spec, tmp_path):
    server, bucket = s3
    output = f"s3://{bucket}/runs/gang"
    training = {"batchSize": 4, "maxSeqLength": 64, "checkpointSteps": 2, "evalSteps": 100, "loggingSteps": 1}
    fast = {"lora": {"r": 4, "dropout": 0.0}, "output": {"uri": output}, "resources": {"gpus": 0}}
    fast["evaluation"] = {"metrics": ["perplexity"], "maxNewTokens": 2}
    first = write_spec({**fast, "training": {**training, "maxSteps": 2}}, name="two-steps.yaml")
    run_gang(first, (tmp_path / "a0", tmp_path / "a1"), server)
    assert server.client().exists(f"{bucket}/runs/gang/checkpoints/step-2/manifest.json")

    # The same gang asked for 4 steps, on new pods with empty disks: both nodes start from step 2.
    second = write_spec({**fast, "training": {**training, "maxSteps": 4}}, name="four-steps.yaml")
    disks = (tmp_path / "b0", tmp_path / "b1")
    logs = run_gang(second, disks, server)
    for rank, log in enumerate(logs):
        assert f"resumed from step 2/4 ({output}/checkpoints/step-2)" in log, f"node {rank}:\n{log[-4000:]}"
    result = json.loads(server.client().cat(f"{bucket}/runs/gang/result.json"))
    assert result["phase"] == "Succeeded" and result["steps"] == 4 and result["worldSize"] == 2
    # Node 1 pulled the checkpoint onto its own disk and wrote no output of its own there.
    (run_dir,) = (disks[1] / "runs").iterdir()
    assert (run_dir / "checkpoints" / "step-2" / "manifest.json").exists()
    assert not (run_dir / "result.json").exists() and not (run_dir / "artifact").exists()
    assert not list((run_dir / "checkpoints").glob("step-4"))  # node 0 alone writes checkpoints
