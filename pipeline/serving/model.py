"""One generation of a replica's model: its own tiered store, the model over it, the featurizer.

A replica keeps rows in a read-only :class:`~embedding_store.EmbeddingStore` with a DRAM
budget (rows beyond it live in RocksDB), so it can serve a model larger than its memory. Rows
carry only embeddings (an SGD layout: no optimizer state); lookups never pin and nothing is
trained. An id the model has no row for reads as the trainer's first lookup of it would
(its deterministic initial value, or zeros for an unadmitted id where the trainer's table
says so) and is not stored: requests never grow the replica's store
(:meth:`embedding_store.EmbeddingStore.lookup_stored`).

A score is a function of (model version, event) alone: each event of a request is
featurised against the version's featurizer state as if it came alone, so batching by
clients or proxies cannot move a score. Per kind of feature:

=========================  ==================================================================
feature                    what a served event reads
=========================  ==================================================================
categorical, multi-hot,    the event's own fields (hashed ids)
cross, bucketized,
time part
numeric field              the event's field, standardised with the version's running moments
                           (not updated by requests)
window aggregate           the version's per-entity rings only; earlier events of the same
                           request are *not* added (training adds them, since there they are
                           the past; at serving they are other clients' requests)
=========================  ==================================================================

A delta is applied in two halves::

    prepare(delta)  no lock, nothing changes:  check tables and dims, build row blocks,
                    patch the dense and featurizer arrays into new ones, load them into a new
                    Featurizer (so a bad state fails here, not halfway through a commit)
    commit(prep)    under the replica's write lock: delete tombstones, import upserts,
                    load dense parameters, swap the featurizer, set the version

>>> import tempfile
>>> from pipeline.features.spec import CategoricalSpec, FeatureSpec
>>> from pipeline.training.models import ModelSpec
>>> bp = Blueprint(FeatureSpec(sparse=(CategoricalSpec("ad", "ads", "ad"),)),
...                ModelSpec(kind="logistic"))
>>> with tempfile.TemporaryDirectory() as d:
...     m = ServingModel(bp, d).open()
...     scores = m.predict([{"ad": "x", "label": 0}]).tolist()
...     m.close()
>>> scores
[0.5]
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig, Unadmitted
from embedding_store.rows import RowLayout
from embedding_store.tier import RowBlock
from pipeline.features.featurizer import Featurizer
from pipeline.features.spec import FeatureSpec
from pipeline.publishing.array_patch import AnyArray, apply_update
from pipeline.publishing.delta import F32, I64, ModelDelta, split_state
from pipeline.publishing.errors import DeltaMismatchError
from pipeline.publishing.snapshot import SnapshotInfo, SnapshotStore
from pipeline.training.models import BatchLayout, ModelSpec, build_model, model_tables

_SERVING_OPTIMIZER = OptimizerConfig("sgd", lr=1.0)


@dataclass(frozen=True)
class Blueprint:
    """What a replica builds its model from: the job's feature and model specs, store shape.

    ``dram_budget_bytes`` bounds the DRAM tier (split evenly over tables; ``None``: no bound).
    ``rows`` serves some tables from elsewhere (an embedding service): no local copy of them.
    """

    feature_spec: FeatureSpec
    model_spec: ModelSpec
    num_shards: int = 1
    dram_budget_bytes: int | None = None
    rows: RowSource | None = field(default=None, compare=False)  # tables served elsewhere

    def tables(self) -> tuple[TableConfig, ...]:
        """The serving tables: the trainer's, with embeddings only and the DRAM budget."""
        trained = model_tables(self.model_spec, BatchLayout.from_spec(self.feature_spec))
        share = None if self.dram_budget_bytes is None else self.dram_budget_bytes // len(trained)
        return tuple(
            replace(
                t,
                optimizer=_SERVING_OPTIMIZER,
                hot_rows=None,
                hot_bytes=share,
                admit_after=1,
                # an id without a row reads as the trainer's first lookup of it would
                unadmitted=Unadmitted.INITIAL if t.admit_after <= 1 else t.unadmitted,
                expire_after_steps=None,
                expire_after_seconds=None,
            )
            for t in trained
        )


class RowSource(Protocol):
    """Rows of some tables kept outside the replica (an embedding service), by version.

    The replica stores none of ``tables``' rows: it asks ``lookup`` at the version it serves
    and calls ``advance`` when it moves to another (``delta`` is ``None`` for a snapshot).
    """

    tables: frozenset[str]

    def lookup(self, table: str, ids: I64, version: int) -> F32:
        """Rows of unique ``ids`` at ``version``."""
        ...

    def advance(self, version: int, delta: ModelDelta | None) -> None:
        """The replica now serves ``version``."""
        ...


