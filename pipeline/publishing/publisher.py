"""Publish model versions: deltas to a Kafka topic, full snapshots to a directory.

Called by the trainer between two steps (on the training thread, so the dense parameters,
the featurizer state and the store are all at the same step)::

    trainer step ─► publisher.due()? ─► publish(store, model.state_dict(), featurizer.state_dict())
                                          │ inside store.step_boundary():
                                          │   rows written since the last published store version
                                          │   (+ tombstones), every row too if a snapshot is due
                                          ▼
               delta v (base v-1) ─► chunks ─► Kafka topic, partition 0, acks=all, in order
               snapshot v ─► <snapshot_dir>/v...  (manifest names the offset after delta v)

Version numbers are the publisher's own, strictly increasing across restarts: ``start()``
reads the newest snapshot and the tail of the topic and continues after the larger, believing
only records that verify (HMAC when a key is set, sha256, a delta bundle that names the same
version; :mod:`pipeline.publishing.discovery`): a forged record cannot take the numbering. The first
publish of a run writes a snapshot and sends a *reset* marker (``base=None``): replicas that
served the previous run resync from that snapshot. A version number is never reused, even
when sending failed; the next publish then writes a snapshot.

Delta size grows with the rows written since the last publish (the store keeps a write log),
not with the table; featurizer state travels as patches (:mod:`pipeline.publishing.array_patch`).

>>> PublisherSettings(topic="deltas").interval_s
1.0
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from embedding_store import EmbeddingStore
from pipeline.broker.embedded import ensure_topics
from pipeline.publishing.array_patch import AnyArray, ArrayUpdate, diff
from pipeline.publishing.chunks import Signer, encode_chunks
from pipeline.publishing.delta import ModelDelta, TableDelta, state_arrays
from pipeline.publishing.discovery import VersionDiscovery, discover_last_version
from pipeline.publishing.errors import PublishError
from pipeline.publishing.snapshot import SnapshotStore, SnapshotWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublisherSettings:
    """How often to publish and snapshot, and how big a Kafka message may be."""

    topic: str
    partition: int = 0
    interval_s: float = 1.0
    snapshot_every: int = 30
    snapshot_interval_s: float | None = 300.0
    retain_snapshots: int = 3
    max_message_bytes: int = 900_000
    export_chunk_rows: int = 65536
    send_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.interval_s < 0 or self.snapshot_every < 1 or self.retain_snapshots < 1:
            raise ValueError("interval_s >= 0, snapshot_every >= 1, retain_snapshots >= 1")


@dataclass(frozen=True)
class PublishReport:
    """What one publish did: the version, its size, and whether a snapshot was written."""

    version: int
    base: int | None
    store_version: int
    rows: int
    tombstones: int
    bytes: int
    messages: int
    seconds: float
    snapshot: bool
    snapshot_rows: int
    step_time: datetime
    next_offset: int | None


class DeltaSink(Protocol):
    """Where the chunks of a version go, in order; returns the offset of the last one sent."""

    def send(self, messages: Sequence[bytes]) -> int | None:
        """Send every message in order and wait for the acks; ``None``: offsets unknown."""
        ...

    def last_version(self) -> int | None:
        """The highest version already in the destination (``None``: none or unknown)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class KafkaDeltaSink:
    """A kafka-python producer to one partition, ``acks=all``, one request in flight."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        partition: int = 0,
        max_message_bytes: int = 900_000,
        client_config: Mapping[str, Any] | None = None,
        timeout_s: float = 30.0,
        signer: Signer | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partition = partition
        self.max_message_bytes = max_message_bytes
        self.client_config = dict(client_config or {})
        self.timeout_s = timeout_s
        self.signer = signer
        self.discovery: VersionDiscovery | None = None
        self._producer: Any = None

    def start(self) -> KafkaDeltaSink:
        """Connect the producer (creating the topic with one partition if it is missing)."""
        ensure_topics(self.bootstrap, {self.topic: 1}, client_config=self.client_config)
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                linger_ms=0,
                retries=5,
                max_in_flight_requests_per_connection=1,
                max_request_size=self.max_message_bytes + (64 << 10),
                client_id="freshet-publisher",
                **self.client_config,
            )
        except (KafkaError, OSError) as err:
            raise PublishError(f"cannot connect a producer to {self.bootstrap}: {err!r}") from err
        return self

    def send(self, messages: Sequence[bytes]) -> int | None:
        """Send in order to the partition; the offset of the last message."""
        if self._producer is None:
            raise PublishError("the Kafka sink is not started")
        try:
            futures = [
                self._producer.send(
                    self.topic, value=m, key=b"freshet-delta", partition=self.partition
                )
                for m in messages
            ]
            self._producer.flush(timeout=self.timeout_s)
            offsets = [f.get(timeout=self.timeout_s).offset for f in futures]
        except KafkaError as err:
            raise PublishError(
                f"producing {len(messages)} chunks to {self.topic}[{self.partition}]: {err!r}"
            ) from err
        return max(offsets) if offsets else None

    def last_version(self) -> int | None:
        """The highest verified version at the end of the partition (see :attr:`discovery`)."""
        self.discovery = last_published_version(
            self.bootstrap, self.topic, self.partition, self.client_config, signer=self.signer
        )
        return self.discovery.version

    def close(self) -> None:
        """Flush and close the producer (idempotent)."""
        if self._producer is not None:
            self._producer.close(timeout=self.timeout_s)
            self._producer = None


def last_published_version(
    bootstrap: str,
    topic: str,
    partition: int = 0,
    client_config: Mapping[str, Any] | None = None,
    window: int = 256,
    *,
    signer: Signer | None = None,
    max_window: int = 1 << 16,
) -> VersionDiscovery:
    """The highest verified version among the last messages of the delta partition.

    Starts with the last ``window`` messages and looks four times further back while that
    could change the answer (nothing believed yet, or a higher version seen only in part),
    up to ``max_window`` messages. Records that do not verify are skipped, logged with their
    offset and counted (:mod:`pipeline.publishing.discovery`).
    """
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=32 << 20,
            fetch_max_bytes=64 << 20,
            **dict(client_config or {}),
        )
    except (KafkaError, OSError) as err:
        raise PublishError(f"cannot read the tail of {topic}: {err!r}") from err
    where = f"{topic}[{partition}]"
    try:
        if partition not in (consumer.partitions_for_topic(topic) or set()):
            return VersionDiscovery(None)
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        while True:
            start = max(0, end - window)
            found = discover_last_version(_read_range(consumer, tp, start), signer, where=where)
            if start == 0 or window >= max_window or not found.look_further():
                return found
            window *= 4
    finally:
        consumer.close()


def _read_range(consumer: Any, tp: Any, start: int) -> list[tuple[int, bytes]]:
    """``(offset, value)`` of the records from ``start`` on, until two polls come back empty.

    Not cut at the end offset read before: a broker may report it behind the last batch.
    """
    consumer.seek(tp, start)
    out: list[tuple[int, bytes]] = []
    empty = 0
    while empty < 2:
        batch = consumer.poll(timeout_ms=200)
        records = [r for recs in batch.values() for r in recs]
        empty = 0 if records else empty + 1
        out += [(r.offset, r.value or b"") for r in records]
    return out


class Publisher:
    """Publishes one model version per call (see the module docstring).

    ``sink`` replaces the Kafka producer (tests inject faults through it); ``signer`` signs
    deltas and snapshot manifests. Constructing does no I/O; :meth:`start` does.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        snapshot_dir: str | Path,
        *,
        settings: PublisherSettings | None = None,
        signer: Signer | None = None,
        client_config: Mapping[str, Any] | None = None,
        sink: DeltaSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bootstrap = bootstrap
        self.settings = settings if settings is not None else PublisherSettings(topic=topic)
        if self.settings.topic != topic:
            raise ValueError(f"topic {topic!r} differs from settings.topic {self.settings.topic!r}")
        self.topic = topic
        self.snapshots = SnapshotStore(snapshot_dir, signer, self.settings.retain_snapshots)
        self.signer = signer
        self.client_config = dict(client_config or {})
        self.clock = clock
        self._sink = sink
        self._own_sink = sink is None
        self._started = False
        self._next_version = 1
        self._version: int | None = None  # last version sent
        self._store_base: int | None = None  # store version that version holds
        self._last_state: dict[str, AnyArray] = {}
        self._since_snapshot = 0
        self._last_snapshot_at = 0.0
        self._last_publish_at: float | None = None
        self._snapshot_next = True
        self.discovery: VersionDiscovery | None = None

    # -- life cycle ----------------------------------------------------------
    def start(self) -> Publisher:
        """Find the last version published before (snapshots, topic tail); connect Kafka."""
        if self._started:
            return self
        if self._sink is None:
            self._sink = KafkaDeltaSink(
                self.bootstrap,
                self.topic,
                partition=self.settings.partition,
                max_message_bytes=self.settings.max_message_bytes,
                client_config=self.client_config,
                timeout_s=self.settings.send_timeout_s,
                signer=self.signer,
            ).start()
        last = max(self.snapshots.max_version() or 0, self._sink.last_version() or 0)
        self.discovery = getattr(self._sink, "discovery", None)
        self._next_version = last + 1
        self._started = True
        skipped = self.discovery.skipped if self.discovery is not None else {}
        log.info(
            "publisher on %s continues after version %d%s",
            self.topic,
            last,
            f" (records skipped as unverified: {skipped})" if skipped else "",
        )
        return self

    def close(self) -> None:
        """Close the Kafka producer (idempotent)."""
        if self._sink is not None and self._own_sink:
            self._sink.close()
            self._sink = None
        self._started = False

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- state ---------------------------------------------------------------
    @property
    def skipped_records(self) -> dict[str, int]:
        """Delta-topic records :meth:`start` did not believe, by reason (see discovery)."""
        return dict(self.discovery.skipped) if self.discovery is not None else {}

    @property
    def version(self) -> int | None:
        """The last version sent (``None`` before the first publish)."""
        return self._version

    @property
    def store_base(self) -> int | None:
        """The store version the last version holds (rows written after it go in the next)."""
        return self._store_base

    def due(self) -> bool:
        """Whether ``interval_s`` has passed since the last publish (always before the first)."""
        if self._last_publish_at is None:
            return True
        return self.clock() - self._last_publish_at >= self.settings.interval_s

    def snapshot_due(self) -> bool:
        """Whether the next publish writes a snapshot (always the first of a run)."""
        return self._version is None or self._snapshot_due(self.clock())

    def _snapshot_due(self, now: float) -> bool:
        s = self.settings
        if self._snapshot_next or self._since_snapshot + 1 >= s.snapshot_every:
            return True
        return s.snapshot_interval_s is not None and now - self._last_snapshot_at >= (
            s.snapshot_interval_s
        )

    # -- publishing ----------------------------------------------------------
    def publish(
        self,
        store: EmbeddingStore,
        dense_state: Mapping[str, torch.Tensor | AnyArray],
        featurizer_state: Mapping[str, AnyArray],
        step_time: datetime | None = None,
        *,
        snapshot: bool = False,
    ) -> PublishReport | None:
        """Publish the version the store, ``dense_state`` and ``featurizer_state`` make now.

        Call between training steps. ``step_time`` is when the step that produced this state
        ended (default: now); replicas measure freshness from it. Returns ``None`` when the store
        has not advanced since the last publish (and no ``snapshot`` is forced).
        """
        if not self._started or self._sink is None:
            raise PublishError("publish() before start() (or after close())")
        t0 = time.perf_counter()
        now = self.clock()
        created = datetime.now(UTC)
        step_time = step_time if step_time is not None else created
        if step_time.tzinfo is None:
            raise PublishError("step_time must be timezone-aware")
        state = state_arrays(dense_state, featurizer_state)
        first = self._version is None
        want_snapshot = first or snapshot or self._snapshot_due(now)
        version = self._next_version
        writer: SnapshotWriter | None = None
        tables: list[TableDelta] = []
        try:
            with store.step_boundary() as store_version:
                if not first and store_version == self._store_base and not snapshot:
                    self._last_publish_at = now
                    return None
                if not first:
                    tables = self._changed_rows(store, self._store_base or 0)
                if want_snapshot:
                    writer = self._export(store, version, store_version, step_time, state)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        self._next_version = version + 1  # never reused, even if sending fails
        if first:
            delta = ModelDelta(version, None, created, step_time, store_version)
        else:
            updates: dict[str, ArrayUpdate] = {
                name: diff(self._last_state.get(name), arr) for name, arr in state.items()
            }
            delta = ModelDelta(
                version, self._version, created, step_time, store_version, tuple(tables), updates
            )
        payload = delta.to_bytes()
        messages = encode_chunks(
            payload,
            version=version,
            base=delta.base,
            created_at=created,
            max_message_bytes=self.settings.max_message_bytes,
            signer=self.signer,
        )
        try:
            last_offset = self._sink.send(messages)
        except BaseException:
            if writer is not None:
                writer.abort()
            self._snapshot_next = True  # replicas may hold a version we cannot build on
            raise
        next_offset = None if last_offset is None else last_offset + 1
        snapshot_rows = 0
        if writer is not None:
            info = writer.commit(self.topic, self.settings.partition, next_offset)
            snapshot_rows = info.rows
            self._since_snapshot = 0
            self._last_snapshot_at = now
            self._snapshot_next = False
        else:
            self._since_snapshot += 1
        self._version, self._store_base, self._last_state = version, store_version, state
        self._last_publish_at = now
        report = PublishReport(
            version=version,
            base=delta.base,
            store_version=store_version,
            rows=delta.rows,
            tombstones=delta.tombstones,
            bytes=len(payload),
            messages=len(messages),
            seconds=time.perf_counter() - t0,
            snapshot=writer is not None,
            snapshot_rows=snapshot_rows,
            step_time=step_time,
            next_offset=next_offset,
        )
        log.debug("published %s", report)
        return report

    @staticmethod
    def _changed_rows(store: EmbeddingStore, base: int) -> list[TableDelta]:
        out: list[TableDelta] = []
        for t in store.tables:
            ids, rows = store.written_since(t.name, base)
            # tombstones recorded at the base version itself may postdate that publish;
            # sending them again is harmless (deletes come before upserts)
            tomb = store.tombstones_since(t.name, base - 1)
            emb = np.ascontiguousarray(rows["emb"], dtype=np.float32).reshape(len(ids), t.dim)
            out.append(TableDelta(t.name, ids, emb, tomb))
        return out

    def _export(
        self,
        store: EmbeddingStore,
        version: int,
        store_version: int,
        step_time: datetime,
        state: Mapping[str, AnyArray],
    ) -> SnapshotWriter:
        writer = self.snapshots.begin(version, store_version, step_time)
        try:
            for t in store.tables:
                writer.add_table(t.name, t.dim)
                for ids, rows in store.export_rows(t.name, self.settings.export_chunk_rows):
                    emb = np.ascontiguousarray(rows["emb"], dtype=np.float32)
                    writer.add_rows(t.name, ids, emb.reshape(len(ids), t.dim))
            writer.set_state(state)
        except BaseException:
            writer.abort()
            raise
        return writer
