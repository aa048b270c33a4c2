"""Pictures of a run: the loss curve and the base-vs-tuned metrics chart, and of a canary's analysis, as PNGs.

Room: the trainer (also imported by the kubectl plugin, so no torch here: matplotlib only). Pure
functions of plain data: ``points`` are the progress points `train.train` records (``{"step",
"loss", "evalLoss", ...}``, as status.progress.history keeps them too), ``base`` / ``tuned`` the
evaluation metrics, ``records`` a ModelDeployment's status.analysis. matplotlib draws off-screen
(the Agg backend, no display).
Each PNG carries what it shows in its text metadata (tEXt chunks): the kind, the run's number of
points or metrics, so a reader (a test, a script) can check a picture without looking at it.
"""

from __future__ import annotations

import contextlib
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


VERDICT_COLOURS = {"Pass": "tab:green", "Fail": "tab:red", "NoData": "tab:gray", "Error": "tab:orange"}


def threshold_bounds(text: str | None) -> tuple[float | None, float | None]:
    """(min, max) of an analysis record's threshold text, as the operator writes it.

    >>> threshold_bounds(">= 0.9 and <= 1.2"), threshold_bounds("<= 0.05"), threshold_bounds(None)
    ((0.9, 1.2), (None, 0.05), (None, None))
    """
    low = high = None
    for part in (text or "").split(" and "):
        op, _, number = part.strip().partition(" ")
        with contextlib.suppress(ValueError):
            if op == ">=":
                low = float(number)
            elif op == "<=":
                high = float(number)
    return low, high


def write_analysis_chart(records: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """One panel per check: each analysis' value (coloured by its verdict) and the check's bounds, in order."""
    checks = list(dict.fromkeys(str(r.get("check")) for r in records if r.get("check")))
    fig = _figure()
    drawn = 0
    for i, name in enumerate(checks or ["(no analysis yet)"]):
        ax = fig.add_subplot(max(len(checks), 1), 1, i + 1)
        mine = [r for r in records if str(r.get("check")) == name]
        points = [(n, float(r["value"]), str(r.get("verdict"))) for n, r in enumerate(mine) if _finite(r.get("value"))]
        drawn += len(points)
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], color="0.6", linewidth=1)
            ax.scatter([p[0] for p in points], [p[1] for p in points],
                       c=[VERDICT_COLOURS.get(p[2], "black") for p in points], zorder=3)  # fmt: skip
        for bound, label in zip(threshold_bounds(mine[-1].get("threshold") if mine else None), ("min", "max"),
                                strict=True):  # fmt: skip
            if bound is not None:
                ax.axhline(bound, linestyle="--", color="tab:red", label=f"{label} {bound:g}")
                ax.legend(fontsize=7, loc="best")
        if mine:
            ax.set_xticks(range(len(mine)), [f"s{r.get('step')}" for r in mine], fontsize=7)
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title or "canary analysis")
    fig.tight_layout()
    text = {"kubetune.plot": "analysis", "kubetune.points": drawn, "kubetune.checks": ",".join(checks)}
    return _save(fig, path, text)


def _save(fig: Any, path: Path, text: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".png.tmp")
    # matplotlib writes every metadata key as a PNG tEXt chunk.
    fig.savefig(tmp, format="png", metadata={"Software": "kubetune", **{k: str(v) for k, v in text.items()}})
    tmp.replace(path)  # a reader never sees half a picture
    return path
