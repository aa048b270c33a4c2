"""The Grafana dashboard queries metrics that the trainer, the builtin server and the operator really export."""

from __future__ import annotations

import json
import re

import pytest

from tests.chart.helm import CHART

NEEDS_HELM = False
DASHBOARD = json.loads((CHART / "files" / "dashboards" / "kubetune.json").read_text())
EXPRS = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]


SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}


def exported_names() -> set[str]:
    """Series names of the three registries' metric families (labelled ones have no samples until used)."""
    pytest.importorskip("prometheus_client")
    from prometheus_client import REGISTRY

    import kubetune_operator.metrics  # noqa: F401  (registers the operator's metrics on the default registry)
    from kubetune_server.metrics import ServerMetrics
    from kubetune_trainer.progress import Metrics

    registries = [REGISTRY, ServerMetrics(version="v1").registry, Metrics(port=0).registry]
    return {f.name + suffix for r in registries for f in r.collect() for suffix in SUFFIXES.get(f.type, [""])}


def test_every_queried_metric_is_exported() -> None:
    queried = {name for expr in EXPRS for name in re.findall(r"\bkubetune_[a-z_]+\b", expr)}
    assert queried, EXPRS
    missing = queried - exported_names()
    assert not missing, f"the dashboard queries metrics nobody exports: {sorted(missing)}"


def test_panels_cover_training_canary_latency_and_rollbacks() -> None:
    joined = "\n".join(EXPRS)
    assert "kubetune_trainer_step / kubetune_trainer_total_steps" in joined
    assert re.search(r'kubetune_request_duration_seconds_bucket\{version="\$canary"\}.*/.*\$stable', joined)
    assert 'kubetune_rollouts_total{decision="rollback"}' in joined
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
