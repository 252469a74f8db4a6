"""Dead letters: their headers, reading them back, sending each once, re-driving them.

A dead letter is the original message (key, payload, original headers) plus headers prefixed
``freshet.dlq.`` that say why and where from::

    key      = original key                      value = original payload (cut past ~1 MB)
    headers  = original headers (any freshet.dlq.* dropped), then
               freshet.dlq.reason            "ctr: field 'i3': expected int, got str"
               freshet.dlq.reason_code       wrong_type | bad_json | ... (DecodeFailure)
               freshet.dlq.event_kind        ctr | transaction
               freshet.dlq.source_topic      clicks
               freshet.dlq.source_partition  3
               freshet.dlq.source_offset     18232
               freshet.dlq.source_timestamp_ms
               freshet.dlq.payload_bytes     original payload size (> len(value): cut)
               freshet.dlq.group             the consumer group that dead-lettered it ("" if none)

**Once per message across restarts.** A source reads ahead of the trainer, so it dead-letters
messages past the offsets a checkpoint keeps; a restart reads them again. Before it reads,
:func:`read_watermarks` reads the tail of the dead-letter topic and finds, per source
partition, the highest offset this group already dead-lettered; the source does not send those
again. Dead letters of one partition are produced in offset order, so the last one read is the
watermark; only the last ``lookback`` records of each dead-letter partition are read (a restart
re-reads at most what the source read ahead since the checkpoint, which is far fewer).

**Re-driving.** :func:`redrive` (``freshet replay --from-dlq TOPIC``) sends each dead letter's
key, payload and original headers back to its source topic and partition (or another topic),
once the cause is fixed, with ``freshet.dlq.redriven_from`` naming the dead letter. A payload
that was cut is skipped (and counted): it is not the message any more.

>>> headers = dead_letter_headers(
...     [("trace", b"t1"), ("freshet.dlq.reason", b"old")],
...     reason="ctr: bad", code="bad_json", kind="ctr", group="g",
...     topic="clicks", partition=0, offset=7, timestamp_ms=1, payload_bytes=3,
... )
>>> [k for k, _ in headers][:3]
['trace', 'freshet.dlq.reason', 'freshet.dlq.reason_code']
>>> letter = DeadLetter.from_headers(b"k", b"{x", headers)
>>> (letter.source_topic, letter.source_partition, letter.source_offset, letter.truncated)
('clicks', 0, 7, True)
>>> letter.original_headers
(('trace', b't1'),)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from pipeline.errors import ReplayError

__all__ = [
    "HEADER_PREFIX",
    "DeadLetter",
    "RedriveReport",
    "dead_letter_headers",
    "read_dead_letters",
    "read_watermarks",
    "redrive",
]

log = logging.getLogger(__name__)

HEADER_PREFIX: Final = "freshet.dlq."
REASON: Final = HEADER_PREFIX + "reason"
REASON_CODE: Final = HEADER_PREFIX + "reason_code"
EVENT_KIND: Final = HEADER_PREFIX + "event_kind"
SOURCE_TOPIC: Final = HEADER_PREFIX + "source_topic"
SOURCE_PARTITION: Final = HEADER_PREFIX + "source_partition"
SOURCE_OFFSET: Final = HEADER_PREFIX + "source_offset"
SOURCE_TIMESTAMP_MS: Final = HEADER_PREFIX + "source_timestamp_ms"
PAYLOAD_BYTES: Final = HEADER_PREFIX + "payload_bytes"
GROUP: Final = HEADER_PREFIX + "group"
REDRIVEN_FROM: Final = HEADER_PREFIX + "redriven_from"

DEFAULT_LOOKBACK: Final = 100_000
"""Dead letters read back per dead-letter partition when a source starts."""

Header = tuple[str, bytes]


def dead_letter_headers(
    original: Sequence[tuple[str, bytes | None]] | None,
    *,
    reason: str,
    code: str,
    kind: str,
    group: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    payload_bytes: int,
) -> list[Header]:
    """The original headers (without any ``freshet.dlq.*``), then the dead-letter ones."""
    kept = [(k, v or b"") for k, v in (original or ()) if not k.startswith(HEADER_PREFIX)]
    return [
        *kept,
        (REASON, reason.encode()),
        (REASON_CODE, code.encode()),
        (EVENT_KIND, kind.encode()),
        (SOURCE_TOPIC, topic.encode()),
        (SOURCE_PARTITION, str(partition).encode()),
        (SOURCE_OFFSET, str(offset).encode()),
        (SOURCE_TIMESTAMP_MS, str(timestamp_ms).encode()),
        (PAYLOAD_BYTES, str(payload_bytes).encode()),
        (GROUP, group.encode()),
    ]


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter read back: where it came from, why, and the original message."""

    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    reason_code: str
    group: str
    key: bytes | None
    value: bytes
    original_headers: tuple[Header, ...]
    payload_bytes: int

    @property
    def truncated(self) -> bool:
        """True when the payload was cut to fit the producer's request limit."""
        return self.payload_bytes > len(self.value)

    @classmethod
    def from_headers(
        cls, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
    ) -> DeadLetter:
        """Parse a dead letter; raises :class:`~pipeline.errors.ReplayError` if it is not one."""
        ours = {
            k: (v or b"").decode("utf-8", "replace")
            for k, v in headers
            if k.startswith(HEADER_PREFIX)
        }
        try:
            return cls(
                source_topic=ours[SOURCE_TOPIC],
                source_partition=int(ours[SOURCE_PARTITION]),
                source_offset=int(ours[SOURCE_OFFSET]),
                reason=ours.get(REASON, ""),
                reason_code=ours.get(REASON_CODE, ""),
                group=ours.get(GROUP, ""),
                key=key,
                value=value or b"",
                original_headers=tuple(
                    (k, v or b"") for k, v in headers if not k.startswith(HEADER_PREFIX)
                ),
                payload_bytes=int(ours.get(PAYLOAD_BYTES, len(value or b""))),
            )
        except (KeyError, ValueError) as err:
            raise ReplayError(
                f"not a Freshet dead letter (no valid {SOURCE_TOPIC}/{SOURCE_PARTITION}/"
                f"{SOURCE_OFFSET} headers): {err}"
            ) from err


