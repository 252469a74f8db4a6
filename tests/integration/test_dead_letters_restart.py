"""Dead letters on the real broker: once each across a restart, prefixed headers, re-driving.

Regression (issue 17 #4): a source reads ahead of the trainer and dead-letters the bad messages
it reads; a restart from the checkpointed offsets read them again and dead-lettered them twice.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaProducer

from pipeline.cli.main import main
from pipeline.events.formats import read_messages
from pipeline.source.kafka import Assignment, KafkaSource, SourceConfig
from pipeline.source.process import ProcessSource
from tests.integration.conftest import CRITEO_TRAIN, Read

pytestmark = pytest.mark.integration

GOOD = 1000
BAD_EVERY = 50  # message i is bad when i % 50 == 25: 20 bad ones


def _produce(bootstrap: str, topic: str) -> tuple[list[bytes], set[int]]:
    good = list(read_messages(CRITEO_TRAIN))[:GOOD]
    stream: list[bytes] = []
    bad: set[int] = set()
    for message in good:
        if len(stream) % BAD_EVERY == BAD_EVERY // 2:
            bad.add(len(stream))
            stream.append(b'{"label": "not a label"}')
        stream.append(message)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    for i, value in enumerate(stream):
        producer.send(
            topic, value=value, key=str(i).encode(), headers=[("trace", f"t{i}".encode())]
        )
    producer.flush()
    producer.close()
    return stream, bad


def _config(bootstrap: str, topic: str) -> SourceConfig:
    return SourceConfig(
        bootstrap_servers=bootstrap,
        topics=(topic,),
        kind="ctr",
        group_id="dlq-restart",
        assignment=Assignment.MANUAL,
        max_events=40,
        max_wait_ms=50,
        queue_batches=8,
    )


def _drain(source: Any, until: int, deadline_s: float = 30) -> int:
    seen = 0
    deadline = time.monotonic() + deadline_s
    while seen < until and time.monotonic() < deadline:
        batch = source.next_batch(timeout_s=1.0)
        if batch is not None:
            seen += len(batch.events)
            source.mark_trained(batch)
    return seen


@pytest.mark.parametrize("source_type", [KafkaSource, ProcessSource])
def test_a_restart_does_not_dead_letter_the_same_message_twice(
    bootstrap: str,
    new_topic: Callable[[int], str],
    read_topic: Callable[..., list[Read]],
    source_type: type[KafkaSource | ProcessSource],
) -> None:
    topic = new_topic(1)
    stream, bad = _produce(bootstrap, topic)
    assert len(bad) == 20

    # first run: train 3 batches, let the source read ahead (and dead-letter), "crash"
    with source_type(_config(bootstrap, topic)) as first:
        assert _drain(first, 120) >= 120
        deadline = time.monotonic() + 20
        while first.dead_letters < 6 and time.monotonic() < deadline:
            time.sleep(0.05)  # the read-ahead reaches past the checkpoint's offsets
        checkpoint = first.snapshot()
        sent_first = first.dead_letters
    resumed_at = checkpoint[(topic, 0)]
    ahead = {o for o in bad if o >= resumed_at and o < resumed_at + 8 * 40}
    assert sent_first > len({o for o in bad if o < resumed_at})  # some sent past the checkpoint
    assert ahead

    # restart from the checkpoint: the read-ahead part is read again
    second = source_type(_config(bootstrap, topic))
    second.seek(checkpoint)
    with second:
        trained = _drain(second, GOOD - (resumed_at - len({o for o in bad if o < resumed_at})))
        assert second.next_batch(timeout_s=0.3) is None
        sent_second = second.dead_letters

    assert trained == sum(1 for i in range(resumed_at, len(stream)) if i not in bad)
    if source_type is KafkaSource:  # a source process reports its counts with a delay
        assert sent_first + sent_second == len(bad)  # each bad message sent once, both runs
    dead = read_topic(f"{topic}.dlq", len(bad))
    offsets = Counter(int(d.headers["freshet.dlq.source_offset"]) for d in dead)
    assert max(offsets.values()) == 1, [o for o, n in offsets.items() if n > 1]
    assert set(offsets) == bad
    for letter in dead:  # original headers kept, then the prefixed ones
        i = int(letter.headers["freshet.dlq.source_offset"])
        assert letter.headers["trace"] == f"t{i}".encode()
        assert letter.headers["freshet.dlq.reason_code"] == b"wrong_type"
        assert letter.headers["freshet.dlq.group"] == b"dlq-restart"
        assert letter.value == stream[i] and letter.key == str(i).encode()
        assert not [k for k in letter.headers if not (k == "trace" or k.startswith("freshet.dlq."))]


def test_replay_from_dlq_re_drives_dead_letters(
    bootstrap: str,
    new_topic: Callable[[int], str],
    read_topic: Callable[..., list[Read]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = new_topic(2)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    bad = {0: b'{"label": 7}', 1: b"[]"}
    for partition, value in bad.items():
        producer.send(
            topic, value=value, key=b"k%d" % partition, partition=partition, headers=[("h", b"v")]
        )
    producer.flush()
    producer.close()
    with KafkaSource(_config(bootstrap, topic)) as source:
        deadline = time.monotonic() + 20
        while source.dead_letters < 2 and time.monotonic() < deadline:
            source.next_batch(timeout_s=0.2)
        assert source.dead_letters == 2

    fixed = new_topic(2)  # e.g. a topic the fixed consumer reads
    code = main(["replay", "--bootstrap-server", bootstrap, "--from-dlq", f"{topic}.dlq",
                 "--topic", fixed])  # fmt: skip
    assert code == 0
    assert "2 dead letters re-driven to" in capsys.readouterr().out
    again = sorted(read_topic(fixed, 2), key=lambda r: r.key or b"")
    assert [(r.key, r.value) for r in again] == [(b"k0", bad[0]), (b"k1", bad[1])]
    for r, partition in zip(again, (0, 1), strict=True):
        assert r.headers["h"] == b"v"
        assert r.headers["freshet.dlq.redriven_from"] == f"{topic}:{partition}:0".encode()
        assert "freshet.dlq.reason" not in r.headers

    # to the source topic by default, each to its source partition
    assert main(["replay", "--bootstrap-server", bootstrap, "--from-dlq", f"{topic}.dlq"]) == 0
    back = read_topic(topic, 4)
    assert sorted((r.partition, r.offset, r.value) for r in back) == [
        (0, 0, bad[0]),
        (0, 1, bad[0]),
        (1, 0, bad[1]),
        (1, 1, bad[1]),
    ]

    # usage errors exit 2; a missing dead-letter topic is a clear runtime error (1)
    assert main(["replay", "--bootstrap-server", bootstrap, "--generator", "ctr"]) == 2
    assert main(["replay", "--bootstrap-server", bootstrap, "--from-dlq", "no-such.dlq"]) == 1
    err = capsys.readouterr().err
    assert "--topic is required" in err and "dead-letter topic 'no-such.dlq' does not exist" in err
