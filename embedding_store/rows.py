"""Row layout, shared by the DRAM tier (as a structured array) and RocksDB (as bytes).

One row, little-endian, fixed width per table::

    +---------+-----------+-----------+--------+--------+-----------------+------------------+
    | version | last_step | last_time |  freq  | epoch  | emb: f32[dim]   | state: f32[sdim] |
    |   i8    |    i8     |    f8     |   f4   |   i4   |                 |                  |
    +---------+-----------+-----------+--------+--------+-----------------+------------------+

``version`` is the step that last wrote the row, ``freq``/``epoch`` its LFU count and the
aging epoch it was counted in, ``last_step``/``last_time`` when it was last seen.

>>> layout = RowLayout(dim=4, state_dim=1)
>>> layout.row_bytes
52
>>> block = layout.empty(2)
>>> block["emb"].shape
(2, 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from embedding_store.types import IdArray

KEY_DTYPE = np.dtype(">i8")
"""Keys in RocksDB: big-endian int64, so that iteration order is id order for ids >= 0."""


@dataclass(frozen=True)
class RowLayout:
    """The structured dtype of one table's rows."""

    dim: int
    state_dim: int

    @cached_property
    def dtype(self) -> np.dtype[np.void]:
        """The numpy structured dtype of one row."""
        fields: list[tuple[str, object] | tuple[str, object, tuple[int, ...]]] = [
            ("version", "<i8"),
            ("last_step", "<i8"),
            ("last_time", "<f8"),
            ("freq", "<f4"),
            ("epoch", "<i4"),
            ("emb", "<f4", (self.dim,)),
        ]
        if self.state_dim:
            fields.append(("state", "<f4", (self.state_dim,)))
        return np.dtype(fields)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row."""
        return int(self.dtype.itemsize)

    def empty(self, n: int) -> npt.NDArray[np.void]:
        """An uninitialised block of ``n`` rows."""
        return np.empty(n, dtype=self.dtype)

    def state(self, block: npt.NDArray[np.void]) -> npt.NDArray[np.float32]:
        """The optimizer-state columns of ``block`` (shape ``(n, state_dim)``, maybe 0 wide)."""
        if self.state_dim:
            return block["state"]
        return np.zeros((len(block), 0), dtype=np.float32)

    def encode(self, block: npt.NDArray[np.void]) -> list[bytes]:
        """One ``bytes`` value per row, for RocksDB (numpy slices them, no Python loop)."""
        raw = np.ascontiguousarray(block, dtype=self.dtype)
        values: list[bytes] = raw.view(np.dtype((np.void, self.row_bytes))).tolist()
        return values

    def decode(self, values: list[bytes]) -> npt.NDArray[np.void]:
        """Rows from RocksDB values (all of this layout), as a writable block: one copy."""
        if not values:
            return self.empty(0)
        return np.frombuffer(bytearray().join(values), dtype=self.dtype)


def encode_keys(ids: IdArray) -> list[bytes]:
    """RocksDB keys for ``ids`` (numpy slices them, no Python loop).

    >>> keys = encode_keys(np.array([1, 258]))
    >>> [k.hex() for k in keys], decode_keys(keys).tolist()
    (['0000000000000001', '0000000000000102'], [1, 258])
    """
    keys: list[bytes] = np.asarray(ids, dtype=np.int64).astype(KEY_DTYPE).view("V8").tolist()
    return keys


def decode_keys(keys: list[bytes]) -> IdArray:
    """Ids from RocksDB keys."""
    if not keys:
        return np.empty(0, dtype=np.int64)
    return np.frombuffer(b"".join(keys), dtype=KEY_DTYPE).astype(np.int64)
