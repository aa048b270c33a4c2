"""How far a copy to or from remote storage (s3://, any fsspec URI) has got, as log lines and in status.

Room: the trainer. Bookkeeping only: fsspec hands each file's bytes to `TransferLog.callback()`, and
the log gets a line every `every` seconds (a big model's download is minutes of silence otherwise)
and one when the copy is whole, with the bytes really counted.

The same lines go to one process-wide sink when one is set (`report_to`: the trainer's
StatusReporter.transfer, i.e. status.progress.transfer): a trainer is one run per process, and the
copies happen deep in data and model loading, which should not carry a status reporter through
every call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("kubetune_trainer")

EVERY_SECONDS = 10.0
Sink = Callable[[str | None], None]  # a line while a copy runs, None once it is over
_sinks: list[Sink] = []


def report_to(sink: Sink | None) -> None:
    """Also hand each line to ``sink`` (None: the log only)."""
    _sinks[:] = [sink] if sink is not None else []


def size_text(n: float) -> str:
    """Bytes for a person.

    >>> size_text(512), size_text(3 * 1024**2 + 1), size_text(5 * 1024**3)
    ('512 B', '3.0 MiB', '5.0 GiB')
    """
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


class TransferLog:
    """``verb`` ("fetching", "uploading") ``uri``: `total` bytes expected, `add` as they arrive."""

    def __init__(
        self, verb: str, uri: str, total: int, every: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.verb, self.uri, self.total, self.clock = verb, uri, total, clock
        self.every = EVERY_SECONDS if every is None else every
        self.done = 0
        self.started = clock()
        self._next = self.started + self.every

    def line(self) -> str:
        """The line logged while the copy is under way.

        >>> t = TransferLog("fetching", "s3://b/m", 4 * 1024**2, clock=lambda: 0.0)
        >>> t.add(1024**2)
        >>> t.line()
        'fetching s3://b/m: 1.0 MiB of 4.0 MiB (25%)'
        """
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{self.verb} {self.uri}: {size_text(self.done)} of {size_text(self.total)}{pct}"

    def add(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if n and now >= self._next:
            line = self.line()
            log.info(line)
            for sink in _sinks:
                sink(line)
            self._next = now + self.every

    def finish(self) -> None:
        log.info("%s %s: %s in %.1fs", self.verb, self.uri, size_text(self.done), self.clock() - self.started)
        for sink in _sinks:
            sink(None)

    def callback(self) -> Any:
        """An fsspec callback for one file's copy (``fs.get_file(..., callback=...)``), feeding this log."""
        from fsspec.callbacks import Callback

        transfer = self

        class Feed(Callback):  # type: ignore[misc]
            seen = 0

            def call(self, *args: Any, **kwargs: Any) -> None:  # fsspec calls it after every update
                transfer.add(int(self.value) - self.seen)
                self.seen = int(self.value)

        return Feed()
