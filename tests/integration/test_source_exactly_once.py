"""Acceptance: the Criteo sample replayed into Kafka is consumed in order, each event once."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import pytest
from kafka import KafkaConsumer, TopicPartition

from pipeline.events.formats import read_messages
from pipeline.events.kinds import CtrEvent, to_record
from pipeline.events.replay import keyed_by_index, replay
from pipeline.source.kafka import Assignment, KafkaSource, SourceBatch, SourceConfig
from pipeline.source.process import ProcessSource
from tests.integration.conftest import CRITEO_TRAIN, SESSION_TIMEOUT_MS

pytestmark = pytest.mark.integration


def drain(
    source: KafkaSource | ProcessSource, expected: int, timeout_s: float = 30.0
) -> list[SourceBatch]:
    """Take batches until ``expected`` events arrived, marking each trained."""
    batches: list[SourceBatch] = []
    got = 0
    deadline = time.monotonic() + timeout_s
    while got < expected and time.monotonic() < deadline:
        batch = source.next_batch(timeout_s=1.0)
        if batch is None:
            continue
        batches.append(batch)
        source.mark_trained(batch)
        got += len(batch)
    return batches


@pytest.mark.slow
@pytest.mark.parametrize("source_type", [KafkaSource, ProcessSource])
def test_criteo_file_is_consumed_in_order_exactly_once(
    bootstrap: str,
    new_topic: Callable[[int], str],
    criteo_lines: list[str],
    source_type: type[KafkaSource | ProcessSource],
) -> None:
    topic = new_topic(3)
    sent = replay(bootstrap, topic, keyed_by_index(read_messages(CRITEO_TRAIN)), progress=False)
    assert sent == len(criteo_lines) == 1999

    group = f"{topic}-trainer"
    config = SourceConfig(
        bootstrap_servers=bootstrap,
        topics=(topic,),
        kind="ctr",
        group_id=group,
        assignment=Assignment.GROUP,
        max_events=128,
        max_wait_ms=50,
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )
    with source_type(config) as source:
        batches = drain(source, sent)
        assert source.next_batch(timeout_s=0.5) is None  # nothing beyond the file
        assert source.dead_letters == 0
        snapshot = source.snapshot()
        source.commit(snapshot)

    keys = [int(k) for b in batches for k in b.keys if k is not None]
    assert len(keys) == sent and sorted(keys) == list(range(sent))  # every event exactly once
    per_partition: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for batch in batches:
        assert 0 < len(batch) <= 128
        for key, (t, partition, offset) in zip(batch.keys, batch.positions, strict=True):
            assert t == topic and key is not None
            per_partition[partition].append((offset, int(key)))
    assert set(per_partition) == {0, 1, 2}  # keys hash over all partitions
    for pairs in per_partition.values():
        offsets = [o for o, _ in pairs]
        assert offsets == list(range(len(offsets)))  # contiguous, in offset order
        line_numbers = [k for _, k in pairs]
        assert line_numbers == sorted(line_numbers)  # replay order kept within a partition

    # content survives the trip
    for batch in batches:
        for key, event in zip(batch.keys, batch.events, strict=True):
            assert key is not None
            expected = CtrEvent.from_criteo_line(criteo_lines[int(key)])
            if source_type is ProcessSource:  # events arrive as columns, read back as dicts
                assert event == to_record(expected)
            else:  # FastDecoder's Structs: the same fields, the same values
                assert {f: getattr(event, f) for f in CtrEvent.model_fields} == dict(expected)

    # the snapshot points right after the last event of every partition
    assert snapshot == {(topic, p): len(v) for p, v in per_partition.items()}
    # and commit() put it in the group, for lag monitoring
    probe = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        committed = {(topic, p): probe.committed(TopicPartition(topic, p)) for p in range(3)}
    finally:
        probe.close()
    assert committed == snapshot
