"""Client and Flight server in one process: errors cross the wire as the same classes, a job's
``remote:`` section plugs in, version agreement across shards."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from configs.embedservice import RemoteSection
from pipeline.cli.embed_serve import publish_owned, remote_sources
from pipeline.embedservice.client import ServiceClient, ShardError
from pipeline.embedservice.errors import NotOwnerError, ServiceUnavailableError, VersionGapError
from pipeline.embedservice.server import ShardServer
from pipeline.embedservice.settings import ClientSettings
from pipeline.embedservice.shard import RowUpdate, ServiceShard, ShardSettings, TableSchema
from pipeline.publishing.delta import ModelDelta, TableDelta

QUICK = ClientSettings(timeout_s=2.0, retries=1, backoff_s=0.01, max_backoff_s=0.01)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ShardServer]]:
    out = [
        ShardServer(ServiceShard(ShardSettings(str(tmp_path / f"s{i}"), i, 2))).start()
        for i in range(2)
    ]
    yield out
    for s in out:
        s.stop()


def _client(servers: list[ShardServer]) -> ServiceClient:
    return ServiceClient([f"127.0.0.1:{s.port}" for s in servers], QUICK)


def test_errors_cross_the_wire(servers: list[ShardServer]) -> None:
    client = _client(servers)
    client.register(TableSchema("users", 2, owner="ctr"))
    ids = np.arange(10, dtype=np.int64)
    with pytest.raises(NotOwnerError, match="'fraud' may only read it"):
        client.publish(RowUpdate("users", "fraud", 1, 0, ids, np.ones((10, 2), np.float32)))
    with pytest.raises(VersionGapError, match="base 4"):
        client.publish(RowUpdate("users", "ctr", 5, 4, ids, np.ones((10, 2), np.float32)))
    with pytest.raises(ShardError, match="no table 'items'"):
        client.lookup("items", ids)
    with pytest.raises(ServiceUnavailableError, match="version 3 is not published yet"):
        client.lookup("users", ids, version=3)
    client.close()


def test_readers_get_one_version_while_shards_are_apart(servers: list[ShardServer]) -> None:
    client = _client(servers)
    client.register(TableSchema("users", 2, owner="ctr"))
    ids = np.arange(50, dtype=np.int64)
    client.publish(RowUpdate("users", "ctr", 1, 0, ids, np.ones((50, 2), np.float32)))
    # version 2 reaches shard 0 only (a publication in flight)
    servers[0].shard.apply(
        RowUpdate("users", "ctr", 2, 1, ids[:0], np.zeros((0, 2), np.float32), ids)
    )
    got = client.lookup("users", ids)
    assert got.version == 1 and (got.emb == 1.0).all() and got.found.all()
    client.close()


def test_remote_section_reads_frozen_and_publishes_owned(servers: list[ShardServer]) -> None:
    endpoints = [f"127.0.0.1:{s.port}" for s in servers]
    owner = ServiceClient(endpoints, QUICK)
    owner.register(TableSchema("ctr_users", 2, owner="ctr"))
    remote = RemoteSection.model_validate(
        {
            "writer": "ctr",
            "service": {"endpoints": endpoints},
            "tables": [
                {"table": "users", "service_table": "ctr_users", "mode": "own"},
                {"table": "users_read", "service_table": "ctr_users", "version": 1},
            ],
        }
    )
    now = datetime.now(tz=UTC)
    ids = np.array([3, 9], np.int64)
    for v in (1, 2):
        emb = np.full((2, 2), float(v), np.float32)
        delta = ModelDelta(v, v - 1, now, now, v, (TableDelta("users", ids, emb, ids[:0]),))
        publish_owned(owner, remote.to_spec(), delta)
    client, sources = remote_sources(remote.to_spec())
    assert set(sources) == {"users_read"}
    assert sources["users_read"].rows(ids).tolist() == [[1.0, 1.0], [1.0, 1.0]]  # pinned v1
    assert owner.lookup("ctr_users", ids).version == 2
    client.close()
    owner.close()


def test_an_update_without_rows_moves_every_shard_to_its_version(
    servers: list[ShardServer],
) -> None:
    """A publication that changed none of a table's rows still takes it to the version."""
    client = _client(servers)
    client.register(TableSchema("users", 2, owner="ctr"))
    none = np.empty(0, np.int64)
    client.publish(RowUpdate("users", "ctr", 1, 0, none, np.empty((0, 2), np.float32)))
    assert client.versions("users") == [(0, 1), (0, 1)]
    client.close()
