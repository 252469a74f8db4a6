"""On the real broker, the fast record reader and kafka-python's give the source the same batches.

The property tests in ``tests/unit/test_kafka_records.py`` compare the two readers on bytes
built by kafka-python; this runs them on what the broker really returns for the Criteo sample
(plain, gzip, snappy, lz4 and zstd batches, keys, headers), through :class:`KafkaSource`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.events.formats import read_messages
from pipeline.source.kafka import Assignment, KafkaSource, SourceConfig
from pipeline.source.records import FastPartitionRecords
from tests.integration.conftest import CRITEO_TRAIN

pytestmark = pytest.mark.integration


def _read(bootstrap: str, topic: str, fast: bool, expected: int) -> tuple[list[Any], bool]:
    config = SourceConfig(
        bootstrap_servers=bootstrap,
        topics=(topic,),
        kind="ctr",
        group_id=None,
        assignment=Assignment.MANUAL,
        max_events=97,  # batches that end mid fetch
        max_wait_ms=50,
        fast_record_reader=fast,
        create_dead_letter_topics=False,
    )
    seen: list[Any] = []
    deadline = time.monotonic() + 30
    with KafkaSource(config) as source:
        installed = source._consumer._fetcher.PartitionRecords is FastPartitionRecords
        while len(seen) < expected and time.monotonic() < deadline:
            batch = source.next_batch(timeout_s=1.0)
            if batch is None:
                continue
            events = batch.events
            assert isinstance(events, tuple)
            # each source declares its own Struct class: compare the events' fields
            values = [msgspec.to_builtins(e) for e in events]
            seen.extend(zip(batch.positions, batch.keys, batch.timestamps_ms, values, strict=True))
            source.mark_trained(batch)
    return seen, installed


@pytest.mark.parametrize("compression", [None, "gzip", "snappy", "lz4", "zstd"])
def test_both_readers_give_the_source_the_same_events(
    bootstrap: str, new_topic: Callable[[int], str], compression: str | None
) -> None:
    topic = new_topic(1)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, compression_type=compression, linger_ms=20
    )
    sent = 0
    for i, value in enumerate(read_messages(CRITEO_TRAIN)):
        headers = [("n", str(i).encode())] if i % 3 == 0 else []
        key = None if i % 5 == 0 else str(i).encode()
        producer.send(topic, value=value, key=key, headers=headers)
        sent += 1
    producer.flush()
    producer.close()

    fast, fast_installed = _read(bootstrap, topic, True, sent)
    stock, stock_installed = _read(bootstrap, topic, False, sent)
    assert (fast_installed, stock_installed) == (True, False)
    assert len(fast) == sent == 1999
    assert fast == stock
    assert [pos[2] for pos, *_ in fast] == list(range(sent))  # every offset, in order
    assert [k for _, k, *_ in fast[:6]] == [None, b"1", b"2", b"3", b"4", None]


def test_headers_and_keys_reach_a_plain_consumer_through_the_fast_reader(
    bootstrap: str, new_topic: Callable[[int], str]
) -> None:
    """Dead letters carry their reason in headers: they must read back byte for byte."""
    from pipeline.source.records import install

    topic = new_topic(1)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    sent = [
        (None, b"", []),
        (b"k", b"x" * 20_000, [("reason", b"bad json"), ("empty", b"")]),
        (b"", b"\x00\xff", [("\u00e9", b"v")]),
    ]
    for key, value, headers in sent:
        producer.send(topic, value=value, key=key, headers=headers)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=50)
    try:
        assert install(consumer)
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek(TopicPartition(topic, 0), 0)
        got: list[Any] = []
        deadline = time.monotonic() + 20
        while len(got) < len(sent) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                got.extend((r.key, r.value, r.headers) for r in records)
    finally:
        consumer.close()
    assert got == sent
