"""A gang's pod (spec.resources.nodes > 1): its environment, read once, and the torchrun command it becomes.

Pure: no process group, no training. The two-node run itself is tests/k8s/test_multinode_gang.py.
"""

from __future__ import annotations

import doctest
import json
import sys

import pytest

from kubetune_trainer import distributed, environment
from kubetune_trainer.config import ConfigError
from kubetune_trainer.distributed import World, torchrun_command
from kubetune_trainer.environment import Rendezvous, TrainerEnv

GANG = {
    "KUBETUNE_NODES": "3",
    "KUBETUNE_NODE_RANK": "2",
    "KUBETUNE_MASTER_ADDR": "tune-1-0.tune-1.ml.svc",
    "KUBETUNE_MASTER_PORT": "29511",
    "KUBETUNE_DIST_BACKEND": "gloo",
}


@pytest.mark.parametrize("module", [environment, distributed])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


def test_a_gang_pod_reads_its_place_once():
    env = TrainerEnv.from_environ(GANG)
    assert env.rendezvous == Rendezvous(nodes=3, node_rank=2, master_addr="tune-1-0.tune-1.ml.svc", master_port=29511)
    assert env.dist_backend == "gloo" and not env.first_node
    assert TrainerEnv.from_environ({**GANG, "KUBETUNE_NODE_RANK": "0"}).first_node


def test_one_node_has_no_rendezvous_whatever_else_is_set():
    for environ in ({}, {"KUBETUNE_NODES": "1", "KUBETUNE_MASTER_ADDR": "x"}, {"PET_NNODES": "1"}):
        env = TrainerEnv.from_environ(environ)
        assert env.rendezvous is None and env.first_node and env.dist_backend is None


def test_the_node_rank_comes_from_kubeflows_variables_when_ours_are_absent():
    """Kubeflow Trainer's torch runtime sets torchrun's PET_ names; ours win where both are set."""
    pet = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "tj-node-0-0.tj", "PET_MASTER_PORT": "29400"}
    assert Rendezvous.from_environ(pet) == Rendezvous(2, 1, "tj-node-0-0.tj", 29400)
    both = {**pet, "KUBETUNE_NODE_RANK": "0", "KUBETUNE_MASTER_PORT": "29500"}
    assert Rendezvous.from_environ(both) == Rendezvous(2, 0, "tj-node-0-0.tj", 29500)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"KUBETUNE_NODE_RANK": None}, r"KUBETUNE_NODE_RANK is not set: with KUBETUNE_NODES=3"),
        ({"KUBETUNE_NODE_RANK": "3"}, r"KUBETUNE_NODE_RANK='3': expected this pod's node rank, 0\.\.2"),
        ({"KUBETUNE_NODE_RANK": "-1"}, r"KUBETUNE_NODE_RANK='-1'"),
        ({"KUBETUNE_NODE_RANK": "one"}, r"KUBETUNE_NODE_RANK='one'"),
        ({"KUBETUNE_NODE_RANK": None, "PET_NODE_RANK": "7"}, r"PET_NODE_RANK='7'"),
        ({"KUBETUNE_NODES": "0"}, r"KUBETUNE_NODES='0': expected the number of pods in the gang"),
        ({"KUBETUNE_NODES": "two"}, r"KUBETUNE_NODES='two'"),
        ({"KUBETUNE_MASTER_ADDR": None}, r"KUBETUNE_MASTER_ADDR is not set"),
        ({"KUBETUNE_MASTER_PORT": "70000"}, r"KUBETUNE_MASTER_PORT='70000': expected the rendezvous port"),
        ({"KUBETUNE_DIST_BACKEND": "mpi"}, r"KUBETUNE_DIST_BACKEND='mpi': expected one of gloo, nccl"),
    ],
)
def test_a_wrong_gang_variable_is_a_config_error_naming_it(change, message):
    environ = {k: v for k, v in {**GANG, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        TrainerEnv.from_environ(environ)


def test_a_gang_pod_runs_torchrun_with_static_rendezvous_on_node_0():
    argv = ["train", "--spec", "/etc/kubetune/finetunejob.yaml"]
    cmd = torchrun_command(2, argv, Rendezvous(3, 2, "tune-1-0.tune-1.ml.svc", 29511))
    assert cmd == [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes=3", "--node-rank=2", "--master-addr=tune-1-0.tune-1.ml.svc", "--master-port=29511",
        "--nproc-per-node=2", "-m", "kubetune_trainer", *argv,
    ]  # fmt: skip
    assert "--standalone" not in cmd
    # One pod: --standalone (torchrun picks its own port), no rendezvous flags.
    one = torchrun_command(2, argv)
    assert "--standalone" in one and not any(a.startswith(("--nnodes", "--master")) for a in one)


def test_node_0s_address_is_waited_for_until_it_resolves(monkeypatch):
    """Pods of a gang start in any order: node 0's DNS record may come after node 1 asks for it."""
    calls: list[str] = []

    def resolve(host, port):
        calls.append(host)
        if host == "nowhere.invalid" or len(calls) < 3:
            raise OSError("Name or service not known")
        return [("ok",)]

    monkeypatch.setattr(distributed.socket, "getaddrinfo", resolve)
    distributed.wait_for_address("tune-1-0.tune-1.ml.svc", timeout=5, every=0)
    assert calls == ["tune-1-0.tune-1.ml.svc"] * 3
    with pytest.raises(OSError, match=r"node 0's address nowhere\.invalid did not resolve"):
        distributed.wait_for_address("nowhere.invalid", timeout=0, every=0)


def test_outside_torchrun_the_collectives_are_no_ops():
    world = World()
    with distributed.in_turn(world):
        pass
    assert distributed.same_across(world, 7) == (7, 7)


def gang_pod(monkeypatch, tmp_path, **environ: str):
    """This process as a gang's pod: the variables given, and a termination log the kubelet made."""
    for name in GANG:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    return log


def test_a_gang_pod_without_its_rank_exits_2_and_says_which_variable(monkeypatch, tmp_path, capsys):
    from kubetune_trainer import cli

    log = gang_pod(monkeypatch, tmp_path, KUBETUNE_NODES="2", KUBETUNE_MASTER_ADDR="j-0.j.ns.svc")
    assert cli.main(["train", "--spec", str(tmp_path / "never-read.yaml")]) == cli.EXIT_BAD_CONFIG
    assert "error: KUBETUNE_NODE_RANK is not set" in capsys.readouterr().err
    message = json.loads(log.read_text())
    assert message["phase"] == "Failed" and message["reason"] == "InvalidConfig"
    assert "KUBETUNE_NODE_RANK" in message["message"]


@pytest.mark.parametrize(("rank", "reports"), [("0", True), ("1", False)])
def test_only_node_0_reports_a_bad_spec(monkeypatch, tmp_path, rank, reports):
    """Every pod of the gang meets the same bad spec; node 0 alone writes result.json and the message
    (a volume the pods share must not get one result.json per node)."""
    from kubetune_trainer import cli

    log = gang_pod(monkeypatch, tmp_path, KUBETUNE_NODES="2", KUBETUNE_NODE_RANK=rank, KUBETUNE_MASTER_ADDR="x")
    spec = tmp_path / "bad.yaml"
    spec.write_text("apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nspec:\n  training: {maxSteps: -1}\n")
    assert cli.main(["train", "--spec", str(spec), "--output", str(tmp_path / "out")]) == cli.EXIT_BAD_CONFIG
    assert (tmp_path / "out" / "result.json").exists() is reports
    assert bool(log.read_text()) is reports
