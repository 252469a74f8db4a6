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


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for v in values:
            producer.send(topic, value=v, partition=0)
        producer.flush(timeout=30)
    finally:
        producer.close()


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_forged_and_corrupt_records_do_not_take_the_numbering(
    tmp_path: Path,
    bootstrap: str,
    new_topic: Callable[[int], str],
    caplog: pytest.LogCaptureFixture,
    signed: bool,
) -> None:
    """Issue 21 item 2: restarts continue after the highest *verified* version."""
    from datetime import UTC, datetime

    from pipeline.publishing.chunks import Signer, encode_chunks

    topic = new_topic(1)
    key = Signer(b"the-real-key") if signed else None
    cfg = StoreConfig(str(tmp_path / "s"), (TableConfig("t", 4, OptimizerConfig("sgd")),), 1)
    settings = PublisherSettings(topic=topic, snapshot_every=100, snapshot_interval_s=None)
    dense = {"w": np.zeros(3, np.float32)}
    with EmbeddingStore(cfg) as store:
        with Publisher(bootstrap, topic, tmp_path / "snaps", settings=settings, signer=key) as pub:
            for i in range(3):
                train(store, np.array([i], np.int64))
                assert pub.publish(store, dense, {}) is not None
        assert pub.version == 3

        when = datetime.now(UTC)
        forger = Signer(b"not-the-key") if signed else None

        def chunks(version: int, payload: bytes | None = None, signer: Signer | None = forger):
            body = payload or ModelDelta(version, version - 1, when, when, 0).to_bytes()
            return encode_chunks(
                body,
                version=version,
                base=version - 1,
                created_at=when,
                max_message_bytes=4096,
                signer=signer,
            )

        forged = chunks(10**300) + chunks(50)  # the first made every restart fail
        corrupt = chunks(60, signer=key)
        corrupt[0] = corrupt[0][:-1] + bytes([corrupt[0][-1] ^ 1])  # payload no longer matches
        junk = [b"not a chunk"]
        produce(bootstrap, topic, [*forged, *corrupt, *junk])
        caplog.set_level("WARNING", logger="pipeline.publishing.discovery")
        with Publisher(
            bootstrap, topic, tmp_path / "snaps", settings=settings, signer=key
        ) as again:
            train(store, np.array([7], np.int64))
            report = again.publish(store, dense, {})
        assert report is not None and report.version == (4 if signed else 51)
        first_forged = 3  # three versions of one chunk each came first
        if signed:
            # forgeries fail their HMAC (the version bound is not even reached)
            want = {"signature": 2, "checksum": 1, "format": 1}
        else:
            # without a key only what is checkable is refused: 10**300 is impossible, and the
            # well-formed forgery of v50 cannot be told from a real one (hence signing)
            want = {"format": 2, "checksum": 1}
        assert again.skipped_records == want
        lines = [r.getMessage() for r in caplog.records]
        assert any(f"offset {first_forged}: skipped" in line for line in lines), lines
