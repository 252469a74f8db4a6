"""A readers-writer lock that prefers writers: many requests read, one delta writes.

A writer waits for the readers inside to leave; readers that arrive while a writer waits queue
behind it, so a stream of requests cannot starve delta application.

>>> lock = ReadWriteLock()
>>> with lock.read():
...     with lock.read():          # readers share
...         lock.readers
2
>>> with lock.write():
...     lock.writing
True
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    """Shared ``read()`` / exclusive ``write()`` context managers (not reentrant)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._waiting_writers = 0

    @property
    def readers(self) -> int:
        """Readers inside now."""
        return self._readers

    @property
    def writing(self) -> bool:
        """Whether a writer is inside now."""
        return self._writing

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared."""
        with self._cond:
            while self._writing or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively."""
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
