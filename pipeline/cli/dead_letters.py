"""Why a run's events went to the dead-letter topic: its most common reasons, read back.

``freshet train`` uses it when every event of a run was dead-lettered (a stream that does not
match its schema): rather than exit 0 with ``"events": 0``, it reads the run's last dead
letters back from ``<topic>.dlq`` and prints the reasons (the ``freshet.dlq.reason`` header
each dead letter carries), most common first.

::

    <topic>.dlq   ... │ n dead letters of this run │      (read back: the last n, at most
                                                         ``READ_BACK``)
      headers: freshet.dlq.reason="clicks: missing field 'ts'", ...
                      └──────────────┬───────────┘
    top_reasons ──► [("clicks: missing field 'ts'", 812), ("clicks: wrong type ...", 13)]

>>> summarise([("a", 3), ("b", 1)], 4)
'3 x a; 1 x b'
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

__all__ = ["READ_BACK", "summarise", "top_reasons"]

READ_BACK: Final = 10_000
"""Most dead letters read back per partition."""
_SLACK: Final = 64
"""Read this many more than asked for (then keep the newest), past a short end offset."""


def top_reasons(
    bootstrap: str | Sequence[str],
    topic: str,
    count: int,
    client_config: Mapping[str, Any] | None = None,
    *,
    limit: int = 5,
    timeout_s: float = 10.0,
) -> list[tuple[str, int]]:
    """The ``limit`` commonest reasons among the last ``count`` dead letters of ``topic``.

    Returns ``[]`` when the topic cannot be read within ``timeout_s`` (the caller still
    reports the count).
    """
    reasons: collections.Counter[str] = collections.Counter()
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            request_timeout_ms=max(int(timeout_s * 1000) + 1000, 5000),
            **dict(client_config or {}),
        )
    except KafkaError:
        return []
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)  # tansu may report an end short of the last record
        for tp in tps:
            consumer.seek(tp, max(0, ends[tp] - min(count, READ_BACK) - _SLACK))
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=500)
            if not polled:
                break
            for batch in polled.values():
                records.extend(batch)
        for record in records[-count:]:
            headers = dict(record.headers or [])
            reason = headers.get("freshet.dlq.reason") or headers.get("reason") or b"(none)"
            reasons[reason.decode("utf-8", "replace")] += 1
    except KafkaError:
        pass
    finally:
        consumer.close()
    return reasons.most_common(limit)


def summarise(reasons: Sequence[tuple[str, int]], total: int) -> str:
    """One line: ``"812 x reason; 13 x other"`` (or a pointer when none could be read)."""
    if not reasons:
        return f"{total} dead letters (their reasons could not be read back)"
    return "; ".join(f"{n} x {reason}" for reason, n in reasons)
