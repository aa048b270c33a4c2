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
from kubetune_trainer.sources import DataError, load_rows, read

log = logging.getLogger("kubetune_trainer")
SPLITS = ("train", "validation", "test")


@dataclass
class PreparedData:
    splits: dict[str, list[dict[str, Any]]]
    golden: list[dict[str, Any]] | None
    info: dict[str, Any]

    def counts(self) -> dict[str, Any]:
        """status.data: rows read, dropped by reason, kept, and per split (captures: per source too)."""
        if "status" in self.info:
            return dict(self.info["status"])
        cleaning = self.info["cleaning"]
        read_ = int(cleaning["input"]) + int(cleaning.get("oversized", 0))
        return data.status_counts(read_, cleaning, self.info["counts"])


def prepare(cfg: JobConfig, out_dir: Path, run: int = 0, owner: dict[str, str] | None = None) -> PreparedData:
    """Every DataError raised here carries the counts so far (``.data``), for status.data.

    ``run``: the operator's run number (0 locally), whose earlier runs' ledgers spec.dataset.captures reads;
    captures raise `captured.NoNewData` when nothing new is left to train on."""
    d = cfg.dataset
    if d.captures is not None:
        return _prepare_captured(cfg, out_dir, run, owner or {})
    assert d.uri is not None
    loaded = read(d.uri, d.cleaning.max_row_bytes)
    counts = data.status_counts(len(loaded.rows) + loaded.oversized, {"oversized": loaded.oversized}, None)
    try:
        return _prepare(cfg, out_dir, loaded.rows, loaded.oversized)
    except DataError as e:
        e.data = e.data or counts
        raise


def _prepare(cfg: JobConfig, out_dir: Path, raw: list[dict[str, Any]], oversized: int) -> PreparedData:
    d = cfg.dataset
    assert d.uri is not None
    if oversized:
        log.warning("%s: %d rows longer than maxRowBytes %d dropped", d.uri, oversized, d.cleaning.max_row_bytes)
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
        report = {"oversized": oversized, **report}
        counts = data.status_counts(len(raw) + oversized, report, None)
        if not cleaned:
            raise DataError(f"{d.uri}: no rows left after cleaning ({data.describe_counts(counts)})", counts)
        try:
            splits = data.split_rows(cleaned, d.split)
        except DataError as e:
            raise DataError(f"{d.uri}: {e} ({data.describe_counts(counts)})", counts) from e
        mix_sha = None
        if d.mix is not None and d.mix.uri:
            general = load_rows(d.mix.uri, d.cleaning.max_row_bytes)
            data.validate_rows(general, "text", d.fields, d.mix.uri)
            mix_sha = data.content_sha256(general)  # lineage: the general data is an input too
            general, _ = data.clean_rows(general, [d.fields.text], d.cleaning)
            splits["train"] = data.mix_in(splits["train"], general, d.mix.fraction, d.split.seed)
        info = {
            "sourceUri": d.uri,
            "sourceSha256": sha,
            **({"mixUri": d.mix.uri, "mixSha256": mix_sha} if d.mix is not None else {}),
            "seed": d.split.seed,
            "settings": settings,
            "cleaning": report,
            "counts": {name: len(rows) for name, rows in splits.items()},
        }
        data_dir.mkdir(parents=True, exist_ok=True)
        for name in SPLITS:
            _write_jsonl(data_dir / f"{name}.jsonl", splits[name])
        info_path.write_text(json.dumps(info, indent=1))  # last, so its presence means "all written"
    prepared = PreparedData(splits, None, info)
    log.info("data: %s", data.describe_counts(prepared.counts()))
    if cfg.evaluation.golden_dataset_uri:
        prepared.golden = load_rows(cfg.evaluation.golden_dataset_uri, d.cleaning.max_row_bytes)
        try:
            data.validate_rows(prepared.golden, "instruction", d.fields, cfg.evaluation.golden_dataset_uri)
        except DataError as e:
            e.data = prepared.counts()
            raise
    return prepared


def _prepare_captured(cfg: JobConfig, out_dir: Path, run: int, owner: dict[str, str]) -> PreparedData:
    from kubetune_trainer import captured

    splits, info, ledger = captured.build(cfg, run)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        _write_jsonl(data_dir / f"{name}.jsonl", splits[name])
    captured.write_ledger(data_dir, ledger, owner)
    (data_dir / "split.json").write_text(json.dumps(info, indent=1))
    prepared = PreparedData(splits, None, info)
    log.info("data from captures: %s", data.describe_counts(prepared.counts()))
    if cfg.evaluation.golden_dataset_uri:
        prepared.golden = load_rows(cfg.evaluation.golden_dataset_uri, cfg.dataset.cleaning.max_row_bytes)
        data.validate_rows(prepared.golden, "instruction", cfg.dataset.fields, cfg.evaluation.golden_dataset_uri)
    return prepared


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
