"""What `kubectl kubetune get mdep` shows (pure): a ModelDeployment's dict in, rich renderables out.

Room: the kubectl plugin. No I/O; tested on plain dicts with a recording Console.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from kubetune_cli.render_ftj import num

VERDICT_STYLE = {"Pass": "green", "Fail": "red", "Error": "red", "NoData": "yellow", "Skipped": "dim"}


def latest_analysis(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last measurement of each check (status.analysis keeps a history, newest last).

    >>> latest_analysis([{"check": "a", "value": 1}, {"check": "b", "value": 2}, {"check": "a", "value": 3}])
    [{'check': 'a', 'value': 3}, {'check': 'b', 'value': 2}]
    """
    last: dict[str, dict[str, Any]] = {}
    for rec in records:
        last[str(rec.get("check"))] = rec
    return list(last.values())


def _value(rec: dict[str, Any]) -> str:
    value = num(rec.get("value"))
    if rec.get("low") is not None or rec.get("high") is not None:
        value += f" [{num(rec.get('low'))}, {num(rec.get('high')) if rec.get('high') is not None else '∞'}]"
    return value


def mdep_view(obj: dict[str, Any]) -> RenderableType:
    """`get mdep NAME`: versions, nominal and achieved canary share, each analysis check, phase and message."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    steps = (spec.get("canary") or {}).get("steps") or []
    head = Table.grid(padding=(0, 2))
    head.add_row("ModelDeployment", f"{meta['name']} (namespace {meta.get('namespace')})")
    head.add_row("Phase", str(status.get("phase") or "Pending"))
    if status.get("message"):
        head.add_row("Message", str(status["message"]))
    versions = Table("", "version", "serves", "share", title="Versions", title_justify="left")
    canary = status.get("canaryVersion")
    nominal, achieved = status.get("canaryWeight"), status.get("achievedCanaryWeight")
    stable_share = "-" if achieved is None or not canary else f"{100 - float(achieved):.3g}%"
    versions.add_row("stable", str(status.get("stableVersion") or "-"), str(status.get("stableAdapterUri") or "-"),
                     stable_share if canary else "100%")  # fmt: skip
    if canary:
        step = int(status.get("currentStep") or 0)
        where = f"step {step + 1}/{len(steps)}" if steps else ""
        share = f"{num(nominal)}% nominal, {num(achieved)}% achieved {where}".strip()
        versions.add_row("canary", str(canary), str(status.get("canaryAdapterUri") or "-"), share)
    parts: list[RenderableType] = [head, versions]
    if status.get("awaitingPromotion"):
        parts.append(Text(f"All steps passed: `kubectl kubetune promote {meta['name']}` promotes {canary}"))
    notes = []
    for key, label in (("rolledBackVersion", "rolled back"), ("abortedVersion", "aborted")):
        if status.get(key):
            notes.append(f"{label}: {status[key]}")
    if notes:
        parts.append(Text("; ".join(notes)))
    records = latest_analysis(status.get("analysis") or [])
    if records:
        table = Table("step", "check", "value", "threshold", "verdict", "message", title="Analysis (latest per check)",
                      title_justify="left")  # fmt: skip
        for rec in records:
            verdict = str(rec.get("verdict") or "-")
            weight = steps[rec["step"]] if isinstance(rec.get("step"), int) and rec["step"] < len(steps) else None
            table.add_row(
                "-" if weight is None else f"{weight}%",
                str(rec.get("check") or "-"),
                _value(rec),
                str(rec.get("threshold") or "-"),
                Text(verdict, style=VERDICT_STYLE.get(verdict, "")),
                str(rec.get("message") or ""),
            )
        parts.append(table)
    action = status.get("lastManualAction")
    if action:
        what = f"{action.get('annotation')}={action.get('value')} {action.get('outcome')}"
        parts.append(Text(f"Last manual action: {what}: {action.get('message')}"))
    return Group(*parts)


def mdep_line(obj: dict[str, Any]) -> str:
    """One line per change for `--watch` without a terminal.

    >>> mdep_line({"metadata": {"name": "chat"}, "status": {"phase": "Paused", "stableVersion": "v1",
    ...            "canaryVersion": "v2", "canaryWeight": 30, "achievedCanaryWeight": 50.0}})
    'chat Paused stable v1 canary v2 30% nominal 50% achieved'
    """
    s = obj.get("status") or {}
    line = f"{obj['metadata']['name']} {s.get('phase') or 'Pending'} stable {s.get('stableVersion') or '-'}"
    if s.get("canaryVersion"):
        line += f" canary {s['canaryVersion']} {num(s.get('canaryWeight'))}% nominal"
        line += f" {num(s.get('achievedCanaryWeight'))}% achieved"
    for rec in latest_analysis(s.get("analysis") or []):
        line += f" {rec.get('check')}={num(rec.get('value'))}:{rec.get('verdict')}"
    return line
