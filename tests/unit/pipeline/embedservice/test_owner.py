"""The plugin that publishes a job's owned tables: versions, rows since the last one, deltas."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.checkpoint.write_log import WriteLogWatermarks
from pipeline.embedservice.client import ServiceClient
from pipeline.embedservice.owner import OwnedTablesPublish
from pipeline.embedservice.server import ShardServer
from pipeline.embedservice.shard import ServiceShard, ShardSettings


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ShardServer]]:
    out = [
        ShardServer(ServiceShard(ShardSettings(str(tmp_path / f"s{i}"), i, 2))).start()
        for i in range(2)
    ]
    yield out
    for s in out:
        s.stop()


@dataclass
class _Job:
    store: EmbeddingStore
    watermarks: WriteLogWatermarks = field(default_factory=WriteLogWatermarks)


@dataclass
class _Publisher:
    version: int | None = None


class _Deltas:
    def __init__(self) -> None:
        self.publisher = _Publisher()
        self.calls: list[str] = []

    def open(self, job: Any) -> None:
        self.calls.append("open")

    def at_step(self, job: Any, idle: bool) -> None:
        self.calls.append("step")

    def close(self, job: Any, clean: bool) -> None:
        self.calls.append("close")
        self.publisher.version = (self.publisher.version or 0) + 1  # the final delta


def _store(path: Path) -> EmbeddingStore:
    tables = tuple(
        TableConfig(n, 2, OptimizerConfig("sgd", lr=1.0), seed=i) for i, n in enumerate("ab")
    )
    return EmbeddingStore(StoreConfig(str(path), tables, num_shards=1)).open()


def _train(store: EmbeddingStore, table: str, ids: list[int], value: float) -> None:
    uniq = np.array(ids, np.int64)
    weight = torch.tensor(store.lookup(table, uniq).numpy(), requires_grad=True)
    store.register(table, uniq, weight)
    weight.grad = torch.full_like(weight, -value)  # sgd lr 1: rows move by +value
    store.step()


def _endpoints(servers: list[ShardServer]) -> list[str]:
    return [f"127.0.0.1:{s.port}" for s in servers]


def test_alone_it_publishes_all_rows_then_the_rows_since(
    tmp_path: Path, servers: list[ShardServer]
) -> None:
    store = _store(tmp_path / "job")
    clock = [0.0]
    plugin = OwnedTablesPublish(
        ServiceClient(_endpoints(servers)), "ctr", {"a": "users"}, interval_s=10,
        clock=lambda: clock[0],
    )  # fmt: skip
    job = _Job(store)
    plugin.open(job)
    _train(store, "a", [1, 2, 3], 1.0)
    _train(store, "b", [7], 1.0)  # not owned: never published
    plugin.at_step(job, idle=False)
    assert plugin.published == 0  # not due yet
    clock[0] = 11.0
    plugin.at_step(job, idle=False)
    reader = ServiceClient(_endpoints(servers))
    assert reader.versions("users") == [(0, 1), (0, 1)] and reader.rows("users") == 3
    _, rows = store.read_rows("a", np.array([1, 2, 3], np.int64))
    np.testing.assert_array_equal(reader.lookup("users", np.array([1, 2, 3])).emb, rows["emb"])
    plugin.at_step(job, idle=True)  # nothing trained since: no version
    _train(store, "a", [3, 4], 1.0)
    plugin.close(job, clean=True)  # the rest at stop
    assert reader.versions("users") == [(0, 2), (0, 2)] and reader.rows("users") == 4
    got = reader.lookup("users", np.array([1, 3, 4]), version=2)
    _, rows = store.read_rows("a", np.array([1, 3, 4], np.int64))
    np.testing.assert_array_equal(got.emb, rows["emb"])
    before = reader.lookup("users", np.array([3, 4]), version=1)
    assert not before.found[1] and (before.emb[0] != got.emb[1]).all()  # v1 stays readable
    # a restarted owner continues after the service's newest version
    again = OwnedTablesPublish(ServiceClient(_endpoints(servers)), "ctr", {"a": "users"})
    again.open(job)
    assert again.version == 2
    again.close(job, clean=False)
    reader.close()
    store.close()


def test_with_deltas_it_publishes_each_delta_version(
    tmp_path: Path, servers: list[ShardServer]
) -> None:
    store = _store(tmp_path / "job")
    deltas = _Deltas()
    plugin = OwnedTablesPublish(
        ServiceClient(_endpoints(servers)), "ctr", {"a": "users"}, deltas=deltas
    )
    job = _Job(store)
    plugin.open(job)
    _train(store, "a", [1], 1.0)
    plugin.at_step(job, idle=False)
    assert plugin.published == 0  # the delta publisher sent nothing
    deltas.publisher.version = 5
    plugin.at_step(job, idle=False)
    _train(store, "a", [2], 1.0)
    plugin.close(job, clean=True)  # the final delta (6) first, then the service
    assert deltas.calls == ["open", "step", "step", "close"]
    reader = ServiceClient(_endpoints(servers))
    assert reader.versions("users") == [(0, 6), (0, 6)]
    assert reader.lookup("users", np.array([2]), version=5).found.tolist() == [False]
    assert reader.lookup("users", np.array([1, 2]), version=6).found.all()
    reader.close()
    store.close()


def test_a_checkpoint_between_two_publications_does_not_lose_rows(
    tmp_path: Path, servers: list[ShardServer]
) -> None:
    """The write log the next publication reads survives a checkpoint (a watermark holds it)."""
    store = _store(tmp_path / "job")
    job = _Job(store)
    plugin = OwnedTablesPublish(ServiceClient(_endpoints(servers)), "ctr", {"a": "users"})
    plugin.open(job)
    _train(store, "a", [1], 1.0)
    plugin.at_step(job, idle=True)  # v1: every row
    _train(store, "a", [2, 3], 1.0)
    store.flush()  # a checkpoint now: rows go to RocksDB, the log is truncated
    job.watermarks.advance(store, "checkpoint", store.version)
    plugin.close(job, clean=True)  # v2: the rows since v1
    reader = ServiceClient(_endpoints(servers))
    got = reader.lookup("users", np.array([1, 2, 3]), version=2)
    _, rows = store.read_rows("a", np.array([1, 2, 3], np.int64))
    assert got.found.all()
    np.testing.assert_array_equal(got.emb, rows["emb"])
    reader.close()
    store.close()
