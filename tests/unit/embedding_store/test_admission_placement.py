"""Placement stays invisible with admission and both kinds of expiry on (issue 17, defect 9).

The same stream through an all-DRAM single-shard store, and through a sharded store with a
tiny DRAM budget, look-ahead prefetch, demotions and migrations, must end with bit-identical
rows and the same pending sightings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from embedding_store.admission import SightingBlock
from tests.conftest import zipf_ids

STEPS = 60


class StepClock:
    """Time advances one second per step, whatever the threads do."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _tables(hot_rows: int | None) -> tuple[TableConfig, ...]:
    return (
        TableConfig(
            "by_steps",
            4,
            OptimizerConfig("adam", lr=0.05),
            seed=1,
            hot_rows=hot_rows,
            admit_after=3,
            expire_after_steps=6,
        ),
        TableConfig(
            "by_seconds",
            4,
            OptimizerConfig("ftrl", lr=0.1, l1=0.001, l2=0.01),
            seed=2,
            hot_rows=hot_rows,
            admit_after=2,
            expire_after_seconds=8.5,
        ),
    )


def _run(
    path: Path, hot_rows: int | None, shards: int, prefetch: int, move: bool
) -> dict[str, tuple[np.ndarray, np.ndarray, SightingBlock]]:
    rng = np.random.default_rng(17)
    stream = [{t: zipf_ids(rng, 48, 300) for t in ("by_steps", "by_seconds")} for _ in range(STEPS)]
    clock = StepClock()
    cfg = StoreConfig(str(path), _tables(hot_rows), num_shards=shards, evict_slack=0.2)
    tickets: dict[int, object] = {}
    with EmbeddingStore(cfg, clock=clock) as store:
        for i, batch in enumerate(stream):
            for j in range(i, min(i + prefetch + 1, STEPS)):
                if j not in tickets:
                    tickets[j] = store.prefetch([stream[j]])
            ticket = tickets.pop(i, None)
            if ticket is not None:
                ticket.wait()  # type: ignore[attr-defined]
            for table, ids in batch.items():
                emb = store.lookup(table, ids).numpy()
                grads = (np.sin(emb * 7.0) + 0.1 * (ids % 3)[:, None]).astype(np.float32)
                store.apply_gradients(table, ids, grads)
            store.end_step()
            if ticket is not None:
                ticket.release()  # type: ignore[attr-defined]
            clock.now += 1.0
            if i % 5 == 4:
                store.expire()
            if move and i % 7 == 3:
                store.demote("by_steps", 15)
            if move and i % 11 == 6:
                store.migrate()
        for ticket in tickets.values():
            ticket.release()  # type: ignore[attr-defined]
        out = {}
        for t in cfg.tables:
            blocks = list(store.export_rows(t.name))
            ids = np.concatenate([b[0] for b in blocks])
            rows = np.concatenate([b[1] for b in blocks])
            order = np.argsort(ids)
            out[t.name] = (ids[order], rows[order], store.sightings(t.name))
    return out


@pytest.mark.parametrize("prefetch", [0, 2])
def test_tiered_store_with_admission_and_expiry_equals_all_dram(
    tmp_path: Path, prefetch: int
) -> None:
    want = _run(tmp_path / "dram", None, 1, 0, move=False)
    got = _run(tmp_path / "tiered", 24, 3, prefetch, move=True)
    for name, (w_ids, w_rows, w_seen) in want.items():
        g_ids, g_rows, g_seen = got[name]
        assert len(w_ids) > 20 and len(w_seen) > 5, name  # the stream exercises both states
        assert np.array_equal(g_ids, w_ids), name
        for field in ("emb", "state", "version", "last_step", "last_time", "freq"):
            assert np.array_equal(g_rows[field], w_rows[field]), (name, field)
        assert np.array_equal(g_seen, w_seen), name
