"""`make demo`: the whole FineTuneJob loop on one machine, with real parts.

1. start etcd, kube-apiserver, controller-manager and scheduler (cached binaries), install the CRDs;
2. start the local executor (`python -m kubetune_dev.local_executor`, a development program that plays
   the kubelet for one node, running its pods as local processes) and, as its own process, the operator;
3. build a tiny Llama-shaped model and tokenizer locally, and put the bundled glossary data on a
   PersistentVolume `demo` (a local folder);
4. apply examples/finetunejob.yaml: the operator creates the trainer Job, the scheduler binds its pod,
   the executor runs the trainer (LoRA on CPU), progress shows in the FineTuneJob status;
5. start Prometheus, apply examples/modeldeployment.yaml: the adapter is served by two stable
   `kubetune_server` processes while a bounded load generator sends completions;
6. retrain (a spec change starts run 2): its adapter passes evaluation and rolls out as a canary,
   analysed by Prometheus at each step and promoted; then a deliberately slow version (injected
   latency) is rolled back, with the reason;
7. the production loop (hack/demo_feedback.py): users' questions and ratings are captured, a FineTuneJob
   retrains on them, an LLM judge gates it, and its adapter rolls out as a canary gated by user ratings;
8. print a summary and stop everything it started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kubetune_dev.controlplane import running_control_plane
from kubetune_dev.loadgen import completion_body, run_load
from kubetune_dev.local_executor import ExecutorProcess
from kubetune_dev.prometheus import PrometheusServer, find_prometheus

sys.path.insert(0, str(Path(__file__).parent))
from demo_feedback import Users, production_loop

REPO = Path(__file__).resolve().parents[1]

CACHE = Path(os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune"))
TIMEOUT_S = float(os.environ.get("KUBETUNE_DEMO_TIMEOUT", "900"))


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m", flush=True)


def prepare_volume(pvc_root: Path) -> None:
    demo = pvc_root / "demo"
    (demo / "data").mkdir(parents=True, exist_ok=True)
    for name in ("glossary.jsonl", "golden.jsonl"):
        shutil.copy(REPO / "examples" / "data" / name, demo / "data" / name)
    model_dir = demo / "models" / "tiny-llama"
    if not (model_dir / "config.json").exists():
        say("building the tiny model and tokenizer locally (no downloads)")
        subprocess.run([sys.executable, "-m", "kubetune_trainer", "make-tiny-model", str(model_dir)], check=True)


def volume_manifests(pvc_root: Path) -> str:
    return f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: demo}}
spec:
  capacity: {{storage: 10Gi}}
  accessModes: [ReadWriteOnce]
  storageClassName: local
  hostPath: {{path: {pvc_root / "demo"}}}
  claimRef: {{namespace: default, name: demo}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: demo, namespace: default}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: local
  volumeName: demo
  resources: {{requests: {{storage: 10Gi}}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: kubetune-trainer, namespace: default}}
"""


