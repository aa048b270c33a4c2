"""`get ftj|mdep NAME --plot FILE.png`: the picture of what the object's status holds.

Room: the kubectl plugin. Reads only the object it is given and writes only FILE.png; the drawing is
kubetune_trainer.plots' (matplotlib only, no torch), the same the trainer writes into run-N/.
A FineTuneJob's picture is its current run's loss curve (status.progress.history, which the trainer
keeps bounded), a ModelDeployment's its canary analysis (status.analysis: each check's values
against its bounds, step by step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune_cli.client import CliError


def write_plot(kind: str, obj: dict[str, Any], path: Path) -> str:
    """Draw `obj` into `path`; the one line that says what was drawn."""
    from kubetune_trainer import plots  # matplotlib is loaded only when a picture is asked for

    name, status = obj["metadata"]["name"], obj.get("status") or {}
    if path.suffix.lower() != ".png":
        raise CliError(f"--plot {path}: the picture is a PNG; name the file FILE.png")
    if kind == "ftj":
        points = (status.get("progress") or {}).get("history") or []
        if not points:
            raise CliError(f"finetunejob {name} has no loss points yet (status.progress.history is empty)")
        run = status.get("run")
        plots.write_loss_curve(points, path, title=f"{name} run {run} loss")
        return f"wrote {path}: loss curve of run {run} ({len(points)} points)"
    records = status.get("analysis") or []
    if not records:
        raise CliError(f"modeldeployment {name} has no canary analysis yet (status.analysis is empty)")
    plots.write_analysis_chart(records, path, title=f"{name} canary analysis")
    checks = len({r.get("check") for r in records})
    return f"wrote {path}: canary analysis ({len(records)} records, {checks} checks)"
