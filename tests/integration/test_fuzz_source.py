"""Acceptance (issue 8): 10,000 malformed events through the source; it never crashes, every
bad one is dead-lettered with its reason and position, every good one is delivered once.

Hypothesis draws 5,000 malformed payloads per event kind (see ``fuzz_payloads``: not UTF-8, not
JSON, not an object, fields missing, unknown, of the wrong type, out of range, huge, deeply
nested, ...), shuffled among 1,000 valid ones on the two partitions of a real topic. Validity is
known by construction, and checked against the validator before anything is produced.
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections import Counter
from collections.abc import Callable

import pytest
from kafka import KafkaProducer

from pipeline.events.fast_decode import FastDecoder
from pipeline.events.generators import generate
from pipeline.events.kinds import EVENT_KINDS, TransactionEvent, decode
from pipeline.source.kafka import Assignment, KafkaSource, SourceBatch, SourceConfig
from tests.integration.conftest import Read
from tests.integration.fuzz_payloads import (
    SPOILS,
    Payload,
    check_oracle,
    draw_many,
    malformed_payloads,
    valid_payloads,
)

pytestmark = pytest.mark.integration

MALFORMED = 10_000 // len(EVENT_KINDS)  # per kind: 10,000 in all
VALID = 1_000
PARTITIONS = 2

Position = tuple[int, int]  # (partition, offset)


def stream_of(kind: str) -> list[Payload]:
    """Malformed and valid payloads shuffled; each partition ends with a valid one, so the
    batch after the last dead letter closes (and ``snapshot()`` passes the whole stream)."""
    bad = draw_many(malformed_payloads(kind), MALFORMED, unique_by=lambda p: p.data)
    good = draw_many(valid_payloads(kind), VALID)
    check_oracle(kind, bad + good)
    spoils = Counter(p.spoil for p in bad)
    assert set(spoils) == set(SPOILS), spoils  # every way of spoiling a message was drawn
    assert len({p.data for p in bad}) > MALFORMED // 2  # mostly distinct, not 5,000 copies
    stream = bad + good[:-PARTITIONS]
    random.Random(kind).shuffle(stream)
    return stream + good[-PARTITIONS:]


def produce(bootstrap: str, topic: str, stream: list[Payload]) -> list[Position]:
    """Send message ``i`` (key ``str(i)``) to partition ``i % PARTITIONS``; its position."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=1 << 20
    )
    try:
        futures = [
            producer.send(topic, value=p.data, key=str(i).encode(), partition=i % PARTITIONS)
            for i, p in enumerate(stream)
        ]
        producer.flush(timeout=60)
        metadata = [f.get(timeout=10) for f in futures]
    finally:
        producer.close(timeout=10)
    return [(m.partition, m.offset) for m in metadata]


def consume(
    bootstrap: str, topic: str, kind: str, decoder: str
) -> tuple[list[SourceBatch], dict[tuple[str, int], int]]:
    """Every batch until the valid events are in; then the source's ``snapshot()``."""
    config = SourceConfig(
        bootstrap_servers=bootstrap,
        topics=(topic,),
        kind=kind,
        group_id=None,
        assignment=Assignment.MANUAL,
        max_events=512,
        max_wait_ms=50,
    )
    batches: list[SourceBatch] = []
    fast = FastDecoder(kind) if decoder == "fast" else None
    models = functools.partial(decode, kind)  # the pydantic models alone
    with KafkaSource(config, decoder=fast or models) as source:
        deadline = time.monotonic() + 90
        while sum(map(len, batches)) < VALID and time.monotonic() < deadline:
            batch = source.next_batch(timeout_s=1.0)  # raises if the polling thread died
            if batch is not None:
                batches.append(batch)
                source.mark_trained(batch)
        assert source.next_batch(timeout_s=0.3) is None  # nothing beyond the valid ones
        assert source.dead_letters == MALFORMED
        assert source.events_read == VALID
        merged: dict[tuple[str, int], int] = {}
        for batch in batches:
            merged.update(batch.offsets)
        snapshot = source.snapshot()
        assert snapshot == merged
    if fast is not None:  # the fast path took the valid ones, the models refused the rest
        assert (fast.fast, fast.slow) == (VALID, MALFORMED)
    return batches, snapshot


