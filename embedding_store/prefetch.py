"""Asynchronous look-ahead prefetch: load the cold rows of upcoming batches into DRAM.

::

    source ──ids of batch i+K──► store.prefetch() ──► queue ──► worker thread
                                      │                            │ per shard: DRAM miss?
                                      ▼                            ▼ RocksDB multi-get (no GIL)
                               PrefetchTicket ◄── pins ───── insert into DRAM, pin
    trainer: ticket.wait(); train batch i+K; store.step(); ticket.release()

A pinned row cannot be evicted or demoted until its ticket is released, so once
``wait()`` returns the batch's stored rows are all in DRAM and its step reads no disk.

>>> import tempfile, numpy as np
>>> from embedding_store import EmbeddingStore, StoreConfig, TableConfig
>>> with tempfile.TemporaryDirectory() as d:
...     with EmbeddingStore(StoreConfig(d, (TableConfig("t", 4),), num_shards=2)) as store:
...         ticket = store.prefetch([{"t": np.arange(10, dtype=np.int64)}])
...         _ = ticket.wait()
...         ticket.release()
...         done = ticket.done
>>> done
True
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING

from embedding_store.types import IdArray, SlotArray

if TYPE_CHECKING:
    from embedding_store.shard import ShardTable
    from embedding_store.store import EmbeddingStore


class PrefetchTicket:
    """The handle of one prefetch request: wait for it, then release its pins."""

    def __init__(self, store: EmbeddingStore, wanted: dict[str, IdArray]) -> None:
        self._store = store
        self.wanted = wanted
        self._event = threading.Event()
        self._pins: list[tuple[ShardTable, SlotArray]] = []
        self._released = False  # pragma: no mutate
        self.error: BaseException | None = None  # pragma: no mutate
        self.loaded = 0
        """Ids the request found outside DRAM (read from below, or new): 0 if all were hot."""

    @property
    def done(self) -> bool:
        """Whether the worker has finished this request."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> float:
        """Block until loaded; returns the seconds waited (the prefetch stall)."""
        t0 = time.perf_counter()
        self._event.wait(timeout)
        waited = time.perf_counter() - t0
        self._store.prefetch_stall_seconds += waited
        if self.error is not None:
            raise self.error
        return waited

    def release(self) -> None:
        """Unpin the rows this request pinned (idempotent; waits for the load first)."""
        self._event.wait()
        if self._released:
            return
        self._released = True  # pragma: no mutate
        for st, slots in self._pins:
            st.unpin(slots)
        self._pins = []  # pragma: no mutate


class Prefetcher:
    """One background worker serving prefetch tickets in order."""

    def __init__(self, store: EmbeddingStore) -> None:
        self._store = store
        self._queue: queue.Queue[PrefetchTicket | None] = queue.Queue()  # pragma: no mutate
        self._thread: threading.Thread | None = None  # pragma: no mutate
        self._lock = threading.Lock()

    def submit(self, wanted: dict[str, IdArray]) -> PrefetchTicket:
        """Queue a request; starts the worker on first use."""
        ticket = PrefetchTicket(self._store, wanted)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
                self._thread.start()
        self._queue.put(ticket)
        return ticket

    def _run(self) -> None:
        while True:
            ticket = self._queue.get()
            if ticket is None:
                return
            try:
                self._load(ticket)
            except BaseException as err:
                ticket.error = err
            finally:
                ticket._event.set()

    def _load(self, ticket: PrefetchTicket) -> None:
        store = self._store
        for table, ids in ticket.wanted.items():
            sts = store._shard_tables(table)
            shard = store.shard_of(ids)
            for i, st in enumerate(sts):
                part = ids[shard == i]
                if len(part):
                    before = st.counters.cold_reads  # a concurrent lookup can only add to it
                    ticket._pins.append((st, st.prefetch(part)))
                    ticket.loaded += st.counters.cold_reads - before

    def stop(self) -> None:
        """Finish queued requests and stop the worker."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()
