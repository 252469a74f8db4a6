"""Issue 21 #3 at the source: batches over several partitions are fixed by offsets and records.

A 4-partition topic is read three times with batches that close on size: from the start twice,
and once resumed from the offsets after batch 5 of the first read. Small fetches (a record
batch or two per partition per fetch) make the broker's answers arrive in a timing-dependent
order. Every read must form the same batches (same positions, in the same order), in both
decode modes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pipeline.events.generators import generate
from pipeline.events.replay import keyed_by_field, replay
from pipeline.source.kafka import Assignment, KafkaSource, SourceConfig
from pipeline.source.process import ProcessSource

pytestmark = pytest.mark.integration
EVENTS, BATCH = 3000, 128


def read(config: SourceConfig, mode: str, start: dict | None, batches: int) -> list[Any]:
    source: Any = KafkaSource(config) if mode == "thread" else ProcessSource(config)
    if start:
        source.seek(start)
    out = []
    with source:
        while len(out) < batches:
            batch = source.next_batch(timeout_s=30.0)
            assert batch is not None, f"no batch {len(out)} within 30 s"
            source.mark_trained(batch)
            out.append((tuple(batch.positions), dict(batch.offsets)))
    return out


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_resumed_reads_form_the_same_batches(
    bootstrap: str, new_topic: Callable[[int], str], mode: str
) -> None:
    topic = new_topic(4)
    events = keyed_by_field(generate("transaction", EVENTS, 9), "customer_id")
    assert replay(bootstrap, topic, events, progress=False) == EVENTS
    config = SourceConfig(
        bootstrap_servers=bootstrap,
        topics=(topic,),
        kind="transaction",
        group_id=None,
        assignment=Assignment.MANUAL,
        max_events=BATCH,
        max_wait_ms=600_000,  # close on size only
        max_partition_fetch_bytes=4096,
    )
    whole = EVENTS // BATCH
    first = read(config, mode, None, whole)
    second = read(config, mode, None, whole)
    assert [p for p, _ in first] == [p for p, _ in second]
    resume_at: dict = {}
    for _, offsets in first[:5]:
        resume_at.update(offsets)
    resumed = read(config, mode, resume_at, whole - 5)
    assert [p for p, _ in resumed] == [p for p, _ in first[5:]]
    positions = [pos for p, _ in first for pos in p]
    assert len(set(positions)) == len(positions) == whole * BATCH
    assert {t for t, _, _ in positions} == {topic}
    assert len({p for _, p, _ in positions}) == 4
