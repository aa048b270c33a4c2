"""The operator's Prometheus metrics: what it decided, so dashboards and alerts can follow rollouts.

They describe events, not state: the state lives in the resources' status, and a restarted
operator starts counting from zero like any Prometheus counter.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, disable_created_metrics, start_http_server

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double every counter and no dashboard reads them

ROLLOUTS = Counter(
    "kubetune_rollouts_total",
    "Rollout decisions by ModelDeployment controllers (start, advance, hold, promote, rollback, cancel)",
    ["namespace", "name", "decision"],
)
CANARY_WEIGHT = Gauge(
    "kubetune_canary_weight_percent", "Traffic percent currently set for the canary", ["namespace", "name"]
)
ANALYSIS_VALUE = Gauge(
    "kubetune_analysis_value", "Last measured value of each canary analysis check", ["namespace", "name", "check"]
)
RUN_TRANSITIONS = Counter(
    "kubetune_finetunejob_transitions_total", "FineTuneJob phase transitions", ["namespace", "phase"]
)


def serve(port: int) -> None:
    if port > 0:
        start_http_server(port)
