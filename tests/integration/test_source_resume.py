"""snapshot() / seek(): stop half way, restart from the snapshot, the rest arrive exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from pipeline.events.formats import read_messages
from pipeline.events.replay import keyed_by_index, replay
from pipeline.source.kafka import Assignment, KafkaSource, SourceBatch, SourceConfig
from pipeline.source.process import ProcessSource
from tests.integration.conftest import CRITEO_TRAIN, SESSION_TIMEOUT_MS

pytestmark = pytest.mark.integration


def take(
    source: KafkaSource | ProcessSource, at_least: int, timeout_s: float = 30.0
) -> list[SourceBatch]:
    batches: list[SourceBatch] = []
    deadline = time.monotonic() + timeout_s
    while sum(map(len, batches)) < at_least and time.monotonic() < deadline:
        batch = source.next_batch(timeout_s=1.0)
        if batch is not None:
            source.mark_trained(batch)
            batches.append(batch)
    return batches


def keys_of(batches: list[SourceBatch]) -> list[int]:
    return [int(k) for b in batches for k in b.keys if k is not None]


@pytest.mark.parametrize("source_type", [KafkaSource, ProcessSource])
@pytest.mark.parametrize(
    "assignment",
    [Assignment.MANUAL, pytest.param(Assignment.GROUP, marks=pytest.mark.slow)],
)
def test_restart_from_snapshot_delivers_the_rest_exactly_once(
    bootstrap: str,
    new_topic: Callable[[int], str],
    assignment: Assignment,
    source_type: type[KafkaSource | ProcessSource],
) -> None:
    topic = new_topic(3)
    total = replay(bootstrap, topic, keyed_by_index(read_messages(CRITEO_TRAIN)), progress=False)
    config = SourceConfig(
        bootstrap_servers=bootstrap,
        topics=(topic,),
        kind="ctr",
        group_id=f"{topic}-g",
        assignment=assignment,
        max_events=100,
        max_wait_ms=50,
        queue_batches=4,  # the first run reads ahead of what it trains
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )

    first = source_type(config).start()
    try:
        trained = take(first, total // 2)
        time.sleep(0.3)  # let the polling thread fill its buffer past the trained batches
        assert first.buffered() > 0
        snapshot = first.snapshot()
    finally:
        first.close()
    first_keys = keys_of(trained)
    assert total // 2 <= len(first_keys) < total
    assert set(snapshot) == {(topic, p) for p in range(3)}  # every partition, read or not
    assert sum(snapshot.values()) == len(first_keys)

    second = source_type(config)
    second.seek(snapshot)
    with second:
        rest = take(second, total - len(first_keys))
        assert second.next_batch(timeout_s=0.5) is None
        assert sum(second.snapshot().values()) == total

    rest_keys = keys_of(rest)
    assert sorted(first_keys + rest_keys) == list(range(total))  # none lost, none twice
    for batch in rest:
        for _, partition, offset in batch.positions:
            assert offset >= snapshot[(topic, partition)]
