"""Pure data functions: rows in, rows out. No files, no tokenizer, no model.

A row is whatever the source held (a dict). ``fields`` maps roles (prompt, response, messages, text,
system) to column names, so ``{"q": ..., "a": ...}`` works with ``fields.prompt = "q"``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import statistics
from collections import Counter
from typing import Any

from kubetune_trainer.config import CleaningConfig, FieldsConfig, SplitConfig
from kubetune_trainer.sources import DataError

Row = dict[str, Any]
ROLES = ("system", "user", "assistant")


def text_columns(fmt: str, fields: FieldsConfig) -> list[str]:
    """The columns a format reads.

    >>> text_columns("instruction", FieldsConfig())
    ['prompt', 'response']
    >>> text_columns("preference", FieldsConfig())  # dedup compares all three
    ['prompt', 'chosen', 'rejected']
    """
    if fmt == "instruction":
        return [fields.prompt, fields.response] + ([fields.system] if fields.system else [])
    if fmt == "preference":
        return [fields.prompt, fields.chosen, fields.rejected]
    return [fields.messages] if fmt == "chat" else [fields.text]


def validate_rows(rows: list[Row], fmt: str, fields: FieldsConfig, source: str) -> None:
    """Raise `DataError` naming the first bad row (1-based) and field.

    >>> validate_rows([{"prompt": "hi", "response": 3}], "instruction", FieldsConfig(), "d.jsonl")
    Traceback (most recent call last):
    ...
    kubetune_trainer.sources.DataError: d.jsonl row 1: field 'response' must be a string, got int
    """
    if not rows:
        raise DataError(f"{source}: no rows")
    for i, row in enumerate(rows, start=1):
        where = f"{source} row {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        for column in text_columns(fmt, fields):
            optional = column == fields.system and fmt == "instruction"
            if column not in row or row[column] is None:
                if optional:
                    continue
                has = ", ".join(repr(k) for k in sorted(row)) or "no fields"
                raise DataError(
                    f"{where}: field '{column}' is missing (format {fmt}; the row has {has}): "
                    "name the right column in spec.dataset.fields"
                )
            value = row[column]
            if fmt == "chat":
                _validate_messages(value, f"{where}: field '{column}'")
            elif fmt == "preference" and isinstance(value, list):  # trl's conversational pairs
                last = "user" if column == fields.prompt else "assistant"
                _validate_messages(value, f"{where}: field '{column}'", last)
            elif not isinstance(value, str):
                raise DataError(f"{where}: field '{column}' must be a string, got {type(value).__name__}")


def _validate_messages(value: Any, where: str, last: str = "assistant") -> None:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where} must be a non-empty list of {{role, content}}")
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise DataError(f"{where}[{j}] must be {{role: system|user|assistant, content: string}}")
    if value[-1]["role"] != last:
        why = "the training target" if last == "assistant" else "the turn the responses answer"
        raise DataError(f"{where} must end with a{'n' if last == 'assistant' else ''} {last} message ({why})")


def normalize_whitespace(text: str) -> str:
    """Collapse runs of spaces and tabs, trim each line, keep at most one blank line.

    >>> normalize_whitespace("  a \\t b\\n\\n\\n c  ")
    'a b\\n\\nc'
    """
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def row_text(row: Row, columns: list[str]) -> str:
    """All text of a row, joined (chat messages contribute their contents).

    >>> chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    >>> row_text({"messages": chat}, ["messages"])
    'hi\\nyo'
    """
    parts: list[str] = []
    for column in columns:
        value = row.get(column)
        if isinstance(value, list):
            parts.extend(m["content"] for m in value)
        elif isinstance(value, str):
            parts.append(value)
    return "\n".join(parts)


def _map_text(row: Row, columns: list[str], fn: Any) -> Row:
    out = dict(row)
    for column in columns:
        value = row.get(column)
        if isinstance(value, list):
            out[column] = [{**m, "content": fn(m["content"])} for m in value]
        elif isinstance(value, str):
            out[column] = fn(value)
    return out


def _dedup_key(text: str) -> str:
    return re.sub(r"\W+", " ", text.casefold()).strip()


def clean_rows(rows: list[Row], columns: list[str], cfg: CleaningConfig) -> tuple[list[Row], dict[str, int]]:
    """Normalise, filter and deduplicate; return the kept rows and what was dropped, by reason.

    >>> rows = [{"t": "a  b"}, {"t": "a b"}, {"t": "A B!"}, {"t": "  "}]
    >>> clean_rows(rows, ["t"], CleaningConfig())
    ([{'t': 'a b'}], {'input': 4, 'empty': 1, 'tooShort': 0, 'tooLong': 0, 'duplicates': 1, \
'nearDuplicates': 1, 'outliers': 0, 'output': 1})
    """
    report = Counter({"input": len(rows)})
    kept: list[Row] = []
    for row in rows:
        if cfg.normalize_whitespace:
            row = _map_text(row, columns, normalize_whitespace)
        # Every text field must have content: an empty prompt or response teaches nothing.
        values = [row_text(row, [c]) for c in columns if row.get(c) is not None]
        if any(not v.strip() for v in values):
            report["empty"] += 1
            continue
        n = len(row_text(row, columns))
        if n < cfg.min_chars:
            report["tooShort"] += 1
        elif cfg.max_chars is not None and n > cfg.max_chars:
            report["tooLong"] += 1
        else:
            kept.append(row)
    if cfg.dedup:
        kept = _dedup(kept, columns, report)
    if cfg.drop_outliers and len(kept) >= 4:
        lengths = [len(row_text(r, columns)) for r in kept]
        q1, _, q3 = statistics.quantiles(lengths, n=4)
        limit = q3 + 3 * (q3 - q1)
        report["outliers"] += sum(n > limit for n in lengths)
        kept = [r for r, n in zip(kept, lengths, strict=True) if n <= limit]
    order = ["input", "empty", "tooShort", "tooLong", "duplicates", "nearDuplicates", "outliers"]
    counts = {k: report[k] for k in order}
    counts["output"] = len(kept)
    return kept, counts


def _dedup(rows: list[Row], columns: list[str], report: Counter[str]) -> list[Row]:
    exact: set[str] = set()
    near: set[str] = set()
    out = []
    for row in rows:
        key = json.dumps([row.get(c) for c in columns], sort_keys=True)
        if key in exact:
            report["duplicates"] += 1
            continue
        exact.add(key)
        loose = _dedup_key(row_text(row, columns))
        if loose in near:
            report["nearDuplicates"] += 1
            continue
        near.add(loose)
        out.append(row)
    return out


# status.data: what reading and cleaning did to the rows, named for a reader of `kubectl get -o yaml`.
STATUS_COUNTS = {
    "oversized": "oversizedDropped",
    "empty": "emptyDropped",
    "tooShort": "tooShortDropped",
    "tooLong": "tooLongDropped",
    "duplicates": "duplicatesDropped",
    "nearDuplicates": "nearDuplicatesDropped",
    "outliers": "outliersDropped",
}


def status_counts(rows_read: int, cleaning: dict[str, int] | None, splits: dict[str, int] | None) -> dict[str, int]:
    """The cleaning report as status.data (non-zero drops only; rowsKept once cleaning ran).

    >>> status_counts(5, {"oversized": 1, "input": 4, "empty": 1, "duplicates": 0, "output": 3}, {"train": 3})
    {'rowsRead': 5, 'oversizedDropped': 1, 'emptyDropped': 1, 'rowsKept': 3, 'train': 3}
    """
    out = {"rowsRead": rows_read}
    for key, name in STATUS_COUNTS.items():
        if (cleaning or {}).get(key):
            out[name] = int((cleaning or {})[key])
    if cleaning is not None and "output" in cleaning:
        out["rowsKept"] = int(cleaning["output"])
    out.update({k: int(v) for k, v in (splits or {}).items()})
    return out


def describe_counts(counts: dict[str, int]) -> str:
    """One line for error messages.

    >>> describe_counts({"rowsRead": 4, "emptyDropped": 3, "duplicatesDropped": 1, "rowsKept": 0})
    '4 rows read; dropped: 3 empty, 1 duplicates; 0 kept'
    """
    drops = [f"{v} {k.removesuffix('Dropped')}" for k, v in counts.items() if k.endswith("Dropped")]
    kept = f"; {counts['rowsKept']} kept" if "rowsKept" in counts else ""
    return f"{counts['rowsRead']} rows read" + (f"; dropped: {', '.join(drops)}" if drops else "") + kept


def split_rows(rows: list[Row], cfg: SplitConfig) -> dict[str, list[Row]]:
    """Shuffle once with ``cfg.seed`` and cut into train / validation / test.

    A non-zero fraction always gets at least one row, so a tiny data set still has a test split.

    >>> s = split_rows([{"i": i} for i in range(10)], SplitConfig(validation=0.2, test=0.1, seed=1))
    >>> {k: len(v) for k, v in s.items()}
    {'train': 7, 'validation': 2, 'test': 1}
    """
    shuffled = list(rows)
    random.Random(cfg.seed).shuffle(shuffled)
    n = len(shuffled)

    def size(fraction: float) -> int:
        return max(1, round(fraction * n)) if fraction > 0 else 0

    n_test, n_val = size(cfg.test), size(cfg.validation)
    if n - n_test - n_val < 1:
        raise DataError(f"only {n} rows after cleaning: too few to split into train/validation/test")
    return {
        "train": shuffled[n_test + n_val :],
        "validation": shuffled[n_test : n_test + n_val],
        "test": shuffled[:n_test],
    }


def mix_in(train: list[Row], general: list[Row], fraction: float, seed: int) -> list[Row]:
    """Add general-domain rows so they make up ``fraction`` of the result (as far as there are enough).

    >>> len(mix_in([{"t": "x"}] * 3, [{"t": str(i)} for i in range(10)], 0.25, seed=0))
    4
    """
    wanted = round(fraction / (1 - fraction) * len(train))
    picked = random.Random(seed).sample(general, min(wanted, len(general)))
    out = train + picked
    random.Random(seed + 1).shuffle(out)
    return out


def content_sha256(rows: list[Row]) -> str:
    """A digest of the rows' content, independent of file format (for lineage in the model card).

    >>> content_sha256([{"a": 1}])[:19]
    'sha256:e8c628edc996'
    """
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()
