"""The environment the operator's builder writes into the trainer Job is exactly what the trainer reads."""

from __future__ import annotations

import ast
import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from kubetune_operator.builders.trainer_job import build_trainer_job
from kubetune_operator.settings import Settings
from kubetune_operator.specs import FineTuneJobSpec
from kubetune_trainer import environment, uris
from kubetune_trainer.distributed import World
from kubetune_trainer.environment import TrainerEnv

FTJ: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "support-bot", "namespace": "ml", "uid": "uid-1", "generation": 1},
    "spec": {
        # A token Secret, so the builder sets every variable it can set.
        "baseModel": {"name": "org/tiny", "tokenSecretRef": {"name": "hf", "key": "tok"}},
        "dataset": {"uri": "pvc://data/support.jsonl"},
        "output": {"uri": "pvc://models/support-bot"},
        # A judge by reference with a key Secret: the judge's URL and key variables too.
        "evaluation": {"judge": {"modelDeploymentRef": {"name": "judge"}, "apiKeySecretRef": {"name": "jk"}}},
        "tracking": {"mlflow": {"trackingUri": "http://mlflow:5000", "credentialsSecretRef": {"name": "mlf"}}},
    },
}
SETTINGS = Settings(pvc_mount_root="/volumes", trainer_metrics_port=9411)
PACKAGE = Path(environment.__file__).parent


def job_env() -> dict[str, Any]:
    ftj = copy.deepcopy(FTJ)
    # The reconcile layer resolves the judge's ModelDeployment to its Service (judge_target.resolve).
    spec = dataclasses.replace(FineTuneJobSpec.from_dict(ftj["spec"]), judge_url="http://judge-stable.ml.svc:8000")
    job = build_trainer_job(spec, ftj, 2, SETTINGS)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def trainer_variables(names: Any) -> set[str]:
    return {n for n in names if n.startswith("KUBETUNE_") or n == "HF_TOKEN"}


class RecordingEnviron(dict[str, str]):
    """A mapping that remembers every key looked up in it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)


def test_every_variable_the_builder_sets_is_read_by_the_trainer_and_the_reverse():
    read = set(environment.READ_HERE) | set(environment.READ_BY_URIS)
    set_by_builder = trainer_variables(job_env())
    assert set_by_builder - read == set(), "set by the operator, read by nobody in the trainer"
    unset_here = set(environment.LOCAL_ONLY) | set(environment.SET_FOR_GANGS)  # this Job is one node's
    assert read - unset_here - set_by_builder == set(), "read, but the operator never sets it"
    assert set(environment.LOCAL_ONLY) & set_by_builder == set(), "LOCAL_ONLY names one the operator sets"
    assert set(environment.SET_FOR_GANGS) & set_by_builder == set(), "a one-node Job with a gang's variable"


def test_trainer_env_reads_exactly_the_variables_it_documents():
    environ = RecordingEnviron({k: v for k, v in job_env().items() if isinstance(v, str)})
    TrainerEnv.from_environ(environ)
    assert environ.asked == set(environment.READ_HERE) | set(environment.READ_FROM_KUBEFLOW)
    for name in environment.READ_HERE + environment.READ_FROM_KUBEFLOW:
        assert name in environment.__doc__


def test_the_values_the_builder_writes_parse_into_the_trainer_env():
    env = TrainerEnv.from_environ({k: v for k, v in job_env().items() if isinstance(v, str)})
    assert (env.finetunejob_name, env.namespace, env.run, env.owner_run) == ("support-bot", "ml", "2", "2")
    assert env.output_dir == "/volumes/models/support-bot/run-2"
    assert env.metrics_port == 9411
    assert env.termination_log == Path("/dev/termination-log")  # the Job's terminationMessagePath
    local = TrainerEnv.from_environ({})
    assert (local.run, local.owner_run, local.output_dir, local.metrics_port) == (None, "0", None, 9400)


def test_a_bad_metrics_port_names_the_variable():
    with pytest.raises(ValueError, match="KUBETUNE_METRICS_PORT='many'"):
        TrainerEnv.from_environ({"KUBETUNE_METRICS_PORT": "many"})


def test_the_hub_token_never_shows_in_a_log_line():
    env = TrainerEnv.from_environ({"HF_TOKEN": "hf_secret"})
    assert env.hf_token == "hf_secret" and "hf_secret" not in repr(env)


def test_the_locations_uris_reads_come_from_those_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(tmp_path / "pvc"))
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KUBETUNE_HF_ROOT", str(tmp_path / "hub"))
    (tmp_path / "hub" / "org" / "name").mkdir(parents=True)
    assert uris.local_path("pvc://claim/x") == tmp_path / "pvc" / "claim" / "x"
    assert uris.cache_dir() == tmp_path / "cache"
    assert uris.hf_local_copy("hf://org/name") == tmp_path / "hub" / "org" / "name"


def test_no_other_trainer_module_names_a_kubetune_variable():
    """Only environment.py (and uris.py, for the locations) look KUBETUNE_* variables up."""
    owners = {"environment.py", "uris.py"}
    found = {}
    for path in sorted(PACKAGE.glob("*.py")):
        names = [
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(r"KUBETUNE_[A-Z_]+", node.value)
        ]
        if names and path.name not in owners:
            found[path.name] = names
    assert found == {}


def test_the_world_comes_from_torchrun_variables_alone():
    assert World.from_environ({"KUBETUNE_RUN": "3"}) == World()
    assert World.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(3, 4, 1)
