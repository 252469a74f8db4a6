"""Vectorised hash maps (int64 -> int64, object -> int64) on pandas' khash, or its public API.

The store's slot index and the featurizer's entity and string indexes need a map that takes
and answers whole arrays: a Python dict costs ~450 ns per key. pandas' khash tables
(``pandas._libs.hashtable``) do it in ~40-100 ns per key, but they are private, and the
public API has no growing hash map: ``pd.Index.get_indexer`` looks up as fast, but an index
is immutable, so inserts rebuild. Measured (``python -m benchmarks.hash_index_bench``, 1M
keys, 2 busy cores): the public-API map looks up 3.3x and inserts 4.5x slower, strings 3-5x.
So:

- on the pandas releases in :data:`TESTED_PANDAS` (the contract test
  ``tests/unit/embedding_store/test_hash_index.py`` ran on them), :func:`int64_map` and
  :func:`object_map` return khash tables;
- on any other release, or if the private module is gone or changed, they return
  :class:`IndexMap`, built on public pandas API only (``pd.Index.get_indexer``, which uses the
  same khash inside, rebuilt in levels), with one warning per process.

Both kinds answer the same calls: ``map_keys_to_values(keys, values)`` (later values win),
``lookup(keys)`` (``-1`` where absent), ``set_item(key, value)`` and ``sizeof()``.

>>> import numpy as np
>>> m = IndexMap()
>>> m.map_keys_to_values(np.array([10, 20]), np.array([0, 1]))
>>> m.map_keys_to_values(np.array([20, 30]), np.array([5, 6]))
>>> m.lookup(np.array([10, 20, 30, 40])).tolist()
[0, 5, 6, -1]
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = ["TESTED_PANDAS", "IndexMap", "int64_map", "object_map", "uses_khash"]

log = logging.getLogger(__name__)

TESTED_PANDAS: Final = frozenset({"3.1"})
"""pandas major.minor releases whose private khash tables the contract test covers."""

_MERGE_RATIO: Final = 8  # fold the newest level into the base past base/8 keys
_SMALL: Final = 4096  # ... and into the middle level past this many

_warned: list[str] = []
_NONE: Final = object()  # None as an object key (pd.Index would take it for NaN and miss it)


def _khash() -> Any | None:
    version = ".".join(pd.__version__.split(".")[:2])
    reason = None
    module: Any = None
    if version not in TESTED_PANDAS:
        reason = f"pandas {pd.__version__} is not one the khash tables were tested on"
    else:
        try:
            module = importlib.import_module("pandas._libs.hashtable")
            for name in ("Int64HashTable", "PyObjectHashTable"):
                getattr(module, name)
        except (ImportError, AttributeError) as err:
            reason = f"pandas' khash tables are not available ({err})"
    if reason is None:
        return module
    if not _warned:
        _warned.append(reason)
        log.warning("%s; using the public pd.Index API (slower inserts)", reason)
    return None


def uses_khash() -> bool:
    """True when :func:`int64_map` returns pandas' khash tables."""
    return _khash() is not None


