"""Acceptance 2 and 5: replicas on a 2-shard service predict as a full copy; no unseen rows.

Three serving models read every table from one service (two real ``embed-serve`` processes)
through their own client and LFU cache; a fourth holds a full local copy. At every version
the three predict exactly what the full copy does, for users seen and never seen. Then 10,000
never-seen ids go through the replicas: the service's row count does not move, and neither
the replicas' stores nor their caches keep a row for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.embedservice.client import ServiceClient
from pipeline.embedservice.shard import TableSchema
from pipeline.embedservice.tables import ServiceRows, publish_delta
from pipeline.serving.model import Blueprint, ServingModel
from pipeline.testing.embed_deltas import (
    CTR_FEATURES,
    CTR_MODEL,
    ctr_deltas,
    ctr_events,
    ctr_tables,
)
from pipeline.testing.embed_shards import ShardProcess, start_shards

pytestmark = pytest.mark.integration

TABLES = [t.name for t in ctr_tables()]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[list[ShardProcess]]:
    shards = start_shards(tmp_path / "svc", 2)
    yield shards
    for s in shards:
        s.stop()


def _replicas(
    tmp_path: Path, service: list[ShardProcess], cache_rows: int
) -> tuple[ServingModel, list[ServingModel], list[ServiceRows], ServiceClient]:
    endpoints = [s.endpoint for s in service]
    owner = ServiceClient(endpoints)
    for t in ctr_tables():
        owner.register(TableSchema.from_table(t, owner="ctr"))
    full = ServingModel(Blueprint(CTR_FEATURES, CTR_MODEL), tmp_path / "full").open()
    sources = [ServiceRows(ServiceClient(endpoints), TABLES, cache_rows) for _ in range(3)]
    remote = [
        ServingModel(Blueprint(CTR_FEATURES, CTR_MODEL, rows=src), tmp_path / f"r{i}").open()
        for i, src in enumerate(sources)
    ]
    return full, remote, sources, owner


def test_three_replicas_on_two_shards_predict_like_a_full_copy(
    tmp_path: Path, service: list[ShardProcess]
) -> None:
    full, remote, sources, owner = _replicas(tmp_path, service, cache_rows=300)
    requests = [ctr_events(np.random.default_rng(100 + i), 64, users=800) for i in range(3)]
    compared = 0
    for delta in ctr_deltas(tmp_path / "ctr", versions=5):
        publish_delta(owner, delta, "ctr", TABLES)  # the service first, then the replicas
        for m in (full, *remote):
            m.commit(m.prepare(delta))
        for events in requests:  # users 500..799 were never trained: initial values
            want = full.predict(events)
            for m in remote:
                got = m.predict(events)
                assert m.version == full.version == delta.version
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
                compared += 1
    assert compared == 5 * 3 * 3
    assert all(src.cached_rows() > 0 for src in sources)  # the caches did serve
    for m in remote:  # no replica holds rows of the service's tables
        assert all(m.store.stats(t, count_cold=True).cold_rows == 0 for t in TABLES)
        assert all(m.store.stats(t).hot_rows == 0 for t in TABLES)
    for m in (full, *remote):
        m.close()


def test_unseen_ids_store_no_rows_anywhere(tmp_path: Path, service: list[ShardProcess]) -> None:
    full, remote, sources, owner = _replicas(tmp_path, service, cache_rows=100_000)
    for delta in ctr_deltas(tmp_path / "ctr", versions=2):
        publish_delta(owner, delta, "ctr", TABLES)
        for m in remote:
            m.commit(m.prepare(delta))
    for m in remote:  # the rows every request below shares (ad a1, the bias) get cached
        m.predict([{"user": "u1", "ad": "a1", "label": 0}])
    before = {t: owner.rows(t, exact=True) for t in TABLES}
    assert before == {t: owner.rows(t) for t in TABLES}
    cached = [src.cached_rows() for src in sources]
    assert min(cached) > 0
    # 10,000 requests' worth of never-seen users (1,000 requests of 10 events each, spread
    # over the three replicas), each scored
    new_users = np.arange(10_000) + 1_000_000
    for r in range(1000):
        chunk = new_users[r * 10 : (r + 1) * 10]
        events = [{"user": f"u{u}", "ad": "a1", "label": 0} for u in chunk]
        scores = remote[r % 3].predict(events)
        assert scores.shape == (10,) and np.isfinite(scores).all()
    assert {t: owner.rows(t, exact=True) for t in TABLES} == before
    assert [src.cached_rows() for src in sources] == cached
    for m in remote:
        assert all(m.store.stats(t, count_cold=True).cold_rows == 0 for t in TABLES)
        m.close()
    full.close()
