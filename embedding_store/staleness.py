"""Bounded staleness (stale synchronous parallel) for trainers sharing one store.

Each trainer (thread or process-local worker) has a clock: the steps it has completed. A
trainer may start its step ``c`` only when every registered trainer has completed at least
``c - S`` steps, so the rows it reads hold every update of every trainer's steps before
``c - S``: no read is more than S steps behind. ``S = 0`` is synchronous (lock-step).

::

    S = 1      worker a: |0|1|2|  (may start 2 once b has finished 1)
               worker b: |0|1|

>>> clock = StalenessClock(staleness=1)
>>> a, b = clock.register(), clock.register()
>>> clock.begin(a, timeout=0.1), clock.end(a)
(0, None)
>>> clock.begin(a, timeout=0.1), clock.end(a)     # a at 1, b at 0: within S=1
(1, None)
>>> clock.begin(a, timeout=0.05)                   # a would be 2 ahead of b
Traceback (most recent call last):
...
TimeoutError: worker 0 at clock 2 waited for the slowest worker (clock 0) beyond staleness 1
"""

from __future__ import annotations

import threading

from embedding_store.errors import ConfigError


class StalenessClock:
    """Per-worker clocks with the SSP rule: start step c only when min clock >= c - S."""

    def __init__(self, staleness: int = 0) -> None:
        if staleness < 0:
            raise ConfigError(f"staleness must be >= 0, got {staleness}")
        self.staleness = staleness
        self._clocks: list[int] = []
        self._active: list[bool] = []
        self._cond = threading.Condition()

    def register(self) -> int:
        """Add a worker at the slowest active clock; returns its id."""
        with self._cond:
            start = self._min()
            self._clocks.append(start)
            self._active.append(True)
            return len(self._clocks) - 1

    def unregister(self, worker: int) -> None:
        """Remove a worker (it no longer holds others back)."""
        with self._cond:
            self._active[worker] = False
            self._cond.notify_all()

    def _min(self) -> int:
        live = [c for c, a in zip(self._clocks, self._active, strict=True) if a]
        return min(live) if live else 0

    def begin(self, worker: int, timeout: float | None = None) -> int:
        """Block until ``worker`` may start its next step; returns the lag it starts with."""
        with self._cond:
            mine = self._clocks[worker]
            ok = self._cond.wait_for(lambda: self._min() >= mine - self.staleness, timeout)
            if not ok:
                raise TimeoutError(
                    f"worker {worker} at clock {mine} waited for the slowest worker "
                    f"(clock {self._min()}) beyond staleness {self.staleness}"
                )
            return mine - self._min()

    def end(self, worker: int) -> None:
        """Mark ``worker``'s step complete."""
        with self._cond:
            self._clocks[worker] += 1
            self._cond.notify_all()

    def clocks(self) -> list[int]:
        """Every worker's clock."""
        with self._cond:
            return list(self._clocks)
