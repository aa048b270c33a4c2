"""`kubectl kubetune` against the real apiserver: every verb on real objects the operator reconciles,
the errors a user meets (not found, RBAC-denied, no kubeconfig), `-o json`, kubectl's own plugin
discovery, and a `--watch` that sees a real tiny training run's progress move."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from tests.k8s.conftest import wait_for
from tests.k8s.test_finetunejob_controller import spec as ftj_spec
from tests.k8s.test_modeldeployment_controller import md_phase, md_spec

REPO = Path(__file__).resolve().parents[2]
NODE = "local-plugin"


def plugin(kubeconfig: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    """The plugin as a user runs it: its own process, the kubeconfig on the command line."""
    return subprocess.run(
        [sys.executable, "-m", "kubetune_cli", "--kubeconfig", str(kubeconfig), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "160", **(env or {})},
    )  # fmt: skip


def ok(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


def test_get_and_runs_show_a_finetunejobs_runs_metrics_gates_and_artifact(k8s, operator, control_plane):
    kc, ns = control_plane.kubeconfig, k8s.ns
    k8s.create_ftj("support", ftj_spec(evaluation={"gates": {"maxPerplexity": 10}}))
    status = wait_for(lambda: (s := k8s.get_ftj("support").get("status") or {}).get("phase") == "Succeeded" and s, 60)
    out = ok(plugin(kc, "get", "ftj", "support", "-n", ns))
    assert re.search(r"Phase\s+Succeeded\s+run 1", out) and "support-run-1" in out
    (ppl,) = [line for line in out.splitlines() if "│ perplexity" in line]
    assert ppl.split("│")[2:4] == [" 12.18 ", " 3.49  "]  # base beside tuned, from the trainer's result
    (gate,) = [line for line in out.splitlines() if "maxPerplexity" in line]
    assert "≤ 10" in gate and "3.49" in gate and "Pass" in gate
    assert "EvalPassed: passed (GatesPassed: evaluation gates passed)" in out
    assert "/models/out/run-1 (adapter)" in out and status["artifact"]["digest"] in out

    as_json = json.loads(ok(plugin(kc, "get", "finetunejob", "support", "-n", ns, "-o", "json")))
    assert as_json["status"] == k8s.get_ftj("support")["status"]
    assert yaml.safe_load(ok(plugin(kc, "-n", ns, "get", "ftj", "support", "-o", "yaml")))["status"]["run"] == 1

    k8s.patch_ftj("support", {"training": {"learningRate": 0.0001}})
    wait_for(lambda: (s := k8s.get_ftj("support").get("status") or {}).get("run") == 2
             and s.get("phase") == "Succeeded", 60, "run 2")  # fmt: skip
    runs = json.loads(ok(plugin(kc, "runs", "ftj", "support", "-n", ns, "-o", "json")))
    assert [(r["run"], r["phase"], r["job"]) for r in runs] == [
        (1, "Succeeded", "support-run-1"), (2, "Succeeded", "support-run-2")]  # fmt: skip
    # Each run's own result, read from its pod: kwok's digest names the pod that wrote it.
    pods = {p.metadata.labels["kubetune.io/run"]: p.metadata.uid for p in k8s.core.list_namespaced_pod(ns).items}
    assert [r["artifact"]["digest"] for r in runs] == [f"sha256:kwok-{pods['1']}", f"sha256:kwok-{pods['2']}"]
    assert runs[0]["metrics"] == {"evalLoss": 1.25, "perplexity": 3.49} and runs[0]["evalPassed"] is True
    table = ok(plugin(kc, "runs", "ftj", "support", "-n", ns))
    assert len([line for line in table.splitlines() if "Succeeded" in line and "12.18 → 3.49" in line]) == 2


def test_kubectl_finds_the_plugin_on_path(k8s, control_plane, tmp_path):
    """kubectl's own discovery: an executable kubectl-kubetune on PATH is `kubectl kubetune`."""
    installed = Path(sys.executable).with_name("kubectl-kubetune")  # pip's console script, once installed
    if not installed.exists():  # a venv built before the entry point existed: the same two lines pip writes
        installed = tmp_path / "kubectl-kubetune"
        installed.write_text(f"#!{sys.executable}\nfrom kubetune_cli.main import main\nmain()\n")
        installed.chmod(0o755)
    kubectl = control_plane.assets / "kubectl"
    env = {
        **os.environ,
        "PATH": f"{installed.parent}:{os.environ['PATH']}",
        "KUBECONFIG": str(control_plane.kubeconfig),
    }
    listed = subprocess.run([str(kubectl), "plugin", "list"], capture_output=True, text=True, env=env, timeout=30)
    assert str(installed) in listed.stdout, listed
    k8s.create_md("found", md_spec())
    shown = subprocess.run([str(kubectl), "kubetune", "get", "mdep", "found", "-n", k8s.ns],
                           capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert shown.returncode == 0 and f"found (namespace {k8s.ns})" in shown.stdout, shown


def token_kubeconfig(control_plane, ns: str, sa: str, path: Path) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `sa` (a real token from the TokenRequest API)."""
    control_plane.kubectl("create", "serviceaccount", sa, "-n", ns)
    token = control_plane.kubectl("create", "token", sa, "-n", ns, "--duration=1h").stdout.strip()
    cfg = yaml.safe_load(control_plane.kubeconfig.read_text())
    cfg["users"] = [{"name": cfg["contexts"][0]["context"]["user"], "user": {"token": token}}]
    cfg["contexts"][0]["context"]["namespace"] = ns  # like kubectl: -n defaults to the context's namespace
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_missing_objects_missing_rights_and_missing_kubeconfig_are_one_line_errors(
    k8s, operator, control_plane, tmp_path
):
    ns = k8s.ns
    missing = plugin(control_plane.kubeconfig, "get", "ftj", "foo", "-n", ns)
    assert (missing.returncode, missing.stderr) == (1, f"error: finetunejob foo not found in namespace {ns}\n")
    missing = plugin(control_plane.kubeconfig, "promote", "bar", "-n", ns)
    assert (missing.returncode, missing.stderr) == (1, f"error: modeldeployment bar not found in namespace {ns}\n")

    nobody = token_kubeconfig(control_plane, ns, "nobody", tmp_path / "nobody.kubeconfig")
    denied = plugin(nobody, "get", "ftj", "foo")  # the namespace comes from the kubeconfig's context
    user = f"system:serviceaccount:{ns}:nobody"
    expected = f"error: forbidden: user {user} cannot get finetunejobs in namespace {ns}\n"
    assert (denied.returncode, denied.stderr) == (1, expected)

    # A viewer may look but not act: get works, promote is refused by RBAC, and nothing changed.
    k8s.create_md("chat", md_spec(canary={"steps": [20, 100], "interval": "1h"}))
    wait_for(md_phase(k8s, "chat", "Stable"), 30, "Stable")
    k8s.patch_md("chat", {"adapter": {"uri": "/adapters/v2"}})
    v2 = wait_for(md_phase(k8s, "chat", "Progressing"), 30, "a canary in flight")["canaryVersion"]
    control_plane.kubectl("create", "serviceaccount", "viewer", "-n", ns)
    control_plane.kubectl(
        "create", "role", "view-mdep", "-n", ns, "--verb=get,list,watch", "--resource=modeldeployments.kubetune.io"
    )
    control_plane.kubectl(
        "create", "rolebinding", "viewer", "-n", ns, "--role=view-mdep", f"--serviceaccount={ns}:viewer"
    )
    token = control_plane.kubectl("create", "token", "viewer", "-n", ns, "--duration=1h").stdout.strip()
    cfg = yaml.safe_load(control_plane.kubeconfig.read_text())
    cfg["users"][0]["user"] = {"token": token}
    viewer = tmp_path / "viewer.kubeconfig"
    viewer.write_text(yaml.safe_dump(cfg))
    assert v2 in ok(plugin(viewer, "get", "mdep", "chat", "-n", ns))
    refused = plugin(viewer, "promote", "chat", "--full", "-n", ns)
    viewer_user = f"system:serviceaccount:{ns}:viewer"
    expected = f"error: forbidden: user {viewer_user} cannot patch modeldeployments in namespace {ns}\n"
    assert (refused.returncode, refused.stderr) == (1, expected)
    assert "kubetune.io/promote" not in k8s.get_md("chat")["metadata"]["annotations"]

    lost = plugin(tmp_path / "absent.kubeconfig", "get", "ftj", "foo")
    assert (
        lost.returncode == 1 and lost.stderr.startswith("error: no usable kubeconfig") and lost.stderr.count("\n") == 1
    )


def test_promote_approve_abort_and_retry_are_the_patches_the_operator_acts_on(k8s, operator, control_plane):
    kc, ns = control_plane.kubeconfig, k8s.ns
    canary = {"steps": [30, 100], "interval": "1s", "manualGate": True, "autoPromote": False}
    k8s.create_md("gated", md_spec(canary=canary))
    wait_for(md_phase(k8s, "gated", "Stable"), 30, "Stable")
    refused = plugin(kc, "approve", "gated", "-n", ns)
    assert (refused.returncode, refused.stderr) == (
        1,
        "error: approve: modeldeployment gated has no canary in flight\n",
    )

    k8s.patch_md("gated", {"adapter": {"uri": "/adapters/v2"}})
    v2 = wait_for(md_phase(k8s, "gated", "Paused"), 30, "Paused at the gate")["canaryVersion"]
    shown = ok(plugin(kc, "get", "mdep", "gated", "-n", ns))
    assert re.search(rf"canary\s+│\s+{v2}\s+│.*│\s+30% nominal, 50% achieved step 1/2", shown), shown
    assert f"annotate kubetune.io/approve-step={v2}/100 to continue to 100%" in shown
    print(shown)  # what the README's "Day to day" shows
    assert ok(plugin(kc, "-n", ns, "promote", "gated")) == f"modeldeployment gated: approved step 100% of canary {v2}\n"
    status = wait_for(lambda: (s := k8s.get_md("gated")["status"]).get("awaitingPromotion") and s, 30, "all steps")
    assert status["lastManualAction"]["value"] == f"{v2}/100" and status["lastManualAction"]["outcome"] == "Used"
    assert "promote gated` promotes" in ok(plugin(kc, "get", "mdep", "gated", "-n", ns))
    ok(plugin(kc, "promote", "gated", "-n", ns))  # at the end of an autoPromote: false rollout: promotes
    status = wait_for(md_phase(k8s, "gated", "Promoted"), 30, "Promoted")
    assert status["stableVersion"] == v2 and status["lastManualAction"]["annotation"] == "kubetune.io/promote"

    k8s.patch_md("gated", {"adapter": {"uri": "/adapters/v3"}})
    at_gate = wait_for(lambda: (s := md_phase(k8s, "gated", "Paused")()) and s["canaryVersion"] != v2 and s, 30)
    v3 = at_gate["canaryVersion"]
    assert ok(plugin(kc, "abort", "gated", "-n", ns)).endswith(f"aborting canary {v3} (spec.canary.abort: true)\n")
    status = wait_for(md_phase(k8s, "gated", "RolledBack"), 30, "aborted")
    assert (
        status["abortedVersion"] == v3 == status["rolledBackVersion"] and k8s.get_md("gated")["spec"]["canary"]["abort"]
    )
    ok(plugin(kc, "retry", "gated", "-n", ns))
    wait_for(lambda: (s := md_phase(k8s, "gated", "Paused", "Progressing")()) and s.get("canaryVersion") == v3, 30)
    # abort is still true from the first abort, and used: the plugin re-arms it and sets it again.
    ok(plugin(kc, "abort", "gated", "-n", ns))
    status = wait_for(md_phase(k8s, "gated", "RolledBack"), 30, "aborted again")
    assert status["abortedVersion"] == v3 and k8s.reasons_once_posted("gated", "RolledBack", 2).count("RolledBack") == 2
    ok(plugin(kc, "retry", "gated", "-n", ns))
    wait_for(lambda: (s := md_phase(k8s, "gated", "Paused", "Progressing")()) and s.get("canaryVersion") == v3, 30)
    said = ok(plugin(kc, "promote", "gated", "--full", "-n", ns))
    assert said == f"modeldeployment gated: promoting canary {v3} to stable\n"
    status = wait_for(md_phase(k8s, "gated", "Promoted"), 30, "promoted --full")
    assert status["stableVersion"] == v3 and "skipping steps [100]" in status["lastManualAction"]["message"]


@pytest.mark.slow
def test_watch_sees_a_real_training_runs_progress_move(k8s, operator, executor, control_plane, tmp_path):
    from kubetune_trainer.tiny_model import ensure_tiny_model

    steps = 12
    k8s.create_ftj(
        "watched",
        {
            "baseModel": {"uri": str(ensure_tiny_model(tmp_path / "tiny"))},
            "dataset": {"uri": str(REPO / "examples" / "data" / "glossary.jsonl")},
            "output": {"uri": str(tmp_path / "out")},
            "lora": {"r": 4},
            "training": {"maxSteps": steps, "loggingSteps": 3, "evalSteps": steps, "precision": "fp32"},
            "evaluation": {"maxNewTokens": 4, "gates": {"maxPerplexity": 100000}},
            "backoffLimit": 0,
            "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi", "nodeSelector": {"kubernetes.io/hostname": NODE}},
        },
    )
    watched = plugin(control_plane.kubeconfig, "get", "ftj", "watched", "-n", k8s.ns, "--watch", timeout=400)
    lines = ok(watched).splitlines()
    seen = [int(m.group(1)) for line in lines if (m := re.search(r" step (\d+)/12 ", line))]
    assert len(set(seen)) >= 2 and seen == sorted(seen), lines  # progress moved, and only forward
    assert lines[-1].startswith("watched Succeeded run 1 step 12/12") and "evalPassed True" in lines[-1], lines
    status = k8s.get_ftj("watched")["status"]
    assert status["artifact"]["uri"] in lines[-1]
    shown = ok(plugin(control_plane.kubeconfig, "get", "ftj", "watched", "-n", k8s.ns))
    assert "12/12 (100%)" in shown and status["artifact"]["digest"] in shown
    (ppl,) = [line for line in shown.splitlines() if "│ perplexity" in line]
    base, tuned = (float(c) for c in ppl.split("│")[2:4])  # the base model's beside the tuned one's
    assert (base, tuned) == (pytest.approx(status["baseMetrics"]["perplexity"], rel=1e-3),
                             pytest.approx(status["metrics"]["perplexity"], rel=1e-3))  # fmt: skip
    # `logs` finds the current run's pod and asks the apiserver for its log, which dials the Node's kubelet
    # endpoint: the local executor's, serving the file its process wrote.
    logged = ok(plugin(control_plane.kubeconfig, "logs", "ftj", "watched", "-n", k8s.ns))
    assert re.search(r"^.*step 12/12 epoch [\d.]+ loss [\d.]+ ", logged, re.M) and "evaluation passed" in logged, logged
    pod = next(
        p.metadata.name
        for p in k8s.core.list_namespaced_pod(k8s.ns).items
        if p.metadata.name.startswith("watched-run-1-")
    )
    assert control_plane.kubectl("logs", pod, "-n", k8s.ns).stdout == logged  # kubectl's own, same bytes
    last = ok(plugin(control_plane.kubeconfig, "logs", "ftj", "watched", "-n", k8s.ns, "--tail", "2"))
    assert last.splitlines() == logged.splitlines()[-2:]
    # Following a finished container's log gives all of it and ends, as a kubelet's does.
    assert ok(plugin(control_plane.kubeconfig, "logs", "ftj", "watched", "-n", k8s.ns, "-f", timeout=30)) == logged
    print(logged)
    # --plot draws the loss curve the trainer kept in status.progress.history: every logged step, one eval.
    assert [(p["step"], "evalLoss" in p) for p in status["progress"]["history"]] == [
        (3, False), (6, False), (9, False), (12, True)]  # fmt: skip
    said = ok(
        plugin(control_plane.kubeconfig, "get", "ftj", "watched", "-n", k8s.ns, "--plot", str(tmp_path / "l.png"))
    )
    assert said.strip().endswith("loss curve of run 1 (4 points)"), said
    with Image.open(tmp_path / "l.png") as im:
        assert (im.text["kubetune.points"], im.text["kubetune.evalPoints"]) == ("4", "1")
    print("\n".join(lines), shown, sep="\n")  # what the README's "Day to day" shows
