"""Consumer lag, measured rarely and off the training thread.

::

    every `every_s` (a daemon thread):
        positions()  ─► {(topic, partition): next offset to train}   (the source's snapshot)
        end offsets  ─► one ListOffsets request on a consumer of its own (no group, no fetch)
        lag = Σ max(0, end - position)  ─► report(lag)

The positions are what the trainer has *trained*, not what its consumer has fetched, so the
lag counts events polled ahead but not yet trained. Partitions the source has no position for
(not assigned to this rank) are not counted: each rank reports the lag of its own partitions.

On tansu (the embedded dev broker) a partition's end offset is reported as the first offset of
its last record batch + 1, so the lag is approximate there: it may read low by up to one batch.
On Apache Kafka it is exact up to the sampling delay.

>>> lag = ConsumerLag("127.0.0.1:9", lambda: {}, report=print)
>>> lag.every_s
10.0
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

Positions = Mapping[tuple[str, int], int]


class ConsumerLag:
    """Polls end offsets every ``every_s`` seconds and reports the summed lag.

    ``positions()`` returns the next offset to train per (topic, partition); ``report(lag)``
    receives each measurement (NaN when the broker could not be asked). ``client_config`` holds
    kafka-python security options (TLS / SASL). Constructing does no I/O; :meth:`start` does.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str] | tuple[str, ...],
        positions: Callable[[], Positions],
        report: Callable[[float], None],
        *,
        every_s: float = 10.0,
        client_config: Mapping[str, Any] | None = None,
        request_timeout_ms: int = 5000,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.positions = positions
        self.report = report
        self.every_s = every_s
        self.client_config = dict(client_config or {})
        self.request_timeout_ms = request_timeout_ms
        self._consumer: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> ConsumerLag:
        """Start the polling thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="consumer-lag", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and close the consumer (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.request_timeout_ms / 1000 + 5)
            self._thread = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def measure(self) -> float | None:
        """Ask the broker now: the summed lag, or ``None`` when there are no positions yet."""
        positions = dict(self.positions())
        if not positions:
            return None

        if self._consumer is None:
            servers = self.bootstrap_servers
            self._consumer = KafkaConsumer(
                bootstrap_servers=list(servers) if not isinstance(servers, str) else servers,
                enable_auto_commit=False,
                request_timeout_ms=max(self.request_timeout_ms, 1000),
                **self.client_config,
            )
        parts = [TopicPartition(t, p) for t, p in positions]
        ends: dict[Any, int] = self._consumer.end_offsets(parts)
        return float(
            sum(max(0, ends.get(tp, 0) - positions[(tp.topic, tp.partition)]) for tp in parts)
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                lag = self.measure()
            except Exception as err:  # any client failure: report NaN, say so once, go on
                if not self._failing:
                    log.warning("consumer lag: cannot read end offsets: %s", err)
                self._failing = True
                self.report(math.nan)
            else:
                if self._failing:
                    log.info("consumer lag: end offsets readable again")
                self._failing = False
                if lag is not None:
                    self.report(lag)
            self._stop.wait(self.every_s)
