"""Test doubles and harnesses for publishing and serving (used by tests and the benchmark).

* :class:`TrainingHarness`: a small trainer (store + model + featurizer + ``OnlineTrainer``)
  that publishes and records, per published version, the trainer's own scores of probe events.
* :class:`ReferenceLookups`: what ``StoreEmbeddingBag`` asks of a store, answered from the
  trainer's store with ``read_rows`` (nothing created, counted or pinned) and the initial value
  of absent rows: the trainer's predictions at a version without disturbing its state.
* :class:`FaultySink`: a :class:`~pipeline.publishing.publisher.DeltaSink` proxy that drops,
  duplicates,
  delays (reorders) and corrupts messages on their way to Kafka.

>>> import tempfile
>>> from pipeline.features.spec import CategoricalSpec, FeatureSpec
>>> from pipeline.training.models import ModelSpec
>>> fspec = FeatureSpec(sparse=(CategoricalSpec("ad", "ads", "ad"),))
>>> with tempfile.TemporaryDirectory() as d:
...     h = TrainingHarness(fspec, ModelSpec(kind="logistic"), d).open()
...     _ = h.train([{"ad": "x", "label": 1}] * 4)
...     scores = h.reference_scores([{"ad": "x", "label": 0}, {"ad": "y", "label": 0}])
...     h.close()
>>> bool(scores[0] > scores[1] > 0.5)  # "x" was seen with label 1, the bias learnt too
True
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from embedding_store import EmbeddingStore, StoreConfig, TableConfig, Unadmitted
from embedding_store.initializers import initial_values
from pipeline.events.kinds import event_model, to_record
from pipeline.features.featurizer import Featurizer
from pipeline.features.spec import (
    AggregateSpec,
    CategoricalSpec,
    DenseSpec,
    FeatureSpec,
    TimePartSpec,
)
from pipeline.publishing.chunks import highest_version
from pipeline.publishing.delta import F32, I64
from pipeline.publishing.publisher import DeltaSink, Publisher, PublishReport
from pipeline.training.models import BatchLayout, ModelSpec, build_model, model_tables
from pipeline.training.trainer import BatchResult, OnlineTrainer


class ReferenceLookups:
    """Read-only lookups on a trainer's store: stored rows, else the table's initial value."""

    def __init__(self, store: EmbeddingStore) -> None:
        self.store = store
        self._tables = {t.name: t for t in store.tables}

    def _lookup_unique(self, table: str, uniq: I64, pin: bool = False) -> F32:
        found, rows = self.store.read_rows(table, uniq)
        t = self._tables[table]
        out: F32 = np.ascontiguousarray(rows["emb"], dtype=np.float32).reshape(len(uniq), t.dim)
        missing = ~found
        if missing.any():
            if t.admit_after > 1 and t.unadmitted is Unadmitted.ZEROS:
                out[missing] = 0.0
            else:
                out[missing] = initial_values(uniq[missing], t.dim, t.seed, t.init_scale)
        return out

    def register(self, table: str, uniq_ids: I64, weight: torch.Tensor) -> None:
        """Refuse: a reference model never trains."""
        raise RuntimeError("reference lookups never train")


class TrainingHarness:
    """A trainer over its own store, with publishing and reference scoring.

    ``table_overrides`` are applied to every store table (e.g. ``expire_after_steps``).
    """

    def __init__(
        self,
        feature_spec: FeatureSpec,
        model_spec: ModelSpec,
        path: str | Path,
        *,
        num_shards: int = 2,
        table_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.feature_spec = feature_spec
        self.model_spec = model_spec
        self.path = Path(path)
        self.num_shards = num_shards
        self.table_overrides = dict(table_overrides or {})
        self.layout = BatchLayout.from_spec(feature_spec)
        self.recorded: dict[int, F32] = {}
        self.last_step_time = datetime.now(UTC)
        self._store: EmbeddingStore | None = None
        self._trainer: OnlineTrainer | None = None
        self._reference: torch.nn.Module | None = None

    def tables(self) -> tuple[TableConfig, ...]:
        """The store tables (with the overrides)."""
        return tuple(
            replace(t, **self.table_overrides) for t in model_tables(self.model_spec, self.layout)
        )

    def open(self) -> TrainingHarness:
        """Open the store, build model, featurizer, trainer and the reference model."""
        cfg = StoreConfig(str(self.path), self.tables(), num_shards=self.num_shards)
        store = EmbeddingStore(cfg).open()
        model = build_model(self.model_spec, self.layout, store)
        self._trainer = OnlineTrainer(
            model,
            store,
            Featurizer(self.feature_spec),
            dense_optimizer=self.model_spec.dense_optimizer.build(model.parameters()),
        )
        view = cast(EmbeddingStore, ReferenceLookups(store))
        self._reference = build_model(self.model_spec, self.layout, view)
        self._reference.eval()
        self._store = store
        return self

    def close(self) -> None:
        """Close the store."""
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def store(self) -> EmbeddingStore:
        """The trainer's store."""
        assert self._store is not None, "open() first"
        return self._store

    @property
    def trainer(self) -> OnlineTrainer:
        """The online trainer."""
        assert self._trainer is not None, "open() first"
        return self._trainer

    @property
    def model(self) -> torch.nn.Module:
        """The trained model."""
        return cast(torch.nn.Module, self.trainer.model)

    @property
    def featurizer(self) -> Featurizer:
        """The trainer's featurizer."""
        return self.trainer.featurizer

    def train(self, events: Sequence[Any]) -> BatchResult:
        """Train one batch; remembers when the step ended."""
        result = self.trainer.train_batch(events)
        self.last_step_time = datetime.now(UTC)
        return result

    def reference_scores(self, events: Sequence[Any]) -> F32:
        """The trainer's scores of ``events`` now, disturbing nothing (no row touched).

        Each event is featurised alone, as a replica serves it (a function of the version
        and the event, not of the other events of a request).
        """
        assert self._reference is not None
        self._reference.load_state_dict(self.model.state_dict())
        batch = self.featurizer.transform(events, update=False, alone=True)
        with torch.no_grad():
            logits = self._reference(batch)
        out: F32 = torch.sigmoid(logits).numpy().astype(np.float32)
        return out

    def publish(
        self, publisher: Publisher, probe: Sequence[Any] | None = None, snapshot: bool = False
    ) -> PublishReport | None:
        """Publish the current state; record the reference scores of ``probe`` for its version."""
        report = publisher.publish(
            self.store,
            self.model.state_dict(),
            self.featurizer.state_dict(),
            self.last_step_time,
            snapshot=snapshot,
        )
        if report is not None and probe is not None:
            self.recorded[report.version] = self.reference_scores(probe)
        return report


