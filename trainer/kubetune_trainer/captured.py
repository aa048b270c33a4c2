"""spec.dataset.captures, the files side: read capture files, split by prompt hash, keep the ledger.

Room: the trainer's data preparation (reads the capture location and earlier runs' outputs, writes this
run's splits and ledger). Layout read: ``<uri>/<version>/{requests,feedback}-*.jsonl``; ``*.part``
files are still being written and never read. Feedback is read from every version's folder (it may reach
any pod); requests only from the versions asked for.

Splits: a stable hash of the normalised prompt picks train/validation/test (never the seed), so a prompt
sits in the same split in every run. The ledger (``<run>/data/ledger.json``) lists the hashes of the train
rows a run trained on; train rows found in an earlier run's ledger (same FineTuneJob uid, run Succeeded)
are dropped. No new train row: `NoNewData`, and the run ends Skipped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from kubetune_trainer import capture_rows, data, uris
from kubetune_trainer.config import JobConfig
from kubetune_trainer.sources import MAX_ROW_BYTES, DataError

log = logging.getLogger("kubetune_trainer")
Row = dict[str, Any]


class NoNewData(Exception):
    """Nothing new to train on: the run ends Skipped (reason NoNewData) with these counts."""

    def __init__(self, message: str, counts: dict[str, Any]) -> None:
        super().__init__(message)
        self.data = counts


def _open(uri: str) -> tuple[Any, str]:
    import fsspec

    if uris.scheme(uri) in ("file", "pvc"):
        return fsspec.filesystem("file"), str(uris.local_path(uri))
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, str(path)


def _lines(f: Any, max_row_bytes: int) -> tuple[list[dict[str, Any]], int, int]:
    """(records, malformed, oversized) of one binary file: a bad line is counted, never fatal."""
    out, malformed, oversized = [], 0, 0
    while line := f.readline(max_row_bytes + 1):
        if len(line) > max_row_bytes and not line.endswith(b"\n"):
            oversized += 1
            while line and not line.endswith(b"\n"):
                line = f.readline(1 << 20)
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            malformed += 1
            continue
        if isinstance(record, dict):
            out.append(record)
        else:
            malformed += 1
    return out, malformed, oversized


def _read(fs: Any, path: str, max_row_bytes: int) -> tuple[list[dict[str, Any]], int, int]:
    """One capture file; a remote one is copied to a temporary file first (its readline takes no bound)."""
    if getattr(fs, "protocol", None) in ("file", ("file", "local")):
        with open(path, "rb") as f:
            return _lines(f, max_row_bytes)
    import tempfile

    with tempfile.TemporaryDirectory(dir=uris.cache_dir() if uris.cache_dir().exists() else None) as tmp:
        local = Path(tmp) / "capture.jsonl"
        fs.get_file(path, str(local))
        with local.open("rb") as f:
            return _lines(f, max_row_bytes)


def read_captures(
    uri: str, versions: tuple[str, ...] | None, max_row_bytes: int = MAX_ROW_BYTES
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, int]]]:
    """(requests, feedback, per folder version {malformed, oversized}) under `uri`; a missing one is empty."""
    fs, root = _open(uri)
    requests: list[dict[str, Any]] = []
    feedback: list[dict[str, Any]] = []
    bad: dict[str, dict[str, int]] = {}
    fs.invalidate_cache()  # s3fs keeps listings per process: files published since must be seen
    if not fs.exists(root):
        return requests, feedback, bad
    for path in sorted(fs.glob(f"{root.rstrip('/')}/*/*.jsonl")):
        version, name = path.rstrip("/").split("/")[-2:]
        kind = "request" if name.startswith("requests-") else "feedback" if name.startswith("feedback-") else None
        if kind is None or (kind == "request" and versions is not None and version not in versions):
            continue
        records, malformed, oversized = _read(fs, path, max_row_bytes)
        (requests if kind == "request" else feedback).extend(r for r in records if r.get("kind") == kind)
        counts = bad.setdefault(version, {"malformed": 0, "oversized": 0})
        counts["malformed"] += malformed
        counts["oversized"] += oversized
    return requests, feedback, bad


def split_of(key: str, validation: float, test: float) -> str:
    """train, validation or test for a normalised prompt: the same answer in every run, whatever the seed.

    >>> split_of("what is lora", 0.1, 0.1) == split_of("what is lora", 0.1, 0.1)
    True
    """
    h = int(hashlib.sha256(b"kubetune-split\0" + key.encode()).hexdigest()[:16], 16) / 2**64
    return "test" if h < test else "validation" if h < test + validation else "train"


def row_prompt_key(row: Row, fmt: str, fields: Any) -> str:
    if fmt == "chat":
        return capture_rows.prompt_key(row[fields.messages][:-1])
    return capture_rows.prompt_key(row[fields.prompt])


def row_hash(row: Row, columns: list[str]) -> str:
    """The ledger's key of a row: its text, case, whitespace and punctuation folded.

    >>> row_hash({"p": "Hi!", "r": "yo"}, ["p", "r"]) == row_hash({"p": "hi", "r": "Yo."}, ["p", "r"])
    True
    """
    return hashlib.sha256(capture_rows.normalise(data.row_text(row, columns)).encode()).hexdigest()[:32]


def earlier_ledgers(output_uri: str, run: int, uid: str | None) -> set[str]:
    """The train-row hashes of this FineTuneJob's earlier Succeeded runs (``<output>/run-<k>``, k < run)."""
    fs, root = _open(output_uri)
    used: set[str] = set()
    for k in range(1, run):
        base = f"{root.rstrip('/')}/run-{k}"
        try:
            result = json.loads(fs.cat(f"{base}/result.json"))
            ledger = json.loads(fs.cat(f"{base}/data/ledger.json"))
        except (OSError, ValueError):
            continue  # that run wrote no result or no ledger: it trained on nothing of ours
        if result.get("phase") == "Succeeded" and (result.get("owner") or {}).get("uid") == (uid or ""):
            used.update(ledger.get("rows") or [])
    return used


