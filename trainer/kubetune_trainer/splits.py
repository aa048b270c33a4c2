"""Prepare the data once: load, validate, clean, split, mix, and write the splits beside the artifact.

``<output>/data/{train,validation,test}.jsonl`` plus ``split.json`` (counts, cleaning report, seed,
source digest). A restarted run whose source digest is unchanged reuses these files instead of
re-splitting, so train/test never drift between attempts (a changed seed, fraction or cleaning
setting does re-split).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer import data
from kubetune_trainer.config import JobConfig, to_dict
from kubetune_trainer.sources import DataError, load_rows

log = logging.getLogger("kubetune_trainer")
SPLITS = ("train", "validation", "test")


@dataclass
class PreparedData:
    splits: dict[str, list[dict[str, Any]]]
    golden: list[dict[str, Any]] | None
    info: dict[str, Any]


def prepare(cfg: JobConfig, out_dir: Path) -> PreparedData:
    d = cfg.dataset
    assert d.uri is not None
    raw = load_rows(d.uri)
    data.validate_rows(raw, d.format, d.fields, d.uri)
    sha = data.content_sha256(raw)
    columns = data.text_columns(d.format, d.fields)
    data_dir = out_dir / "data"
    info_path = data_dir / "split.json"
    settings = {"split": to_dict(d.split), "cleaning": to_dict(d.cleaning), "mix": d.mix and to_dict(d.mix)}
    previous = json.loads(info_path.read_text()) if info_path.exists() else {}
    if previous.get("sourceSha256") == sha and previous.get("settings") == settings:
        info = previous
        splits = {name: _read_jsonl(data_dir / f"{name}.jsonl") for name in SPLITS}
        log.info("reusing the splits written by an earlier attempt in %s", data_dir)
    else:
        cleaned, report = data.clean_rows(raw, columns, d.cleaning)
        if not cleaned:
            raise DataError(f"{d.uri}: no rows left after cleaning ({report})")
        splits = data.split_rows(cleaned, d.split)
        if d.mix is not None and d.mix.uri:
            general = load_rows(d.mix.uri)
            data.validate_rows(general, "text", d.fields, d.mix.uri)
            general, _ = data.clean_rows(general, [d.fields.text], d.cleaning)
            splits["train"] = data.mix_in(splits["train"], general, d.mix.fraction, d.split.seed)
        info = {
            "sourceUri": d.uri,
            "sourceSha256": sha,
            "seed": d.split.seed,
            "settings": settings,
            "cleaning": report,
            "counts": {name: len(rows) for name, rows in splits.items()},
        }
        data_dir.mkdir(parents=True, exist_ok=True)
        for name in SPLITS:
            _write_jsonl(data_dir / f"{name}.jsonl", splits[name])
        info_path.write_text(json.dumps(info, indent=1))  # last, so its presence means "all written"
    log.info("data: %s rows -> %s (cleaning %s)", info["cleaning"]["input"], info["counts"], info["cleaning"])
    golden = None
    if cfg.evaluation.golden_dataset_uri:
        golden = load_rows(cfg.evaluation.golden_dataset_uri)
        data.validate_rows(golden, "instruction", d.fields, cfg.evaluation.golden_dataset_uri)
    return PreparedData(splits, golden, info)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
