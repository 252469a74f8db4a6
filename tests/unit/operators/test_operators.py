"""Expiry, checkpoint and metrics operators: what they do and what they report."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.base import OperatorContext, Outcome
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.ops import FullCheckpoint, FullMode, IncrementalCheckpoint
from operators.expiry import Expiry
from operators.metrics import MetricsRegistry
from operators.metrics_report import MetricsReport
from tests.unit.operators.conftest import assert_same_contents, store_contents, train_step

TABLES = (
    TableConfig("a", 4, OptimizerConfig("adagrad", lr=0.1), hot_rows=10, expire_after_steps=2),
    TableConfig("b", 2, OptimizerConfig("sgd", lr=0.1)),
)


def config(path: Path) -> StoreConfig:
    return StoreConfig(str(path), TABLES, num_shards=2)


def step(store: EmbeddingStore, ids: np.ndarray) -> None:
    train_step(store, "a", ids)
    train_step(store, "b", ids)
    store.end_step()


def context(store: EmbeddingStore, version_offsets: bool = True) -> OperatorContext:
    return OperatorContext(
        store,
        MetricsRegistry(),
        dense_state=lambda: {"w": np.full(2, store.version, np.float32)},
        source_offsets=lambda: {"events/0": store.version * 10},
        config_hash="h1",
        extra=lambda: {"note": "x"},
    )


def test_expiry_reports_tombstones_per_table(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with EmbeddingStore(config(tmp_path / "s")) as store:
        step(store, np.arange(20, dtype=np.int64))
        for _ in range(3):
            step(store, np.arange(5, dtype=np.int64))
        ctx = context(store)
        with caplog.at_level(logging.INFO, logger="operators.base"):
            report = Expiry().run(ctx)
        assert report.outcome is Outcome.DONE
        assert report.rows == 15
        assert report.details == {"tombstones.a": 15, "version": 4}
        assert store.tombstones_since("a", 0).tolist() == list(range(5, 20))
        assert Expiry().run(ctx).rows == 0
    assert ctx.metrics.get("expiry_tombstones_total", table="a") == 15
    assert ctx.metrics.get("operator_rows_total", operator="expiry") == 15
    assert ctx.metrics.get("operator_runs_total", operator="expiry", outcome="done") == 2
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        "operator expiry done: rows=15" in line and "tombstones.a=15" in line for line in lines
    )


def test_incremental_operator_chains_and_restores(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    op = IncrementalCheckpoint(manager, background=True, max_chain_length=3)
    kinds = []
    with EmbeddingStore(config(tmp_path / "s")) as store:
        ctx = context(store)
        for k in range(5):
            step(store, np.arange(k, k + 6, dtype=np.int64))
            report = op.run(ctx)
            assert report.outcome is Outcome.SUBMITTED
            kinds.append(report.details["kind"])
            manager.wait()
        want = store_contents(store)
        version = store.version
    # full, incr, incr, then the chain is 3 long: a new full, incr
    assert kinds == ["full", "incremental", "incremental", "full", "incremental"]
    assert [c.id for c in manager.list()] == [
        "000001-0000",
        "000001-0001",
        "000001-0002",
        "000002-0000",
        "000002-0001",
    ]
    m = ctx.metrics
    assert m.get("checkpoint_committed_total", kind="full") == 2
    assert m.get("checkpoint_committed_total", kind="incremental") == 3
    assert m.get("checkpoint_last_version") == version
    total_bytes = sum(c.bytes for c in manager.list())
    assert (
        m.get("checkpoint_bytes_total", kind="full")
        + m.get(  # type: ignore[operator]
            "checkpoint_bytes_total", kind="incremental"
        )
        == total_bytes
    )
    with EmbeddingStore(config(tmp_path / "fresh")) as fresh:
        state = manager.restore(fresh)
        assert_same_contents(store_contents(fresh), want)
    assert state.offsets == {"events/0": version * 10}
    assert (state.config_hash, state.extra) == ("h1", {"note": "x"})
    assert state.dense["w"].tolist() == [version, version]
    manager.close()


def test_checkpoint_operators_skip_while_a_write_is_in_flight(tmp_path: Path) -> None:
    release = []

    def slow(path: str) -> None:
        import time

        while not release:
            time.sleep(0.01)

    manager = CheckpointManager(str(tmp_path / "ckpt"), file_hook=slow)
    with EmbeddingStore(config(tmp_path / "s")) as store:
        ctx = context(store)
        step(store, np.arange(4, dtype=np.int64))
        assert FullCheckpoint(manager).run(ctx).outcome is Outcome.SUBMITTED
        skipped = IncrementalCheckpoint(manager).run(ctx)
        assert skipped.outcome is Outcome.SKIPPED
        assert "still writing" in skipped.message
        release.append(True)
        manager.wait()
    assert (
        ctx.metrics.get("operator_runs_total", operator="incremental_checkpoint", outcome="skipped")
        == 1
    )
    assert len(manager.list()) == 1


def test_full_checkpoint_operator_compacts_the_newest_chain(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"), retention=1)
    compact = FullCheckpoint(manager, mode=FullMode.COMPACT, background=False)
    incr = IncrementalCheckpoint(manager, background=False)
    with EmbeddingStore(config(tmp_path / "s")) as store:
        ctx = context(store)
        step(store, np.arange(8, dtype=np.int64))
        first = compact.run(ctx)  # nothing on disk yet: a full checkpoint from the store
        assert first.details["checkpoint"] == "000001-0000"
        for k in range(3):
            step(store, np.arange(k, k + 3, dtype=np.int64))
            incr.run(ctx)
        report = compact.run(ctx)
        assert report.details["checkpoint"] == "000002-0000"
        assert report.rows == 16  # 8 ids in each table
        step(store, np.arange(2, dtype=np.int64))
        assert incr.run(ctx).details["checkpoint"] == "000002-0001"
        want = store_contents(store)
    assert [c.id for c in manager.list()] == ["000002-0000", "000002-0001"]
    with EmbeddingStore(config(tmp_path / "fresh")) as fresh:
        manager.restore(fresh)
        assert_same_contents(store_contents(fresh), want)


def test_metrics_report_sets_store_gauges(tmp_path: Path) -> None:
    with EmbeddingStore(config(tmp_path / "s")) as store:
        for k in range(3):
            step(store, np.arange(k * 20, k * 20 + 20, dtype=np.int64))
        store.flush()  # every row in RocksDB (write-back is otherwise asynchronous)
        ctx = context(store)
        report = MetricsReport(count_cold=True).run(ctx)
    m = ctx.metrics
    assert m.get("store_version") == 3
    assert m.get("store_lookups", table="a") == 60
    assert m.get("store_cold_rows", table="a") == 60
    assert m.get("store_hot_rows", table="b") == 60
    assert report.details["b.lookups"] == 60


def test_metrics_registry_refuses_mixing_kinds_and_negative_counts() -> None:
    m = MetricsRegistry()
    m.inc("x_total")
    with pytest.raises(ValueError, match="counter"):
        m.set("x_total", 1.0)
    with pytest.raises(ValueError, match="cannot decrease"):
        m.inc("x_total", -1)
    assert m.snapshot() == {"x_total": 1.0}
