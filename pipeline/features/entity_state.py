"""Per-entity state beyond windows: time since the previous event, distinct values seen.

Both read only the past (earlier batches, then earlier events of the same batch; an event
never sees itself) and are vectorised over a batch: one stable sort by entity, then
shifts and cumulative sums, with a vectorised int64 map (``embedding_store.hash_index``)
from entity (or entity-value pair) to its row.

::

    SincePrevious   entity ──► last event time            reads: t - last (NaN: first event)
    DistinctCount   entity ──► number of distinct values   reads: values seen before this event
                    (entity, value) pair ──► seen

>>> since = SincePrevious()
>>> keys = np.array([7, 8, 7], dtype=np.int64)
>>> since.query(keys, np.array([10.0, 11.0, 25.0])).tolist()
[nan, nan, 15.0]
>>> since.update(keys, np.array([10.0, 11.0, 25.0]))
>>> since.query(np.array([7], dtype=np.int64), np.array([30.0])).tolist()
[5.0]
>>> distinct = DistinctCount()
>>> vals = np.array([1, 1, 2], dtype=np.int64)
>>> distinct.query(np.array([7, 7, 7], dtype=np.int64), vals).tolist()
[0.0, 1.0, 1.0]
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from embedding_store.hash_index import int64_map
from pipeline.features.hashing import cross_ids

__all__ = ["DistinctCount", "SincePrevious"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
_PAIR_SALT: Final = "distinct/pair"


def _previous_in_group(keys: I64) -> tuple[I64, I64]:
    """``(order, prev)``: a stable sort by key; each event's previous one of its key (-1: none)."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    prev_sorted = np.full(len(keys), -1, dtype=np.int64)
    same = np.empty(len(keys), dtype=np.bool_)
    if len(keys):
        same[0] = False
        same[1:] = sk[1:] == sk[:-1]
        prev_sorted[1:] = np.where(same[1:], order[:-1], -1)
    prev = np.empty(len(keys), dtype=np.int64)
    prev[order] = prev_sorted
    return order, prev


class _Table:
    """Key -> row with growing value arrays (a vectorised int64 map, see ``hash_index``)."""

    def __init__(self) -> None:
        self.index = int64_map(16)
        self.keys: I64 = np.empty(0, dtype=np.int64)

    def rows(self, keys: I64) -> I64:
        if len(self.keys) == 0 or len(keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        return np.asarray(self.index.lookup(keys), dtype=np.int64)

    def add(self, fresh: I64) -> I64:
        """Rows for keys not yet in the table (``fresh`` unique); returns their rows."""
        start = len(self.keys)
        slots = np.arange(start, start + len(fresh), dtype=np.int64)
        self.index.map_keys_to_values(fresh, slots)
        self.keys = np.concatenate([self.keys, fresh])
        return slots


class SincePrevious:
    """Seconds since each entity's previous event (NaN for an entity's first event)."""

    def __init__(self) -> None:
        self._table = _Table()
        self._last: F64 = np.empty(0, dtype=np.float64)

    def query(self, keys: I64, times: F64) -> F64:
        """Seconds since the previous event of each event's entity."""
        _, prev = _previous_in_group(keys)
        before = np.full(len(keys), np.nan)
        inside = prev >= 0
        before[inside] = times[prev[inside]]
        first = ~inside
        if first.any():
            rows = self._table.rows(keys[first])
            known = rows >= 0
            got = np.full(len(rows), np.nan)
            got[known] = self._last[rows[known]]
            before[first] = got
        out: F64 = times - before
        return out

    def update(self, keys: I64, times: F64) -> None:
        """Remember each entity's latest event time of the batch (the newest of all kept)."""
        if not len(keys):
            return
        uniq, inv = np.unique(keys, return_inverse=True)
        newest = np.full(len(uniq), -np.inf)
        np.maximum.at(newest, inv, times)
        rows = self._table.rows(uniq)
        fresh = rows < 0
        if fresh.any():
            rows[fresh] = self._table.add(uniq[fresh])
            self._last = np.concatenate([self._last, np.full(int(fresh.sum()), -np.inf)])
        self._last[rows] = np.maximum(self._last[rows], newest)

    def state_dict(self) -> dict[str, npt.NDArray[np.generic]]:
        """Plain arrays for a checkpoint."""
        return {"keys": self._table.keys.copy(), "last": self._last.copy()}

    def load_state_dict(self, state: dict[str, npt.NDArray[np.generic]]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.__init__()  # type: ignore[misc]
        keys = np.asarray(state["keys"], dtype=np.int64)
        self._table.add(keys)
        self._last = np.asarray(state["last"], dtype=np.float64).copy()


class DistinctCount:
    """How many distinct values each entity had before each event (exact, all time)."""

    def __init__(self) -> None:
        self._entities = _Table()
        self._counts: F64 = np.empty(0, dtype=np.float64)
        self._pairs = _Table()

    def _new_pairs(self, keys: I64, values: I64) -> tuple[I64, npt.NDArray[np.bool_]]:
        """Pair ids, and which events bring a pair seen neither before nor earlier here."""
        pairs = cross_ids([keys, values], _PAIR_SALT)
        _, first_at = np.unique(pairs, return_index=True)
        first = np.zeros(len(pairs), dtype=np.bool_)
        first[first_at] = True
        return pairs, first & (self._pairs.rows(pairs) < 0)

    def query(self, keys: I64, values: I64, valid: npt.NDArray[np.bool_] | None = None) -> F64:
        """Distinct values of each event's entity among its earlier events (``valid`` ones)."""
        _, new = self._new_pairs(keys, values)
        if valid is not None:
            new &= valid
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        csum = np.cumsum(new[order].astype(np.float64))
        starts = np.searchsorted(sk, sk, side="left")
        earlier = csum - new[order] - np.where(starts > 0, csum[starts - 1], 0.0)
        within = np.empty(len(keys), dtype=np.float64)
        within[order] = earlier
        rows = self._entities.rows(keys)
        known = rows >= 0
        stored = np.zeros(len(keys), dtype=np.float64)
        stored[known] = self._counts[rows[known]]
        out: F64 = stored + within
        return out

    def update(self, keys: I64, values: I64, valid: npt.NDArray[np.bool_] | None = None) -> None:
        """Count the batch's new (entity, value) pairs."""
        if valid is not None:
            keys, values = keys[valid], values[valid]
        if not len(keys):
            return
        pairs, new = self._new_pairs(keys, values)
        if not new.any():
            return
        self._pairs.add(pairs[new])
        uniq, inv = np.unique(keys[new], return_inverse=True)
        adds = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
        rows = self._entities.rows(uniq)
        fresh = rows < 0
        if fresh.any():
            rows[fresh] = self._entities.add(uniq[fresh])
            self._counts = np.concatenate([self._counts, np.zeros(int(fresh.sum()))])
        self._counts[rows] += adds

    def state_dict(self) -> dict[str, npt.NDArray[np.generic]]:
        """Plain arrays for a checkpoint."""
        return {
            "keys": self._entities.keys.copy(),
            "counts": self._counts.copy(),
            "pairs": self._pairs.keys.copy(),
        }

    def load_state_dict(self, state: dict[str, npt.NDArray[np.generic]]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.__init__()  # type: ignore[misc]
        self._entities.add(np.asarray(state["keys"], dtype=np.int64))
        self._counts = np.asarray(state["counts"], dtype=np.float64).copy()
        self._pairs.add(np.asarray(state["pairs"], dtype=np.int64))
