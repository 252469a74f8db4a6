"""Every storage tier passes the same contract (get / put / delete / iterate / count / close).

Implementations are discovered from ``embedding_store.tiers.TIER_FACTORIES``: a new tier
registers a factory there and is tested here without touching this file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from embedding_store.errors import StoreClosedError
from embedding_store.rows import RowLayout
from embedding_store.tier import Tier
from embedding_store.tiers import TIER_FACTORIES

LAYOUT = RowLayout(dim=3, state_dim=2)


@pytest.fixture(params=sorted(TIER_FACTORIES))
def tier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tier]:
    factory: Callable[[str, RowLayout], tuple[Tier, Callable[[], None]]] = TIER_FACTORIES[
        request.param
    ]
    t, cleanup = factory(str(tmp_path), LAYOUT)
    yield t
    cleanup()


def rows_for(ids: np.ndarray, salt: float = 0.0) -> np.ndarray:
    rows = LAYOUT.empty(len(ids))
    rows["emb"] = ids[:, None] + salt + np.arange(3)
    rows["state"] = -ids[:, None].astype(np.float32)
    rows["version"] = ids
    rows["freq"] = 1.0
    rows["epoch"] = 0
    rows["last_step"] = ids
    rows["last_time"] = 0.5
    return rows


def test_is_a_tier(tier: Tier) -> None:
    assert isinstance(tier, Tier)
    assert tier.layout == LAYOUT


def test_put_get_roundtrip(tier: Tier) -> None:
    ids = np.array([5, -3, 2**40, 0], dtype=np.int64)
    tier.put(ids, rows_for(ids))
    found, got = tier.get(np.array([2**40, 7, -3], dtype=np.int64))
    assert found.tolist() == [True, False, True]
    assert got["version"][0] == 2**40
    assert got["emb"][2].tolist() == [-3.0, -2.0, -1.0]
    assert got["version"][2] == -3
    assert tier.count() == 4


def test_overwrite_and_delete(tier: Tier) -> None:
    ids = np.arange(10, dtype=np.int64)
    tier.put(ids, rows_for(ids))
    tier.put(ids[:3], rows_for(ids[:3], salt=100.0))
    tier.delete(np.array([1, 99], dtype=np.int64))
    found, got = tier.get(ids[:3])
    assert found.tolist() == [True, False, True]
    assert got["emb"][2, 0] == 102.0
    assert tier.count() == 9


def test_iterate_yields_every_row_once(tier: Tier) -> None:
    ids = np.arange(1000, dtype=np.int64) * 7
    tier.put(ids, rows_for(ids))
    seen = []
    for chunk_ids, chunk_rows in tier.iterate(chunk=128):
        assert len(chunk_ids) <= 128
        assert np.array_equal(chunk_rows["version"], chunk_ids)
        seen.append(chunk_ids)
    allseen = np.concatenate(seen)
    assert len(allseen) == 1000
    assert np.array_equal(np.sort(allseen), ids)


def test_empty_calls(tier: Tier) -> None:
    empty = np.empty(0, dtype=np.int64)
    tier.put(empty, LAYOUT.empty(0))
    tier.delete(empty)
    found, got = tier.get(empty)
    assert len(found) == 0 and len(got) == 0
    assert tier.count() == 0
    assert list(tier.iterate()) == []


def test_use_after_close_raises(tier: Tier) -> None:
    tier.close()
    with pytest.raises(StoreClosedError, match="closed"):
        tier.get(np.array([1], dtype=np.int64))
