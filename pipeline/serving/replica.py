"""An inference replica: bootstrap from a snapshot, follow the delta topic, answer requests.

::

    start() ─► newest snapshot ─► ServingModel (own tiered store) ─► seek the delta partition
                                                                     to the manifest's offset
    delta thread:  poll ─► ChunkAssembler (sha256, HMAC) ─► ModelDelta
        version <= served             duplicate: dropped
        base == served                prepare (no lock) ─► commit under the write lock
        base != served / bad checksum rejected; resync from the next snapshot newer than the
                                      version served (keeps serving meanwhile, keeps retrying)
    predict():  read lock ─► featurizer (each event alone, state untouched) ─► model ─► sigmoid;
                names its version

The delta partition is read by manual assignment, not a consumer group, so every replica sees
every delta and a replica restarts from its snapshot's offset, not from a committed position.
A request runs under the read lock and a delta commits under the write lock, so each answer
comes from exactly one version; a resync builds the next generation's store beside the
current one and swaps it in under the write lock.

Freshness is measured here: when a version starts serving, now minus the trainer's step time
of that version (same wall clock when trainer and replica share a host; otherwise as good as
the clocks' sync).

>>> ReplicaSettings(topic="deltas", snapshot_dir="/s", data_dir="/d").poll_timeout_ms
50
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from pipeline.broker.embedded import ensure_topics
from pipeline.publishing.chunks import ChunkAssembler, Signer
from pipeline.publishing.delta import F32, ModelDelta
from pipeline.publishing.errors import (
    ChecksumError,
    DeltaFormatError,
    DeltaMismatchError,
    ReplicaStateError,
    ServingError,
    SignatureError,
    SnapshotError,
)
from pipeline.publishing.snapshot import SnapshotInfo, SnapshotStore
from pipeline.serving.metrics import ReplicaMetrics
from pipeline.serving.model import Blueprint, ServingModel
from pipeline.serving.rwlock import ReadWriteLock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaSettings:
    """Where a replica reads deltas and snapshots, where it keeps rows, how it polls."""

    topic: str
    snapshot_dir: str
    data_dir: str
    partition: int = 0
    poll_timeout_ms: int = 50
    resync_poll_s: float = 0.5
    maintain_every_s: float = 0.5
    cold_count_every_s: float = 30.0
    max_fetch_bytes: int = 32 << 20
    freshness_records: int = 100_000


class ReplicaState(StrEnum):
    """Life cycle: new -> bootstrapping -> serving (behind while waiting to resync) -> closed."""

    NEW = "new"
    BOOTSTRAPPING = "bootstrapping"
    SERVING = "serving"
    BEHIND = "behind"
    CLOSED = "closed"


class Rejection(StrEnum):
    """Why a delta was not applied (the ``reason`` label of the rejected counter)."""

    DUPLICATE = "duplicate"
    GAP = "gap"
    CHECKSUM = "checksum"
    SIGNATURE = "signature"
    FORMAT = "format"
    MISMATCH = "mismatch"
    APPLY = "apply"


@dataclass(frozen=True)
class Prediction:
    """Scores of one request and the one version that produced all of them."""

    version: int
    scores: F32


@dataclass(frozen=True)
class Freshness:
    """When a version started serving, and how long after its training step."""

    version: int
    seconds: float
    applied_at: datetime


class DeltaSource(Protocol):
    """The delta partition as a replica reads it: seek to an offset, poll message values."""

    def seek(self, offset: int) -> None:
        """Read from ``offset`` next."""
        ...

    def poll(self, timeout_ms: int) -> list[bytes]:
        """The next messages, in offset order (empty after ``timeout_ms`` without any)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class KafkaDeltaSource:
    """One partition by manual assignment (no consumer group, no committed offsets)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partition: int = 0,
        *,
        max_fetch_bytes: int = 32 << 20,
        wait_ms: int = 50,
        client_config: Mapping[str, Any] | None = None,
        client_id: str = "freshet-replica",
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partition = partition
        self.max_fetch_bytes = max_fetch_bytes
        self.wait_ms = wait_ms
        self.client_config = dict(client_config or {})
        self.client_id = client_id
        self._consumer: Any = None
        self._tp: Any = None

    def open(self) -> KafkaDeltaSource:
        """Create the topic if missing, connect, assign the partition."""
        ensure_topics(self.bootstrap, {self.topic: 1}, client_config=self.client_config)
        self._consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.wait_ms,
            max_partition_fetch_bytes=self.max_fetch_bytes,
            fetch_max_bytes=self.max_fetch_bytes,
            client_id=self.client_id,
            **self.client_config,
        )
        self._tp = TopicPartition(self.topic, self.partition)
        self._consumer.assign([self._tp])
        return self

    def seek(self, offset: int) -> None:
        """Read from ``offset`` next."""
        self._consumer.seek(self._tp, offset)

    def poll(self, timeout_ms: int) -> list[bytes]:
        """The next message values."""
        batch = self._consumer.poll(timeout_ms=timeout_ms)
        return [r.value or b"" for r in batch.get(self._tp, [])]

    def close(self) -> None:
        """Close the consumer (idempotent)."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()