def main() -> int:
    # A SIGTERM (Ctrl-C's cousin, e.g. from `timeout`) must still stop everything the demo started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-demo-"))
    pvc_root = CACHE / "demo" / "pvc"
    shutil.rmtree(pvc_root / "demo" / "runs", ignore_errors=True)
    shutil.rmtree(pvc_root / "demo" / "captures", ignore_errors=True)
    prepare_volume(pvc_root)
    say("starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler)")
    with running_control_plane(workdir / "cp", fake_gpu_node=False) as cp:
        say(f"control plane up in {time.time() - started:.0f}s; KUBECONFIG={cp.kubeconfig}")
        prometheus = PrometheusServer(find_prometheus(install=True), scrape_interval="1s").start()
        # Prometheus discovers the serving pods the executor runs through the executor's targets file.
        executor = ExecutorProcess(cp.kubeconfig, "local", workdir / "executor", pvc_root, prometheus.targets_file)
        executor.start()
        env = {
            **os.environ,
            "KUBECONFIG": str(cp.kubeconfig),
            "KUBETUNE_TRAINER_IMAGE": "kubetune/trainer:dev",
            "KUBETUNE_SERVER_IMAGE": "kubetune/server:dev",
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_LIVENESS_PORT": "0",
        }
        oplog = open(workdir / "operator.log", "wb")  # noqa: SIM115
        operator = subprocess.Popen(
            [sys.executable, "-m", "kubetune_operator"], env=env, stdout=oplog, stderr=subprocess.STDOUT
        )
        decisions: list[str] = []
        problems: list[str] = []
        try:
            cp.kubectl("apply", "-f", "-", input=volume_manifests(pvc_root))
            say("kubectl apply -f examples/finetunejob.yaml")
            print(cp.kubectl("apply", "-f", str(REPO / "examples" / "finetunejob.yaml")).stdout, end="")
            status = watch(cp, "glossary-lora")
            if status.get("phase") == "Succeeded":
                users = Users.from_examples(prometheus.targets_file)
                try:
                    decisions, problems = rollouts(cp, prometheus, users)
                    status = watch(cp, "glossary-lora", run=2)  # the summary shows the latest run
                    if not problems:
                        more = production_loop(cp, users, pvc_root, workdir, wait_md, watch, say)
                        decisions, problems = decisions + more[0], problems + more[1]
                finally:
                    users.stop()
            else:
                problems.append(f"run 1 did not succeed: {status.get('phase')}: {status.get('message')}")
        finally:
            operator.send_signal(signal.SIGTERM)
            operator.wait(timeout=30)
            executor.stop()
            prometheus.stop()
        print(cp.kubectl("get", "ftj,jobs,pods", "-o", "wide").stdout)
        say("summary")
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        eval_cond = conditions.get("EvalPassed", {})
        print(f"  phase:       {status.get('phase')} (run {status.get('run')}, job {status.get('jobName')})")
        print(f"  EvalPassed:  {eval_cond.get('status')} ({eval_cond.get('reason')})")
        for key, value in sorted((status.get("metrics") or {}).items()):
            print(f"  {key:<28} {value:.4g}")
        print(f"  artifact:    {(status.get('artifact') or {}).get('uri')}")
        for line in decisions:
            print(f"  rollout:     {line}")
        print(f"  local path:  {pvc_root / 'demo' / 'runs'}")
        print(f"  total time:  {time.time() - started:.0f}s")
        if status.get("phase") != "Succeeded":
            problems.append(f"run {status.get('run')} ended {status.get('phase')}")
        for problem in problems:
            print(f"\033[1;31mFAILED: {problem}\033[0m")
        return 1 if problems else 0


