"""Capture files as the serving side writes them (the issue-13 contract), for the trainer's tests.

cap = CaptureWriter(tmp_path / "captures")  # or a pvc:// claim's folder, or an s3fs upload
rid = cap.request("v1", "What is LoRA?", "A low-rank adapter.")
cap.feedback(rid, rating=5)
cap.close()  # writes <root>/<version>/{requests,feedback}-<pod>-<ts>-<seq>.jsonl (and a .part never read)
"""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path
from typing import Any

TIME = "2026-12-01T12:00:00Z"


class CaptureWriter:
    def __init__(self, root: Path, pod: str = "pod-a", stamp: str = "20261201T120000") -> None:
        self.root, self.pod, self.stamp = Path(root), pod, stamp
        self.records: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._seq = itertools.count()

    def request(
        self, version: str, prompt: str | list[dict[str, str]], response: str, time: str = TIME, **extra: Any
    ) -> str:
        rid = f"kt-{version}-{uuid.uuid4().hex}"
        chat = isinstance(prompt, list)
        record = {"kind": "request", "id": rid, "time": time, "version": version, "model": "tiny"}
        record.update(
            {"endpoint": "chat", "messages": prompt} if chat else {"endpoint": "completions", "prompt": prompt}
        )
        record.update(response=response, finishReason="stop", promptTokens=3, completionTokens=3, latencySeconds=0.01)
        record.update(extra)
        self.records.setdefault((version, "requests"), []).append(record)
        return rid

    def feedback(
        self, rid: str, rating: int | None = None, correction: str | None = None, time: str = TIME, folder: str = ""
    ) -> None:
        version = rid.split("-")[1]
        record = {"kind": "feedback", "responseId": rid, "time": time, "version": version}
        record.update(rating=rating, correction=correction)
        self.records.setdefault((folder or version, "feedback"), []).append(record)

    def close(self) -> list[Path]:
        """Publish every record as closed files, plus one unfinished ``.part`` a reader must skip."""
        written = []
        for (version, kind), records in sorted(self.records.items()):
            folder = self.root / version
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{kind}-{self.pod}-{self.stamp}-{next(self._seq)}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
            written.append(path)
            bogus = {**records[0], "id": "kt-part-0", "responseId": "kt-part-0"}
            (folder / f"{kind}-{self.pod}-{self.stamp}-{next(self._seq)}.jsonl.part").write_text(json.dumps(bogus))
        self.records.clear()
        return written
