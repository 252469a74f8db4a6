"""Who still needs a store's write log, and how far it may be truncated.

The store remembers which rows each step wrote so that ``written_since(version)`` costs time in
proportion to the rows written, not the table. Each consumer of that log (the checkpoint
chain, a delta publisher) records the version it has saved; the log is truncated only up to
the smallest of them, so no consumer loses rows it has yet to save::

    versions  ──────────────────────────────────────────────►
    checkpoint chain saved up to      v=1300 ─┐
    delta publisher saved up to   v=1280 ─┐   │
    store.truncate_write_log(1280) ◄──────┘ (the minimum)

>>> class FakeStore:
...     truncated = []
...     def truncate_write_log(self, version): self.truncated.append(version)
>>> marks = WriteLogWatermarks(("checkpoint", "publisher"))
>>> store = FakeStore()
>>> marks.advance(store, "checkpoint", 1300)
>>> marks.advance(store, "publisher", 1280)
>>> store.truncated
[1280]
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol


class TruncatableLog(Protocol):
    """What the watermarks need of a store."""

    def truncate_write_log(self, version: int) -> None:
        """Forget which rows were written at or before ``version``."""


class WriteLogWatermarks:
    """The versions each write-log consumer has saved; truncates to their minimum."""

    def __init__(self, consumers: Iterable[str] = ("checkpoint",)) -> None:
        self._marks: dict[str, int | None] = dict.fromkeys(consumers)  # pragma: no mutate
        self._lock = threading.Lock()

    def register(self, consumer: str) -> None:
        """Add a consumer that has saved nothing yet (holds truncation until it advances)."""
        with self._lock:
            self._marks.setdefault(consumer, None)

    def advance(self, store: TruncatableLog, consumer: str, version: int) -> None:
        """Record that ``consumer`` saved everything up to ``version``; truncate if possible."""
        with self._lock:
            self._marks[consumer] = version
            marks = list(self._marks.values())
            if any(m is None for m in marks):
                return
            floor = min(m for m in marks if m is not None)
        store.truncate_write_log(floor)

    def mark(self, consumer: str) -> int | None:
        """The version ``consumer`` saved (None: nothing yet)."""
        with self._lock:
            return self._marks.get(consumer)