def md_status(cp, name: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    import json

    out = cp.kubectl("get", "mdep", name, "-o", "json", check=False)
    return (json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}


def wait_md(cp, name: str, phases: tuple[str, ...], timeout: float = 300) -> tuple[dict, list[tuple[int, float]]]:  # type: ignore[no-untyped-def,type-arg]
    """Print canary weight changes until the ModelDeployment reaches one of `phases`; return its
    status and the (nominal, achieved) canary shares of the steps it went through."""
    deadline = time.monotonic() + timeout
    last = None
    steps: list[tuple[int, float]] = []
    while time.monotonic() < deadline:
        st = md_status(cp, name)
        now = (st.get("phase"), st.get("canaryWeight"), st.get("achievedCanaryWeight"))
        if now != last:
            print(
                f"  {time.strftime('%H:%M:%S')} mdep/{name} phase={now[0]} canary={now[1]}% "
                f"(achieved {now[2]}% of requests) {st.get('message', '')}",
                flush=True,
            )
            last = now
        if st.get("canaryVersion") and st.get("canaryWeight") and (not steps or steps[-1][0] != now[1]):
            steps.append((now[1], now[2]))
        if st.get("phase") in phases:
            return st, steps
        time.sleep(1)
    raise SystemExit(f"mdep/{name} did not reach {phases} within {timeout:.0f}s")


def shares(steps: list[tuple[int, float]]) -> str:
    return ", ".join(f"step {w}% -> {a}% of requests" for w, a in steps) or "no step"


class Load(threading.Thread):
    """Completions to every ready serving pod, in small bounded batches, until stopped (loopback only)."""

    def __init__(self, targets_file: Path) -> None:
        super().__init__(daemon=True)
        self.targets_file, self.halt, self.sent = targets_file, threading.Event(), 0

    def run(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not self.halt.is_set() and time.monotonic() < deadline:
            groups = json.loads(self.targets_file.read_text() or "[]")
            urls = {f"http://{ep}": 1.0 for g in groups for ep in g["targets"]}
            if not urls:
                time.sleep(0.5)
                continue
            # A new seed per batch: each request picks a pod uniformly, as a Service does.
            result = run_load(urls, max_requests=16, max_duration=2.0, body=completion_body(max_tokens=4), timeout=20,
                              seed=self.sent)  # fmt: skip
            self.sent += len(result.records)


def rollouts(cp, prometheus: PrometheusServer, users: Users) -> tuple[list[str], list[str]]:  # type: ignore[no-untyped-def]
    """Run the two rollouts; return what happened and what did not happen as the story says."""
    import yaml

    md = yaml.safe_load((REPO / "examples" / "modeldeployment.yaml").read_text())
    md["spec"]["canary"]["analysis"]["prometheus"]["address"] = prometheus.url
    say(f"kubectl apply -f examples/modeldeployment.yaml (Prometheus at {prometheus.url})")
    print(cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(md)).stdout, end="")
    steps = list(md["spec"]["canary"]["steps"])
    st, _ = wait_md(cp, "glossary-chat", ("Stable",))
    decisions = [f"stable {st['stableVersion']} serves {st.get('stableAdapterUri')}"]
    problems: list[str] = []
    say("retraining: a spec change starts run 2; a passing run rolls out as a canary")
    cp.kubectl("patch", "ftj", "glossary-lora", "--type=merge", "-p", '{"spec":{"training":{"seed":7}}}')
    run2 = watch(cp, "glossary-lora", run=2)
    # Traffic from here on: the canary needs requests to be judged (and the CPU is the trainer's until now).
    # Users ask and rate answers on the chat endpoint too: the rating check compares canary and stable.
    load = Load(prometheus.targets_file)
    load.start()
    users.start()
    try:
        st, seen = wait_md(cp, "glossary-chat", ("Promoted", "RolledBack"))
        decisions.append(f"run 2 canary -> {st['phase']}: {st.get('message')}")
        decisions.append(f"run 2 shares: {shares(seen)}")
        # stableAdapterUri names the served artifact with its digest: uri#digest=sha256:...
        served_uri, _, served_digest = (st.get("stableAdapterUri") or "").partition("#digest=")
        artifact = run2.get("artifact") or {}
        if st["phase"] != "Promoted" or (served_uri, served_digest) != (artifact.get("uri"), artifact.get("digest")):
            problems.append(f"run 2 was not promoted: {st['phase']} serving {st.get('stableAdapterUri')}")
        if [w for w, _ in seen] != steps or any(a is None for _, a in seen):
            problems.append(f"run 2 did not go through every step {steps} with its achieved share: {seen}")
        say("a deliberately slow version (1.5 s injected latency) rolls out as a canary")
        cp.kubectl("patch", "mdep", "glossary-chat", "--type=merge", "-p",
                   '{"spec":{"builtin":{"extraArgs":["--inject-latency-ms","1500"]}}}')  # fmt: skip
        time.sleep(2)
        st, seen = wait_md(cp, "glossary-chat", ("Promoted", "RolledBack"))
        decisions.append(f"slow canary -> {st['phase']}: {st.get('message')}")
        decisions.append(f"slow canary shares: {shares(seen)}")
        if st["phase"] != "RolledBack" or "latencyP99Ratio" not in (st.get("message") or ""):
            problems.append(f"the slow version was not rolled back for its latency: {st['phase']}: {st.get('message')}")
        if not seen or any(a is None for _, a in seen):
            problems.append(f"the slow canary's steps show no achieved share: {seen}")
    finally:
        load.halt.set()
        load.join(timeout=30)
    decisions.append(f"{load.sent} completions sent by the load generator")
    return decisions, problems


def watch(cp, name: str, run: int = 1) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """Print progress as the trainer reports it, until the run ends (like `kubectl get ftj -w`)."""
    import json

    deadline = time.monotonic() + TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        out = cp.kubectl("get", "ftj", name, "-o", "json", check=False)
        if out.returncode == 0:
            status = json.loads(out.stdout).get("status") or {}
            p = status.get("progress") or {}
            line = (
                f"phase={status.get('phase')} step={p.get('stepText', '-')} loss={p.get('loss', '-')} "
                f"evalLoss={p.get('evalLoss', '-')} tok/s={p.get('tokensPerSecond', '-')}"
            )
            if line != last:
                print(f"  {time.strftime('%H:%M:%S')} {line}", flush=True)
                last = line
            if status.get("phase") in ("Succeeded", "Failed") and status.get("run") == run:
                return status
        time.sleep(1)
    raise SystemExit(f"the demo did not finish within {TIMEOUT_S:.0f}s (KUBETUNE_DEMO_TIMEOUT)")


if __name__ == "__main__":
    sys.exit(main())