@dataclass
class FaultPlan:
    """Probabilities of each fault, per message, and the seed of their draws."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    corrupt: float = 0.0
    seed: int = 0
    counts: dict[str, int] = field(default_factory=dict)


class FaultySink:
    """Forwards messages to ``inner`` after dropping, duplicating, delaying or corrupting some.

    A delayed message is held back and sent after the next call's messages (a reordering).
    ``enabled`` switches the faults off (held messages are still flushed in order).
    """

    def __init__(self, inner: DeltaSink, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.enabled = True
        self._rng = random.Random(plan.seed)
        self._held: list[bytes] = []

    def _count(self, what: str) -> None:
        self.plan.counts[what] = self.plan.counts.get(what, 0) + 1

    def _corrupt(self, message: bytes) -> bytes:
        data = bytearray(message)
        pos = self._rng.randrange(len(data) // 2, len(data))  # usually in the payload
        data[pos] ^= 1 << self._rng.randrange(8)
        return bytes(data)

    def send(self, messages: Sequence[bytes]) -> int | None:
        """Send ``messages`` with faults, then anything held from before."""
        out: list[bytes] = []
        held_now: list[bytes] = []
        for m in messages:
            if not self.enabled:
                out.append(m)
                continue
            r = self._rng.random()
            p = self.plan
            if r < p.drop:
                self._count("drop")
            elif r < p.drop + p.duplicate:
                self._count("duplicate")
                out += [m, m]
            elif r < p.drop + p.duplicate + p.delay:
                self._count("delay")
                held_now.append(m)
            elif r < p.drop + p.duplicate + p.delay + p.corrupt:
                self._count("corrupt")
                out.append(self._corrupt(m))
            else:
                out.append(m)
        out += self._held
        self._held = held_now
        return self.inner.send(out) if out else None

    def last_version(self) -> int | None:
        """The inner sink's."""
        return self.inner.last_version()

    def close(self) -> None:
        """Close the inner sink."""
        self.inner.close()


