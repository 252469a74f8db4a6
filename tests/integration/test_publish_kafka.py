"""The publisher on a real broker: chunks in order on one partition, numbering after a restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from pipeline.publishing.chunks import ChunkAssembler, parse_chunk
from pipeline.publishing.delta import ModelDelta
from pipeline.publishing.publisher import Publisher, PublisherSettings
from pipeline.publishing.snapshot import SnapshotStore

pytestmark = pytest.mark.integration


def train(store: EmbeddingStore, ids: np.ndarray) -> None:
    emb = store.lookup("t", ids)
    store.apply_gradients("t", ids, np.ones_like(emb.numpy()))
    store.end_step()


def test_chunked_deltas_on_kafka_and_restart_numbering(
    tmp_path: Path, bootstrap: str, new_topic: Callable[[int], str], read_topic: Callable[..., list]
) -> None:
    topic = new_topic(1)
    cfg = StoreConfig(str(tmp_path / "s"), (TableConfig("t", 16, OptimizerConfig("sgd")),), 2)
    settings = PublisherSettings(
        topic=topic, max_message_bytes=16_384, snapshot_every=100, snapshot_interval_s=None
    )
    dense = {"w": np.arange(5, dtype=np.float32)}
    with EmbeddingStore(cfg) as store:
        with Publisher(bootstrap, topic, tmp_path / "snaps", settings=settings) as pub:
            train(store, np.arange(100, dtype=np.int64))
            first = pub.publish(store, dense, {})
            train(store, np.arange(3000, dtype=np.int64))  # ~200 KB: many chunks
            big = pub.publish(store, dense, {})
            train(store, np.array([1], np.int64))
            small = pub.publish(store, dense, {})
        assert first is not None and big is not None and small is not None
        assert (first.version, big.version, small.version) == (1, 2, 3)
        assert big.messages > 10 and small.messages == 1
        snap = SnapshotStore(tmp_path / "snaps").newest()
        assert snap is not None and snap.next_offset == first.next_offset
        records = read_topic(topic, first.messages + big.messages + small.messages)
        assert [r.partition for r in records] == [0] * len(records)
        assert [r.offset for r in records] == list(range(len(records)))
        assert max(len(r.value) for r in records) <= 16_384
        assert small.next_offset == len(records)
        assembler = ChunkAssembler()
        deltas = []
        for r in records:
            done = assembler.add(r.value)
            if done is not None:
                deltas.append(ModelDelta.from_bytes(done.payload))
        assert [(d.version, d.base, d.rows) for d in deltas] == [
            (1, None, 0),
            (2, 1, 3000),
            (3, 2, 1),
        ]
        ids, emb = deltas[1].tables[0].ids, deltas[1].tables[0].emb
        keep = ids != 1  # row 1 changed again in version 3
        found, rows = store.read_rows("t", ids[keep])
        assert found.all() and np.array_equal(rows["emb"], emb[keep])

        # a new run without any newer snapshot continues after the topic's newest version
        with Publisher(bootstrap, topic, tmp_path / "snaps", settings=settings) as again:
            train(store, np.array([2], np.int64))
            report = again.publish(store, dense, {})
        assert report is not None and (report.version, report.base) == (4, None)
        header, _ = parse_chunk(read_topic(topic, len(records) + 1)[-1].value)
        assert (header.version, header.base) == (4, None)