def previous_artifact(output_uri: str, run: int, uid: str | None) -> dict[str, Any] | None:
    """The artifact of this FineTuneJob's latest earlier Succeeded run (what stays status.artifact)."""
    fs, root = _open(output_uri)
    for k in range(run - 1, 0, -1):
        try:
            result = json.loads(fs.cat(f"{root.rstrip('/')}/run-{k}/result.json"))
        except (OSError, ValueError):
            continue
        if result.get("phase") == "Succeeded" and (result.get("owner") or {}).get("uid") == (uid or ""):
            artifact = result.get("artifact")
            return dict(artifact) if isinstance(artifact, dict) else None
    return None


def parse_duration(text: str) -> float:
    """Go-style durations, as the API's pattern allows them: '168h' -> 604800.0, '1m30s' -> 90.0.

    >>> parse_duration("168h"), parse_duration("1m30s"), parse_duration("250ms")
    (604800.0, 90.0, 0.25)
    """
    import re

    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return float(sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ms|s|m|h)", text)))


def window(cfg: JobConfig) -> tuple[str, capture_rows.Window]:
    """(capture location, window): the operator's resolution frozen with the spec, else the spec's uri."""
    c = cfg.dataset.captures
    assert c is not None
    frozen = cfg.captures or {}
    uri = frozen.get("uri") or c.uri
    if not uri:
        raise DataError("spec.dataset.captures.modelDeploymentRef: not resolved (run it through the operator)")
    start = capture_rows.parse_time(frozen.get("runStart")) or dt.datetime.now(dt.UTC)
    since = parse_duration(c.since) if c.since else None
    versions = tuple(c.versions) if c.versions is not None else None
    return str(uri), capture_rows.Window(c.min_rating, start, since, versions)


def build(cfg: JobConfig, run: int) -> tuple[dict[str, list[Row]], dict[str, Any], list[str]]:
    """(splits, split.json info, this run's ledger) from the captures; raises NoNewData."""
    d = cfg.dataset
    uri, w = window(cfg)
    requests, feedback, bad = read_captures(uri, w.versions, d.cleaning.max_row_bytes)
    built = capture_rows.build_rows(requests, feedback, d.format, d.fields, w)
    for version, counts in bad.items():
        if w.versions is None or version in w.versions:
            built.source(version).dropped.update({k: v for k, v in counts.items() if v})
    for version, src in built.sources.items():
        src.uri = f"{uri.rstrip('/')}/{version}"
    columns = data.text_columns(d.format, d.fields)
    cleaned, report = data.clean_rows([row for _, row in built.rows], columns, d.cleaning)
    used = earlier_ledgers(cfg.output.uri, run, cfg.uid) if run > 1 else set()
    splits: dict[str, list[Row]] = {"train": [], "validation": [], "test": []}
    used_before = 0
    for row in cleaned:
        split = split_of(row_prompt_key(row, d.format, d.fields), d.split.validation, d.split.test)
        if split == "train" and row_hash(row, columns) in used:
            used_before += 1  # trained on before; held-out rows stay, they never train
            continue
        splits[split].append(row)
    counts = data.status_counts(len(built.rows), report, {k: len(v) for k, v in splits.items()})
    if used_before:
        counts["usedBeforeDropped"] = used_before
    sources = [s.status() for _, s in sorted(built.sources.items())]
    full: dict[str, Any] = {**counts, "sources": sources}
    if not splits["train"]:
        raise NoNewData(
            f"no new rows to train on in {uri} ({data.describe_counts(counts)}; {used_before} used before): "
            "the run is skipped",
            full,
        )
    info = {
        "sourceUri": uri,
        "sourceSha256": data.content_sha256(cleaned),
        "split": "promptHash",
        "cleaning": report,
        "counts": {k: len(v) for k, v in splits.items()},
        "status": full,
    }
    return splits, info, [row_hash(r, columns) for r in splits["train"]]


def write_ledger(data_dir: Path, rows: list[str], owner: dict[str, str]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "ledger.json").write_text(json.dumps({"owner": owner, "rows": rows}))
