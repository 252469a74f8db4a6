"""The closed batches a source holds for the trainer, shared by both sources.

:class:`~pipeline.source.kafka.KafkaSource` (polling thread) and
:class:`~pipeline.source.process.ProcessSource` (reader thread of the child's frames) fill a
:class:`BatchBuffer`; the trainer takes from it, peeks ahead for prefetch, and may be called
back as each batch arrives. The buffer uses its source's lock, so the source's own state
(handed-out sequence numbers, failures) changes atomically with it.

>>> import threading
>>> buf = BatchBuffer(threading.Lock())
>>> buf.put("b0"), buf.put("b1"), len(buf), buf.peek(5)
(True, True, 2, ['b0', 'b1'])
>>> buf.take(0.0, check=lambda: None), len(buf)
('b0', 1)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["BatchBuffer"]

log = logging.getLogger(__name__)
B = TypeVar("B")


class BatchBuffer(Generic[B]):
    """A FIFO of batches under ``lock``, with a condition to wait on and ready callbacks."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.ready = threading.Condition(lock)
        self._batches: deque[B] = deque()
        self._callbacks: list[Callable[[B], None]] = []

    def __len__(self) -> int:
        with self.lock:
            return len(self._batches)

    def take(
        self,
        timeout_s: float,
        check: Callable[[], None],
        on_take: Callable[[B], None] | None = None,
    ) -> B | None:
        """The oldest batch, waiting up to ``timeout_s``; ``None`` if none arrived.

        While the buffer is empty, ``check()`` runs with the lock held and raises if no batch
        can come any more (the source failed or closed). ``on_take(batch)`` also runs under
        the lock, so the source can record what it handed out atomically.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self.ready:
            while not self._batches:
                check()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.ready.wait(remaining)
            batch = self._batches.popleft()
            if on_take is not None:
                on_take(batch)
            self.ready.notify_all()
            return batch

    def peek(self, k: int) -> list[B]:
        """The next ``k`` batches (fewer if fewer are buffered), left in place."""
        with self.lock:
            return [b for _, b in zip(range(k), self._batches, strict=False)]

    def put(
        self,
        batch: B,
        capacity: int | None = None,
        stop: threading.Event | None = None,
        wait_s: float = 0.05,
    ) -> bool:
        """Append ``batch`` and run the ready callbacks; ``False`` if it was not taken.

        With ``capacity``, a full buffer is waited on for ``wait_s`` once; still full (or
        ``stop`` set) means ``False``, and the caller offers the batch again later.
        """
        with self.ready:
            if capacity is not None and len(self._batches) >= capacity:
                self.ready.wait(wait_s)
            full = capacity is not None and len(self._batches) >= capacity
            if full or (stop is not None and stop.is_set()):
                return False
            self._batches.append(batch)
            self.ready.notify_all()
        for callback in self._callbacks:
            try:
                callback(batch)
            except Exception:
                log.exception(
                    "on_batch_ready callback failed for batch %s", getattr(batch, "seq", "?")
                )
        return True

    def on_ready(self, callback: Callable[[B], None]) -> None:
        """Call ``callback(batch)`` from the filling thread as each batch is put."""
        self._callbacks.append(callback)

    def wake(self) -> None:
        """Wake every thread waiting on the buffer (the source failed or is closing)."""
        with self.ready:
            self.ready.notify_all()
