"""What `kubectl kubetune get ftj` and `runs ftj` show (pure): a FineTuneJob's dicts in, rich renderables out.

Room: the kubectl plugin. No I/O here: the functions take the object (and Jobs/pods) as the apiserver
returned them, so every view is tested on plain dicts with a recording Console.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

TERMINAL = ("Succeeded", "Failed", "Skipped")
# spec.evaluation.gates: (gate, metric, passes when value <= threshold). The trainer decides the gates
# (kubetune_trainer.scoring.apply_gates); this repeats its table to say why, and a test keeps the two equal.
GATES = (
    ("maxPerplexity", "perplexity", True),
    ("maxEvalLoss", "evalLoss", True),
    ("minExactMatch", "exactMatch", False),
    ("minPreferenceAccuracy", "preferenceAccuracy", False),
)


def num(v: Any, digits: int = 4) -> str:
    """A metric as people read it: 4 significant digits, '-' when absent.

    >>> num(3.14159), num(None), num(12345.6), num(2)
    ('3.142', '-', '1.235e+04', '2')
    """
    if v is None:
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def eta(seconds: Any) -> str:
    """How long is left, as h:mm:ss.

    >>> eta(3725.4), eta(None)
    ('1:02:05', '?')
    """
    return "?" if seconds is None else str(dt.timedelta(seconds=round(float(seconds))))


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def gate_rows(gates: dict[str, Any], metrics: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(gate, threshold, tuned value, verdict) for each gate the spec sets.

    >>> gate_rows({"maxPerplexity": 10, "minExactMatch": 0.5}, {"perplexity": 3.49, "exactMatch": 0.25})
    [('maxPerplexity', '≤ 10', '3.49', 'Pass'), ('minExactMatch', '≥ 0.5', '0.25', 'Fail')]
    """
    rows = []
    for gate, metric, is_max in GATES:
        if gates.get(gate) is None:
            continue
        threshold, value = float(gates[gate]), metrics.get(metric)
        if value is None:
            verdict = "Fail (not measured)" if metrics else "-"
        else:
            verdict = "Pass" if (value <= threshold if is_max else value >= threshold) else "Fail"
        rows.append((gate, f"{'≤' if is_max else '≥'} {num(gates[gate])}", num(value), verdict))
    return rows


def progress_bar(progress: dict[str, Any], width: int = 30) -> RenderableType:
    step, total = progress.get("step"), progress.get("totalSteps")
    if not total:
        return Text("no progress reported yet")
    bar = ProgressBar(total=float(total), completed=float(step or 0), width=width)
    line = Text(f" {step}/{total} ({100 * (step or 0) / total:.0f}%)")
    line.append(f"  loss {num(progress.get('loss'))}  evalLoss {num(progress.get('evalLoss'))}")
    tps = progress.get("tokensPerSecond")
    line.append(f"  {'-' if tps is None else f'{tps:,.0f}'} tokens/s  ETA {eta(progress.get('etaSeconds'))}")
    grid = Table.grid()
    grid.add_row(bar, line)
    return grid


def metrics_table(status: dict[str, Any]) -> Table | None:
    base, tuned = status.get("baseMetrics") or {}, status.get("metrics") or {}
    if not base and not tuned:
        return None
    table = Table("metric", "base", "tuned", "change", title="Evaluation (test split)", title_justify="left")
    for name in sorted(set(base) | set(tuned)):
        b, t = base.get(name), tuned.get(name)
        change = f"{t - b:+.4g}" if isinstance(b, int | float) and isinstance(t, int | float) else "-"
        table.add_row(name, num(b), num(t), change)
    return table


def gates_view(spec: dict[str, Any], status: dict[str, Any]) -> RenderableType:
    cond = condition(status, "EvalPassed")
    verdict = {"True": "passed", "False": "FAILED"}.get(cond.get("status", ""), "unknown")
    head = Text(f"EvalPassed: {verdict}")
    if cond:
        head.append(f" ({cond.get('reason')}: {cond.get('message')})")
    rows = gate_rows(((spec.get("evaluation") or {}).get("gates") or {}), status.get("metrics") or {})
    if not rows:
        return head
    table = Table("gate", "threshold", "tuned", "verdict", title="Gates", title_justify="left")
    for row in rows:
        table.add_row(*row[:3], Text(row[3], style="green" if row[3] == "Pass" else "red"))
    return Group(head, table)


