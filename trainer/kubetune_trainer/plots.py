"""Pictures of a run: the loss curve and the base-vs-tuned metrics chart, as PNG files.

Room: the trainer (also imported by the kubectl plugin, so no torch here). Pure functions of plain
data: ``points`` are the progress points `train.train` records (``{"step", "loss", "evalLoss", ...}``),
``base`` / ``tuned`` the evaluation metrics. matplotlib draws off-screen (the Agg backend, no display).
Each PNG carries what it shows in its text metadata (tEXt chunks): the kind, the run's number of
points or metrics, so a reader (a test, a script) can check a picture without looking at it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The PNGs each run writes into its output folder (run-N/) and logs to MLflow.
LOSS_PNG, METRICS_PNG = "loss.png", "metrics.png"
SIZE_INCHES, DPI = (6.4, 4.0), 100  # 640 x 400 pixels


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display in a pod; must come before pyplot
    from matplotlib.figure import Figure

    # A Figure without pyplot: no global state, nothing to close, safe in threads.
    return Figure(figsize=SIZE_INCHES, dpi=DPI)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def loss_series(points: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(loss, evalLoss) as (step, value) pairs; points without a finite value are left out.

    >>> loss_series([{"step": 2, "loss": 1.5, "evalLoss": None}, {"step": 4, "loss": 1.0, "evalLoss": 1.2}])
    ([(2, 1.5), (4, 1.0)], [(4, 1.2)])
    """
    train = [(int(p["step"]), float(p["loss"])) for p in points if _finite(p.get("loss"))]
    ev = [(int(p["step"]), float(p["evalLoss"])) for p in points if _finite(p.get("evalLoss"))]
    return train, ev


def write_loss_curve(points: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Training loss and validation loss against the optimizer step."""
    train, ev = loss_series(points)
    fig = _figure()
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), marker=".", label="loss (train)")
    if ev:
        ax.plot(*zip(*ev, strict=True), marker="o", label="evalLoss (validation)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    if train or ev:
        ax.legend()
    return _save(fig, path, {"kubetune.plot": "loss", "kubetune.points": len(train), "kubetune.evalPoints": len(ev)})


def write_metrics_chart(base: Mapping[str, float], tuned: Mapping[str, float], path: Path, title: str = "") -> Path:
    """One pair of bars (base, tuned) per metric either evaluation has, in sorted order."""
    names = sorted(k for k in {*base, *tuned} if _finite(base.get(k)) or _finite(tuned.get(k)))
    fig = _figure()
    ax = fig.add_subplot()
    xs = list(range(len(names)))
    width = 0.38

    def values(m: Mapping[str, float]) -> list[float]:
        return [float(m[k]) if _finite(m.get(k)) else 0.0 for k in names]

    for offset, label, m in ((-width / 2, "base", base), (width / 2, "tuned", tuned)):
        bars = ax.bar([x + offset for x in xs], values(m), width, label=label)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.set_xticks(xs, names, rotation=20 if len(names) > 4 else 0)
    ax.set_title(title or "base vs tuned")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path, {"kubetune.plot": "metrics", "kubetune.metrics": ",".join(names)})


def write_run_plots(
    history: Sequence[Mapping[str, Any]], base: Mapping[str, float], tuned: Mapping[str, float], out_dir: Path
) -> list[Path]:
    """Both pictures of a finished run into ``out_dir`` (its run-N/ folder)."""
    return [
        write_loss_curve(history, out_dir / LOSS_PNG),
        write_metrics_chart(base, tuned, out_dir / METRICS_PNG),
    ]


def _save(fig: Any, path: Path, text: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".png.tmp")
    # matplotlib writes every metadata key as a PNG tEXt chunk.
    fig.savefig(tmp, format="png", metadata={"Software": "kubetune", **{k: str(v) for k, v in text.items()}})
    tmp.replace(path)  # a reader never sees half a picture
    return path
