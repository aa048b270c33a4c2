"""Operator-side spec checks, run hashing, cron arithmetic and settings parsing (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from kubetune_operator.schedule import due_time
from kubetune_operator.settings import Settings
from kubetune_operator.specs import FineTuneJobSpec, Gang, run_spec_hash, validate


def test_valid_minimal_spec(ftj):
    assert validate(FineTuneJobSpec.from_dict(ftj["spec"])) == []


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"schedule": "61 * * * *"}, "spec.schedule"),
        ({"output": {"uri": "pvc://data/support.jsonl"}}, "overlaps spec.dataset.uri"),
        # Compared after normalisation: a trailing slash or a doubled one is the same place.
        ({"dataset": {"uri": "pvc://data/docs"}, "output": {"uri": "pvc://data/docs/"}}, "overlaps spec.dataset.uri"),
        ({"dataset": {"uri": "/data/docs"}, "output": {"uri": "//data/./docs//runs"}}, "overlaps spec.dataset.uri"),
        ({"output": {"uri": "pvc://data/"}}, "overlaps spec.dataset.uri"),  # the dataset lies inside the output
        ({"baseModel": {"uri": "s3://b/models/base"}, "output": {"uri": "s3://b/models/base/"}}, "spec.baseModel.uri"),
    ],
)
def test_operator_side_problems(ftj, patch, fragment):
    ftj["spec"].update(patch)
    problems = validate(FineTuneJobSpec.from_dict(ftj["spec"]))
    assert len(problems) == 1 and fragment in problems[0]


def test_a_stored_spec_that_breaks_a_newer_rule_is_reported_not_raised(ftj):
    """The apiserver checks rules on write only: a spec stored before a rule existed still parses to a
    problem the reconciler writes into status (the table in tests/support/bad_specs.py has the rest)."""
    ftj["spec"].update({"method": "prompt", "output": {"uri": "pvc://models/x", "mergeWeights": True}})
    problems = validate(FineTuneJobSpec.from_dict(ftj["spec"]))
    assert len(problems) == 1 and "output.mergeWeights is not available with method prefix or prompt" in problems[0]


def test_run_hash_ignores_suspend_and_schedule(ftj):
    base = run_spec_hash(ftj["spec"])
    assert run_spec_hash({**ftj["spec"], "suspend": True, "schedule": "@daily"}) == base
    assert run_spec_hash({**ftj["spec"], "method": "full"}) != base


def test_due_time_collapses_missed_slots():
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert due_time("*/10 * * * *", t, t + dt.timedelta(minutes=35)) == t + dt.timedelta(minutes=30)
    assert due_time("*/10 * * * *", t, t + dt.timedelta(minutes=9)) is None


def test_settings_from_env():
    s = Settings.from_env({"KUBETUNE_TRAINER_IMAGE": "x:1", "KUBETUNE_SCHEDULE_CHECK_SECONDS": "2.5"})
    assert s.trainer_image == "x:1" and s.schedule_check_seconds == 2.5
    assert s.trainer_metrics_port == Settings().trainer_metrics_port


def test_settings_reject_bad_numbers():
    with pytest.raises(ValueError, match="KUBETUNE_TRAINER_METRICS_PORT"):
        Settings.from_env({"KUBETUNE_TRAINER_METRICS_PORT": "many"})


def test_settings_reject_an_unknown_engine():
    assert Settings.from_env({"KUBETUNE_TRAINING_ENGINE": "jobSet"}).training_engine == "jobSet"
    with pytest.raises(ValueError, match="KUBETUNE_TRAINING_ENGINE='mpi': expected one of indexedJob, jobSet"):
        Settings.from_env({"KUBETUNE_TRAINING_ENGINE": "mpi"})


def test_gang_view_only_for_several_nodes(ftj):
    assert FineTuneJobSpec.from_dict(ftj["spec"]).gang is None
    spec = {
        **ftj["spec"],
        "resources": {"nodes": 3, "gpus": 0},
        "training": {"distributed": {"backend": "gloo", "socketInterface": "lo"}},
    }
    assert FineTuneJobSpec.from_dict(spec).gang == Gang(3, None, "gloo", 29500, "lo")


def test_operator_package_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, kubetune_operator.handlers; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
