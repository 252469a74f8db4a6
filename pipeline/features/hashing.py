"""Deterministic feature hashing: event values to int64 ids, once, at the edge.

::

    value ──► base (uint64)                 ──► id = splitmix64(base ^ salt64)  (as int64)
              int   : the value itself           salt64 = blake2b-8(salt string)
              str   : blake2b-8(utf-8 bytes)     one salt per feature, so "a" in c1 and
              None  : a reserved constant        "a" in c2 are different ids
    cross of ids a, b, ...:  h = salt64; h = splitmix64(h ^ a); h = splitmix64(h ^ b); ...

Nothing here uses Python's ``hash()`` (salted per process): ids are the same in every
process, on every machine, in every run. Strings are factorised first (pandas, in C), so
blake2b runs once per distinct string of a batch, and a caller's bounded cache (the
featurizer keeps one) spares repeats across batches.

>>> ids = hash_column(["68fd1e64", None, "68fd1e64"], "str", salt="c1")
>>> ids.dtype, bool(ids[0] == ids[2]), bool(ids[0] != ids[1])
(dtype('int64'), True, True)
>>> bool(hash_column(["68fd1e64"], "str", salt="c2")[0] != ids[0])
True
>>> hash_column([596, 3156], "int", salt="customer").tolist() == (
...     hash_column([596, 3156], "int", salt="customer").tolist())
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from embedding_store.hash_index import object_map
from embedding_store.initializers import splitmix64
from pipeline.features.errors import FeatureValueError

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
ValueType = Literal["int", "str"]

MISSING_BASE: Final = np.uint64(0x6D15_5106_0000_0001)
"""The base of a missing (``None``) value: hashed with the salt like any other value."""

CACHE_LIMIT: Final = 1 << 20
"""A string cache (see :func:`base_values`) is emptied when it grows past this many entries."""


def blake2b64(text: str) -> int:
    """Hash ``text`` (utf-8) to the first 8 bytes of its blake2b, as an unsigned integer.

    >>> blake2b64("c1") == blake2b64("c1") != blake2b64("c2")
    True
    """
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def salt64(salt: str) -> np.uint64:
    """Return the 64-bit salt of a feature name (or an explicit salt string)."""
    return np.uint64(blake2b64("freshet/salt/" + salt))


def _hash_strings(uniques: Sequence[str], cache: dict[str, int] | None) -> U64:
    if cache is None:
        return np.fromiter((blake2b64(u) for u in uniques), dtype=np.uint64, count=len(uniques))
    if len(cache) > CACHE_LIMIT:
        cache.clear()
    out = np.empty(len(uniques), dtype=np.uint64)
    for i, text in enumerate(uniques):
        h = cache.get(text)
        if h is None:
            h = cache[text] = blake2b64(text)
        out[i] = h
    return out


def base_values(
    values: Sequence[Any], kind: ValueType, name: str = "?", cache: dict[str, int] | None = None
) -> tuple[U64, npt.NDArray[np.bool_]]:
    """Unsalted 64-bit bases of ``values`` and a mask of the missing (``None``) ones.

    ``kind="int"`` takes each value as an integer (``"5"`` and ``5`` agree); ``kind="str"``
    hashes ``str(value)`` with blake2b-8 (memoised in ``cache`` when one is given).

    >>> base, missing = base_values([3, None, -1], "int")
    >>> base[0].item(), missing.tolist()
    (3, [False, True, False])
    """
    n = len(values)
    if kind == "int":
        try:
            ints = np.asarray(values, dtype=np.int64)
            missing = np.zeros(n, dtype=np.bool_)
        except (TypeError, ValueError):
            obj = np.asarray(values, dtype=object)
            missing = np.fromiter((v is None for v in obj), dtype=np.bool_, count=n)
            try:
                ints = np.zeros(n, dtype=np.int64)
                ints[~missing] = np.asarray([int(v) for v in obj[~missing]], dtype=np.int64)
            except (TypeError, ValueError) as err:
                raise FeatureValueError(name, "integer", err) from err
        base = ints.view(np.uint64).copy()
        base[missing] = MISSING_BASE
        return base, missing
    codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
    strings = [u if isinstance(u, str) else str(u) for u in uniques]
    table = np.append(_hash_strings(strings, cache), MISSING_BASE)
    return table[codes], codes < 0


def text_bases(values: Sequence[Any], cache: dict[str, int] | None = None) -> U64 | None:
    """Bases of ``values`` when every one is a string or ``None``; else ``None``.

    What :func:`base_values` gives for ``kind="str"``, for the values of several columns at
    once: equal only when no value needs ``str()`` (``1`` and ``True`` are one key to pandas).

    >>> text_bases(["a", None]).tolist() == base_values(["a", None], "str")[0].tolist()
    True
    >>> text_bases(["a", 1]) is None
    True
    """
    codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
    strings = list(uniques)
    if not all(isinstance(u, str) for u in strings):
        return None
    table = np.append(_hash_strings(strings, cache), MISSING_BASE)
    out: U64 = table[codes]
    return out


class StringHasher:
    """The unsalted bases of string columns, memoised: what a source process computes ahead.

    ``hasher(values)`` equals ``base_values(values, "str")[0]`` for a column of strings and
    ``None``; the salt is the featurizer's, applied later (:func:`hash_bases`), so the hashes
    do not depend on the feature spec. Known strings are found by one vectorised lookup in a
    pandas hash table (position -> base in an array); only strings not seen before are hashed
    in Python. Past ``limit`` strings the memory is emptied. A value that is neither a string
    nor ``None`` sends the call through :func:`base_values` (no memory).

    >>> hasher = StringHasher()
    >>> bool((hasher(["a", None, "a"]) == base_values(["a", None, "a"], "str")[0]).all())
    True
    >>> len(hasher)
    1
    """

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self._reset()

    def _reset(self) -> None:
        self._index = object_map()  # value -> its position in self._bases
        self._index.set_item(None, 0)
        self._bases: U64 = np.empty(1024, dtype=np.uint64)
        self._bases[0] = MISSING_BASE
        self._size = 1

    def __len__(self) -> int:
        """Strings remembered."""
        return self._size - 1

    def __call__(self, values: Sequence[str | None]) -> U64:
        """Bases of ``values`` (``None``: :data:`MISSING_BASE`)."""
        out = self.strings(values)
        return base_values(values, "str")[0] if out is None else out

    def strings(self, values: Sequence[Any]) -> U64 | None:
        """Bases of ``values`` if every one is a string or ``None``, else ``None``.

        What :func:`text_bases` answers, without a Python step per known string.

        >>> StringHasher().strings(["a", 1]) is None
        True
        """
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        pos: I64 = self._index.lookup(arr)
        missing = pos < 0
        if missing.any():
            # codes: each missing value's rank among the new values, in order of appearance
            codes, new = pd.factorize(arr[missing], use_na_sentinel=False)
            if not all(isinstance(v, str) for v in new):
                return None
            if len(self) + len(new) > self.limit:
                self._reset()
                pos = self._index.lookup(arr)
                missing = pos < 0
                codes, new = pd.factorize(arr[missing], use_na_sentinel=False)
                if len(new) > self.limit:  # more than it may remember in one column
                    return base_values(values, "str")[0]
            need = self._size + len(new)
            if need > len(self._bases):
                grown = np.empty(max(need, 2 * len(self._bases)), dtype=np.uint64)
                grown[: self._size] = self._bases[: self._size]
                self._bases = grown
            self._bases[self._size : need] = _hash_strings(list(new), None)
            for i, text in enumerate(new.tolist(), self._size):
                self._index.set_item(text, i)
            pos[missing] = codes + self._size  # where the new values were just put
            self._size = need
        return self._bases[pos]


def hash_column(
    values: Sequence[Any], kind: ValueType, salt: str, cache: dict[str, int] | None = None
) -> I64:
    """Salted int64 ids of one event field (``None`` maps to the feature's missing id)."""
    base, _ = base_values(values, kind, salt, cache)
    return hash_bases(base, salt)


def hash_bases(base: U64, salt: str) -> I64:
    """Salted int64 ids from unsalted bases (ints, bucket numbers, ...).

    >>> hash_bases(np.array([1, 2], dtype=np.uint64), "hour").dtype
    dtype('int64')
    """
    with np.errstate(over="ignore"):
        return splitmix64(base.astype(np.uint64, copy=False) ^ salt64(salt)).view(np.int64)


def cross_ids(columns: Sequence[I64], salt: str) -> I64:
    """Ids of the cross of several id columns (order matters), salted.

    >>> a = np.array([1, 2], dtype=np.int64); b = np.array([5, 5], dtype=np.int64)
    >>> x = cross_ids([a, b], "cross")
    >>> bool(x[0] != x[1]), bool((cross_ids([b, a], "cross") != x).all())
    (True, True)
    """
    if not columns:
        raise ValueError("a cross needs at least one column")
    h = np.full(len(columns[0]), salt64(salt), dtype=np.uint64)
    for col in columns:
        h = splitmix64(h ^ col.view(np.uint64))
    return h.view(np.int64)
