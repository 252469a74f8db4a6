"""Folding a chain (a full base and its increments) into the rows of its newest checkpoint.

::

    base rows ──► drop tombstoned and re-written ids ──► add the increment's rows ──► ...
      (ids, rows)        increment 1                                      increment k

The result is what a restore of the newest checkpoint would put in a store; compaction
writes it as a new full checkpoint. It is built in memory (one table at a time).

>>> import numpy as np
>>> from embedding_store.rows import RowLayout
>>> rows = RowLayout(1, 0).empty(3); rows["emb"][:, 0] = [1, 2, 3]
>>> ids, out = apply_increment(np.array([1, 2, 3]), rows, np.array([2]),
...                            np.array([3]), rows[:1])
>>> ids.tolist(), out["emb"][:, 0].tolist()
([1, 3], [1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedding_store.rows import RowLayout
from embedding_store.tier import RowBlock
from embedding_store.types import IdArray
from operators.checkpoint.reader import CheckpointReader


def apply_increment(
    ids: IdArray, rows: RowBlock, tombstones: IdArray, new_ids: IdArray, new_rows: RowBlock
) -> tuple[IdArray, RowBlock]:
    """``(ids, rows)`` without ``tombstones``, with ``new_ids`` upserted; sorted by id."""
    drop = np.union1d(tombstones, new_ids)
    keep = ~np.isin(ids, drop) if len(drop) else np.ones(len(ids), dtype=np.bool_)
    out_ids = np.concatenate([ids[keep], new_ids]).astype(np.int64, copy=False)
    out_rows = np.concatenate([rows[keep], new_rows])
    order = np.argsort(out_ids, kind="stable")
    return out_ids[order], out_rows[order]


def _concat(reader: CheckpointReader, table: str, layout: RowLayout) -> tuple[IdArray, RowBlock]:
    entry = reader.manifest().table(table)
    if entry is None:
        return np.empty(0, np.int64), layout.empty(0)
    blocks = list(reader.table_blocks(entry, chunk=1 << 20))
    if not blocks:
        return np.empty(0, np.int64), layout.empty(0)
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def merge_table(
    readers: Sequence[CheckpointReader], table: str, layout: RowLayout
) -> tuple[IdArray, RowBlock]:
    """The rows of ``table`` at the last of ``readers`` (base first), sorted by id."""
    ids, rows = _concat(readers[0], table, layout)
    order = np.argsort(ids, kind="stable")
    ids, rows = ids[order], rows[order]
    for reader in readers[1:]:
        entry = reader.manifest().table(table)
        if entry is None:
            continue
        new_ids, new_rows = _concat(reader, table, layout)
        ids, rows = apply_increment(ids, rows, reader.tombstones(entry), new_ids, new_rows)
    return ids, rows
