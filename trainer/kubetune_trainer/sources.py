"""Read raw rows (a list of dicts) from wherever the spec points; no cleaning or validation here.

Supported: ``.jsonl``, ``.json`` (a list, or ``{"data": [...]}``), ``.csv``, ``.parquet``, ``.txt``
(one row ``{"text": paragraph}`` per blank-line-separated paragraph), a directory of such files, a
local dataset-repo directory through ``datasets.load_dataset``, ``hf://`` and ``s3://``.

Memory per row is bounded: JSONL is read line by line, at most ``max_row_bytes`` of a line at a time,
and a longer line (or ``.txt`` paragraph) is dropped and counted, never loaded (``Loaded.oversized``).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_trainer import uris

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
MAX_ROW_BYTES = 8 << 20  # spec.dataset.cleaning.maxRowBytes' default: far above any sane example
log = logging.getLogger("kubetune_trainer")


class DataError(ValueError):
    """The data cannot be trained on; the message names the file, row and field.

    ``data``: the cleaning counts so far (status.data), when the error came after reading started.
    """

    def __init__(self, message: str, data: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.data = data


@dataclass
class Loaded:
    rows: list[dict[str, Any]] = field(default_factory=list)
    oversized: int = 0  # rows longer than max_row_bytes, dropped unread

    def extend(self, other: Loaded) -> None:
        self.rows.extend(other.rows)
        self.oversized += other.oversized


def load_rows(uri: str, max_row_bytes: int = MAX_ROW_BYTES) -> list[dict[str, Any]]:
    """The rows at `uri` (oversized rows dropped with a warning; `read` also returns their count)."""
    loaded = read(uri, max_row_bytes)
    if loaded.oversized:
        log.warning("%s: %d rows longer than %d bytes dropped", uri, loaded.oversized, max_row_bytes)
    return loaded.rows


def read(uri: str, max_row_bytes: int = MAX_ROW_BYTES) -> Loaded:
    kind = uris.scheme(uri)
    if kind == "hf":
        local = uris.hf_local_copy(uri)
        return Loaded(_load_with_datasets(str(local) if local else uri.removeprefix("hf://"), uri))
    remote = kind not in ("file", "pvc")
    try:
        path = uris.fetch_remote(uri, uris.cache_dir() / "data") if remote else uris.local_path(uri)
    except OSError as e:
        raise DataError(str(e)) from e
    if not path.exists():
        raise DataError(f"{uri}: no such file or directory ({path})")
    if path.is_file():
        return read_file(path, max_row_bytes)
    files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and not _hidden(p, path))
    if not files:
        return Loaded(_load_with_datasets(str(path), uri))
    loaded = Loaded()
    for file in files:
        loaded.extend(read_file(file, max_row_bytes))
    return loaded


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def read_file(path: Path, max_row_bytes: int = MAX_ROW_BYTES) -> Loaded:
    try:
        if path.suffix == ".jsonl":
            return _read_jsonl(path, max_row_bytes)
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            data = data.get("data", data) if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of rows (or {{'data': [...]}})")
            return Loaded(list(data))
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                return Loaded(list(csv.DictReader(f)))
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return Loaded(list(pq.read_table(path).to_pylist()))
        if path.suffix == ".txt":
            paragraphs = [p.strip() for p in path.read_text().split("\n\n") if p.strip()]
            kept = [{"text": p} for p in paragraphs if len(p.encode()) <= max_row_bytes]
            return Loaded(kept, len(paragraphs) - len(kept))
    except DataError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from e
    except Exception as e:  # pyarrow raises its own types for broken parquet
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    raise DataError(f"{path}: unsupported file type (use one of {', '.join(SUFFIXES)})")


def _read_jsonl(path: Path, max_row_bytes: int) -> Loaded:
    """One row per line; a line over `max_row_bytes` is skipped in chunks, so it never sits in memory."""
    loaded = Loaded()
    with path.open("rb") as f:
        number = 0
        while line := f.readline(max_row_bytes + 1):
            number += 1
            if len(line) > max_row_bytes and not line.endswith(b"\n"):
                loaded.oversized += 1
                while line and not line.endswith(b"\n"):
                    line = f.readline(1 << 20)
                continue
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path} line {number}: not UTF-8 text (byte 0x{line[e.start]:02x} at column {e.start + 1}); "
                    "re-encode the file as UTF-8"
                ) from e
            if not text.strip():
                continue
            try:
                loaded.rows.append(json.loads(text))
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {number}: not valid JSON ({e.msg})") from e
    return loaded


def _load_with_datasets(path: str, uri: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(path, split="train")
    except Exception as e:
        raise DataError(f"{uri}: could not load with datasets.load_dataset ({type(e).__name__}: {e})") from e
    return list(ds.to_list())
