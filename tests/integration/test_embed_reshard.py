"""``freshet embed-serve --reshard-from``: a 2-shard service's tables served by 3 shards.

Two real shard processes get two versions of a table, then stop; three new ones start with
``--num-shards 3 --reshard-from`` the two old directories. A client of the three reads the
same rows at that version as a client of the two did (every id, unseen ones included), and
the row count is the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.embedservice.client import ServiceClient
from pipeline.embedservice.shard import RowUpdate, TableSchema
from pipeline.testing.embed_shards import ShardProcess, free_port, start_shards

pytestmark = pytest.mark.integration


def test_two_shards_resharded_into_three_answer_the_same(tmp_path: Path) -> None:
    old = start_shards(tmp_path / "old", 2)
    ids = np.arange(5000, dtype=np.int64)
    probe = np.arange(-100, 5100, dtype=np.int64)  # 200 ids never stored
    try:
        client = ServiceClient([s.endpoint for s in old])
        client.register(TableSchema("users", 4, seed=2, init_scale=0.1, owner="ctr"))
        rng = np.random.default_rng(0)
        client.publish(RowUpdate("users", "ctr", 1, 0, ids, rng.random((5000, 4), np.float32)))
        changed = ids[::3]
        client.publish(
            RowUpdate("users", "ctr", 2, 1, changed, rng.random((len(changed), 4), np.float32))
        )
        before = client.lookup("users", probe)
        rows = client.rows("users")
        client.close()
    finally:
        for s in old:
            s.stop()
    dirs = [str(s.path) for s in old]
    new = [
        ShardProcess(tmp_path / f"new-{j}", j, 3, free_port(), "--reshard-from", *dirs)
        for j in range(3)
    ]
    try:
        for s in new:
            s.start()
        client = ServiceClient([s.endpoint for s in new])
        after = client.lookup("users", probe)
        assert after.version == before.version == 2
        np.testing.assert_array_equal(after.emb, before.emb)
        np.testing.assert_array_equal(after.found, before.found)
        assert client.rows("users") == rows == 5000
        for s in new:  # each new shard holds its third
            one = ServiceClient([s.endpoint])
            assert one.rows("users") > 1000
            one.close()
        client.close()
    finally:
        for s in new:
            s.stop()
