"""The staleness bound, checked deterministically: ignoring it must fail these tests."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, StoreConfig, TableConfig
from embedding_store.errors import ConfigError
from embedding_store.staleness import StalenessClock


@pytest.mark.parametrize("bound", [0, 1, 3])
def test_a_worker_may_lead_the_slowest_by_exactly_the_bound(bound: int) -> None:
    clock = StalenessClock(bound)
    fast, slow = clock.register(), clock.register()
    for lead in range(bound + 1):
        assert clock.begin(fast, timeout=0.5) == lead
        clock.end(fast)
    with pytest.raises(TimeoutError, match=f"clock {bound + 1} .*clock 0.* staleness {bound}"):
        clock.begin(fast, timeout=0.05)
    assert clock.begin(slow, timeout=0.05) == 0
    clock.end(slow)
    assert clock.begin(fast, timeout=0.5) == bound  # one more step allowed, no more
    assert clock.clocks() == [bound + 1, 1]


def test_a_blocked_worker_starts_when_the_slowest_catches_up() -> None:
    clock = StalenessClock(1)
    fast, slow = clock.register(), clock.register()
    for _ in range(2):
        clock.begin(fast, timeout=0.5)
        clock.end(fast)
    started = threading.Event()
    lead: list[int] = []

    def run() -> None:
        lead.append(clock.begin(fast, timeout=10))
        started.set()

    t = threading.Thread(target=run)
    t.start()
    assert not started.wait(0.1)  # blocked: 2 ahead of 0 with S=1
    clock.begin(slow, timeout=0.5)
    clock.end(slow)
    assert started.wait(10)
    t.join()
    assert lead == [1]


def test_an_unregistered_worker_holds_nobody_back_and_new_ones_start_at_the_slowest() -> None:
    clock = StalenessClock(0)
    a, b = clock.register(), clock.register()
    clock.begin(a, timeout=0.1)
    clock.end(a)
    with pytest.raises(TimeoutError):
        clock.begin(a, timeout=0.05)
    clock.unregister(b)
    assert clock.begin(a, timeout=0.1) == 0
    clock.end(a)
    c = clock.register()
    assert clock.clocks()[c] == 2


def test_negative_bound_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^staleness must be >= 0, got -1$"):
        StalenessClock(-1)


def test_the_default_bound_is_synchronous() -> None:
    clock = StalenessClock()
    assert clock.staleness == 0
    a, _b = clock.register(), clock.register()
    clock.begin(a, timeout=0.1)
    clock.end(a)
    with pytest.raises(TimeoutError, match="beyond staleness 0"):
        clock.begin(a, timeout=0.05)


def test_the_store_applies_its_configured_bound(tmp_path: Path) -> None:
    cfg = StoreConfig(str(tmp_path), (TableConfig("t", 2),), num_shards=1, staleness=1)
    with EmbeddingStore(cfg) as store:
        fast, _slow = store.register_worker(), store.register_worker()
        for _ in range(2):
            store.begin_step(fast, timeout=0.5)
            store.lookup("t", np.array([1], dtype=np.int64))
            store.end_step(fast)
        with pytest.raises(TimeoutError, match="beyond staleness 1"):
            store.begin_step(fast, timeout=0.05)
        assert store.version == 2
