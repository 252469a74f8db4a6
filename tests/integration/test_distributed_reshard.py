"""A 2-rank checkpoint restarts with 1 rank and with 3: every row once, on its owner, and on.

Phase 1 runs the real entry point (``launch`` -> ``python -m pipeline.cli.rank``, 2
ranks) over a 3-partition topic with coordinated checkpoints. Then more events arrive, and
the checkpoint is restored into 1 rank (in this process) and into 3 ranks (re-sharded
in-process first to check placement, then launched), each training the new events.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kafka import KafkaProducer

from configs.job import JobConfig
from embedding_store import EmbeddingStore, StoreConfig
from embedding_store.distributed import owner_of, rank_path
from operators.checkpoint.distributed import WorldCheckpoint, load_world, restore_rank
from operators.checkpoint.manager import CheckpointManager
from pipeline.events.kinds import CtrEvent
from pipeline.training.job import TrainJob
from pipeline.training.launch import launch
from pipeline.training.models import BatchLayout, model_tables
from pipeline.training.world import World

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 3
FIRST, SECOND = 64, 24  # events per partition before and after the checkpoint


def _config(bootstrap: str, topic: str, store: Path) -> dict[str, Any]:
    return {
        "kind": "ctr",
        "source": {
            "bootstrap_servers": [bootstrap],
            "topic": topic,
            "group_id": f"{topic}-g",
            "assignment": "manual",
            "max_events": 32,
            "max_wait_ms": 300,
        },
        "store": {"path": str(store), "num_shards": 2},
        "training": {"prefetch_batches": 2},
        "features": {
            "label": "label",
            "sparse": [
                {"type": "categorical", "name": f"c{i}", "table": "cat", "field": f"c{i}"}
                for i in range(1, 7)
            ],
            "dense": [{"name": "i1", "field": "i1", "log1p": True}],
        },
        "model": {"type": "deepfm", "embedding_dim": 4, "hidden": [8], "bottom": [4]},
    }


def _write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def _produce(bootstrap: str, topic: str, lines: list[str], per_partition: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    try:
        futures = []
        for p in range(PARTITIONS):
            for line in lines[p * per_partition : (p + 1) * per_partition]:
                value = json.dumps(CtrEvent.from_criteo_line(line).model_dump(mode="json"))
                futures.append(producer.send(topic, value=value.encode(), partition=p))
        producer.flush(30)
        for f in futures:
            f.get(30)
    finally:
        producer.close()


def _tables(raw: dict[str, Any]) -> tuple[Any, ...]:
    cfg = JobConfig.model_validate(raw)
    return model_tables(cfg.model.to_spec(), BatchLayout.from_spec(cfg.features.to_spec()))


def _checkpoint_rows(root: Path, entry: WorldCheckpoint, table: str) -> dict[int, np.void]:
    """Every row of ``table`` in the world checkpoint; asserts no id is in two parts."""
    rows: dict[int, np.void] = {}
    for part in entry.parts:
        ids, block = CheckpointManager(str(root / part.root)).read_table(part.checkpoint, table)
        assert (owner_of(ids, entry.world_size) == part.rank).all()
        for i, r in zip(ids.tolist(), block, strict=True):
            assert i not in rows, f"id {i} in two parts"
            rows[i] = r
    return rows


def _rank_rows(store_root: Path, rank: int, tables: Any, table: str) -> tuple[Any, Any]:
    with EmbeddingStore(StoreConfig(rank_path(str(store_root), rank), tables, num_shards=2)) as s:
        parts = list(s.export_rows(table))
    ids = np.concatenate([i for i, _ in parts]) if parts else np.empty(0, np.int64)
    block = np.concatenate([b for _, b in parts]) if parts else None
    return ids, block


def test_two_rank_checkpoint_restarts_with_one_and_three_ranks(
    shared_data: Path, bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    lines = (shared_data / "criteo" / "train.txt").read_text().splitlines()
    topic = new_topic(PARTITIONS)
    _produce(bootstrap, topic, lines, FIRST)
    ckpt = tmp_path / "ckpt"

    # -- phase 1: 2 ranks through the real entry point, checkpoints every 2 steps and at the end
    raw2 = _config(bootstrap, topic, tmp_path / "store2")
    rc = launch(
        str(_write(tmp_path / "two.yaml", raw2)),
        2,
        [
            *("--max-events", str(PARTITIONS * FIRST), "--idle-timeout", "30"),
            *("--checkpoint-dir", str(ckpt), "--checkpoint-every", "2"),
        ],
    )
    assert rc == 0
    world = load_world(str(ckpt))
    assert len(world) >= 2  # periodic ones and the final one
    entry = world[-1]
    assert entry.world_size == 2 and [p.rank for p in entry.parts] == [0, 1]
    assert entry.offsets == {f"{topic}/{p}": FIRST for p in range(PARTITIONS)}
    tables = _tables(raw2)
    names = [t.name for t in tables]
    saved = {t: _checkpoint_rows(ckpt, entry, t) for t in names}
    assert all(saved[t] for t in names)

    _produce(bootstrap, topic, lines[PARTITIONS * FIRST :], SECOND)

    # -- phase 2: 1 rank in this process restores the 2-rank checkpoint and trains on
    raw1 = _config(bootstrap, topic, tmp_path / "store1")
    spec1 = JobConfig.model_validate(raw1).to_spec().with_checkpoints(str(ckpt))
    job = TrainJob(spec1, world=World.solo()).open()
    try:
        assert job.store is not None and job.resumed is not None
        assert job.resumed.resharded and job.resumed.version == entry.version
        assert job.store.version == entry.version
        assert job.events_trained == PARTITIONS * FIRST
        for t in names:
            ids = np.concatenate([i for i, _ in job.store.export_rows(t)])
            assert sorted(ids.tolist()) == sorted(saved[t])  # every row once
        # max_events counts the lineage: the restored events and the new ones
        summary = job.run(max_events=PARTITIONS * (FIRST + SECOND), idle_timeout_s=20)
        assert summary.events == PARTITIONS * SECOND  # only the new events
        assert job.source is not None
        assert job.source.snapshot() == {(topic, p): FIRST + SECOND for p in range(PARTITIONS)}
        assert job.store.version > entry.version
        for t in names:
            ids = np.concatenate([i for i, _ in job.store.export_rows(t)])
            found, rows = job.store.read_rows(t, ids)
            assert found.all() and (rows["version"] > entry.version).any()
    finally:
        job.close(clean=False)  # no final checkpoint: phase 3 restores the 2-rank one

    # -- phase 3: 3 ranks, re-sharded here one after another: each row once, on its owner
    three = tmp_path / "store3"
    for t in names:
        union: list[int] = []
        for rank in range(3):
            local_cfg = StoreConfig(rank_path(str(three), rank), tables, num_shards=2)
            with EmbeddingStore(local_cfg) as local:
                if t == names[0]:
                    restored = restore_rank(str(ckpt), local, rank, 3, entry)
                    assert restored.resharded and restored.version == entry.version
                    assert local.version == entry.version
        for rank in range(3):
            ids, block = _rank_rows(three, rank, tables, t)
            assert (owner_of(ids, 3) == rank).all(), f"{t}: rank {rank} holds others' rows"
            for i, r in zip(ids.tolist(), block, strict=True):
                assert r.tobytes() == saved[t][i].tobytes()
            union.extend(ids.tolist())
        assert sorted(union) == sorted(saved[t]), f"{t}: rows lost or duplicated"

    # ... and 3 launched ranks restore it themselves (re-sharding) and train the new events
    raw3 = _config(bootstrap, topic, three)
    rc = launch(
        str(_write(tmp_path / "three.yaml", raw3)),
        3,
        [
            *("--max-events", str(PARTITIONS * (FIRST + SECOND)), "--idle-timeout", "20"),
            *("--checkpoint-dir", str(ckpt), "--restore"),
        ],
    )
    assert rc == 0
    newest = load_world(str(ckpt))[-1]
    assert newest.world_size == 3 and newest.version > entry.version
    assert newest.offsets == {f"{topic}/{p}": FIRST + SECOND for p in range(PARTITIONS)}
    # the lineage trained each event once: the 2 ranks' events, then only the new ones
    assert newest.extra["events_trained"] == PARTITIONS * (FIRST + SECOND)
    for t in names:
        union = []
        changed = 0
        for rank in range(3):
            ids, block = _rank_rows(three, rank, tables, t)
            assert (owner_of(ids, 3) == rank).all()
            union.extend(ids.tolist())
            changed += int((block["version"] > entry.version).sum()) if block is not None else 0
        assert len(union) == len(set(union))
        assert set(saved[t]) <= set(union)  # every checkpointed row survived, new ones joined
        assert changed > 0
