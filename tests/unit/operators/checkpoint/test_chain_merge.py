"""Folding a chain into the rows of its newest checkpoint: tombstones, upserts, missing tables.

The readers here are small in-memory stand-ins with the three methods ``merge_table`` reads
(the manifest's table entry, its row blocks, its tombstones), so a chain can lack a table in
one link, or hold a table with no rows, which a store cannot easily be made to write.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np

from embedding_store.rows import RowLayout
from operators.checkpoint.chain_merge import _concat, apply_increment, merge_table
from operators.checkpoint.format import TableEntry
from operators.checkpoint.reader import CheckpointReader

LAYOUT = RowLayout(1, 0)


def rows(values: Sequence[float]) -> np.ndarray:
    out = LAYOUT.empty(len(values))
    out.fill(0)
    out["emb"][:, 0] = values
    return out


class Link:
    """One checkpoint of a chain: ``blocks`` of (ids, emb values) and ``tombstones``."""

    def __init__(
        self,
        blocks: list[tuple[list[int], list[float]]] | None,
        tombstones: Sequence[int] = (),
    ) -> None:
        self.blocks = blocks
        self.dead = np.array(tombstones, np.int64)
        self.chunks: list[int] = []

    def manifest(self) -> Link:
        return self

    def table(self, name: str) -> TableEntry | None:
        return None if self.blocks is None or name != "t" else TableEntry("t", 1, 0)

    def table_blocks(self, entry: TableEntry, chunk: int = 65536) -> Iterator[tuple[Any, Any]]:
        self.chunks.append(chunk)
        for ids, values in self.blocks or []:
            yield np.array(ids, np.int64), rows(values)

    def tombstones(self, entry: TableEntry) -> np.ndarray:
        return self.dead


def merged(links: list[Link], table: str = "t") -> tuple[list[int], list[float]]:
    ids, out = merge_table(cast(list[CheckpointReader], links), table, LAYOUT)
    assert ids.dtype == np.int64 and out.dtype == LAYOUT.dtype and len(ids) == len(out)
    return ids.tolist(), out["emb"][:, 0].tolist()


def test_apply_increment_drops_tombstones_and_upserts_sorted() -> None:
    ids, out = apply_increment(
        np.array([1, 4, 6], np.int64),
        rows([1, 4, 6]),
        np.array([6], np.int64),
        np.array([5, 4], np.int64),
        rows([50, 40]),
    )
    assert (ids.tolist(), out["emb"][:, 0].tolist()) == ([1, 4, 5], [1, 40, 50])
    ids, out = apply_increment(
        np.array([2, 1], np.int64),
        rows([2, 1]),
        np.empty(0, np.int64),
        np.empty(0, np.int64),
        rows([]),
    )
    assert (ids.tolist(), out["emb"][:, 0].tolist()) == ([1, 2], [1, 2])


def test_a_chain_folds_in_order_and_skips_a_link_without_the_table() -> None:
    base = Link([([3, 1], [3, 1]), ([2], [2])])
    links = [
        base,
        Link([([2, 7], [20, 70])], tombstones=[3]),
        Link(None),  # this link lacks the table: nothing changes, later links still apply
        Link([([9], [90])], tombstones=[1]),
    ]
    assert merged(links) == ([2, 7, 9], [20, 70, 90])
    assert merged(links[:1]) == ([1, 2, 3], [1, 2, 3])  # the base alone, sorted
    assert merged(links[:2]) == ([1, 2, 7], [1, 20, 70])
    assert base.chunks == [1 << 20, 1 << 20, 1 << 20]


def test_a_table_missing_or_empty_in_the_base_starts_empty() -> None:
    assert merged([Link([([1], [1])])], table="other") == ([], [])
    assert merged([Link(None), Link([([4], [4])])]) == ([4], [4])
    assert merged([Link([]), Link([([5, 4], [5, 4])])]) == ([4, 5], [4, 5])
    assert merged([Link([])]) == ([], [])


def test_a_link_gives_as_many_rows_as_ids_even_when_empty() -> None:
    for link, table in ((Link([([1], [1])]), "other"), (Link([]), "t"), (Link(None), "t")):
        ids, out = _concat(cast(CheckpointReader, link), table, LAYOUT)
        assert (len(ids), len(out), ids.dtype, out.dtype) == (0, 0, np.int64, LAYOUT.dtype)