class Replica:
    """Serves one model from snapshots and deltas (see the module docstring).

    ``source`` makes the delta source (default: :class:`KafkaDeltaSource` on ``bootstrap``;
    tests pass an in-memory one). Constructing does no I/O; :meth:`start` does.
    """

    def __init__(
        self,
        blueprint: Blueprint,
        settings: ReplicaSettings,
        bootstrap: str,
        *,
        name: str = "replica",
        signer: Signer | None = None,
        client_config: Mapping[str, Any] | None = None,
        source: Callable[[], DeltaSource] | None = None,
    ) -> None:
        self.blueprint = blueprint
        self.settings = settings
        self.bootstrap = bootstrap
        self.name = name
        self.signer = signer
        self.client_config = dict(client_config or {})
        self.metrics = ReplicaMetrics(name)
        self.snapshots = SnapshotStore(settings.snapshot_dir, signer)
        self.freshness: deque[Freshness] = deque(maxlen=settings.freshness_records)
        self.resyncs = 0
        self._lock = ReadWriteLock()
        self._model: ServingModel | None = None
        self._assembler = ChunkAssembler(signer)
        self._state = ReplicaState.NEW
        self._behind_until: int | None = None  # resync needed until this version is served
        self._generation = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: DeltaSource | None = None
        self._source_factory: Callable[[], DeltaSource] = source or self._kafka_source
        self._seek_to: int | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._waiting_for: str | None = None  # why no first snapshot is loaded yet
        self._unloadable: dict[str, str] = {}  # snapshot directory -> why it did not load
        self.bootstrap_retries = 0
        self._cold_counted_at = 0.0
        self.metrics.set_lag_source(self._lag)

    # -- life cycle ----------------------------------------------------------
    def start(self) -> Replica:
        """Start the delta thread (it bootstraps from the newest snapshot, retrying)."""
        if self._state is not ReplicaState.NEW:
            raise ReplicaStateError("start()", self._state.value)
        Path(self.settings.data_dir).mkdir(parents=True, exist_ok=True)
        self._state = ReplicaState.BOOTSTRAPPING
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-deltas", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the delta thread, close the consumer and the store (idempotent)."""
        if self._state is ReplicaState.CLOSED:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._close_consumer()
        with self._lock.write():
            model, self._model = self._model, None
            self._state = ReplicaState.CLOSED
        if model is not None:
            model.close()

    def __enter__(self) -> Replica:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until the first bootstrap is done (``False`` on timeout)."""
        return self._ready.wait(timeout_s)

    # -- introspection -------------------------------------------------------
    @property
    def state(self) -> ReplicaState:
        """Where the replica is in its life cycle."""
        return self._state

    @property
    def ready(self) -> bool:
        """True once bootstrapped (and not closed, not broken by a failed commit)."""
        model = self._model
        return model is not None and not model.broken and self._state is not ReplicaState.CLOSED

    @property
    def waiting_for(self) -> str | None:
        """Why the replica is not ready yet (no snapshot directory, no valid snapshot, ...)."""
        return None if self.ready else self._waiting_for

    @property
    def version(self) -> int | None:
        """The version served now."""
        model = self._model
        return None if model is None else model.version

    @property
    def step_time(self) -> datetime | None:
        """Trainer step time of the version served now."""
        model = self._model
        return None if model is None else model.step_time

    def _lag(self) -> float:
        step = self.step_time
        return float("nan") if step is None else time.time() - step.timestamp()

    def status(self) -> dict[str, Any]:
        """Version, step time, freshness lag, state: what ``GET /version`` answers."""
        step = self.step_time
        return {
            "replica": self.name,
            "version": self.version,
            "state": self._state.value,
            "step_time": None if step is None else step.isoformat(),
            "lag_seconds": None if step is None else round(self._lag(), 6),
            "resyncs": self.resyncs,
            "waiting_for": self.waiting_for,
            "bootstrap_retries": self.bootstrap_retries,
        }

    def _kafka_source(self) -> DeltaSource:
        return KafkaDeltaSource(
            self.bootstrap,
            self.settings.topic,
            self.settings.partition,
            max_fetch_bytes=self.settings.max_fetch_bytes,
            wait_ms=self.settings.poll_timeout_ms,
            client_config=self.client_config,
            client_id=f"freshet-{self.name}",
        ).open()

    # -- serving -------------------------------------------------------------
    def predict(self, events: Sequence[Any]) -> Prediction:
        """Score ``events`` with the version served now; raises ``ReplicaStateError`` if none."""
        with self._lock.read():
            model = self._model
            if model is None or model.broken or model.version is None:
                raise ReplicaStateError("predict()", self._state.value)
            return Prediction(model.version, model.predict(events))

    # -- the delta thread ----------------------------------------------------
    def _run(self) -> None:
        next_resync = 0.0
        next_maintain = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if self._model is None:
                    if not self._resync():
                        self._count_bootstrap_retry()
                        self._stop.wait(self.settings.resync_poll_s)
                        continue
                elif self._behind_until is not None and now >= next_resync:
                    next_resync = now + self.settings.resync_poll_s
                    self._resync()
                self._poll()
                if now >= next_maintain:
                    next_maintain = now + self.settings.maintain_every_s
                    self._maintain()
            except Exception as err:  # keep serving; the loop retries
                log.exception("%s: delta loop error: %s", self.name, err)
                self._error = err
                self._close_consumer()
                self._stop.wait(self.settings.resync_poll_s)

    def _count_bootstrap_retry(self) -> None:
        self.bootstrap_retries += 1
        self.metrics.bootstrap_retries.inc()
        if self.bootstrap_retries % 100 == 0:  # a reminder now and then, not one line a poll
            log.warning(
                "%s: still not ready after %d attempts: %s",
                self.name,
                self.bootstrap_retries,
                self._waiting_for,
            )

    def _wait_for(self, reason: str) -> None:
        """Record why no snapshot could be loaded; log it when the reason changes."""
        if self._model is None and reason != self._waiting_for:
            log.warning(
                "%s: not ready, retrying every %.2f s: %s",
                self.name,
                self.settings.resync_poll_s,
                reason,
            )
        self._waiting_for = reason

    def _resync(self) -> bool:
        """Load the newest snapshot newer than the served version that loads; True if one did.

        A snapshot that fails to load (a corrupt or missing file, a model that does not fit)
        is remembered and skipped from then on (a snapshot directory never changes once
        committed), and the next older one is tried: a damaged newest snapshot does not keep
        a replica from ever becoming ready while an older valid one exists.
        """
        served = self.version
        root = self.snapshots.root
        candidates = [
            info
            for info in self.snapshots.available()
            if (served is None or info.version > served) and info.path.name not in self._unloadable
        ]
        loaded: tuple[SnapshotInfo, ServingModel] | None = None
        for info in candidates:
            try:
                loaded = info, self._load(info)
                break
            except (SnapshotError, SignatureError, DeltaMismatchError) as err:
                self._unloadable[info.path.name] = str(err)
                log.warning(
                    "%s: cannot load snapshot v%d, trying an older one: %s",
                    self.name,
                    info.version,
                    err,
                )
        if loaded is None:
            if not root.is_dir():
                what = "does not exist" if not root.exists() else "is not a directory"
                self._wait_for(f"snapshot directory {str(root)!r} {what}")
            elif served is None and self._unloadable:
                bad = "; ".join(f"{n}: {e}" for n, e in sorted(self._unloadable.items()))
                self._wait_for(f"no loadable snapshot in {str(root)!r} ({bad})")
            elif served is None:
                self._wait_for(f"no valid snapshot in {str(root)!r} yet")
            return False
        info, model = loaded
        with self._lock.write():
            old, self._model = self._model, model
            self._behind_until = None
            self._state = ReplicaState.SERVING
            self.resyncs += 1
            self._waiting_for = None
            self.metrics.resyncs.inc()
            self.metrics.version.set(info.version)
        if old is not None:
            old.close()
        self._assembler.reset()
        self._seek_to = info.next_offset if info.next_offset is not None else 0
        self._record_freshness(info.version, info.step_time)
        self._ready.set()
        log.info("%s: serving snapshot v%d (%d rows)", self.name, info.version, info.rows)
        return True

    def _load(self, info: SnapshotInfo) -> ServingModel:
        self._generation += 1
        path = Path(self.settings.data_dir) / f"gen-{self._generation:06d}"
        model = ServingModel(self.blueprint, path).open()
        try:
            model.load_snapshot(self.snapshots, info)
        except BaseException:
            model.close()
            raise
        return model

    def _close_consumer(self) -> None:
        source, self._consumer = self._consumer, None
        if source is not None:
            try:
                source.close()
            except Exception:  # pragma: no cover - best effort on the way out
                log.debug("%s: delta source close failed", self.name, exc_info=True)

    def _poll(self) -> None:
        if self._consumer is None:
            self._consumer = self._source_factory()
            if self._seek_to is None:
                self._seek_to = 0
        if self._seek_to is not None:
            self._consumer.seek(self._seek_to)
            self._seek_to = None
        for message in self._consumer.poll(self.settings.poll_timeout_ms):
            self._handle(message)
            if self._seek_to is not None:  # a resync moved the position: drop the rest
                break

    def _reject(self, reason: Rejection, detail: str, behind_until: int | None) -> None:
        self.metrics.reject(reason.value)
        served = self.version or 0
        if behind_until is not None and behind_until > served:
            self._behind_until = max(self._behind_until or 0, behind_until)
            self._state = ReplicaState.BEHIND
        log.log(
            logging.DEBUG if reason is Rejection.DUPLICATE else logging.WARNING,
            "%s: rejected (%s) %s",
            self.name,
            reason.value,
            detail,
        )

    def _handle(self, message: bytes) -> None:
        served = self.version or 0
        try:
            done = self._assembler.add(message)
        except ChecksumError as err:
            self._reject(Rejection.CHECKSUM, str(err), served + 1)
            return
        except SignatureError as err:
            self._reject(Rejection.SIGNATURE, str(err), served + 1)
            return
        except DeltaFormatError as err:
            self._reject(Rejection.FORMAT, str(err), served + 1)
            return
        if done is None:
            return
        try:
            delta = ModelDelta.from_bytes(done.payload)
        except DeltaFormatError as err:
            self._reject(Rejection.FORMAT, str(err), served + 1)
            return
        h = done.header
        if (delta.version, delta.base) != (h.version, h.base):
            detail = f"header says v{h.version} (base {h.base}), payload {delta.describe()}"
            self._reject(Rejection.FORMAT, detail, served + 1)
            return
        self._apply(delta, served)

    def _apply(self, delta: ModelDelta, served: int) -> None:
        model = self._model
        assert model is not None
        if delta.version <= served:
            self._reject(Rejection.DUPLICATE, f"{delta.describe()}: serving v{served}", None)
            return
        if delta.base != served:
            detail = f"{delta.describe()} does not follow v{served}"
            self._reject(Rejection.GAP, detail, delta.version)
            return
        try:
            prepared = model.prepare(delta)
        except (DeltaMismatchError, ServingError) as err:
            self._reject(Rejection.MISMATCH, str(err), delta.version)
            return
        try:
            with self._lock.write():
                model.commit(prepared)
                if self._behind_until is not None and delta.version >= self._behind_until:
                    self._behind_until = None
                    self._state = ReplicaState.SERVING
                self.metrics.applied.inc()
                self.metrics.version.set(delta.version)
        except Exception as err:
            self._reject(Rejection.APPLY, f"{delta.describe()}: {err!r}", delta.version)
            raise
        self._record_freshness(delta.version, delta.step_time)

    def _record_freshness(self, version: int, step_time: datetime) -> None:
        now = datetime.now(UTC)
        seconds = (now - step_time).total_seconds()
        self.freshness.append(Freshness(version, seconds, now))
        self.metrics.freshness.observe(max(seconds, 0.0))

    def _maintain(self) -> None:
        with self._lock.read():
            model = self._model
            if model is None or model.broken:
                return
            model.maintain()
            now = time.monotonic()
            count_cold = now - self._cold_counted_at >= self.settings.cold_count_every_s
            if count_cold:
                self._cold_counted_at = now
            for table, (hot, cold) in model.rows_per_tier(count_cold).items():
                self.metrics.set_rows(table, "hot", hot)
                if cold is not None:
                    self.metrics.set_rows(table, "cold", cold)

    def freshness_seconds(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Freshness of every version applied from a delta or snapshot so far."""
        return np.array([f.seconds for f in self.freshness], dtype=np.float64)
