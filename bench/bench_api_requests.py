"""API requests the operator costs: per idle ModelDeployment per minute, and per FineTuneJob lifecycle.

Starts the real local control plane (dev/kubetune_dev/controlplane.py) and the operator as its own
process, and reads the apiserver's own `apiserver_request_total` (by verb and resource):

- **Idle ModelDeployments.** `--mds` ModelDeployments (builtin runtime, a fixed adapter) are created
  and left Stable; once settled, the counters are read over `--window` seconds with the operator
  running, then over the same window with the operator stopped (the controllers, scheduler and kwok
  alone: the baseline of the same run). The operator's share is the difference. The operator runs with
  its default tick (KUBETUNE_ROLLOUT_CHECK_SECONDS, 5 s) unless `--tick` says otherwise.
- **One FineTuneJob lifecycle.** A FineTuneJob with the kwok trainer image that succeeds (as in
  tests/k8s) is created and runs to Succeeded; the requests are those on the kinds only the operator
  touches (finetunejobs, configmaps, jobs, pod reads) plus the Events the operator posted (counted
  as objects), less the bench's own create and polls.

    python bench/bench_api_requests.py                     # both measurements: tables and a JSON line
    python bench/bench_api_requests.py --mds 3 --window 60

Results, before and after "parse once, write once", are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config

from kubetune_dev.apiserver_metrics import Key, delta, request_counts
from kubetune_dev.audit import AuditLog
from kubetune_dev.controlplane import ControlPlane, running_control_plane

REPO = Path(__file__).resolve().parents[1]

GROUP, VERSION = "kubetune.io", "v1alpha1"
SUCCEED = "kubetune.test/trainer:kwok-succeed"
#: Kinds no other component reads or writes during a FineTuneJob run (the Job controller writes
#: jobs/status, pods and their bindings; kwok pods/status): their requests are the operator's.
FTJ_OPERATOR_KINDS = {"finetunejobs", "finetunejobs/status", "configmaps", "jobs"}
OPERATOR_EVENT_SOURCES = {"kubetune-operator", "kopf"}


class Operator:
    """`python -m kubetune_operator` against the control plane."""

    def __init__(self, cp: ControlPlane, logdir: Path, tick: float | None) -> None:
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cp.kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(REPO / d) for d in ("api", "operator", "trainer", "dev")]),
            "KUBETUNE_TRAINER_IMAGE": SUCCEED,
            "KUBETUNE_SCHEDULE_CHECK_SECONDS": "2",
            "KUBETUNE_METRICS_PORT": "0",
        }
        if tick is not None:
            self.env["KUBETUNE_ROLLOUT_CHECK_SECONDS"] = str(tick)
        self.logdir, self.starts = logdir, 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.starts += 1
        log = open(self.logdir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([sys.executable, "-m", "kubetune_operator"], env=self.env, stdout=log, stderr=log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


class Polls:
    """The bench's own GETs of its objects, to take out of the operator's count."""

    def __init__(self, custom: client.CustomObjectsApi, ns: str) -> None:
        self.custom, self.ns, self.gets = custom, ns, Counter[str]()

    def get(self, plural: str, name: str) -> dict[str, Any]:
        self.gets[plural] += 1
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)
        return obj

    def until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def md_body(name: str) -> dict[str, Any]:
    spec = {
        "baseModel": {"uri": "/models/base"},
        "adapter": {"uri": "/adapters/v1"},
        "replicas": 2,
        "resources": {"gpus": 0},
        "canary": {"steps": [20, 50, 100], "interval": "2s"},
    }
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}


def ftj_body(name: str) -> dict[str, Any]:
    spec = {
        "baseModel": {"name": "org/tiny-llama"},
        "dataset": {"uri": "/data/support.jsonl"},
        "output": {"uri": "/models/support"},
        "image": SUCCEED,
        "backoffLimit": 0,
        "evaluation": {"gates": {"maxPerplexity": 10}},
    }
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}


def wait_until_watching(cp: ControlPlane, before: Counter[Key], timeout: float = 60) -> None:
    """Kopf lists every resource it watches (and indexes) before it handles anything: its startup
    requests stay out of the measurements."""
    watched = ("finetunejobs", "modeldeployments", "jobs", "pods")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = delta(request_counts(cp), before)
        if all(seen[Key("LIST", r)] for r in watched):
            time.sleep(3)  # and opened its watches
            return
        time.sleep(0.5)
    raise SystemExit(f"the operator did not list {watched} within {timeout}s")


def table(title: str, counts: Counter[Key]) -> str:
    rows = sorted(counts.items(), key=lambda kv: (not kv[0].write, kv[0].resource, kv[0].verb))
    lines = [title, f"  {'verb':<8} {'resource':<34} {'requests':>9}"]
    lines += [f"  {k.verb:<8} {k.resource:<34} {n:>9.1f}" for k, n in rows if n]
    return "\n".join(lines if rows else [title, "  (none)"])


def reads_writes(counts: Counter[Key]) -> tuple[float, float]:
    return sum(n for k, n in counts.items() if not k.write), sum(n for k, n in counts.items() if k.write)


def finetunejob_lifecycle(cp: ControlPlane, api: client.ApiClient, ns: str) -> dict[str, Any]:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    polls = Polls(custom, ns)
    before = request_counts(cp)
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs", ftj_body("support"))
    polls.until(
        lambda: (polls.get("finetunejobs", "support").get("status") or {}).get("phase") == "Succeeded",
        120,
        "FineTuneJob Succeeded",
    )
    time.sleep(5)  # the last events of the run (pod and Job updates after Succeeded) arrive
    seen = delta(request_counts(cp), before)
    ours = Counter({k: n for k, n in seen.items() if k.resource in FTJ_OPERATOR_KINDS})
    ours.update({k: n for k, n in seen.items() if k.resource == "pods" and k.verb in ("GET", "LIST")})
    ours[Key("POST", "finetunejobs")] -= 1  # the bench's create
    ours[Key("GET", "finetunejobs")] -= polls.gets["finetunejobs"]
    events = [e for e in core.list_namespaced_event(ns).items if (e.source.component or "") in OPERATOR_EVENT_SOURCES]
    ours[Key("POST", "events")] = len(events)
    ours = Counter({k: n for k, n in ours.items() if n})
    print(table("FineTuneJob lifecycle (create to Succeeded), the operator's requests:", ours))
    reads, writes = reads_writes(ours)
    print(f"  total: {reads:.0f} reads, {writes:.0f} writes per FineTuneJob lifecycle\n")
    return {"reads": reads, "writes": writes}


def idle_modeldeployments(
    cp: ControlPlane, api: client.ApiClient, ns: str, op: Operator, mds: int, window: float, tick: float
) -> dict[str, Any]:
    apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
    polls = Polls(custom, ns)
    names = [f"idle-{i}" for i in range(mds)]
    for name in names:
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", md_body(name))
    for name in names:
        polls.until(
            lambda n=name: (polls.get("modeldeployments", n).get("status") or {}).get("phase") == "Stable",  # type: ignore[misc]
            60,
            f"{name} Stable",
        )
        polls.until(
            lambda n=name: (apps.read_namespaced_deployment(f"{n}-stable", ns).status.ready_replicas or 0) == 2,  # type: ignore[misc]
            60,
            f"{name}-stable Ready",
        )
    time.sleep(max(3 * tick, 10))  # settled: the pods' last status updates, kopf's own bookkeeping

    audit = AuditLog(cp.audit_log)
    start, mark, since = request_counts(cp), audit.end(), time.time()
    time.sleep(window)
    with_operator = delta(request_counts(cp), start)
    # The apiserver's audit log names each write's namespace: what was written to the bench's own objects
    # in the window, by anyone (the counters' subtraction also catches the apiserver's own background work).
    written = [w for w in audit.writes_since(mark) if w.namespace == ns]
    events = [
        f"{e.reason} on {e.involved_object.kind}/{e.involved_object.name}: {e.message}"
        for e in client.CoreV1Api(api).list_namespaced_event(ns).items
        if (when := e.last_timestamp or e.event_time or e.metadata.creation_timestamp) is not None
        and when.timestamp() >= since
    ]
    op.stop()
    time.sleep(5)  # the operator's watches close (a WATCH is counted when it ends)
    start = request_counts(cp)
    time.sleep(window)
    baseline = delta(request_counts(cp), start)

    per_minute = 60 / window / mds
    operator_part = Counter({k: (with_operator[k] - baseline.get(k, 0)) * per_minute for k in with_operator})
    operator_part = Counter({k: n for k, n in operator_part.items() if n > 0})
    print(table(f"Idle ModelDeployments, operator running ({mds} MDs, {window:g}s):", with_operator))
    print(table(f"Baseline, operator stopped ({window:g}s):", baseline))
    print(table("The operator's requests per idle ModelDeployment per minute:", operator_part))
    reads, writes = reads_writes(operator_part)
    ticks = 60 / tick
    print(
        f"  total: {reads:.1f} reads, {writes:.1f} writes per idle ModelDeployment per minute "
        f"({ticks:g} ticks a minute: {writes / ticks:.2f} writes per tick)"
    )
    in_namespace = len(written) * per_minute
    print(
        f"  audit log: {len(written)} writes in namespace {ns} during the window ({in_namespace / ticks:.2f} per tick)"
    )
    for w in written:
        print(f"    {w.verb} {w.resource} {w.name} ({w.user_agent})")
    for e in events:
        print(f"    event in the window: {e}")
    print()
    return {
        "reads_per_min": round(reads, 2),
        "writes_per_min": round(writes, 2),
        "writes_per_tick": writes / ticks,
        "namespace_writes_per_tick": in_namespace / ticks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mds", type=int, default=3, help="idle ModelDeployments")
    parser.add_argument("--window", type=float, default=60, help="seconds each idle window lasts")
    parser.add_argument("--tick", type=float, default=None, help="KUBETUNE_ROLLOUT_CHECK_SECONDS (default: 5)")
    args = parser.parse_args()
    tick = args.tick if args.tick is not None else 5.0

    with tempfile.TemporaryDirectory(prefix="kubetune-bench-api-") as tmp, running_control_plane(Path(tmp)) as cp:
        api = config.new_client_from_config(str(cp.kubeconfig))
        ns = "bench"
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": ns}})
        core.create_namespaced_service_account(ns, {"metadata": {"name": "kubetune-trainer"}})
        op = Operator(cp, Path(tmp), args.tick)
        started = request_counts(cp)
        op.start()
        try:
            wait_until_watching(cp, started)
            ftj = finetunejob_lifecycle(cp, api, ns)
            md = idle_modeldeployments(cp, api, ns, op, args.mds, args.window, tick)
        except BaseException:
            print("operator log tail:", (Path(tmp) / "operator-1.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            op.stop()
        print(json.dumps({"finetunejob_lifecycle": ftj, "idle_modeldeployment": md}))


if __name__ == "__main__":
    main()