class IndexMap:
    """A growing key -> int64 map on public pandas API: levels of ``pd.Index``, newest first.

    ::

        lookup(keys): newest level ─miss─► middle level ─miss─► base ─miss─► -1
        insert: into the newest (rebuilt; at most 4,096 keys), folded into the middle past
                that, the middle into the base past base/8: each key is rebuilt O(1) times
                amortised, and a later value for a key shadows the earlier one
    """

    def __init__(self, size_hint: int = 0, dtype: str = "int64", fold_at: int = _SMALL) -> None:
        self._dtype = np.dtype(dtype)
        self._fold_at = fold_at
        empty = (np.empty(0, self._dtype), np.empty(0, np.int64))
        self._levels: list[tuple[npt.NDArray[Any], npt.NDArray[np.int64]]] = [empty] * 3
        self._indexes: list[pd.Index | None] = [None, None, None]
        self._pending: tuple[list[Any], list[int]] = ([], [])  # set_item, until the next call

    def _as_keys(self, keys: Any) -> npt.NDArray[Any]:
        if not self._dtype.hasobject:
            return np.asarray(keys, dtype=self._dtype)
        out: npt.NDArray[Any] = np.empty(len(keys), dtype=self._dtype)
        out[:] = keys
        none: npt.NDArray[np.bool_] = np.equal(out, np.array(None))
        out[none] = _NONE
        return out

    def _pd_index(self, keys: npt.NDArray[Any]) -> pd.Index:
        return pd.Index(keys, dtype=object if self._dtype.hasobject else keys.dtype, copy=False)

    def _index(self, level: int) -> pd.Index:
        index = self._indexes[level]
        if index is None:
            index = self._pd_index(self._levels[level][0])
            self._indexes[level] = index
        return index

    def _last_wins(
        self, keys: npt.NDArray[Any], values: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
        keep = ~self._pd_index(keys[::-1]).duplicated(keep="first")  # each key's last entry
        return keys[::-1][keep], values[::-1][keep]

    def _merge(self, newer: int, older: int) -> None:
        keys = np.concatenate([self._levels[newer][0], self._levels[older][0]])
        values = np.concatenate([self._levels[newer][1], self._levels[older][1]])
        keep = ~self._pd_index(keys).duplicated(keep="first")  # the newer level's entry
        self._levels[older] = (keys[keep], values[keep])
        self._levels[newer] = (np.empty(0, self._dtype), np.empty(0, np.int64))
        self._indexes[older] = self._indexes[newer] = None

    def _flush(self) -> None:
        if self._pending[0]:
            keys = self._pending[0]
            values = np.array(self._pending[1], dtype=np.int64)
            self._pending = ([], [])
            self.map_keys_to_values(keys, values)

    def map_keys_to_values(self, keys: npt.ArrayLike, values: npt.ArrayLike) -> None:
        """Map each key to its value (later pairs win, also within one call)."""
        self._flush()
        k = self._as_keys(keys)
        v = np.asarray(values, dtype=np.int64)
        if not len(k):
            return
        k, v = self._last_wins(
            np.concatenate([self._levels[0][0], k]), np.concatenate([self._levels[0][1], v])
        )
        self._levels[0] = (k, v)
        self._indexes[0] = None
        if len(k) > self._fold_at:
            self._merge(0, 1)
            if len(self._levels[1][0]) * _MERGE_RATIO > max(len(self._levels[2][0]), self._fold_at):
                self._merge(1, 2)

    def set_item(self, key: Any, value: int) -> None:
        """Map one key (kept aside, and indexed with the next call that needs it)."""
        self._pending[0].append(key)
        self._pending[1].append(value)

    def lookup(self, keys: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The value of each key, ``-1`` where it has none."""
        self._flush()
        k = self._as_keys(keys)
        out = np.full(len(k), -1, dtype=np.int64)
        todo = np.arange(len(k))
        for level in range(3):
            if not len(todo) or not len(self._levels[level][0]):
                continue
            pos = self._index(level).get_indexer(k[todo])
            hit = pos >= 0
            out[todo[hit]] = self._levels[level][1][pos[hit]]
            todo = todo[~hit]
        return out

    def sizeof(self) -> int:
        """Bytes held by the keys and values (the indexes' hash tables not counted)."""
        self._flush()
        return sum(int(k.nbytes + v.nbytes) for k, v in self._levels)


def int64_map(size_hint: int = 1024) -> Any:
    """An int64 -> int64 map: khash on tested pandas, else :class:`IndexMap`."""
    khash = _khash()
    if khash is not None:
        return khash.Int64HashTable(max(size_hint, 16))
    return IndexMap(size_hint)


def object_map() -> Any:
    """A hashable-object -> int64 map (``None`` is a key like any other)."""
    khash = _khash()
    if khash is not None:
        return khash.PyObjectHashTable()
    return IndexMap(dtype="object")
