"""Prefetch tickets across shards: every shard's rows pinned, stalls summed, errors raised
(mutation testing, issue 17: the pinning tests ran one shard only)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from embedding_store.prefetch import Prefetcher


def _store(path: Path) -> EmbeddingStore:
    t = TableConfig("t", 2, OptimizerConfig("sgd", lr=0.1), hot_rows=100)
    return EmbeddingStore(StoreConfig(str(path), (t,), num_shards=2))


def test_a_ticket_pins_the_cold_rows_of_every_shard(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        ids = np.arange(12, dtype=np.int64)
        shards = store.shard_of(ids)
        assert set(shards.tolist()) == {0, 1}
        store.lookup("t", ids)
        store.end_step()
        assert store.demote("t", 100) == 12  # all cold
        ticket = store.prefetch([{"t": ids[:4]}, {"t": ids[4:]}])
        assert ticket.wait(timeout=20) >= 0.0  # a bound on a hang, not a timing assertion
        assert ticket.done
        assert store.stats("t").prefetched == 12
        assert store.demote("t", 100) == 0  # every shard's rows are pinned
        ticket.release()
        assert store.demote("t", 100) == 12


def test_stall_seconds_add_up_over_tickets(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        waits = []
        for k in range(3):
            ticket = store.prefetch([{"t": np.arange(k, k + 5, dtype=np.int64)}])
            before = time.perf_counter()
            waits.append(ticket.wait(timeout=20))
            after = time.perf_counter()
            assert ticket.done
            assert waits[-1] <= after - before  # the time spent in wait(), not a clock reading
            ticket.release()
        assert all(w > 0.0 for w in waits)
        assert store.prefetch_stall_seconds == 0.0 + waits[0] + waits[1] + waits[2]


def test_a_failed_load_raises_from_wait_and_releases_nothing(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        prefetcher = Prefetcher(store)
        try:
            ticket = prefetcher.submit({"missing": np.arange(3, dtype=np.int64)})
            with pytest.raises(Exception, match="missing"):
                ticket.wait(timeout=30)
            assert ticket.done and ticket.error is not None
            ticket.release()  # nothing was pinned; no error
            workers = [t for t in threading.enumerate() if t.name == "prefetch"]
            assert workers and all(t.daemon for t in workers)  # never holds the process open
            good = prefetcher.submit({"t": np.arange(3, dtype=np.int64)})
            good.wait(timeout=30)
            assert good.error is None
            good.release()
        finally:
            prefetcher.stop()
        again = prefetcher.submit({"t": np.arange(3, dtype=np.int64)})  # a new worker
        again.wait(timeout=30)
        assert again.done
        again.release()
        prefetcher.stop()


def test_a_ticket_counts_the_ids_it_found_outside_dram(tmp_path: Path) -> None:
    """``loaded``: rows read from below DRAM plus new ids, over every shard; 0 when all are hot."""
    with _store(tmp_path) as store:
        ids = np.arange(10, dtype=np.int64)
        store.lookup("t", ids[:6])
        store.end_step()
        assert store.demote("t", 100) == 6  # 6 on disk only
        store.lookup("t", ids[:2])  # 2 of them back in DRAM
        store.end_step()
        first = store.prefetch([{"t": ids}])  # 4 from disk, 4 new, 2 hot
        first.wait(timeout=20)
        assert first.loaded == 8
        first.release()
        again = store.prefetch([{"t": ids[:2]}])
        again.wait(timeout=20)
        assert again.loaded == 0
        again.release()
