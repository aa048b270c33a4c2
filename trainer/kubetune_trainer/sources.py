"""Read raw rows (a list of dicts) from wherever the spec points; no cleaning or validation here.

Supported: ``.jsonl``, ``.json`` (a list, or ``{"data": [...]}``), ``.csv``, ``.parquet``, ``.txt``
(one row ``{"text": paragraph}`` per blank-line-separated paragraph), a directory of such files, a
local dataset-repo directory through ``datasets.load_dataset``, ``hf://`` and ``s3://``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from kubetune_trainer import uris

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


class DataError(ValueError):
    """The data cannot be trained on; the message names the file, row and field."""


def load_rows(uri: str) -> list[dict[str, Any]]:
    kind = uris.scheme(uri)
    if kind == "hf":
        local = uris.hf_local_copy(uri)
        return _load_with_datasets(str(local) if local else uri.removeprefix("hf://"), uri)
    remote = kind not in ("file", "pvc")
    try:
        path = uris.fetch_remote(uri, uris.cache_dir() / "data") if remote else uris.local_path(uri)
    except OSError as e:
        raise DataError(str(e)) from e
    if not path.exists():
        raise DataError(f"{uri}: no such file or directory ({path})")
    if path.is_file():
        return read_file(path)
    files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and not _hidden(p, path))
    if not files:
        return _load_with_datasets(str(path), uri)
    rows: list[dict[str, Any]] = []
    for file in files:
        rows.extend(read_file(file))
    return rows


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def read_file(path: Path) -> list[dict[str, Any]]:
    try:
        if path.suffix == ".jsonl":
            return _read_jsonl(path)
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            data = data.get("data", data) if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of rows (or {{'data': [...]}})")
            return list(data)
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                return list(csv.DictReader(f))
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_table(path).to_pylist())
        if path.suffix == ".txt":
            paragraphs = path.read_text().split("\n\n")
            return [{"text": p.strip()} for p in paragraphs if p.strip()]
    except DataError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from e
    except Exception as e:  # pyarrow raises its own types for broken parquet
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    raise DataError(f"{path}: unsupported file type (use one of {', '.join(SUFFIXES)})")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {number}: not valid JSON ({e.msg})") from e
    return rows


def _load_with_datasets(path: str, uri: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(path, split="train")
    except Exception as e:
        raise DataError(f"{uri}: could not load with datasets.load_dataset ({type(e).__name__}: {e})") from e
    return list(ds.to_list())
