"""Read events from Kafka in closed mini-batches, ahead of training, with resumable offsets.

A background thread polls a kafka-python ``KafkaConsumer`` and fills a bounded buffer of
closed batches, so the next batches (and the feature ids in them) are known before the trainer
asks: the store can prefetch their cold rows. Malformed messages go to a dead-letter topic and
training goes on.

A dead letter carries the original key, payload and headers, with the reason (at most 1,000
characters) and the source position in ``freshet.dlq.*`` headers
(:mod:`pipeline.source.dead_letters`). Each bad message is dead-lettered once, across restarts
too: at start the source reads where its group's dead letters end per partition and does not
send those again, though it reads past them again. A payload that would take it past
``DEAD_LETTER_MAX_BYTES`` is cut to fit the producer's 1 MiB request limit; its
``freshet.dlq.payload_bytes`` header keeps the original size, and the source position says
where to read it whole. One oversized bad message must not stop the source.

::

    Kafka partitions ──► polling thread ──decode──► open batch ──(max_events | max_wait_ms)──┐
                              │ bad message                                                    │
                              ▼                                                                ▼
                    dead-letter topic          buffer [b7 b8 b9 ...] (queue_batches at most)
                  (reason + source position        │ peek_ahead(k), on_batch_ready(cb)
                     in headers)                   ▼
                                   trainer: next_batch() ── train ── mark_trained(batch)
                                                                        │
                                          snapshot() = offsets after the last trained batch
                                          ──► checkpoint ──► restart: seek(offsets), start()

Positions are ``{(topic, partition): next offset to read}``; the checkpoint holds them, and
``commit()`` copies them to the broker-side group only so that lag can be monitored.

Assignment (:class:`Assignment`):

- ``group``: ``subscribe()`` in the consumer group; checkpoint offsets given to :meth:`seek` are
  applied in the ``on_partitions_assigned`` callback, partitions without one start at the group's
  committed offset (or ``auto_offset_reset``). A partition that comes back after a rebalance
  resumes where this source stopped reading it. Batches already buffered for a partition that is
  revoked are still handed out, so use ``manual`` when several trainers must never overlap.
- ``manual``: ``assign()`` the given partitions (all partitions of the topics when none are
  given) and ``seek()`` each to its checkpoint offset; no group join, no rebalance.

>>> cfg = SourceConfig(bootstrap_servers="127.0.0.1:9092", topics=("clicks",), kind="ctr")
>>> source = KafkaSource(cfg)            # keeps its arguments; start() connects
>>> source.seek({("clicks", 0): 1200})
>>> source.snapshot()
{('clicks', 0): 1200}
>>> source.state.value
'new'
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from pipeline.broker.embedded import ensure_topics
from pipeline.broker.security import security_options
from pipeline.errors import (
    BrokerError,
    ConfigError,
    DecodeError,
    PipelineError,
    SourceError,
    SourceStateError,
)
from pipeline.events.fast_decode import FastDecoder
from pipeline.events.kinds import EVENT_KINDS, Event
from pipeline.events.schema import EventSchema
from pipeline.source import dead_letters
from pipeline.source import records as kafka_records
from pipeline.source.batch_buffer import BatchBuffer
from pipeline.source.merge import PartitionMerge
from pipeline.source.reachability import wait_for_broker

if TYPE_CHECKING:
    from pipeline.events.columnar import ColumnarEvents

__all__ = [
    "Assignment",
    "KafkaSource",
    "Offsets",
    "PartitionKey",
    "SourceBatch",
    "SourceConfig",
    "SourceState",
    "dead_letter_topic_for",
    "security_options",
]

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]
"""``(topic, partition)``."""
Offsets = dict[PartitionKey, int]
"""Next offset to read per partition: what a checkpoint stores and ``KafkaSource.seek`` takes."""

DEAD_LETTER_SUFFIX: Final = ".dlq"
DEAD_LETTER_MAX_BYTES: Final = 1_000_000
"""Key, payload and headers of a dead letter, at most: under the producer's and a default
broker's 1 MiB limit, whatever the original message's size."""
_MAX_REASON_CHARS: Final = 1_000


def dead_letter_topic_for(topic: str, configured: str | None = None) -> str:
    """Name of the dead-letter topic for ``topic``: ``configured`` or ``<topic>.dlq``.

    >>> dead_letter_topic_for("clicks")
    'clicks.dlq'
    """
    return configured if configured is not None else topic + DEAD_LETTER_SUFFIX


class Assignment(StrEnum):
    """How the source gets its partitions (see the module docstring)."""

    GROUP = "group"
    MANUAL = "manual"


class SourceState(StrEnum):
    """Life cycle of a :class:`KafkaSource`: new -> running -> closed."""

    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(frozen=True)
class SourceConfig:
    """What a :class:`KafkaSource` needs; frozen, checked on construction.

    ======================  =====================================================================
    bootstrap_servers       ``"host:port"`` or several
    topics                  topics to read, all of one event ``kind`` (``"ctr"``, ...)
    group_id                consumer group (needed for ``group`` assignment and ``commit()``)
    assignment, partitions  ``group`` (subscribe) or ``manual`` (these partitions, or all)
    max_events              a batch closes at this many events ...
    max_wait_ms             ... or this long after its first event
    queue_batches           closed batches buffered ahead of the trainer
    dead_letter_topic       where bad messages go (default ``<topic>.dlq``), created at start
                            unless ``create_dead_letter_topics`` is false
    dead_letter_lookback    dead letters read back per DLQ partition at start, to send none
                            twice across a restart (0: do not read back)
    broker_wait_s           how long start() waits for a bootstrap server to accept a
                            connection before it raises ``BrokerUnreachableError`` (0: no check)
    session_timeout_ms      group session (tansu makes a join wait about half of it)
    fetch_max_wait_ms, ...  kafka-python fetch tuning (tansu needs fetch_max_wait_ms >= 1)
    fast_record_reader      read fetched record batches with :mod:`pipeline.source.records`
                            (same records, about half the CPU); false: kafka-python's reader
    schema                  the declared schema of ``kind`` (:mod:`pipeline.events.schema`);
                            none: ``kind`` is a built-in kind
    hash_fields             string fields a source process hashes for the featurizer (the
                            fields it hashes as ``str`` categories); the thread source ignores it
    client_config           security options only (``security_protocol``, ``sasl_*``,
                            ``ssl_*``), passed to every kafka-python client the source creates
    ======================  =====================================================================

    >>> SourceConfig(bootstrap_servers="k:9092", topics=("t",), max_events=0)
    Traceback (most recent call last):
    ...
    pipeline.errors.ConfigError: max_events: must be at least 1, got 0
    """

    bootstrap_servers: str | tuple[str, ...]
    topics: tuple[str, ...]
    kind: str = "ctr"
    group_id: str | None = "freshet"
    assignment: Assignment = Assignment.GROUP
    partitions: tuple[PartitionKey, ...] | None = None
    max_events: int = 4096
    max_wait_ms: int = 200
    queue_batches: int = 8
    dead_letter_topic: str | None = None
    create_dead_letter_topics: bool = True
    dead_letter_lookback: int = dead_letters.DEFAULT_LOOKBACK
    broker_wait_s: float = 30.0
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = 10_000
    max_poll_interval_ms: int = 300_000
    fetch_max_wait_ms: int = 100
    max_partition_fetch_bytes: int = 8 * 1024 * 1024
    client_id: str = "freshet-source"
    fast_record_reader: bool = True
    hash_fields: tuple[str, ...] = ()
    schema: EventSchema | None = None
    # repr=False: it may hold a SASL password, and configs get logged
    client_config: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )

    def __post_init__(self) -> None:
        if not self.topics:
            raise ConfigError("topics", "give at least one topic")
        if self.schema is None and self.kind not in EVENT_KINDS:
            raise ConfigError(
                "kind", f"unknown event kind {self.kind!r}; known: {list(EVENT_KINDS)}"
            )
        for name in (
            "max_events",
            "max_wait_ms",
            "queue_batches",
            "fetch_max_wait_ms",
            "max_partition_fetch_bytes",
        ):
            value = getattr(self, name)
            if value < 1:  # tansu refuses fetch_max_wait_ms=0
                raise ConfigError(name, f"must be at least 1, got {value}")
        if self.dead_letter_lookback < 0:
            raise ConfigError(
                "dead_letter_lookback", f"must be >= 0, got {self.dead_letter_lookback}"
            )
        if self.session_timeout_ms < 3:
            raise ConfigError("session_timeout_ms", f"too small: {self.session_timeout_ms}")
        if self.assignment is Assignment.GROUP and self.group_id is None:
            raise ConfigError("group_id", "group assignment needs a group_id")
        if self.assignment is Assignment.GROUP and self.partitions is not None:
            raise ConfigError("partitions", "explicit partitions need assignment='manual'")
        if self.partitions is not None:
            unknown = sorted({t for t, _ in self.partitions} - set(self.topics))
            if unknown:
                raise ConfigError("partitions", f"topics {unknown} are not in topics")
        security_options(self.client_config)


@dataclass(frozen=True, eq=False)
class SourceBatch:
    """One closed mini-batch of decoded events, in partition offset order (compared by identity).

    ``offsets`` holds, for every partition read since the previous batch, the next offset after
    this batch's last message (dead-lettered messages included), so a checkpoint taken after
    training this batch resumes right after it. ``positions[i]`` is the ``(topic, partition,
    offset)`` of ``events[i]``, ``timestamps_ms[i]`` its Kafka record timestamp.

    >>> from pipeline.events.kinds import TransactionEvent
    >>> ev = TransactionEvent.from_record({"transaction_id": 1, "customer_id": 2,
    ...     "terminal_id": 3, "amount": 4.5, "label": 0, "timestamp": "2018-04-01T00:00:00Z"})
    >>> batch = SourceBatch(seq=0, events=(ev,), keys=(b"1",), positions=(("tx", 0, 41),),
    ...                     timestamps_ms=(0,), offsets={("tx", 0): 42})
    >>> len(batch), batch.offsets
    (1, {('tx', 0): 42})
    """

    seq: int
    events: tuple[Event, ...] | ColumnarEvents  # columns: from a ProcessSource
    keys: tuple[bytes | None, ...]
    positions: tuple[tuple[str, int, int], ...]
    timestamps_ms: tuple[int, ...]
    offsets: Mapping[PartitionKey, int]
    dead_letters: int = 0

    def __len__(self) -> int:
        return len(self.events)


class _BatchBuilder:
    """The open batch the polling thread fills."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.keys: list[bytes | None] = []
        self.positions: list[tuple[str, int, int]] = []
        self.timestamps_ms: list[int] = []
        self.offsets: Offsets = {}
        self.dead_letters = 0
        self.opened_at = 0.0

    def add(self, event: Event, key: bytes | None, position: tuple[str, int, int], ts: int) -> None:
        if not self.events:
            self.opened_at = time.monotonic()
        self.events.append(event)
        self.keys.append(key)
        self.positions.append(position)
        self.timestamps_ms.append(ts)

    def close(self, seq: int) -> SourceBatch:
        return SourceBatch(
            seq=seq,
            events=tuple(self.events),
            keys=tuple(self.keys),
            positions=tuple(self.positions),
            timestamps_ms=tuple(self.timestamps_ms),
            offsets=dict(self.offsets),
            dead_letters=self.dead_letters,
        )


