# torch, transformers, kubernetes and prometheus-client are partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""Progress reporting: a log line, the FineTuneJob's ``status.progress``, and Prometheus gauges.

Reporting must never take training down: every Kubernetes or metrics failure is logged and swallowed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger("kubetune_trainer")

GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"
# The fields of status.progress in crds/finetunejob.yaml; anything else would be pruned by the API server.
PROGRESS_FIELDS = ("step", "totalSteps", "epoch", "loss", "evalLoss", "tokensPerSecond", "etaSeconds")
PLAN_FIELDS = ("examplesPerStep", "tokensPerStep", "stepsPerEpoch")  # status.progress too, from train.step_plan


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_eta(seconds: float | None) -> str:
    """Seconds as h:mm:ss.

    >>> format_eta(3725)
    '1:02:05'
    """
    if seconds is None:
        return "?"
    return str(dt.timedelta(seconds=round(seconds)))


def progress_line(p: dict[str, Any]) -> str:
    """The human-readable progress log line.

    >>> progress_line({"step": 3, "totalSteps": 10, "epoch": 0.5, "loss": 1.23456, "tokensPerSecond": 99.6})
    'step 3/10 epoch 0.50 loss 1.2346 evalLoss - tokens/s 100 eta ?'
    """
    ev = p.get("evalLoss")
    return (
        f"step {p['step']}/{p['totalSteps']} epoch {p['epoch']:.2f} loss {p['loss']:.4f} "
        f"evalLoss {'-' if ev is None else f'{ev:.4f}'} tokens/s {p['tokensPerSecond']:.0f} "
        f"eta {format_eta(p.get('etaSeconds'))}"
    )


def plan_line(plan: dict[str, Any], total: int) -> str:
    """The log line of the plan.

    >>> plan_line({"examplesPerStep": 8.0, "tokensPerStep": 1200.5, "stepsPerEpoch": 184, "batchSize": 8,
    ...            "gradientAccumulationSteps": 1, "processes": 1}, 368)
    'plan: 8.0 examples/step (batchSize 8 x accumulation 1 x 1 processes), 1200 tokens/step, 184 steps/epoch, 368 total'
    """
    p = plan
    return (
        f"plan: {p['examplesPerStep']} examples/step (batchSize {p['batchSize']} x accumulation "
        f"{p['gradientAccumulationSteps']} x {p['processes']} processes), {p['tokensPerStep']:.0f} tokens/step, "
        f"{p['stepsPerEpoch']} steps/epoch, {total} total"
    )


class StatusReporter:
    """Patches ``status`` of this run's FineTuneJob when running in-cluster; otherwise only logs."""

    on_progress: Callable[[dict[str, Any]], None] | None = None

    def __init__(
        self,
        name: str | None = None,
        namespace: str | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """``name`` None means log only (a local run, or a torchrun rank other than 0). ``on_progress``: also
        handed every progress point (`tracking.Tracker.progress`: MLflow's per-step metrics)."""
        self.name, self.namespace, self.on_progress = name, namespace, on_progress
        self.api: Any = None
        self._plan: dict[str, Any] = {}
        if self.name and self.namespace:
            try:
                from kubernetes import client, config

                try:
                    config.load_incluster_config()
                except config.ConfigException:
                    # Outside a pod (the demo's local executor, a laptop): an explicit kubeconfig only.
                    if not os.environ.get("KUBECONFIG"):
                        raise
                    config.load_kube_config()
                self.api = client.CustomObjectsApi()
            except Exception as e:  # not in a pod, or no service account: print-only mode
                log.info("status patches disabled (%s)", e)

    def patch(self, status: dict[str, Any]) -> bool:
        if self.api is None:
            return False
        try:
            self.api.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                {"status": status},
                _content_type="application/merge-patch+json",
            )
            return True
        except Exception as e:
            log.warning("could not patch FineTuneJob %s/%s status: %s", self.namespace, self.name, e)
            return False

    def plan(self, plan: dict[str, Any]) -> None:
        """Examples and tokens per step and steps per epoch, before the first step (the trainer logs them);
        every later progress patch carries them again, so one failed patch does not lose them."""
        self._plan = {k: plan[k] for k in PLAN_FIELDS if plan.get(k) is not None}
        self.patch({"progress": {**self._plan, "updateTime": now()}})

    def progress(self, p: dict[str, Any]) -> None:
        log.info(progress_line(p))
        if self.on_progress is not None:
            self.on_progress(p)
        body = {**getattr(self, "_plan", {}), **{k: p[k] for k in PROGRESS_FIELDS if p.get(k) is not None}}
        self.patch({"progress": {**body, "stepText": f"{p['step']}/{p['totalSteps']}", "updateTime": now()}})

    def checkpoint(self, path: str) -> None:
        self.patch({"lastCheckpoint": path})

    def data(self, counts: dict[str, Any]) -> None:
        """The cleaning counts (status.data), as soon as the data is prepared."""
        self.patch({"data": counts})

    def final(self, metrics: dict[str, Any], eval_passed: bool | None, artifact: dict[str, str] | None = None) -> None:
        verdict = "passed" if eval_passed else "not checked: no gates" if eval_passed is None else "FAILED"
        log.info("evaluation %s: %s", verdict, metrics)
        self.patch({"metrics": metrics, "evalPassed": eval_passed, **({"artifact": artifact} if artifact else {})})


class Metrics:
    """Prometheus gauges on ``port`` (`TrainerEnv.metrics_port`; 0 turns the endpoint off)."""

    _started: set[int] = set()  # one HTTP server per process, even if several runs share it (tests)

    def __init__(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        g = lambda name, doc: Gauge(f"kubetune_trainer_{name}", doc, registry=self.registry)  # noqa: E731
        self.loss, self.eval_loss = g("loss", "Training loss"), g("eval_loss", "Validation loss")
        self.tokens_per_second = g("tokens_per_second", "Non-padding tokens processed per second")
        self.step, self.total_steps = g("step", "Optimizer steps done"), g("total_steps", "Planned steps")
        self.gpu_memory = g("gpu_memory_bytes", "Peak CUDA memory allocated")
        if port and port not in Metrics._started:
            try:
                start_http_server(port, registry=self.registry)
                Metrics._started.add(port)
            except OSError as e:
                log.warning("metrics endpoint on port %s not started: %s", port, e)

    def update(self, p: dict[str, Any]) -> None:
        import torch

        self.loss.set(p["loss"])
        self.tokens_per_second.set(p["tokensPerSecond"])
        self.step.set(p["step"])
        self.total_steps.set(p["totalSteps"])
        if p.get("evalLoss") is not None:
            self.eval_loss.set(p["evalLoss"])
        if torch.cuda.is_available():
            self.gpu_memory.set(torch.cuda.max_memory_allocated())
