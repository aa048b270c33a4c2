"""The run's pictures as pure functions: points in, a PNG out that decodes and says what it shows."""

from __future__ import annotations

import math
import struct
import zlib

from PIL import Image

from kubetune_trainer import plots


def test_loss_curve_counts_the_points_it_draws(tmp_path):
    points = [{"step": s, "loss": 3.0 / s, "evalLoss": (2.5 / s if s % 4 == 0 else None)} for s in range(2, 21, 2)]
    points.append({"step": 22, "loss": math.nan, "evalLoss": None})  # a diverged step is not drawn
    path = plots.write_loss_curve(points, tmp_path / "loss.png")
    with Image.open(path) as im:
        im.load()
        assert im.size == (640, 400)
        assert (im.text["kubetune.points"], im.text["kubetune.evalPoints"]) == ("10", "5")
        # Not a blank canvas: the curves put more than a handful of colours on it.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 20
    # The file itself, read without PIL: PNG signature, then IHDR with the width and height.
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", raw[8:16])
    assert kind == b"IHDR" and struct.unpack(">II", raw[16:24]) == (640, 400)
    assert zlib.crc32(raw[12 : 16 + length]) == struct.unpack(">I", raw[16 + length : 20 + length])[0]


def test_an_empty_history_still_gives_a_picture(tmp_path):
    with Image.open(plots.write_loss_curve([], tmp_path / "loss.png")) as im:
        assert im.text["kubetune.points"] == "0"


def test_metrics_chart_names_every_metric_of_either_side(tmp_path):
    base, tuned = {"evalLoss": 3.1, "exactMatch": 0.0}, {"evalLoss": 1.2, "exactMatch": 0.5, "perplexity": 3.3}
    out = plots.write_run_plots([{"step": 1, "loss": 2.0}], base, tuned, tmp_path)
    assert [p.name for p in out] == [plots.LOSS_PNG, plots.METRICS_PNG]
    with Image.open(tmp_path / plots.METRICS_PNG) as im:
        im.load()
        assert im.text["kubetune.plot"] == "metrics"
        assert im.text["kubetune.metrics"] == "evalLoss,exactMatch,perplexity"
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary name, then renamed