@pytest.mark.parametrize("decoder", ["pydantic", "fast"])
@pytest.mark.parametrize("kind", sorted(EVENT_KINDS))
def test_fuzzed_events_are_delivered_or_dead_lettered(
    kind: str,
    decoder: str,
    bootstrap: str,
    new_topic: Callable[[int], str],
    read_topic: Callable[..., list[Read]],
) -> None:
    stream = stream_of(kind)
    assert (sum(not p.valid for p in stream), sum(p.valid for p in stream)) == (MALFORMED, VALID)
    topic = new_topic(PARTITIONS)
    positions = produce(bootstrap, topic, stream)
    index = {pos: i for i, pos in enumerate(positions)}
    assert len(index) == len(stream)
    bad_at = {pos for pos, i in index.items() if not stream[i].valid}
    good_at = {pos for pos, i in index.items() if stream[i].valid}

    batches, snapshot = consume(bootstrap, topic, kind, decoder)

    # every valid event exactly once, in offset order per partition, and the right one
    delivered = [(t, p, o) for b in batches for t, p, o in b.positions]
    assert {t for t, _, _ in delivered} == {topic}
    got = [(p, o) for _, p, o in delivered]
    assert len(got) == len(set(got)) == VALID
    assert set(got) == good_at
    for part in range(PARTITIONS):
        offsets = [o for p, o in got if p == part]
        assert offsets == sorted(offsets)
    for b in batches:
        for event, key, (_, p, o) in zip(b.events, b.keys, b.positions, strict=True):
            i = index[(p, o)]
            assert key == str(i).encode()
            expected = decode(kind, stream[i].data)
            assert {n: getattr(event, n) for n in type(expected).model_fields} == dict(expected)
    assert sum(b.dead_letters for b in batches) == MALFORMED
    # the batches' offsets (what a checkpoint keeps) pass the end of both partitions
    ends = {part: max(o for p, o in index if p == part) + 1 for part in range(PARTITIONS)}
    assert snapshot == {(topic, p): o for p, o in ends.items()}

    # every malformed one in the dead-letter topic once, with its reason and position
    dead = read_topic(f"{topic}.dlq", MALFORMED, timeout_s=60)
    assert len(dead) == MALFORMED
    letters = [
        (
            int(d.headers["freshet.dlq.source_partition"]),
            int(d.headers["freshet.dlq.source_offset"]),
        )
        for d in dead
    ]
    assert len(set(letters)) == MALFORMED
    assert set(letters) == bad_at
    codes: Counter[str] = Counter()
    for letter, pos in zip(dead, letters, strict=True):
        payload = stream[index[pos]]
        reason = letter.headers["freshet.dlq.reason"].decode()
        assert reason.startswith(f"{kind}: ") and len(reason) > len(kind) + 2, reason
        code = letter.headers["freshet.dlq.reason_code"].decode()
        assert code in payload.codes, (payload.spoil, payload.data[:120], reason)
        codes[code] += 1
        assert letter.headers["freshet.dlq.source_topic"].decode() == topic
        assert letter.headers["freshet.dlq.event_kind"].decode() == kind
        assert int(letter.headers["freshet.dlq.source_timestamp_ms"]) > 0
        assert letter.value == payload.data  # the original bytes, untouched
        assert letter.key == str(index[pos]).encode()
    assert sum(codes.values()) == MALFORMED
    assert len(codes) >= 6, codes  # the reasons are specific, not one catch-all


def test_bad_messages_near_the_size_limit_are_dead_lettered_not_fatal(
    bootstrap: str,
    new_topic: Callable[[int], str],
    read_topic: Callable[..., list[Read]],
) -> None:
    """Regression: a dead letter is the payload plus headers, so a bad message near the 1 MiB
    request limit (or one whose reason quotes a huge unknown key) made the dead-letter producer
    raise in the polling thread: the source died, and died again at every restart."""
    topic = new_topic(1)
    good = [json.dumps(r).encode() for r in generate("transaction", 2, seed=3)]
    huge = b"x" * ((1 << 20) - 200)  # not JSON; about the most a default producer sends
    record = json.loads(good[0])
    long_key = json.dumps({**record, "k" * 600_000: 1}).encode()  # the reason: 600 kB more
    stream = [huge, good[0], long_key, good[1]]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for value in stream:
        producer.send(topic, value=value).get(timeout=30)
    producer.close(timeout=10)

    config = SourceConfig(
        bootstrap_servers=bootstrap,
        topics=(topic,),
        kind="transaction",
        group_id=None,
        assignment=Assignment.MANUAL,
        max_wait_ms=50,
    )
    with KafkaSource(config) as source:
        events = []
        deadline = time.monotonic() + 30
        while len(events) < 2 and time.monotonic() < deadline:
            batch = source.next_batch(timeout_s=1.0)  # raised SourceError before the fix
            if batch is not None:
                events.extend(batch.events)
        fields = list(TransactionEvent.model_fields)
        got = [[getattr(e, f) for f in fields] for e in events]
        assert got == [[getattr(decode("transaction", g), f) for f in fields] for g in good]
        assert source.dead_letters == 2

    dead = {int(d.headers["freshet.dlq.source_offset"]): d for d in read_topic(f"{topic}.dlq", 2)}
    assert sorted(dead) == [0, 2]
    cut = dead[0]
    assert cut.headers["freshet.dlq.reason_code"] == b"bad_json"
    assert int(cut.headers["freshet.dlq.payload_bytes"]) == len(huge) > len(cut.value)
    assert cut.value == huge[: len(cut.value)] and len(cut.value) > 990_000
    named = dead[2]
    reason = named.headers["freshet.dlq.reason"].decode()
    assert reason == f"transaction: unknown field '{'k' * 57}...'"  # the name, shortened
    assert named.value == long_key  # small enough to keep whole
    assert int(named.headers["freshet.dlq.payload_bytes"]) == len(long_key)
