"""What a checkpoint captures at a step boundary, before any byte is written.

Capturing is the only part that must hold training off: under ``store.step_boundary()`` it
copies the store's small state, the rows (all of them, or those written since the base
version), the tombstones, the sighting counts of ids not admitted yet, the dense arrays, the
source offsets and ``extra``. Writing the snapshot to disk may then happen on another thread
while training goes on.

::

    trainer thread                       │  writer thread
    ─ step k ─┤ boundary: capture ├─ step k+1 ─ step k+2 ─ ...
                        │                │
                        └── snapshot ───►│ write parts, fsync, manifest, rename, commit

>>> import tempfile, numpy as np
>>> from embedding_store import EmbeddingStore, StoreConfig, TableConfig
>>> with tempfile.TemporaryDirectory() as d:
...     with EmbeddingStore(StoreConfig(d, (TableConfig("t", 2),), num_shards=1)) as store:
...         _ = store.lookup("t", np.array([1, 2], dtype=np.int64)); store.end_step()
...         with store.step_boundary():
...             snap = capture_full(store, {}, {"p0": 7}, config_hash="c", extra={},
...                                 materialize=True)
>>> snap.version, snap.tables[0].rows, snap.offsets
(1, 2, {'p0': 7})
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedding_store import EmbeddingStore
from embedding_store.admission import SightingBlock
from embedding_store.tier import RowBlock
from embedding_store.types import IdArray
from operators.checkpoint.dense_state import DenseArray, DenseValue, snapshot_dense
from operators.checkpoint.format import CheckpointKind
from operators.checkpoint.store_schema import store_config_to_json

Blocks = Iterable[tuple[IdArray, RowBlock]]  # pragma: no mutate


@dataclass(frozen=True)
class TableSnapshot:
    """The rows of one table to write, as blocks (a list, or a live iterator when streaming)."""

    name: str
    dim: int
    state_dim: int
    blocks: Blocks
    tombstones: IdArray | None = None  # pragma: no mutate
    sightings: SightingBlock | None = None  # pragma: no mutate

    @property
    def rows(self) -> int:
        """Rows captured (only for materialized blocks; -1 while streaming)."""
        if isinstance(self.blocks, list):
            return sum(len(ids) for ids, _ in self.blocks)
        return -1


@dataclass(frozen=True)
class CheckpointSnapshot:
    """Everything one checkpoint will hold, taken at one step boundary."""

    kind: CheckpointKind
    version: int
    base_version: int | None
    store_state: Mapping[str, Any]
    store_schema: Mapping[str, Any]
    tables: tuple[TableSnapshot, ...]
    dense: Mapping[str, DenseArray]
    offsets: Mapping[str, Any]
    config_hash: str
    extra: Mapping[str, Any]
    capture_seconds: float = 0.0

    @property
    def rows(self) -> int:
        """Rows captured, all tables together (-1 while streaming)."""
        counts = [t.rows for t in self.tables]
        return -1 if any(c < 0 for c in counts) else sum(counts)


def _json_copy(obj: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A deep copy through JSON, so the caller's later changes cannot leak in."""
    try:
        copied: dict[str, Any] = json.loads(json.dumps(dict(obj), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint {what} must be JSON-serializable: {err}") from err
    return copied


def _small_state(
    store: EmbeddingStore,
    dense: Mapping[str, DenseValue],
    offsets: Mapping[str, Any],
    extra: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, DenseArray], dict[str, Any], dict[str, Any]]:
    return (
        _json_copy(store.state(), "store state"),
        snapshot_dense(dense),
        _json_copy(offsets, "offsets"),
        _json_copy(extra, "extra"),
    )


def capture_full(
    store: EmbeddingStore,
    dense: Mapping[str, DenseValue],
    offsets: Mapping[str, Any],
    *,
    config_hash: str,
    extra: Mapping[str, Any],
    materialize: bool,
) -> CheckpointSnapshot:
    """Every row of every table (call under ``store.step_boundary()``).

    With ``materialize`` the rows are copied into memory now; without, the blocks are a live
    iterator that must be consumed before the boundary is released.
    """
    t0 = time.perf_counter()
    state, dense_copy, offsets_copy, extra_copy = _small_state(store, dense, offsets, extra)
    tables = []
    for t in store.tables:
        blocks: Blocks = store.export_rows(t.name)
        if materialize:
            blocks = list(blocks)
        tables.append(
            TableSnapshot(t.name, t.dim, t.state_dim, blocks, sightings=store.sightings(t.name))
        )
    return CheckpointSnapshot(
        kind=CheckpointKind.FULL,
        version=int(state["version"]),
        base_version=None,
        store_state=state,
        store_schema=store_config_to_json(store.config),
        tables=tuple(tables),
        dense=dense_copy,
        offsets=offsets_copy,
        config_hash=config_hash,
        extra=extra_copy,
        capture_seconds=time.perf_counter() - t0,
    )


def capture_incremental(
    store: EmbeddingStore,
    base_version: int,
    dense: Mapping[str, DenseValue],
    offsets: Mapping[str, Any],
    *,
    config_hash: str,
    extra: Mapping[str, Any],
) -> CheckpointSnapshot:
    """Rows written after ``base_version`` and ids expired since (call under the boundary).

    Tombstones are asked for from ``base_version - 1``: an expiry run at the base's own
    boundary, after the base was captured, is recorded at ``base_version`` too. Deleting an
    id the base already lacks is harmless, and ids written again since are not tombstoned.
    """
    t0 = time.perf_counter()
    state, dense_copy, offsets_copy, extra_copy = _small_state(store, dense, offsets, extra)
    tables = []
    for t in store.tables:
        ids, rows = store.written_since(t.name, base_version)
        tomb = store.tombstones_since(t.name, base_version - 1)
        tomb = np.setdiff1d(tomb, ids, assume_unique=True) if len(tomb) else tomb
        seen = store.sightings(t.name)  # all of them: they are small and change every step
        tables.append(TableSnapshot(t.name, t.dim, t.state_dim, [(ids, rows)], tomb, seen))
    return CheckpointSnapshot(
        kind=CheckpointKind.INCREMENTAL,
        version=int(state["version"]),
        base_version=base_version,
        store_state=state,
        store_schema=store_config_to_json(store.config),
        tables=tuple(tables),
        dense=dense_copy,
        offsets=offsets_copy,
        config_hash=config_hash,
        extra=extra_copy,
        capture_seconds=time.perf_counter() - t0,
    )
