"""Background write-back: evicted rows reach RocksDB off the training thread.

::

    end_step ─► ShardTable.start_eviction (mark victims) ─► queue ─► writer thread
                                                                 └─► ShardTable.finish_eviction
                                                                     (RocksDB write, GIL released)

Anything that needs RocksDB to be complete (flush, migration, expiry, export) first calls
``drain()``; the store does that on entering a step boundary.

>>> wb = WriteBack()
>>> wb.drain()
>>> wb.stop()
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embedding_store.shard import ShardTable


class WriteBack:
    """One writer thread finishing evictions in order."""

    def __init__(self) -> None:
        self._queue: queue.Queue[ShardTable | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self.busy_seconds = 0.0

    def submit(self, shard_table: ShardTable) -> None:
        """Queue ``finish_eviction`` of a shard-table (starts the thread on first use)."""
        self.raise_error()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="write-back", daemon=True)
                self._thread.start()
        self._queue.put(shard_table)

    def _run(self) -> None:

        while True:
            st = self._queue.get()
            try:
                if st is None:
                    return
                t0 = time.perf_counter()
                st.finish_eviction()
                self.busy_seconds += time.perf_counter() - t0
            except BaseException as err:
                self._error = err
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until every queued eviction is written; re-raise a writer failure."""
        self._queue.join()
        self.raise_error()

    def raise_error(self) -> None:
        """Re-raise (once) an error the writer thread hit."""
        err, self._error = self._error, None
        if err is not None:
            raise err

    def stop(self) -> None:
        """Drain and stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()
        self.raise_error()