class MemoryTopic:
    """An in-memory delta partition: the publisher's sink and the replicas' sources.

    >>> topic = MemoryTopic()
    >>> topic.send([b"a", b"b"]), topic.source().poll(0)
    (1, [b'a', b'b'])
    """

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self._lock = threading.Lock()

    def send(self, messages: Sequence[bytes]) -> int | None:
        """Append ``messages``; the offset of the last one."""
        with self._lock:
            self.messages.extend(messages)
            return len(self.messages) - 1 if self.messages else None

    def last_version(self) -> int | None:
        """The highest version on the topic."""
        return highest_version(self.messages)

    def close(self) -> None:
        """Nothing to release."""

    def source(self) -> MemorySource:
        """A reader positioned at offset 0."""
        return MemorySource(self)


class MemorySource:
    """Reads a :class:`MemoryTopic` from a position (a ``DeltaSource`` of the replica)."""

    def __init__(self, topic: MemoryTopic) -> None:
        self.topic = topic
        self.position = 0

    def seek(self, offset: int) -> None:
        """Read from ``offset`` next."""
        self.position = offset

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Every message from the position on (waits ``timeout_ms`` when there is none)."""
        out = self.topic.messages[self.position :]
        if not out:
            time.sleep(timeout_ms / 1000)
        self.position += len(out)
        return out

    def close(self) -> None:
        """Nothing to release."""


def probe_scores_equal(
    recorded: Mapping[int, F32], version: int, scores: Sequence[float], tol: float = 1e-6
) -> bool:
    """Whether ``scores`` equal the trainer's recorded scores of ``version`` within ``tol``."""
    want = recorded.get(version)
    if want is None or len(want) != len(scores):
        return False
    return bool(np.max(np.abs(np.asarray(scores, np.float64) - want)) <= tol)


def transaction_specs(embedding_dim: int = 4) -> tuple[FeatureSpec, ModelSpec]:
    """A small DeepFM over transactions: ids, hour block, one streaming aggregate, dense columns.

    >>> fspec, mspec = transaction_specs()
    >>> fspec.tables, mspec.kind
    (('tx',), 'deepfm')
    """
    fspec = FeatureSpec(
        label="label",
        time_field="timestamp",
        sparse=(
            CategoricalSpec("customer", "tx", "customer_id", "int"),
            CategoricalSpec("terminal", "tx", "terminal_id", "int"),
            TimePartSpec("hour", "tx", "hour_of_day", width=3),
        ),
        aggregates=(AggregateSpec("cust_7d", ("customer_id",), "amount", window=7),),
        dense=(
            DenseSpec("amount", field="amount", log1p=True, standardize=True),
            DenseSpec("cust_mean", aggregate="cust_7d", stat="mean", log1p=True, standardize=True),
            DenseSpec("cust_n", aggregate="cust_7d", stat="count", log1p=True),
        ),
    )
    mspec = ModelSpec(kind="deepfm", embedding_dim=embedding_dim, hidden=(16,), bottom=(8,))
    return fspec, mspec


def events_of(kind: str, records: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Validate records into the kind's pydantic events (what the Kafka source hands over)."""
    model = event_model(kind)
    return [model.from_record(r) for r in records]


def predict_body(events: Sequence[Any]) -> bytes:
    """The JSON body of a ``/predict`` request for pydantic events."""
    return json.dumps({"events": [to_record(e) for e in events]}).encode()


def http_call(
    url: str, body: bytes | None = None, timeout_s: float = 10.0, method: str | None = None
) -> tuple[int, Any]:
    """``(status, decoded JSON or text)`` of a GET (or POST when ``body`` is given)."""
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            status, raw = resp.status, resp.read()
            ctype = resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        status, raw, ctype = err.code, err.read(), err.headers.get("Content-Type", "")
    if "json" in ctype:
        return status, json.loads(raw)
    return status, raw.decode()


def wait_for_version(url: str, version: int, timeout_s: float = 30.0) -> int | None:
    """Poll ``GET /version`` until the replica serves ``version`` or later; the last seen."""
    deadline = time.monotonic() + timeout_s
    seen: int | None = None
    while time.monotonic() < deadline:
        status, obj = http_call(url + "/version")
        seen = obj.get("version") if status == 200 else None
        if seen is not None and seen >= version:
            return int(seen)
        time.sleep(0.02)
    return seen
