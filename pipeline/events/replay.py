"""Produce a stream of messages into a Kafka topic, at full speed or at a target rate.

A message is raw bytes, a JSON-ready mapping (encoded compactly), or a ``(key, value)`` pair of
either. :func:`keyed_by_index` keys a stream with each message's position (``b"0"``, ``b"1"``,
...), :func:`keyed_by_field` with a field of each record (e.g. ``customer_id``, so one customer's
events stay in order on one partition).

>>> [k for k, _ in keyed_by_index([b"a", b"b"], start=10)]
[b'10', b'11']
>>> next(keyed_by_field([{"customer_id": 596, "amount": 1.0}], "customer_id"))[0]
b'596'
>>> encode_value({"label": 1})
b'{"label":1}'
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from tqdm import tqdm

from pipeline.broker.security import security_options
from pipeline.errors import ConfigError, ReplayError

__all__ = ["Message", "encode_value", "keyed_by_field", "keyed_by_index", "replay"]

log = logging.getLogger(__name__)

Value = bytes | Mapping[str, Any]
Message = Value | tuple[bytes | None, Value]
"""What :func:`replay` sends: a value, or a ``(key, value)`` pair."""


def encode_value(value: Value) -> bytes:
    """Bytes pass through; a mapping becomes compact JSON."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return json.dumps(value, separators=(",", ":")).encode()


def keyed_by_index(messages: Iterable[Value], start: int = 0) -> Iterator[tuple[bytes, Value]]:
    """Pair each message with its position as an ASCII key."""
    for index, value in enumerate(messages, start=start):
        yield str(index).encode(), value


def keyed_by_field(
    records: Iterable[Mapping[str, Any]], field: str
) -> Iterator[tuple[bytes | None, Value]]:
    """Pair each record with ``str(record[field])`` as its key (``None`` when absent or null)."""
    for record in records:
        value = record.get(field)
        yield (None if value is None else str(value).encode()), record


def replay(
    bootstrap: str,
    topic: str,
    messages: Iterable[Message],
    *,
    rate: float | None = None,
    progress: bool = True,
    limit: int | None = None,
    total: int | None = None,
    client_config: Mapping[str, Any] | None = None,
    linger_ms: int = 50,
    batch_size: int = 1024 * 1024,
) -> int:
    """Send ``messages`` to ``topic`` and return how many were sent (all acknowledged).

    ``rate`` caps the throughput in messages per second (``None``: as fast as possible);
    ``limit`` stops after that many; ``total`` sizes the progress bar. The producer waits for
    ``acks=all`` and lingers ``linger_ms`` to fill batches; order is kept per partition.
    ``client_config`` passes security options (``security_protocol``, ``sasl_*``, ``ssl_*``).
    Raises :class:`~pipeline.errors.ReplayError` if any message is not acknowledged.
    """
    if rate is not None and rate <= 0:
        raise ConfigError("rate", f"must be positive, got {rate}")
    if limit is not None and limit < 0:
        raise ConfigError("limit", f"must be >= 0, got {limit}")

    security = security_options(client_config or {})
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="freshet-replay",
            acks="all",
            linger_ms=linger_ms,
            batch_size=batch_size,
            **security,
        )
    except (KafkaError, OSError) as err:
        raise ReplayError(f"cannot connect a producer to {bootstrap}: {err!r}") from err
    failures: list[BaseException] = []
    count = 0
    started = time.monotonic()
    sizes = [x for x in (limit, total) if x is not None]
    bar_total = min(sizes) if sizes else None
    bar = tqdm(total=bar_total, unit="ev", disable=not progress, mininterval=0.5, desc=topic)
    try:
        for message in messages:
            if limit is not None and count >= limit:
                break
            if failures:
                break
            key, value = message if isinstance(message, tuple) else (None, message)
            if rate is not None:
                ahead = started + count / rate - time.monotonic()
                if ahead > 0.001:
                    time.sleep(ahead)
            future = producer.send(topic, value=encode_value(value), key=key)
            future.add_errback(failures.append)
            count += 1
            if count % 256 == 0:
                bar.update(256)
        producer.flush()
        bar.update(count % 256)
    except KafkaError as err:
        raise ReplayError(f"producing to {topic!r} at {bootstrap} failed: {err!r}") from err
    finally:
        bar.close()
        producer.close(timeout=10)
    if failures:
        raise ReplayError(
            f"{len(failures)} of {count} messages to {topic!r} were not acknowledged; "
            f"first: {failures[0]!r}"
        )
    elapsed = time.monotonic() - started
    log.info("replayed %d messages to %s in %.2f s", count, topic, elapsed)
    return count