_IDLE_POLL_MS: Final = 100
"""Longest single poll, so commands and ``close()`` are served promptly."""
_MERGE_POLL_MS: Final = 5
"""Longest poll while records wait in the lanes for a partition still being fetched."""


class KafkaSource:
    """Consume one event kind from Kafka topics as closed batches, ahead of the trainer.

    Life cycle: construct (no I/O) -> optional :meth:`seek` -> :meth:`start` -> loop on
    :meth:`next_batch`, train, :meth:`mark_trained` -> at a checkpoint store :meth:`snapshot` and
    call :meth:`commit` -> :meth:`close`. Also a context manager (``start`` / ``close``).

    Delivery: within a run every message is handed out once, in offset order per partition.
    Across a restart from ``snapshot()``, messages after the snapshot are read again and the
    ones before it are not. Dead letters are flushed to the broker before the batch whose offsets
    pass them is handed out; after a restart, bad messages the group already dead-lettered are
    not sent again (see :mod:`pipeline.source.dead_letters`).
    """

    def __init__(
        self, config: SourceConfig, *, decoder: Callable[[bytes], Any] | None = None
    ) -> None:
        # a decoder returns an object with the event's fields as attributes or raises
        # ValueError; by default FastDecoder (msgspec Structs, the pydantic model deciding
        # every message it does not accept, so dead letters carry the model's reasons)
        self.config = config
        self._decoder: Callable[[bytes], Any] = decoder or FastDecoder(config.kind, config.schema)
        self._state = SourceState.NEW
        self._seek: Offsets = {}
        self._trained: Offsets = {}
        self._fetched: Offsets = {}
        self._unsettled: set[PartitionKey] = set()
        self._reassigned: set[PartitionKey] = set()
        self._merge: PartitionMerge[tuple[Event | None, Any]] = PartitionMerge(
            stall_ms=config.max_wait_ms
        )
        self._lock = threading.Lock()
        self._batches: BatchBuffer[SourceBatch] = BatchBuffer(self._lock)
        self._ready = self._batches.ready
        self._commands: queue.SimpleQueue[tuple[Offsets, Future[None]]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._next_seq = 0
        self._handed_seq = -1
        self._trained_seq = -1
        self._dead_letters = 0
        self._dead_letters_skipped = 0
        self._dead_lettered: Offsets = {}  # highest offset already dead-lettered, per partition
        self._events_read = 0
        self._dlq_futures: list[Any] = []

    # ----------------------------------------------------------------- state and positions

    @property
    def state(self) -> SourceState:
        """Where the source is in its life cycle."""
        return self._state

    @property
    def dead_letters(self) -> int:
        """Messages sent to the dead-letter topic so far."""
        return self._dead_letters

    @property
    def dead_letters_skipped(self) -> int:
        """Bad messages read again after a restart and not sent again (already dead letters)."""
        return self._dead_letters_skipped

    @property
    def events_read(self) -> int:
        """Valid events put into batches so far."""
        return self._events_read

    def seek(self, offsets: Mapping[PartitionKey, int]) -> None:
        """Resume from a checkpoint's offsets; call before :meth:`start`.

        Partitions not in ``offsets`` start at the group's committed offset, or at
        ``auto_offset_reset`` when there is none.
        """
        if self._state is not SourceState.NEW:
            raise SourceStateError("seek()", self._state.value)
        for (topic, partition), offset in offsets.items():
            if topic not in self.config.topics:
                raise ConfigError("seek", f"topic {topic!r} is not one of {self.config.topics}")
            if partition < 0 or offset < 0:
                raise ConfigError("seek", f"bad position {offset} in {topic}[{partition}]")
        self._seek = dict(offsets)
        with self._lock:
            self._trained = dict(offsets)

    def snapshot(self) -> Offsets:
        """Next offset per partition after the last batch passed to :meth:`mark_trained`.

        Starts as the offsets given to :meth:`seek`, plus where each partition assigned since
        started (its group commit or ``auto_offset_reset``). Offsets only grow, so snapshots of
        several sources on one topic merge by taking the largest offset per partition.
        """
        with self._lock:
            return dict(self._trained)

    def mark_trained(self, batch: SourceBatch) -> None:
        """Record that ``batch`` is trained, so :meth:`snapshot` moves past it.

        Batches must be marked in the order :meth:`next_batch` handed them out.
        """
        with self._lock:
            if batch.seq != self._trained_seq + 1 or batch.seq > self._handed_seq:
                raise SourceError(
                    f"mark_trained(batch {batch.seq}): expected batch {self._trained_seq + 1}; "
                    "mark batches once each, in the order next_batch() returned them"
                )
            self._trained_seq = batch.seq
            for key, offset in batch.offsets.items():
                self._trained[key] = max(offset, self._trained.get(key, 0))

    # ----------------------------------------------------------------------- life cycle

    def start(self) -> Self:
        """Connect, ensure the dead-letter topics, assign or subscribe, start the polling thread."""
        if self._state is not SourceState.NEW:
            raise SourceStateError("start()", self._state.value)
        cfg = self.config
        security = security_options(cfg.client_config)
        try:  # one clear line, not a minute of client retries then a traceback
            wait_for_broker(cfg.bootstrap_servers, cfg.broker_wait_s, "source.bootstrap_servers")
        except PipelineError:
            self._state = SourceState.CLOSED
            raise
        if cfg.create_dead_letter_topics:
            dlqs = {dead_letter_topic_for(t, cfg.dead_letter_topic): 1 for t in cfg.topics}
            try:
                ensure_topics(_bootstrap_str(cfg.bootstrap_servers), dlqs, client_config=security)
            except BrokerError as err:  # e.g. no permission: the topic may exist all the same
                log.warning("could not ensure dead-letter topics %s: %s", sorted(dlqs), err)
        self._read_dead_letter_watermarks(security)
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=cfg.bootstrap_servers,
                client_id=cfg.client_id + "-dlq",
                acks="all",
                linger_ms=5,
                max_request_size=1 << 20,  # DEAD_LETTER_MAX_BYTES fits, with the overhead
                **security,
            )
            self._consumer = KafkaConsumer(
                bootstrap_servers=cfg.bootstrap_servers,
                client_id=cfg.client_id,
                group_id=cfg.group_id,
                enable_auto_commit=False,
                auto_offset_reset=cfg.auto_offset_reset,
                session_timeout_ms=cfg.session_timeout_ms,
                heartbeat_interval_ms=max(1, cfg.session_timeout_ms // 3),
                max_poll_interval_ms=cfg.max_poll_interval_ms,
                fetch_max_wait_ms=cfg.fetch_max_wait_ms,
                max_poll_records=cfg.max_events,
                max_partition_fetch_bytes=cfg.max_partition_fetch_bytes,
                fetch_max_bytes=max(cfg.max_partition_fetch_bytes, 50 * 1024 * 1024),
                **security,
            )
            if cfg.fast_record_reader:
                kafka_records.install(self._consumer)
            if cfg.assignment is Assignment.GROUP:
                self._consumer.subscribe(list(cfg.topics), listener=_Rebalance(self))
            else:
                self._assign_manually()
        except Exception as err:
            self._close_clients()
            self._state = SourceState.CLOSED
            raise SourceError(f"cannot start the source on {cfg.topics}: {err!r}") from err
        self._state = SourceState.RUNNING
        self._thread = threading.Thread(
            target=self._run, name=f"kafka-source-{','.join(cfg.topics)}", daemon=True
        )
        self._thread.start()
        return self

    open = start

    def _assign_manually(self) -> None:
        wanted = self.config.partitions
        if wanted is None:
            found: list[PartitionKey] = []
            for topic in self.config.topics:
                parts = self._consumer.partitions_for_topic(topic)
                if not parts:
                    raise SourceError(f"topic {topic!r} does not exist (or has no partitions)")
                found.extend((topic, p) for p in sorted(parts))
            wanted = tuple(found)
        assigned = [TopicPartition(t, p) for t, p in wanted]
        self._consumer.assign(assigned)
        for (topic, partition), offset in self._seek.items():
            if (topic, partition) in wanted:
                self._consumer.seek(TopicPartition(topic, partition), offset)
        self._unsettled.update(wanted)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the polling thread and close the clients; buffered batches are dropped."""
        if self._state is SourceState.CLOSED:
            return
        was_running = self._state is SourceState.RUNNING
        self._state = SourceState.CLOSED
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        if was_running and self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("source polling thread did not stop within %.1f s", timeout_s)
        else:
            self._close_clients()
        self._fail_commands(SourceStateError("commit()", "closed"))

    def __enter__(self) -> Self:
        if self._state is SourceState.NEW:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------- trainer side

    def next_batch(self, timeout_s: float = 1.0) -> SourceBatch | None:
        """Take the next closed batch, or ``None`` if none is ready within ``timeout_s`` seconds.

        Raises :class:`~pipeline.errors.SourceError` once the buffer is empty if the polling
        thread failed.
        """
        self._check_running("next_batch()")
        return self._batches.take(timeout_s, self._check_can_deliver, self._handed)

    def _check_can_deliver(self) -> None:
        """Raise if no more batches can come (lock held, buffer empty)."""
        if self._error is not None:
            raise SourceError(f"the polling thread failed: {self._error!r}") from self._error
        if self._state is not SourceState.RUNNING:
            raise SourceStateError("next_batch()", self._state.value)

    def _handed(self, batch: SourceBatch) -> None:
        self._handed_seq = batch.seq

    def peek_ahead(self, k: int) -> list[SourceBatch]:
        """Return the next ``k`` buffered batches (fewer if fewer are ready), leaving them there."""
        self._check_running("peek_ahead()")
        return self._batches.peek(k)

    def on_batch_ready(self, callback: Callable[[SourceBatch], None]) -> None:
        """Call ``callback(batch)`` from the polling thread as each batch enters the buffer.

        Keep it short (e.g. hand the batch's ids to the store's prefetch); exceptions are
        logged and ignored.
        """
        self._batches.on_ready(callback)

    def buffered(self) -> int:
        """Count the closed batches waiting in the buffer."""
        return len(self._batches)

    def commit(self, offsets: Mapping[PartitionKey, int], timeout_s: float = 10.0) -> None:
        """Commit ``offsets`` to the consumer group (after a checkpoint; for lag monitoring).

        Runs on the polling thread (the consumer is not thread-safe) and waits for it. In group
        assignment, partitions not currently assigned are skipped.
        """
        self._check_running("commit()")
        if self._thread is None or not self._thread.is_alive():
            raise SourceError(f"commit(): the polling thread is not running ({self._error!r})")
        if self.config.group_id is None:
            raise SourceError("commit() needs a group_id")
        done: Future[None] = Future()
        self._commands.put((dict(offsets), done))
        try:
            done.result(timeout=timeout_s)
        except TimeoutError as err:
            raise SourceError(f"commit of {dict(offsets)} timed out after {timeout_s} s") from err

    def _check_running(self, what: str) -> None:
        if self._state is not SourceState.RUNNING:
            raise SourceStateError(what, self._state.value)

    # ------------------------------------------------------------------ polling thread

    def _run(self) -> None:
        cfg = self.config
        builder = _BatchBuilder()
        pending: SourceBatch | None = None
        try:
            while not self._stop.is_set():
                self._serve_commands()
                if pending is not None:
                    if self._offer(pending):
                        pending = None
                    else:
                        self._poll_while_full()
                        continue
                self._pace_fetching()
                if builder.events:
                    waited_ms = (time.monotonic() - builder.opened_at) * 1000
                    timeout_ms = int(max(0.0, min(_IDLE_POLL_MS, cfg.max_wait_ms - waited_ms)))
                else:
                    timeout_ms = _IDLE_POLL_MS
                if len(self._merge):  # merge what is here before waiting for more
                    timeout_ms = min(timeout_ms, _MERGE_POLL_MS)
                records = self._consumer.poll(timeout_ms=timeout_ms, max_records=cfg.max_events)
                now = time.monotonic()
                self._apply_assignment(now)
                for partition_records in records.values():
                    for record in partition_records:
                        self._ingest(record, now)
                if self._unsettled:
                    self._settle_start_positions()
                self._note_highwaters()
                self._fill(builder)
                expired = builder.events and (
                    (time.monotonic() - builder.opened_at) * 1000 >= cfg.max_wait_ms
                )
                if len(builder.events) >= cfg.max_events or expired:
                    self._flush_dead_letters()
                    pending = builder.close(self._next_seq)
                    self._next_seq += 1
                    self._events_read += len(pending)
                    builder = _BatchBuilder()
        except BaseException as err:  # surfaced to the trainer by next_batch()
            log.exception("source polling thread failed")
            self._error = err
        finally:
            with self._ready:
                self._ready.notify_all()
            self._fail_commands(SourceError("the source stopped before the commit ran"))
            self._close_clients()

    def _settle_start_positions(self) -> None:
        """Put where each newly assigned partition starts into the snapshot.

        So a checkpoint names every partition, even one nothing was trained from yet; else a
        restart would start that one at the group's commit, not where this run started it.
        """
        for key in sorted(self._unsettled):
            position = self._consumer.position(TopicPartition(*key))
            with self._lock:
                self._trained.setdefault(key, position)
            self._merge.start_at(key, position)
        self._unsettled.clear()

    def _ingest(self, record: Any, now: float) -> None:
        """Decode a fetched record into its partition's lane (bad ones: dead letter now)."""
        key = (record.topic, record.partition)
        if key in self._unsettled:  # its first record: the partition started here
            with self._lock:
                self._trained.setdefault(key, record.offset)
            self._unsettled.discard(key)
        try:
            event: Event | None = self._decoder(record.value or b"")
        except ValueError as err:  # DecodeError, or whatever a custom decoder raises
            if record.offset > self._dead_lettered.get(key, -1):
                self._dead_letter(record, err)
            else:  # read again after a restart: its dead letter is on the topic already
                self._dead_letters_skipped += 1
            event = None
        self._merge.push(key, record.offset, record.timestamp, (event, record), now)

    def _fill(self, builder: _BatchBuilder) -> None:
        """Move records from the lanes into the open batch, in the merge's order."""
        now = time.monotonic()
        while len(builder.events) < self.config.max_events:
            nxt = self._merge.pop(now)
            if nxt is None:
                return
            (event, record), key, offset = nxt
            self._fetched[key] = offset + 1
            builder.offsets[key] = offset + 1
            if event is None:
                builder.dead_letters += 1
            else:
                builder.add(event, record.key, (key[0], key[1], offset), record.timestamp)

    def _apply_assignment(self, now: float) -> None:
        """Follow the consumer's assignment; lanes of re-sought partitions start over."""
        assigned = self._consumer.assignment()
        if len(assigned) != len(self._merge.partitions) or self._reassigned:
            self._merge.assign([(tp.topic, tp.partition) for tp in assigned], now)
        while self._reassigned:
            key = self._reassigned.pop()
            self._merge.reset(key, self._fetched.get(key, self._seek.get(key)), now)

    def _note_highwaters(self) -> None:
        for topic, partition in self._merge.partitions:
            if not self._merge.buffered((topic, partition)):
                tp = TopicPartition(topic, partition)
                self._merge.note_highwater((topic, partition), self._consumer.highwater(tp))

    def _pace_fetching(self) -> None:
        """Fetch only partitions with room in their lane (at most ``max_events`` each)."""
        full, room = [], []
        for topic, partition in self._merge.partitions:
            tp = TopicPartition(topic, partition)
            if self._merge.buffered((topic, partition)) >= self.config.max_events:
                full.append(tp)
            else:
                room.append(tp)
        paused = self._consumer.paused()
        resume = [tp for tp in paused if tp not in full]
        if resume:
            self._consumer.resume(*resume)
        pause = [tp for tp in full if tp not in paused]
        if pause:
            self._consumer.pause(*pause)
        _unpark(self._consumer)

    def _dead_letter(self, record: Any, err: ValueError) -> None:
        code = err.failure.value if isinstance(err, DecodeError) else "invalid_value"
        reason = str(err)
        if len(reason) > _MAX_REASON_CHARS:
            reason = reason[: _MAX_REASON_CHARS - 3] + "..."
        value: bytes = record.value or b""
        headers = dead_letters.dead_letter_headers(
            record.headers,
            reason=reason,
            code=code,
            kind=self.config.kind,
            group=self.config.group_id or "",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            payload_bytes=len(value),
        )
        room = DEAD_LETTER_MAX_BYTES - len(record.key or b"")
        room -= sum(len(k) + len(v) for k, v in headers)
        if len(value) > room:  # else the producer raises, and every restart meets it again
            value = value[: max(0, room)]
        topic = dead_letter_topic_for(record.topic, self.config.dead_letter_topic)
        future = self._producer.send(topic, value=value, key=record.key, headers=headers)
        self._dlq_futures.append(future)
        self._dead_letters += 1
        log.debug("dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, err)

    def _read_dead_letter_watermarks(self, security: Mapping[str, Any]) -> None:
        """Where this group's dead letters end per partition (sent once across restarts)."""
        cfg = self.config
        if cfg.dead_letter_lookback == 0:
            return
        topics = sorted({dead_letter_topic_for(t, cfg.dead_letter_topic) for t in cfg.topics})
        try:
            marks = dead_letters.read_watermarks(
                cfg.bootstrap_servers,
                topics,
                cfg.group_id or "",
                lookback=cfg.dead_letter_lookback,
                client_config=security,
            )
        except Exception as err:  # a read-only DLQ must not stop training: warn, resend
            log.warning("could not read the dead-letter topics %s back: %s", topics, err)
            return
        self._dead_lettered = {k: v for k, v in marks.items() if k[0] in cfg.topics}
        if self._dead_lettered:
            log.info("dead letters already sent, up to offsets %s", self._dead_lettered)

    def _flush_dead_letters(self) -> None:
        if not self._dlq_futures:
            return
        self._producer.flush(timeout=30)
        failed = [f for f in self._dlq_futures if not f.succeeded()]
        self._dlq_futures = []
        if failed:
            first = failed[0].exception if failed[0].is_done else "not sent within 30 s"
            raise SourceError(f"{len(failed)} dead letters could not be produced: {first!r}")

    def _offer(self, batch: SourceBatch) -> bool:
        return self._batches.put(batch, self.config.queue_batches, self._stop)

    def _poll_while_full(self) -> None:
        """Keep the group session alive while the buffer is full, reading nothing new."""
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.pause(*assigned)
        records = self._consumer.poll(timeout_ms=0)
        for tp, partition_records in records.items():  # from partitions assigned just now
            if partition_records:
                self._consumer.seek(
                    TopicPartition(tp.topic, tp.partition), partition_records[0].offset
                )

    def _serve_commands(self) -> None:
        while True:
            try:
                offsets, done = self._commands.get_nowait()
            except queue.Empty:
                return
            if not done.set_running_or_notify_cancel():
                continue
            try:
                self._commit_now(offsets)
            except Exception as err:
                done.set_exception(SourceError(f"commit of {offsets} failed: {err!r}"))
            else:
                done.set_result(None)

    def _commit_now(self, offsets: Offsets) -> None:
        if self.config.assignment is Assignment.GROUP:
            assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
            offsets = {k: v for k, v in offsets.items() if k in assigned}
        if offsets:
            self._consumer.commit(
                {TopicPartition(t, p): _offset_and_metadata(o) for (t, p), o in offsets.items()}
            )

    def _fail_commands(self, err: Exception) -> None:
        while True:
            try:
                _, done = self._commands.get_nowait()
            except queue.Empty:
                return
            if done.set_running_or_notify_cancel():
                done.set_exception(err)

    def _close_clients(self) -> None:
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False)
            except Exception:
                log.exception("closing the consumer failed")
        if producer is not None:
            try:
                producer.close(timeout=10)
            except Exception:
                log.exception("closing the dead-letter producer failed")

    def _on_assigned(self, partitions: list[Any]) -> None:
        """Group callback: seek each new partition to where this source left it, if it did.

        kafka-python 3 calls it on its I/O thread while the polling thread waits in ``poll()``;
        nothing here may block (no ``position()``), see :meth:`_settle_start_positions`.
        """
        for tp in partitions:
            key = (tp.topic, tp.partition)
            offset = self._fetched.get(key, self._seek.get(key))
            if offset is not None:
                self._consumer.seek(tp, offset)
            self._unsettled.add(key)
            self._reassigned.add(key)  # what its lane holds was read before this seek
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def __repr__(self) -> str:
        return f"KafkaSource({','.join(self.config.topics)}, {self._state.value})"


def _unpark(consumer: Any) -> None:
    """Let kafka-python hand back the records it parked for partitions resumed just now.

    Its fetcher (3.0) restores parked records only while its in-line slot is ``None``, but an
    exhausted record set stays in that slot, so a partition paused with records half read
    would be neither fetched again nor returned: the source would wait on it for ever.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    slot = getattr(fetcher, "_next_partition_records", None)
    if slot is not None and not slot:  # exhausted: free the slot, as a fresh fetcher has it
        fetcher._next_partition_records = None  # type: ignore[union-attr]


def _offset_and_metadata(offset: int) -> Any:
    if len(OffsetAndMetadata._fields) == 3:  # kafka-python >= 2.1: leader_epoch
        return OffsetAndMetadata(offset, "", -1)
    return OffsetAndMetadata(offset, "")  # pragma: no cover


def _bootstrap_str(servers: str | tuple[str, ...]) -> str:
    return servers if isinstance(servers, str) else ",".join(servers)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python wants a ``ConsumerRebalanceListener`` instance; forward to the source."""

    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: list[Any]) -> None:
        if revoked:
            log.info("revoked %s", sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: list[Any]) -> None:
        self._source._on_assigned(assigned)
