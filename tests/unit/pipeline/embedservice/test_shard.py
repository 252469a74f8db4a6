"""ServiceShard: versioned reads, one writer, no rows for unseen ids, restart from its log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedding_store.initializers import initial_values
from pipeline.embedservice.errors import (
    NotOwnerError,
    TableSchemaError,
    VersionGapError,
    VersionUnavailableError,
)
from pipeline.embedservice.shard import RowUpdate, ServiceShard, ShardSettings, TableSchema

SCHEMA = TableSchema("users", dim=3, seed=7, init_scale=0.1, owner="ctr")


def ids_(*xs: int) -> np.ndarray:
    return np.array(xs, np.int64)


def _rows(v: float, n: int) -> np.ndarray:
    return np.full((n, 3), v, np.float32)


def _open(path: Path, keep: int = 4, checkpoint_every: int = 100) -> ServiceShard:
    shard = ServiceShard(
        ShardSettings(str(path), keep_versions=keep, checkpoint_every=checkpoint_every)
    )
    shard.open()
    shard.register(SCHEMA)
    return shard


def _history(shard: ServiceShard) -> None:
    shard.apply(RowUpdate("users", "ctr", 1, 0, ids_(1, 2), _rows(1.0, 2)))
    shard.apply(RowUpdate("users", "ctr", 2, 1, ids_(2, 3), _rows(2.0, 2)))
    shard.apply(RowUpdate("users", "ctr", 3, 2, ids_(4), _rows(3.0, 1), tombstones=ids_(1)))


def _expected(version: int) -> np.ndarray:
    """Rows of ids 1..4 at ``version`` (the history above), initial values where absent."""
    init = initial_values(ids_(1, 2, 3, 4), 3, 7, 0.1)
    out = init.copy()
    if version >= 1:
        out[[0, 1]] = 1.0
    if version >= 2:
        out[[1, 2]] = 2.0
    if version >= 3:
        out[0] = init[0]
        out[3] = 3.0
    return out


def test_every_kept_version_reads_as_it_was(tmp_path: Path) -> None:
    shard = _open(tmp_path)
    _history(shard)
    for v in range(4):
        got = shard.lookup("users", ids_(1, 2, 3, 4), version=v)
        assert got.version == v
        np.testing.assert_array_equal(got.emb, _expected(v))
    assert shard.lookup("users", ids_(1, 4)).found.tolist() == [False, True]
    shard.close()


def test_versions_beyond_the_window_are_refused(tmp_path: Path) -> None:
    shard = _open(tmp_path, keep=1)
    _history(shard)
    assert shard.versions()["users"] == (2, 3)
    with pytest.raises(VersionUnavailableError, match="version 1 is retired"):
        shard.lookup("users", ids_(1), version=1)
    with pytest.raises(VersionUnavailableError, match="version 4 is not published yet"):
        shard.lookup("users", ids_(1), version=4)
    shard.close()


def test_unseen_ids_get_initial_values_and_are_not_stored(tmp_path: Path) -> None:
    shard = _open(tmp_path)
    _history(shard)
    before = shard.rows("users")
    new = np.arange(1000, 11000, dtype=np.int64)
    got = shard.lookup("users", new)
    np.testing.assert_array_equal(got.emb, initial_values(new, 3, 7, 0.1))
    assert not got.found.any()
    assert shard.rows("users") == before == 3
    assert shard.store.stats("users", count_cold=True).cold_rows == 3
    shard.close()


def test_one_writer_and_versions_in_order(tmp_path: Path) -> None:
    shard = _open(tmp_path)
    with pytest.raises(NotOwnerError, match="'users' is written by 'ctr'; 'fraud' may only read"):
        shard.apply(RowUpdate("users", "fraud", 1, 0, ids_(1), _rows(1.0, 1)))
    with pytest.raises(NotOwnerError):
        shard.register(TableSchema("users", 3, 7, 0.1, owner="fraud"))
    with pytest.raises(TableSchemaError):
        shard.register(TableSchema("users", 4, 7, 0.1, owner="ctr"))
    shard.apply(RowUpdate("users", "ctr", 1, 0, ids_(1), _rows(1.0, 1)))
    with pytest.raises(VersionGapError, match="at version 1; an update from base 2"):
        shard.apply(RowUpdate("users", "ctr", 3, 2, ids_(1), _rows(3.0, 1)))
    # the same version again is acknowledged, not applied twice
    assert shard.apply(RowUpdate("users", "ctr", 1, 0, ids_(1), _rows(9.0, 1))) == 1
    assert shard.lookup("users", ids_(1)).emb[0, 0] == 1.0
    shard.close()


@pytest.mark.parametrize("checkpoint_every", [1, 2, 100])
def test_restart_keeps_rows_and_readable_versions(tmp_path: Path, checkpoint_every: int) -> None:
    shard = _open(tmp_path, keep=2, checkpoint_every=checkpoint_every)
    _history(shard)
    shard.store.abandon()  # a crash: nothing more is flushed, the shard is not closed
    shard._store = None
    back = ServiceShard(
        ShardSettings(str(tmp_path), keep_versions=2, checkpoint_every=checkpoint_every)
    )
    back.open()
    assert back.versions()["users"] == (1, 3)
    for v in (1, 2, 3):
        np.testing.assert_array_equal(back.lookup("users", ids_(1, 2, 3, 4), v).emb, _expected(v))
    assert back.rows("users") == 3
    back.close()
