from __future__ import annotations

import copy
from typing import Any

import pytest

MINIMAL_FTJ: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "support-bot", "namespace": "ml", "uid": "uid-1", "generation": 1},
    "spec": {
        "baseModel": {"name": "org/tiny"},
        "dataset": {"uri": "pvc://data/support.jsonl"},
        "output": {"uri": "pvc://models/support-bot"},
    },
}


@pytest.fixture
def ftj() -> dict[str, Any]:
    return copy.deepcopy(MINIMAL_FTJ)
