"""Restoring a store from a chain: the full base, then each increment, then the small state.

::

    empty store ◄── import base parts ◄── delete tombstones 1, import rows 1 ◄── ... ◄── k
                └── sightings and load_state(version, LFU epochs) of checkpoint k, flush
    dense arrays: checkpoint k's; patch layers: every checkpoint's, base first (the caller
    applies them: :mod:`operators.checkpoint.patches`)

The target store must hold no rows (open it on an empty directory), or ``clear=True`` deletes
what it holds first. Rows are imported in blocks, so memory stays bounded by the block size.
Every table of the checkpoint must exist in the store with the same schema (dim, optimizer,
seed, init scale); tables the checkpoint lacks stay empty.

>>> import numpy as np
>>> state = RestoredState("000001-0000", 3, {"w": np.zeros(2, np.float32)}, {}, {"p": 1},
...                       "cfg", {}, {"version": 3})
>>> state.dense_tensors()["w"].dtype
torch.float32
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from embedding_store import EmbeddingStore
from operators.checkpoint.dense_state import DenseArray
from operators.checkpoint.format import CheckpointManifest
from operators.checkpoint.patches import split_layers
from operators.checkpoint.reader import CheckpointReader
from operators.checkpoint.store_schema import table_config_from_json
from operators.errors import IncompatibleCheckpointError, StoreNotEmptyError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoredState:
    """What a restore returns besides the rows it put in the store."""

    checkpoint: str
    version: int
    dense: Mapping[str, npt.NDArray[Any]]
    dense_dtypes: Mapping[str, str | None]
    offsets: Mapping[str, Any]
    config_hash: str
    extra: Mapping[str, Any]
    store_state: Mapping[str, Any]
    patches: tuple[Mapping[str, npt.NDArray[Any]], ...] = ()
    """The chain's patch layers, base first (:mod:`operators.checkpoint.patches`)."""

    def dense_tensors(self) -> dict[str, torch.Tensor]:
        """The dense arrays as torch tensors of the dtypes they were saved from."""
        return {
            name: DenseArray(arr, self.dense_dtypes.get(name)).tensor()
            for name, arr in self.dense.items()
        }


def check_compatible(store: EmbeddingStore, manifest: CheckpointManifest) -> None:
    """Raise if a table of ``manifest`` is missing from ``store`` or differs in schema."""
    recorded = {t["name"]: t for t in manifest.store_schema.get("tables", [])}
    for entry in manifest.tables:
        try:
            mine = store.config.table(entry.name)
        except KeyError:
            raise IncompatibleCheckpointError(
                manifest.id, entry.name, "the target store has no such table"
            ) from None
        if (mine.dim, mine.state_dim) != (entry.dim, entry.state_dim):
            raise IncompatibleCheckpointError(
                manifest.id,
                entry.name,
                f"checkpoint rows are dim={entry.dim} state_dim={entry.state_dim}, the store's "
                f"dim={mine.dim} state_dim={mine.state_dim}",
            )
        if entry.name in recorded:
            theirs = table_config_from_json(recorded[entry.name]).schema()
            if theirs != mine.schema():
                raise IncompatibleCheckpointError(
                    manifest.id, entry.name, f"checkpoint schema {theirs}, store's {mine.schema()}"
                )


def ensure_empty(store: EmbeddingStore, checkpoint: str, clear: bool) -> None:
    """Raise unless every table is empty; with ``clear``, delete every row first.

    The rows counted are distinct ids: a row in DRAM is often on disk too (written back, or
    promoted and not changed since), and adding the two tiers' counts would name it twice.
    """
    for t in store.tables:
        stats = store.stats(t.name, count_cold=True)
        if not stats.hot_rows + (stats.cold_rows or 0):
            continue
        # export_rows flushes DRAM first, so every row is among the ids it gives, once
        blocks = [block_ids for block_ids, _ in store.export_rows(t.name)]
        ids = np.unique(np.concatenate(blocks)) if blocks else np.empty(0, np.int64)
        if not len(ids):  # only placeholders of prefetched ids never looked up: no stored row
            continue
        if not clear:
            raise StoreNotEmptyError(checkpoint, t.name, len(ids))
        store.delete_rows(t.name, ids)
        log.info("cleared %d rows of table %r before restoring %s", len(ids), t.name, checkpoint)


def restore_chain(
    store: EmbeddingStore, readers: Sequence[CheckpointReader], clear: bool = False
) -> RestoredState:
    """Put the state of the last of ``readers`` (the base first) into ``store``."""
    manifests = [r.manifest() for r in readers]
    tip = manifests[-1]
    for m in manifests:
        check_compatible(store, m)
    ensure_empty(store, tip.id, clear)
    with store.step_boundary():
        for reader, manifest in zip(readers, manifests, strict=True):
            for entry in manifest.tables:
                tomb = reader.tombstones(entry)
                if len(tomb):
                    store.delete_rows(entry.name, tomb)
                for ids, rows in reader.table_blocks(entry):
                    store.import_rows(entry.name, ids, rows)
        for t in store.tables:  # admission state: the tip's, complete (none if not recorded)
            seen = tip.table(t.name)
            if seen is not None:
                store.load_sightings(t.name, readers[-1].sightings(seen))
        store.load_state(tip.store_state)
        store.flush()
    layers: list[dict[str, npt.NDArray[Any]]] = []
    for reader in readers[:-1]:  # one link's arrays at a time: keep only its patch layers
        layers.extend({k: v.array for k, v in layer.items()} for layer in _layers(reader))
    dense, tip_layers = split_layers(readers[-1].dense())
    layers.extend({k: v.array for k, v in layer.items()} for layer in tip_layers)
    return RestoredState(
        checkpoint=tip.id,
        version=tip.version,
        dense={k: v.array for k, v in dense.items()},
        dense_dtypes={k: v.torch_dtype for k, v in dense.items()},
        offsets=tip.offsets,
        config_hash=tip.config_hash,
        extra=tip.extra,
        store_state=tip.store_state,
        patches=tuple(layers),
    )


def _layers(reader: CheckpointReader) -> list[dict[str, DenseArray]]:
    return split_layers(reader.dense())[1]
