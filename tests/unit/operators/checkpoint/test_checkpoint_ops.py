"""The checkpoint operators: which checkpoint each run writes, what it reports and records.

Reports and metrics are what the trainer's status line and the exporter show, so they are
checked value by value: kind, version, rows, bytes, the checkpoint's id, the commit metrics
of a background write (committed or failed), and the reason of a skipped run.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, StoreConfig, TableConfig
from operators.base import OperatorContext, Outcome
from operators.checkpoint.chain import CheckpointInfo, CheckpointKind
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.ops import (
    CHECKPOINT_OPERATORS,
    FullCheckpoint,
    FullMode,
    IncrementalCheckpoint,
    _on_commit,
    record_commit,
)
from operators.metrics import MetricsRegistry

TABLES = (TableConfig("t", 2),)


def store_at(path: Path) -> EmbeddingStore:
    return EmbeddingStore(StoreConfig(str(path), TABLES, 1))


def step(store: EmbeddingStore, ids: list[int]) -> None:
    a = np.asarray(ids, dtype=np.int64)
    store.apply_gradients("t", a, store.lookup("t", a).numpy())
    store.end_step()


def context(store: EmbeddingStore) -> OperatorContext:
    return OperatorContext(
        store,
        MetricsRegistry(),
        dense_state=lambda: {"w": np.full(2, store.version, np.float32)},
        source_offsets=lambda: {"p0": store.version * 10},
        config_hash="cfg-7",
        extra=lambda: {"note": store.version},
    )


def test_names_and_defaults(tmp_path: Path) -> None:
    assert IncrementalCheckpoint.name == "incremental_checkpoint"
    assert FullCheckpoint.name == "full_checkpoint"
    assert CHECKPOINT_OPERATORS == ("incremental_checkpoint", "full_checkpoint")
    assert FullMode.STORE.value == "store" and FullMode.COMPACT.value == "compact"
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    incr = IncrementalCheckpoint(manager)
    assert (incr.manager, incr.background, incr.max_chain_length) == (manager, True, None)
    full = FullCheckpoint(manager)
    assert (full.manager, full.mode, full.background) == (manager, FullMode.STORE, True)


def test_record_commit_sets_every_metric_of_the_checkpoint() -> None:
    at = datetime(2026, 12, 3, 12, 0, 5, tzinfo=UTC)
    info = CheckpointInfo("000002-0003", 2, 3, CheckpointKind.INCREMENTAL, 41, at, "sha", 700, 9)
    m = MetricsRegistry()
    record_commit(info, m)
    record_commit(info, m)
    assert m.snapshot() == {
        'checkpoint_bytes_total{kind="incremental"}': 1400.0,
        'checkpoint_committed_total{kind="incremental"}': 2.0,
        "checkpoint_last_timestamp_seconds": at.timestamp(),
        "checkpoint_last_version": 41.0,
        'checkpoint_rows_total{kind="incremental"}': 18.0,
    }


def test_a_failed_or_cancelled_background_write_counts_as_failed() -> None:
    m = MetricsRegistry()
    done = _on_commit(m)
    failed: Future[CheckpointInfo] = Future()
    failed.set_exception(OSError("disk full"))
    done(failed)
    cancelled: Future[CheckpointInfo] = Future()
    cancelled.cancel()
    done(cancelled)
    assert m.snapshot() == {"checkpoint_failed_total": 2.0}
    at = datetime(2026, 12, 3, tzinfo=UTC)
    ok: Future[CheckpointInfo] = Future()
    ok.set_result(CheckpointInfo("000001-0000", 1, 0, CheckpointKind.FULL, 3, at, "s", 10, 2))
    done(ok)
    assert m.get("checkpoint_failed_total") == 2.0
    assert m.get("checkpoint_committed_total", kind="full") == 1.0
    assert m.get("checkpoint_rows_total", kind="full") == 2.0


def test_synchronous_runs_report_the_checkpoint_and_write_the_contexts_state(
    tmp_path: Path,
) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    incr = IncrementalCheckpoint(manager, background=False, max_chain_length=2)
    with store_at(tmp_path / "s") as store:
        ctx = context(store)
        step(store, [0, 1, 2, 3])
        first = incr.run(ctx)
        step(store, [1])
        second = incr.run(ctx)
        step(store, [2])
        third = incr.run(ctx)  # the chain is 2 long: a new chain
    assert (first.outcome, first.rows) == (Outcome.DONE, 4)
    infos = {c.id: c for c in manager.list()}
    assert list(infos) == ["000001-0000", "000001-0001", "000002-0000"]
    for report, cid, kind in (
        (first, "000001-0000", "full"),
        (second, "000001-0001", "incremental"),
        (third, "000002-0000", "full"),
    ):
        info = infos[cid]
        assert report.details == {
            "kind": kind,
            "version": info.version,
            "checkpoint": cid,
            "tombstones": info.tombstones,
        }
        assert (report.rows, report.bytes) == (info.rows, info.bytes)
        assert report.bytes > 0
    assert second.rows == 1 and third.rows == 4
    m = ctx.metrics
    assert m.get("checkpoint_committed_total", kind="full") == 2
    assert m.get("checkpoint_committed_total", kind="incremental") == 1
    assert m.get("checkpoint_last_version") == infos["000002-0000"].version
    with store_at(tmp_path / "fresh") as fresh:
        state = manager.restore(fresh, "000001-0001")
    v = infos["000001-0001"].version
    assert state.dense["w"].tolist() == [v, v]
    assert state.offsets == {"p0": v * 10}
    assert (state.config_hash, state.extra) == ("cfg-7", {"note": v})
    manager.close()


def test_a_chain_limit_of_one_makes_every_checkpoint_full(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    incr = IncrementalCheckpoint(manager, background=False, max_chain_length=1)
    unlimited = IncrementalCheckpoint(manager, background=False)
    with store_at(tmp_path / "s") as store:
        ctx = context(store)
        kinds = []
        for k in range(3):
            step(store, [k])
            kinds.append(incr.run(ctx).details["kind"])
        for k in range(3):
            step(store, [k])
            kinds.append(unlimited.run(ctx).details["kind"])
    assert kinds == ["full", "full", "full", "incremental", "incremental", "incremental"]
    manager.close()


def test_background_runs_report_the_capture_and_record_the_commit(tmp_path: Path) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    incr = IncrementalCheckpoint(manager)
    full = FullCheckpoint(manager)
    with store_at(tmp_path / "s") as store:
        ctx = context(store)
        step(store, [0, 1, 2])
        reports = [full.run(ctx)]
        manager.wait()
        step(store, [5])
        reports.append(incr.run(ctx))
        manager.wait()
        version = store.version
    for report, kind, rows, v in ((reports[0], "full", 3, 1), (reports[1], "incremental", 1, 2)):
        assert report.outcome is Outcome.SUBMITTED and report.rows == rows
        assert sorted(report.details) == ["capture_seconds", "kind", "version"]
        assert (report.details["kind"], report.details["version"]) == (kind, v)
        assert 0 <= float(report.details["capture_seconds"]) < 60
    infos = manager.list()
    assert [(c.kind.value, c.version) for c in infos] == [("full", 1), ("incremental", 2)]
    m = ctx.metrics
    assert m.get("checkpoint_committed_total", kind="full") == 1
    assert m.get("checkpoint_committed_total", kind="incremental") == 1
    assert m.get("checkpoint_bytes_total", kind="incremental") == infos[1].bytes
    assert m.get("checkpoint_last_version") == version == 2
    manager.close()


def test_a_failed_background_write_is_counted(tmp_path: Path) -> None:
    def fail(path: str) -> None:
        raise OSError(f"cannot write {path}")

    manager = CheckpointManager(str(tmp_path / "ckpt"), file_hook=fail)
    with store_at(tmp_path / "s") as store:
        ctx = context(store)
        step(store, [0])
        assert IncrementalCheckpoint(manager).run(ctx).outcome is Outcome.SUBMITTED
        manager.wait()
    assert ctx.metrics.get("checkpoint_failed_total") == 1
    assert ctx.metrics.get("checkpoint_committed_total", kind="full") is None
    manager.close()


@pytest.mark.parametrize("make", [IncrementalCheckpoint, FullCheckpoint], ids=["incr", "full"])
def test_a_run_while_a_write_is_in_flight_is_skipped_with_the_reason(
    tmp_path: Path, make: type[IncrementalCheckpoint] | type[FullCheckpoint]
) -> None:
    release = threading.Event()

    def slow(path: str) -> None:
        release.wait(30)

    manager = CheckpointManager(str(tmp_path / "ckpt"), file_hook=slow)
    with store_at(tmp_path / "s") as store:
        ctx = context(store)
        step(store, [0])
        manager.submit_full(store)
        skipped = make(manager).execute(ctx)
        release.set()
        manager.wait()
    assert (skipped.outcome, skipped.rows, skipped.details) == (Outcome.SKIPPED, 0, {})
    assert skipped.message == "the previous checkpoint is still writing"
    assert len(manager.list()) == 1
    manager.close()


def test_compaction_in_the_background_and_a_full_checkpoint_from_the_store(
    tmp_path: Path,
) -> None:
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    compact = FullCheckpoint(manager, mode=FullMode.COMPACT)
    incr = IncrementalCheckpoint(manager, background=False)
    with store_at(tmp_path / "s") as store:
        ctx = context(store)
        step(store, [0, 1])
        first = compact.run(ctx)  # nothing on disk: a full checkpoint from the store, submitted
        manager.wait()
        assert (first.outcome, first.details["kind"], first.rows) == (Outcome.SUBMITTED, "full", 2)
        step(store, [3])
        incr.run(ctx)
        report = compact.run(ctx)
        manager.wait()
        assert (report.outcome, report.rows) == (Outcome.SUBMITTED, 0)
        assert report.details == {"kind": "full", "mode": "compact"}
        ids = [c.id for c in manager.list()]
        assert ids == ["000001-0000", "000001-0001", "000002-0000"]
        assert manager.list()[-1].compacted_from == "000001-0001"
        assert ctx.metrics.get("checkpoint_committed_total", kind="full") == 2
        assert ctx.metrics.get("checkpoint_rows_total", kind="full") == 2 + 3
        # a synchronous full checkpoint from the store, in STORE mode, even with a chain on disk
        step(store, [7])
        stored = FullCheckpoint(manager, background=False).run(ctx)
    assert stored.details["checkpoint"] == "000003-0000" and stored.rows == 4
    assert manager.list()[-1].compacted_from is None
    manager.close()
