"""`get --plot`: the status an object really carries, drawn into a PNG that decodes and says what it shows.

The points come from the writers themselves: the trainer's StatusReporter.progress (status.progress.history)
and the operator's analysis log (md_analysis.history), so a change of either shape fails here."""

from __future__ import annotations

import datetime as dt
import sys

import pytest
from PIL import Image

from kubetune_cli.client import CliError
from kubetune_cli.plot import write_plot
from kubetune_operator import analysis
from kubetune_operator.reconcile.md_analysis import history
from kubetune_trainer import plots
from kubetune_trainer.progress import HISTORY_POINTS, StatusReporter


class Recorder:
    """Keeps what the trainer would patch: the status.progress the apiserver would hold."""

    def __init__(self) -> None:
        self.progress: dict = {}

    def patch_namespaced_custom_object_status(self, *args, **kwargs):
        self.progress = args[5]["status"]["progress"]


def ftj_status(steps: int) -> dict:
    rec, reporter = Recorder(), StatusReporter()
    reporter.api, reporter.name, reporter.namespace = rec, "job", "ns"
    for s in range(1, steps + 1):
        reporter.progress({"step": s, "totalSteps": steps, "epoch": s / steps, "loss": 3.0 / s,
                           "evalLoss": 2.0 / s if s % 10 == 0 else None, "tokensPerSecond": 100.0})  # fmt: skip
    return {"metadata": {"name": "job"}, "status": {"run": 2, "progress": rec.progress}}


def test_a_finetunejobs_loss_curve_spans_its_run_within_the_bound(tmp_path):
    obj = ftj_status(450)
    points = obj["status"]["progress"]["history"]
    assert len(points) <= HISTORY_POINTS and points[0]["step"] == 1 and points[-1]["step"] == 450
    assert [p["step"] for p in points] == sorted(p["step"] for p in points)
    said = write_plot("ftj", obj, tmp_path / "loss.png")
    assert said == f"wrote {tmp_path / 'loss.png'}: loss curve of run 2 ({len(points)} points)"
    with Image.open(tmp_path / "loss.png") as im:
        im.load()
        assert im.text["kubetune.plot"] == "loss" and im.text["kubetune.points"] == str(len(points))
        assert im.text["kubetune.evalPoints"] == str(sum(1 for p in points if "evalLoss" in p)) != "0"


def test_a_canarys_analysis_chart_has_a_panel_per_check(tmp_path):
    now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    records: list = []
    for step, (err, ratio) in enumerate([(0.01, 1.0), (0.02, 1.1), (0.09, None)], start=1):
        records = history(records, step, [
            analysis.Verdict("errorRate", "Pass" if err <= 0.05 else "Fail", err, "<= 0.05", "q1", "m"),
            analysis.Verdict("latencyRatio", "NoData" if ratio is None else "Pass", ratio, ">= 0.5 and <= 1.2",
                             "q2", "m"),
        ], now)  # fmt: skip
    said = write_plot("mdep", {"metadata": {"name": "chat"}, "status": {"analysis": records}}, tmp_path / "a.png")
    assert said.endswith("canary analysis (6 records, 2 checks)")
    with Image.open(tmp_path / "a.png") as im:
        im.load()
        assert (im.text["kubetune.plot"], im.text["kubetune.checks"]) == ("analysis", "errorRate,latencyRatio")
        assert im.text["kubetune.points"] == "5"  # a NoData record has no value to draw
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 20
    assert plots.threshold_bounds(records[1]["threshold"]) == (0.5, 1.2)


def test_nothing_to_draw_and_a_wrong_suffix_are_one_line_errors(tmp_path):
    with pytest.raises(CliError, match="finetunejob job has no loss points yet"):
        write_plot("ftj", {"metadata": {"name": "job"}, "status": {"progress": {"step": 1}}}, tmp_path / "x.png")
    with pytest.raises(CliError, match="modeldeployment chat has no canary analysis yet"):
        write_plot("mdep", {"metadata": {"name": "chat"}}, tmp_path / "x.png")
    with pytest.raises(CliError, match=r"name the file FILE\.png"):
        write_plot("ftj", ftj_status(3), tmp_path / "x.svg")
    assert not list(tmp_path.iterdir())


def test_the_plugin_draws_without_torch():
    """The plugin's picture needs matplotlib only: importing it must not pull torch in."""
    import subprocess

    code = "import sys, kubetune_cli.plot, kubetune_trainer.plots as p; p._figure(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