class _ServingLookups:
    """What ``StoreEmbeddingBag`` calls on its store, answered by unpinned lookups."""

    def __init__(self, store: EmbeddingStore, owner: ServingModel | None = None) -> None:
        self.store = store
        self.owner = owner

    def _lookup_unique(self, table: str, uniq: I64, pin: bool = False) -> F32:
        owner = self.owner
        if owner is not None and owner.rows is not None and table in owner.rows.tables:
            return owner.rows.lookup(table, uniq, -1 if owner.version is None else owner.version)
        out: F32 = self.store.lookup_stored(table, uniq).numpy()
        return out

    def register(self, table: str, uniq_ids: I64, weight: torch.Tensor) -> None:
        raise RuntimeError(f"a serving model never trains (table {table!r})")


@dataclass(frozen=True)
class PreparedDelta:
    """A delta checked and turned into what :meth:`ServingModel.commit` writes."""

    delta: ModelDelta
    rows: tuple[tuple[str, I64, RowBlock, I64], ...]
    arrays: dict[str, AnyArray]
    dense: dict[str, torch.Tensor]
    featurizer: Featurizer


class ServingModel:
    """Rows, dense parameters and featurizer state of one model version (see module doc)."""

    def __init__(
        self, blueprint: Blueprint, path: str | Path, rows: RowSource | None = None
    ) -> None:
        self.blueprint = blueprint
        self.rows = rows if rows is not None else blueprint.rows  # ``embedding_service:``
        self.path = Path(path)
        self.version: int | None = None
        self.step_time: datetime | None = None
        self.broken = False
        self.arrays: dict[str, AnyArray] = {}
        self._tables = {t.name: t for t in blueprint.tables()}
        self._layouts = {n: RowLayout(t.dim, t.state_dim) for n, t in self._tables.items()}
        self._store: EmbeddingStore | None = None
        self._model: torch.nn.Module | None = None
        self._featurizer = Featurizer(blueprint.feature_spec)

    # -- life cycle ----------------------------------------------------------
    def open(self) -> ServingModel:
        """Create the store directory (emptied first) and build the model over it."""
        shutil.rmtree(self.path, ignore_errors=True)
        cfg = StoreConfig(
            str(self.path),
            tuple(self._tables.values()),
            num_shards=self.blueprint.num_shards,
            parallel_shards=False,
        )
        self._store = EmbeddingStore(cfg).open()
        layout = BatchLayout.from_spec(self.blueprint.feature_spec)
        view = cast(EmbeddingStore, _ServingLookups(self._store, self))
        model = build_model(self.blueprint.model_spec, layout, view)
        model.eval()
        self._model = model
        self.arrays = {
            **{f"dense/{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()},
            **{f"featurizer/{k}": v for k, v in self._featurizer.state_dict().items()},
        }
        return self

    def close(self, remove: bool = True) -> None:
        """Close the store and (by default) delete its directory."""
        if self._store is not None:
            self._store.close()
            self._store = None
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)

    @property
    def store(self) -> EmbeddingStore:
        """The open store."""
        if self._store is None:
            raise RuntimeError(f"serving model at {self.path} is not open")
        return self._store

    # -- loading -------------------------------------------------------------
    def _block(self, table: str, emb: F32, version: int) -> RowBlock:
        block = self._layouts[table].empty(len(emb))
        block["emb"] = emb
        block["version"] = version
        block["last_step"] = 0
        block["last_time"] = 0.0
        block["freq"] = 0.0
        block["epoch"] = 0
        return block

    def load_snapshot(self, snapshots: SnapshotStore, info: SnapshotInfo) -> None:
        """Fill a freshly opened model with a snapshot (every file verified)."""
        missing = sorted(set(self._tables) - set(info.tables))
        if missing:
            raise DeltaMismatchError(info.version, f"snapshot lacks tables {missing}")
        for name, table in self._tables.items():
            if info.tables[name].dim != table.dim:
                raise DeltaMismatchError(
                    info.version, f"table {name!r} has dim {info.tables[name].dim}, not {table.dim}"
                )
            if self.rows is not None and name in self.rows.tables:
                continue
            for ids, emb in snapshots.iter_rows(info, name):
                self.store.import_rows(name, ids, self._block(name, emb, info.version))
        arrays = snapshots.read_state(info)
        dense, featurizer = self._check_state(info.version, arrays)
        self._load_dense(dense)
        self._featurizer = featurizer
        self.arrays = arrays
        if self.rows is not None:
            self.rows.advance(info.version, None)
        self.version, self.step_time = info.version, info.step_time

    def _check_state(
        self, version: int, arrays: Mapping[str, AnyArray]
    ) -> tuple[dict[str, torch.Tensor], Featurizer]:
        dense_np, feats = split_state(arrays)
        assert self._model is not None
        want = self._model.state_dict()
        if set(dense_np) != set(want):
            raise DeltaMismatchError(
                version, f"dense parameters {sorted(dense_np)} differ from {sorted(want)}"
            )
        dense: dict[str, torch.Tensor] = {}
        for name, value in dense_np.items():
            if tuple(value.shape) != tuple(want[name].shape):
                raise DeltaMismatchError(
                    version,
                    f"dense {name!r} has shape {value.shape}, not {tuple(want[name].shape)}",
                )
            dense[name] = torch.from_numpy(np.ascontiguousarray(value)).to(want[name].dtype)
        featurizer = Featurizer(self.blueprint.feature_spec)
        try:
            featurizer.load_state_dict(feats)
        except (KeyError, ValueError, IndexError, TypeError) as err:
            raise DeltaMismatchError(version, f"featurizer state does not load: {err!r}") from err
        return dense, featurizer

    def _load_dense(self, dense: Mapping[str, torch.Tensor]) -> None:
        assert self._model is not None
        with torch.no_grad():
            self._model.load_state_dict(dense, strict=True)

    # -- deltas --------------------------------------------------------------
    def prepare(self, delta: ModelDelta) -> PreparedDelta:
        """Check ``delta`` against this model and build everything a commit writes."""
        v = delta.version
        rows: list[tuple[str, I64, RowBlock, I64]] = []
        for t in delta.tables:
            table = self._tables.get(t.name)
            if table is None:
                raise DeltaMismatchError(v, f"unknown table {t.name!r}")
            if t.dim != table.dim:
                raise DeltaMismatchError(v, f"table {t.name!r} has dim {t.dim}, not {table.dim}")
            if len(np.unique(t.ids)) != len(t.ids):
                raise DeltaMismatchError(v, f"table {t.name!r} upserts an id twice")
            rows.append((t.name, t.ids, self._block(t.name, t.emb, v), t.tombstones))
        arrays = dict(self.arrays)
        for name, update in delta.state.items():
            try:
                arrays[name] = apply_update(self.arrays.get(name), update)
            except ValueError as err:
                raise DeltaMismatchError(v, f"state {name!r}: {err}") from err
        dense, featurizer = self._check_state(v, arrays)
        return PreparedDelta(delta, tuple(rows), arrays, dense, featurizer)

    def commit(self, prepared: PreparedDelta) -> None:
        """Write a prepared delta (hold the replica's write lock). Marks ``broken`` on failure."""
        try:
            store = self.store
            for name, ids, block, tombstones in prepared.rows:
                if self.rows is not None and name in self.rows.tables:
                    continue
                if len(tombstones):
                    store.delete_rows(name, tombstones)
                if len(ids):
                    store.import_rows(name, ids, block)
            self._load_dense(prepared.dense)
            if self.rows is not None:
                self.rows.advance(prepared.delta.version, prepared.delta)
        except BaseException:
            self.broken = True
            raise
        self._featurizer = prepared.featurizer
        self.arrays = prepared.arrays
        self.version = prepared.delta.version
        self.step_time = prepared.delta.step_time

    # -- serving -------------------------------------------------------------
    def predict(self, events: Sequence[Any]) -> F32:
        """Scores (sigmoid of the logits) of ``events``, each featurised alone (see module doc).

        The featurizer state is not updated and no row is created.
        """
        assert self._model is not None
        batch = self._featurizer.transform(events, update=False, alone=True)
        with torch.no_grad():
            logits = self._model(batch)
        out: F32 = torch.sigmoid(logits).numpy().astype(np.float32)
        return out

    def maintain(self) -> None:
        """Bring the DRAM tier back under its budget (rows read by requests accumulate there)."""
        self.store.end_step()

    def rows_per_tier(self, count_cold: bool = False) -> dict[str, tuple[int, int | None]]:
        """Table -> (DRAM rows, RocksDB rows or ``None`` unless ``count_cold``)."""
        out: dict[str, tuple[int, int | None]] = {}
        for name in self._tables:
            stats = self.store.stats(name, count_cold=count_cold)
            out[name] = (stats.hot_rows, stats.cold_rows)
        return out

    @property
    def table_names(self) -> Iterable[str]:
        """The serving tables."""
        return self._tables.keys()
