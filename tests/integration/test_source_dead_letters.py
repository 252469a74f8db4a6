"""Acceptance: malformed events (1%) land in the dead-letter topic with their reason; the rest
are delivered."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from pipeline.errors import DecodeFailure
from pipeline.events.formats import read_messages
from pipeline.events.replay import keyed_by_index, replay
from pipeline.source.kafka import Assignment, KafkaSource, SourceBatch, SourceConfig
from pipeline.source.process import ProcessSource
from tests.integration.conftest import CRITEO_TRAIN, Read

pytestmark = pytest.mark.integration


def _with(good: bytes, **changes: object) -> bytes:
    record = json.loads(good)
    record.update(changes)
    return json.dumps(record).encode()


def _without(good: bytes, field: str) -> bytes:
    record = json.loads(good)
    del record[field]
    return json.dumps(record).encode()


# (expected reason code, field named in the reason or None, how to spoil a good message)
SPOILERS: list[tuple[DecodeFailure, str | None, Callable[[bytes], bytes]]] = [
    (DecodeFailure.BAD_JSON, None, lambda good: good[: len(good) // 2]),
    (DecodeFailure.MISSING_FIELD, "label", lambda good: _without(good, "label")),
    (DecodeFailure.WRONG_TYPE, "i3", lambda good: _with(good, i3="seven")),
    (DecodeFailure.OUT_OF_RANGE, "i1", lambda good: _with(good, i1=10**40)),
    (DecodeFailure.UNKNOWN_FIELD, "user_agent", lambda good: _with(good, user_agent="x")),
    (DecodeFailure.EMPTY_PAYLOAD, None, lambda good: b""),
    (DecodeFailure.OUT_OF_RANGE, "label", lambda good: _with(good, label=7)),
    (DecodeFailure.INVALID_VALUE, "c2", lambda good: _with(good, c2="NOT-HEX!")),
    (DecodeFailure.BAD_JSON, None, lambda good: b"[1, 2, 3]"),
    (DecodeFailure.WRONG_TYPE, "label", lambda good: _with(good, label=True)),
]


@pytest.mark.parametrize("source_type", [KafkaSource, ProcessSource])
def test_malformed_events_go_to_the_dead_letter_topic(
    bootstrap: str,
    new_topic: Callable[[int], str],
    read_topic: Callable[..., list[Read]],
    source_type: type[KafkaSource | ProcessSource],
) -> None:
    topic = new_topic(1)  # one partition: a message's offset is its position in the stream
    good = list(read_messages(CRITEO_TRAIN))
    stream: list[bytes] = []
    expected_bad: dict[int, tuple[DecodeFailure, str | None]] = {}
    for i, message in enumerate(good):
        if i % 100 == 50:  # 1% malformed, every kind in turn
            failure, field, spoil = SPOILERS[len(expected_bad) % len(SPOILERS)]
            expected_bad[len(stream)] = (failure, field)
            stream.append(spoil(message))
        stream.append(message)
    assert len(expected_bad) == 20
    replay(bootstrap, topic, keyed_by_index(stream), progress=False)

    config = SourceConfig(
        bootstrap_servers=bootstrap,
        topics=(topic,),
        kind="ctr",
        group_id=None,
        assignment=Assignment.MANUAL,
        max_events=256,
        max_wait_ms=50,
    )
    batches: list[SourceBatch] = []
    with source_type(config) as source:
        deadline = time.monotonic() + 30
        while sum(map(len, batches)) < len(good) and time.monotonic() < deadline:
            batch = source.next_batch(timeout_s=1.0)
            if batch is not None:
                batches.append(batch)
                source.mark_trained(batch)
        assert source.next_batch(timeout_s=0.3) is None
        assert source.dead_letters == len(expected_bad)
        # offsets pass the dead letters too: a restart would not see them again
        assert source.snapshot() == {(topic, 0): len(stream)}

    # every good event delivered once, in order
    offsets = [pos[2] for b in batches for pos in b.positions]
    assert offsets == [i for i in range(len(stream)) if i not in expected_bad]
    assert sum(b.dead_letters for b in batches) == len(expected_bad)

    # every bad one in the dead-letter topic, with its reason and source position
    dead = read_topic(f"{topic}.dlq", len(expected_bad))
    assert len(dead) == len(expected_bad)
    for letter in dead:
        source_offset = int(letter.headers["freshet.dlq.source_offset"])
        assert source_offset in expected_bad
        failure, field = expected_bad[source_offset]
        assert letter.headers["freshet.dlq.reason_code"].decode() == failure.value
        reason = letter.headers["freshet.dlq.reason"].decode()
        assert reason.startswith("ctr: ")
        if field is not None:
            assert repr(field) in reason
        assert letter.headers["freshet.dlq.source_topic"].decode() == topic
        assert letter.headers["freshet.dlq.source_partition"] == b"0"
        assert letter.headers["freshet.dlq.event_kind"] == b"ctr"
        assert letter.value == stream[source_offset]  # the original payload, untouched
        assert letter.key == str(source_offset).encode()
    assert sorted(int(d.headers["freshet.dlq.source_offset"]) for d in dead) == sorted(expected_bad)
