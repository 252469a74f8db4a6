"""Bounded staleness with several trainer threads sharing one tiered store."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig


@pytest.mark.parametrize("staleness", [0, 2])
def test_no_worker_reads_more_than_s_steps_behind(tmp_path: Path, staleness: int) -> None:
    table = TableConfig("t", 4, OptimizerConfig("sgd", lr=0.1), hot_rows=30)
    cfg = StoreConfig(str(tmp_path), (table,), num_shards=2, staleness=staleness)
    steps, workers = 15, 3
    leads: list[int] = []
    errors: list[BaseException] = []
    # every worker joins the clock before any steps: one that joined after another's first
    # step would start at that clock (the slowest), not at 0
    joined = threading.Barrier(workers)
    with EmbeddingStore(cfg) as store:

        def trainer(seed: int) -> None:
            rng = random.Random(seed)
            w = store.register_worker()
            joined.wait(timeout=30)
            try:
                for _ in range(steps):
                    lead = store.begin_step(w, timeout=30)
                    clocks = store.staleness_clock.clocks()
                    leads.append(clocks[w] - min(clocks))
                    assert lead == leads[-1]
                    ids = np.array(rng.sample(range(100), 10), dtype=np.int64)
                    emb = store.lookup("t", ids)
                    time.sleep(rng.random() * 0.005 * (1 + seed))  # uneven speeds
                    store.apply_gradients("t", ids, np.ones_like(emb.numpy()))
                    store.end_step(w)
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=trainer, args=(i,)) for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert store.version == steps * workers
        assert store.staleness_clock.clocks() == [steps] * workers
        found, rows = store.read_rows("t", np.arange(100, dtype=np.int64))
    assert max(leads) <= staleness
    if staleness == 0:
        assert set(leads) == {0}
    # every update landed once: sgd with unit gradients moves each row by lr per write
    touched = rows["version"][found] > 0
    assert touched.sum() > 50
