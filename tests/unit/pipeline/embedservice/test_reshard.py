"""Re-sharding: M shards' directories into M' new shards, rows routed anew, one version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.embedservice import routing
from pipeline.embedservice.errors import EmbedServiceError
from pipeline.embedservice.shard import RowUpdate, ServiceShard, ShardSettings, TableSchema

SCHEMA = TableSchema("users", dim=2, seed=3, init_scale=0.1, owner="ctr")


def _old_service(root: Path) -> tuple[list[Path], np.ndarray]:
    """Two shards at v2 (ids 0..299, 0..9 deleted in v2), shard 0 alone at v3 (in flight)."""
    dirs = [root / f"old-{i}" for i in range(2)]
    ids = np.arange(300, dtype=np.int64)
    parts = routing.split(ids, 2)
    for i, d in enumerate(dirs):
        shard = ServiceShard(ShardSettings(str(d), i, 2)).open()
        shard.register(SCHEMA)
        mine = ids[parts[i]]
        emb = np.stack([mine, -mine], axis=1).astype(np.float32)
        shard.apply(RowUpdate("users", "ctr", 1, 0, mine, emb))
        gone = mine[mine < 10]
        kept = mine[mine >= 10]
        emb2 = np.stack([kept, kept], axis=1).astype(np.float32) + 0.5
        shard.apply(RowUpdate("users", "ctr", 2, 1, kept, emb2, gone))
        if i == 0:  # v3 reached shard 0 only: it deletes ids 10..19 there, changes the rest
            k3 = kept[kept >= 20]
            dead = kept[kept < 20]
            shard.apply(RowUpdate("users", "ctr", 3, 2, k3, np.zeros((len(k3), 2)), dead))
        shard.close()
    return dirs, ids


def test_three_new_shards_hold_every_row_of_two_at_the_version_all_had(tmp_path: Path) -> None:
    dirs, ids = _old_service(tmp_path)
    new = []
    for j in range(3):
        shard = ServiceShard(ShardSettings(str(tmp_path / f"new-{j}"), j, 3)).open()
        assert shard.reshard_from(dirs) == {"users": 2}
        new.append(shard)
    assert sum(s.rows("users") for s in new) == 290  # ids 10..299 at v2
    for j, shard in enumerate(new):
        mine = ids[routing.shard_of(ids, 3) == j]
        got = shard.lookup("users", mine)
        assert got.version == 2
        assert got.found.tolist() == (mine >= 10).tolist()
        live = mine >= 10
        np.testing.assert_array_equal(got.emb[live, 0], mine[live] + 0.5)
        np.testing.assert_array_equal(got.emb[~live], SCHEMA.initial(mine[~live]))
        assert shard.stored_rows("users") == int(live.sum())
        shard.close()
    # a new shard restarts from its own directory, as any shard
    again = ServiceShard(ShardSettings(str(tmp_path / "new-1"), 1, 3)).open()
    assert again.versions() == {"users": (2, 2)}
    again.close()


def test_a_shard_that_serves_tables_is_not_refilled(tmp_path: Path) -> None:
    dirs, _ = _old_service(tmp_path)
    shard = ServiceShard(ShardSettings(str(tmp_path / "new-0"), 0, 1)).open()
    shard.reshard_from(dirs)
    with pytest.raises(EmbedServiceError, match="needs an empty shard directory"):
        shard.reshard_from(dirs)
    shard.close()
