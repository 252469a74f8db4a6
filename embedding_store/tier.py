"""The interface every storage tier implements (DRAM, RocksDB, and later GPU or SSD links).

A tier holds rows of one table in one shard, in the layout of :mod:`embedding_store.rows`::

    lookup ─► [ DRAM tier (hot) ] ─miss─► [ RocksDB tier (cold) ] ─► (next link)

>>> from embedding_store.dram import DramTier
>>> from embedding_store.rows import RowLayout
>>> isinstance(DramTier(RowLayout(4, 1)), Tier)
True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from embedding_store.rows import RowLayout
from embedding_store.types import BoolArray, IdArray

RowBlock = npt.NDArray[np.void]


@runtime_checkable
class Tier(Protocol):
    """get / put / delete / iterate / count / close over rows of one layout."""

    layout: RowLayout

    def get(self, ids: IdArray) -> tuple[BoolArray, RowBlock]:
        """``(found, rows)``: rows for every id; rows where ``found`` is False are undefined."""
        ...

    def put(self, ids: IdArray, rows: RowBlock) -> None:
        """Insert or overwrite the rows of ``ids`` (ids unique)."""
        ...

    def delete(self, ids: IdArray) -> None:
        """Remove ``ids`` (absent ids are ignored)."""
        ...

    def iterate(self, chunk: int = 65536) -> Iterator[tuple[IdArray, RowBlock]]:
        """Every row, in chunks of at most ``chunk`` rows."""
        ...

    def count(self) -> int:
        """How many rows the tier holds."""
        ...

    def close(self) -> None:
        """Release the tier's resources; later calls raise ``StoreClosedError``."""
        ...