def ftj_view(obj: dict[str, Any]) -> RenderableType:
    """`get ftj NAME`: phase and run, progress, base vs tuned metrics, gates, artifact."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    head = Table.grid(padding=(0, 2))
    head.add_row("FineTuneJob", f"{meta['name']} (namespace {meta.get('namespace')})")
    run = status.get("run")
    head.add_row("Phase", f"{status.get('phase') or 'Pending'}" + (f"  run {run}" if run else ""))
    if status.get("jobName"):
        head.add_row("Job", status["jobName"])
    if status.get("message"):
        head.add_row("Message", status["message"])
    if status.get("group"):
        head.add_row("Group", group_text(status["group"]))
    parts: list[RenderableType] = [head]
    if status.get("progress"):
        parts.append(Group(Text("Progress"), progress_bar(status["progress"])))
    table = metrics_table(status)
    if table is not None:
        parts.append(table)
    if status.get("phase") in TERMINAL or condition(status, "EvalPassed"):
        parts.append(gates_view(spec, status))
    art = status.get("artifact") or {}
    if art.get("uri"):
        lines = Table.grid(padding=(0, 2))
        lines.add_row("Artifact", f"{art['uri']} ({art.get('kind') or 'adapter'})")
        lines.add_row("Digest", str(art.get("digest") or "-"))
        if art.get("mergedUri"):
            lines.add_row("Merged", f"{art['mergedUri']} {art.get('mergedDigest') or ''}")
        parts.append(lines)
    return Group(*parts)


def group_text(group: dict[str, Any]) -> str:
    """status.group (a multi-node run) in one line.

    >>> group_text({"nodes": 2, "engine": "indexedJob", "readyPods": 2, "restarts": 1, "preemptions": 0,
    ...             "lastRestartReason": "PodFailed"})
    '2 nodes (indexedJob), 2 ready, 1 restart(s), 0 preemption(s); last restart: PodFailed'
    """
    line = (
        f"{group.get('nodes')} nodes ({group.get('engine') or '-'}), {group.get('readyPods') or 0} ready, "
        f"{group.get('restarts') or 0} restart(s), {group.get('preemptions') or 0} preemption(s)"
    )
    if group.get("lastRestartReason"):
        line += f"; last restart: {group['lastRestartReason']}"
    return line + (" (restarting now)" if group.get("restartingJob") else "")


def ftj_line(obj: dict[str, Any]) -> str:
    """One line per change, for `--watch` when stdout is not a terminal (like `kubectl get -w`).

    >>> ftj_line({"metadata": {"name": "s"}, "status": {"phase": "Running", "run": 1,
    ...           "progress": {"step": 4, "totalSteps": 8, "loss": 2.5, "tokensPerSecond": 99.6, "etaSeconds": 3}}})
    's Running run 1 step 4/8 loss 2.5 evalLoss - tokens/s 100 eta 0:00:03'
    """
    status = obj.get("status") or {}
    line = f"{obj['metadata']['name']} {status.get('phase') or 'Pending'} run {status.get('run') or '-'}"
    p = status.get("progress") or {}
    if p.get("totalSteps"):
        tps = p.get("tokensPerSecond")
        line += (
            f" step {p.get('step')}/{p['totalSteps']} loss {num(p.get('loss'))} evalLoss {num(p.get('evalLoss'))}"
            f" tokens/s {'-' if tps is None else f'{tps:.0f}'} eta {eta(p.get('etaSeconds'))}"
        )
    if status.get("phase") in TERMINAL:
        line += f" evalPassed {status.get('evalPassed')} artifact {(status.get('artifact') or {}).get('uri') or '-'}"
    return line


def _result(pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The trainer's result JSON (its termination message) from the last finished pod that has one."""
    done = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("message"):
                done.append((str(term.get("finishedAt") or ""), term["message"]))
    for _, message in sorted(done, reverse=True):
        try:
            result = json.loads(message)
        except ValueError:
            return {"message": message.strip().splitlines()[-1][:200]}
        if isinstance(result, dict):
            return result
    return {}


def run_history(obj: dict[str, Any], jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run the cluster still remembers: one per trainer Job (label kubetune.io/run, with its pods'
    result), and the current run from status, which is authoritative for it. Jobs removed by
    ttlSecondsAfterFinished or by hand are gone from the history."""
    status = obj.get("status") or {}
    runs: dict[int, dict[str, Any]] = {}
    for job in jobs:
        labels = (job.get("metadata") or {}).get("labels") or {}
        run = int(labels.get("kubetune.io/run") or 0)
        mine = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get("kubetune.io/run") == str(run)]
        result = _result(mine)
        js = job.get("status") or {}
        phase = result.get("phase") or (
            "Succeeded" if js.get("succeeded") else "Failed" if js.get("failed") and not js.get("active") else "Running"
        )
        runs[run] = {
            "run": run,
            "job": job["metadata"]["name"],
            "phase": phase,
            "steps": result.get("steps"),
            "metrics": result.get("metrics") or {},
            "baseMetrics": result.get("baseMetrics") or {},
            "evalPassed": result.get("evalPassed"),
            "artifact": result.get("artifact") or {},
            "startTime": js.get("startTime"),
            "completionTime": js.get("completionTime"),
        }
    if status.get("run"):
        current = runs.setdefault(int(status["run"]), {"run": int(status["run"]), "job": status.get("jobName")})
        p = status.get("progress") or {}
        current.update(
            phase=status.get("phase"),
            steps=current.get("steps") or p.get("step"),
            metrics=status.get("metrics") or current.get("metrics") or {},
            baseMetrics=status.get("baseMetrics") or current.get("baseMetrics") or {},
            evalPassed=status.get("evalPassed", current.get("evalPassed")),
            artifact=status.get("artifact") if status.get("phase") == "Succeeded" else current.get("artifact") or {},
            startTime=status.get("startTime") or current.get("startTime"),
            completionTime=status.get("completionTime") or current.get("completionTime"),
        )
    return [runs[k] for k in sorted(runs)]


def runs_table(name: str, runs: list[dict[str, Any]]) -> RenderableType:
    """`runs ftj NAME`: one row per run, each metric as base → tuned."""
    names = sorted({m for r in runs for m in (*(r.get("metrics") or {}), *(r.get("baseMetrics") or {}))})
    table = Table("run", "phase", "steps", *names, "evalPassed", "digest", "finished", title=f"Runs of {name}")
    for r in runs:
        cells = [f"{num((r.get('baseMetrics') or {}).get(m))} → {num((r.get('metrics') or {}).get(m))}" for m in names]
        digest = str((r.get("artifact") or {}).get("digest") or "-")
        passed = r.get("evalPassed")
        table.add_row(
            str(r["run"]),
            str(r.get("phase") or "-"),
            num(r.get("steps")),
            *cells,
            "-" if passed is None else str(passed),
            digest[:19],
            str(r.get("completionTime") or "-"),
        )
    if not runs:
        return Text(f"{name} has no runs yet")
    return table