def _tail(consumer: Any, topic: str, lookback: int | None, idle_s: float = 0.5) -> Iterator[Any]:
    """The records of ``topic`` (its last ``lookback`` per partition), oldest first per partition.

    Reads until a poll finds nothing for ``idle_s`` past the end offsets the broker reported
    (some brokers report a partition's end approximately).
    """
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        return
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    begins = consumer.beginning_offsets(tps)
    ends = consumer.end_offsets(tps)
    live = [tp for tp in tps if ends[tp] > begins[tp]]
    if not live:
        return
    consumer.assign(live)
    for tp in live:
        start = begins[tp] if lookback is None else max(begins[tp], ends[tp] - lookback)
        consumer.seek(tp, start)
    quiet_since: float | None = None
    while True:
        polled = consumer.poll(timeout_ms=100)
        if polled:
            quiet_since = None
            for tp in sorted(polled, key=lambda t: t.partition):
                yield from polled[tp]
            continue
        caught_up = all(consumer.position(tp) >= ends[tp] for tp in live)
        now = time.monotonic()
        quiet_since = quiet_since or now
        if caught_up and now - quiet_since >= idle_s:
            return


def _consumer(bootstrap: str | Sequence[str], client_config: Mapping[str, Any]) -> Any:
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        client_id="freshet-dlq-reader",
        **dict(client_config),
    )


def read_watermarks(
    bootstrap: str | Sequence[str],
    dead_letter_topics: Sequence[str],
    group: str,
    *,
    lookback: int = DEFAULT_LOOKBACK,
    client_config: Mapping[str, Any] | None = None,
) -> dict[tuple[str, int], int]:
    """``{(source topic, partition): highest offset group already dead-lettered}``.

    Reads the last ``lookback`` records of each dead-letter topic (see the module docstring);
    records that are not Freshet dead letters or were sent by another group are ignored.
    """
    marks: dict[tuple[str, int], int] = {}
    consumer = _consumer(bootstrap, client_config or {})
    try:
        for topic in dead_letter_topics:
            for record in _tail(consumer, topic, lookback):
                try:
                    letter = DeadLetter.from_headers(record.key, record.value, record.headers)
                except ReplayError:
                    continue
                if letter.group != group:
                    continue
                key = (letter.source_topic, letter.source_partition)
                marks[key] = max(marks.get(key, -1), letter.source_offset)
    finally:
        consumer.close()
    return marks


def read_dead_letters(
    bootstrap: str | Sequence[str],
    topic: str,
    *,
    client_config: Mapping[str, Any] | None = None,
) -> Iterator[DeadLetter | None]:
    """Every record of a dead-letter topic as a :class:`DeadLetter` (``None``: not one)."""
    consumer = _consumer(bootstrap, client_config or {})
    try:
        if not consumer.partitions_for_topic(topic):
            raise ReplayError(f"dead-letter topic {topic!r} does not exist")
        for record in _tail(consumer, topic, None):
            try:
                yield DeadLetter.from_headers(record.key, record.value, record.headers)
            except ReplayError:
                yield None
    finally:
        consumer.close()


@dataclass(frozen=True)
class RedriveReport:
    """What :func:`redrive` did."""

    sent: int
    skipped_truncated: int
    skipped_not_dead_letters: int


def redrive(
    bootstrap: str | Sequence[str],
    dead_letter_topic: str,
    *,
    topic: str | None = None,
    limit: int | None = None,
    client_config: Mapping[str, Any] | None = None,
) -> RedriveReport:
    """Send the dead letters of ``dead_letter_topic`` back to their source (or ``topic``).

    Key, payload and original headers are kept, plus ``freshet.dlq.redriven_from`` =
    ``dead-letter-topic:partition:offset`` of the source message. Each goes to its source
    partition when re-driven to its source topic. Raises
    :class:`~pipeline.errors.ReplayError` if the topic is missing or a send is not acknowledged.
    """
    security = dict(client_config or {})
    sent = truncated = foreign = 0
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, **security)
    except KafkaError as err:
        raise ReplayError(f"cannot connect to {bootstrap}: {err}") from err
    futures = []
    try:
        for letter in read_dead_letters(bootstrap, dead_letter_topic, client_config=security):
            if limit is not None and sent >= limit:
                break
            if letter is None:
                foreign += 1
                continue
            if letter.truncated:
                truncated += 1
                log.warning(
                    "not re-driving %s[%d]@%d: its payload was cut to %d of %d bytes",
                    letter.source_topic,
                    letter.source_partition,
                    letter.source_offset,
                    len(letter.value),
                    letter.payload_bytes,
                )
                continue
            target = topic or letter.source_topic
            origin = f"{letter.source_topic}:{letter.source_partition}:{letter.source_offset}"
            headers = [*letter.original_headers, (REDRIVEN_FROM, origin.encode())]
            partition = letter.source_partition if target == letter.source_topic else None
            futures.append(
                producer.send(
                    target,
                    key=letter.key,
                    value=letter.value,
                    headers=headers,
                    partition=partition,
                )
            )
            sent += 1
        producer.flush(timeout=60)
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            raise ReplayError(f"{len(failed)} of {sent} re-driven records were not acknowledged")
    finally:
        producer.close(timeout=10)
    return RedriveReport(sent, truncated, foreign)
