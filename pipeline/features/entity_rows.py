"""Rows of per-entity values, keyed by int64, with a cap, an expiry and incremental deltas.

The entity states (:mod:`pipeline.features.entity_state`) keep one row per entity (a time
since the previous event, a distinct count) or per (entity, value) pair. Like the window
aggregates (:mod:`pipeline.features.aggregates`), a stream of ever new ids would grow them
without end, so an :class:`EntityRows` is bounded the same way, by rules that depend on the
events alone (a restarted job drops what the uninterrupted one drops):

- ``max_entities``: when an update's new keys would take the count past it, the least
  recently updated rows (not of this update) make room;
- ``ttl_seconds``: after an update, a row whose newest event time is more than this behind
  the newest time seen is dropped (only for rows updated with times).

Rows evicted for room are taken by the new keys in place; rows dropped by the expiry leave
holes that the kept rows above the new end fill; the others do not move.
Every row carries the update that last changed it (the eviction order) and the update that
last wrote its place, so :meth:`EntityRows.dirty_state_since` gives the places written since
a mark and :meth:`EntityRows.load_state_delta` rebuilds the same rows in the same places::

    keys     7   9   4   12        a row: key, its columns (e.g. "last": float64),
    last     .   .   .   .                newest event time, changed, touched
    changed  3   5   5   6
    touched  3   5   5   6

>>> rows = EntityRows({"last": (np.float64, -np.inf)}, max_entities=2)
>>> r = rows.touch(np.array([7, 9], np.int64), np.array([1.0, 2.0]))
>>> rows.columns["last"][r] = [1.0, 2.0]
>>> mark = rows.mark()
>>> r = rows.touch(np.array([4], np.int64), np.array([3.0]))  # evicts 7, the oldest
>>> rows.columns["last"][r] = 3.0
>>> sorted(rows.keys().tolist()), rows.evicted
([4, 9], 1)
>>> twin = EntityRows({"last": (np.float64, -np.inf)}, max_entities=2)
>>> twin.load_state_dict({"keys": np.array([7, 9]), "last": np.array([1.0, 2.0])})
>>> twin.load_state_delta(rows.dirty_state_since(mark))
>>> twin.keys().tolist() == rows.keys().tolist(), twin.columns["last"][:2].tolist()
(True, [3.0, 2.0])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from embedding_store.hash_index import int64_map

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
NO_TIME: Final = -np.inf
INDEX_BYTES: Final = 48
"""Hash index bytes per row (khash: 16 B a slot, sized to a power of two over 0.77 load)."""
ROW_BYTES: Final = 8 * 4 + INDEX_BYTES
"""Bytes a row costs besides its columns: key, newest time, changed, touched, index entry."""


def least_recent(changed: I64, own: I64, n: int, target: int) -> I64:
    """Places (sorted) of the ``n - target`` least recently changed of the first ``n`` rows.

    ``changed`` holds each row's last update; rows in ``own`` (this update's keys) are never
    chosen, so fewer may come back. O(n): a partition, no sort of the whole.

    >>> least_recent(np.array([5, 1, 9, 3]), np.array([1]), 4, 2).tolist()
    [0, 3]
    """
    priority = changed[:n].copy()
    priority[own] = np.iinfo(np.int64).max
    victims = np.argpartition(priority, n - target - 1)[: n - target]
    return np.sort(victims[priority[victims] < np.iinfo(np.int64).max])


class PlacedRows(Protocol):
    """What :func:`place_delta` needs of a keyed state: rows at places, an index of their keys."""

    entities: int
    _keys: I64
    _touched: I64
    _index: Any
    _tombstones: int

    def _grow(self, needed: int) -> None: ...

    def _clear(self, start: int, stop: int) -> None: ...


def place_delta(
    state: PlacedRows,
    delta: Mapping[str, npt.NDArray[Any]],
    n: int,
    generation: int,
    write_columns: Callable[[I64], None],
) -> None:
    """Put a delta's rows back at their places (``EntityRows`` and the window aggregates).

    The delta holds the rows written since a mark, with their places, and ``n``, the rows
    kept. Keys a written place held before, and keys above the new end, are displaced: their
    index entries become tombstones unless the same key comes back at another place.
    ``write_columns(rows)`` writes the state's own columns for those places.
    """
    rows = np.asarray(delta["rows"], dtype=np.int64)
    keys = np.asarray(delta["keys"], dtype=np.int64)
    old = state.entities
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"delta rows outside the {n} entities it keeps")
    state._grow(n)
    displaced = np.concatenate([state._keys[rows[rows < old]], state._keys[n:old]])
    if n < old:
        state._clear(n, old)
    state._keys[rows] = keys
    write_columns(rows)
    state._touched[rows] = generation
    state.entities = n
    if len(displaced):
        state._index.map_keys_to_values(displaced, np.full(len(displaced), -1, np.int64))
        state._tombstones += int((~np.isin(displaced, keys)).sum())
    if len(keys):
        state._index.map_keys_to_values(keys, rows)


class EntityRows:
    """Keyed rows with named value columns (see the module docstring). Does no I/O."""

    def __init__(
        self,
        columns: Mapping[str, tuple[Any, Any]],
        *,
        max_entities: int | None = None,
        ttl_seconds: float | None = None,
        capacity: int = 1024,
        report_drops: bool = False,
    ) -> None:
        if max_entities is not None and max_entities < 1:
            raise ValueError(f"max_entities must be >= 1, got {max_entities}")
        if ttl_seconds is not None and not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds}")
        self.spec = dict(columns)
        self.max_entities = max_entities
        self.ttl_seconds = ttl_seconds
        cap = max(1, min(capacity, max_entities) if max_entities is not None else capacity)
        self._index = int64_map(max(cap, 16))
        self._keys: I64 = np.empty(cap, dtype=np.int64)
        self.columns: dict[str, npt.NDArray[Any]] = {
            name: np.full(cap, fill, dtype=dtype) for name, (dtype, fill) in self.spec.items()
        }
        self._newest: F64 = np.full(cap, NO_TIME)  # newest event time per row
        self._changed: I64 = np.zeros(cap, dtype=np.int64)  # update that last changed it
        self._touched: I64 = np.zeros(cap, dtype=np.int64)  # update that last wrote its place
        self.entities = 0
        self.generation = 0
        self.newest_time = float(NO_TIME)
        self.evicted = 0
        self._tombstones = 0
        self.report_drops = report_drops
        self._dropped: list[I64] = []  # keys dropped since take_dropped(), if reported

    @property
    def bounded(self) -> bool:
        """Whether a cap or an expiry is set (then the bookkeeping is saved too)."""
        return self.max_entities is not None or self.ttl_seconds is not None

    def keys(self) -> I64:
        """The kept keys, in row order."""
        return self._keys[: self.entities]

    def nbytes(self) -> int:
        """Bytes held by the arrays (capacity, not only the kept rows)."""
        arrays = (self._keys, self._newest, self._changed, self._touched, *self.columns.values())
        return sum(a.nbytes for a in arrays) + INDEX_BYTES * len(self._keys)

    # -- rows ----------------------------------------------------------------
    def rows(self, keys: I64) -> I64:
        """Row of each key, -1 where unknown."""
        if self.entities == 0 or len(keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        return np.asarray(self._index.lookup(keys), dtype=np.int64)

    def _grow(self, needed: int) -> None:
        cap = len(self._keys)
        if needed <= cap:
            return
        new_cap = max(needed, 2 * cap)
        if self.max_entities is not None:
            new_cap = max(needed, min(new_cap, self.max_entities))

        def grown(arr: npt.NDArray[Any], fill: Any) -> npt.NDArray[Any]:
            out = np.full(new_cap, fill, dtype=arr.dtype)
            out[:cap] = arr
            return out

        self._keys = grown(self._keys, 0)
        self._newest = grown(self._newest, NO_TIME)
        self._changed = grown(self._changed, 0)
        self._touched = grown(self._touched, 0)
        for name, (_, fill) in self.spec.items():
            self.columns[name] = grown(self.columns[name], fill)

    def touch(self, keys: I64, times: F64 | None = None) -> I64:
        """The rows of ``keys`` (unique), created where new, marked as updated now.

        Makes room first (``max_entities``); ``times`` (each key's newest event time) feed the
        expiry, applied by :meth:`expire` once the caller has written its values.
        """
        if len(keys) == 0:
            return np.empty(0, dtype=np.int64)
        self.generation += 1
        if self.max_entities is not None:
            self._make_room(keys)
        rows = self.rows(keys)
        new = rows < 0
        if new.any():
            start = self.entities
            self._grow(start + int(new.sum()))
            slots = np.arange(start, start + int(new.sum()), dtype=np.int64)
            self._index.map_keys_to_values(keys[new], slots)
            self._keys[slots] = keys[new]
            self.entities += len(slots)
            rows[new] = slots
        self._changed[rows] = self.generation
        self._touched[rows] = self.generation
        if times is not None:
            np.maximum.at(self._newest, rows, times)
            self.newest_time = max(self.newest_time, float(times.max()))
        return rows

    def expire(self) -> I64:
        """Drop rows idle past ``ttl_seconds``; the keys dropped."""
        if self.ttl_seconds is None or not self.entities:
            return np.empty(0, dtype=np.int64)
        stale = self._newest[: self.entities] < self.newest_time - self.ttl_seconds
        return self.drop(~stale) if stale.any() else np.empty(0, dtype=np.int64)

    def _make_room(self, keys: I64) -> None:
        assert self.max_entities is not None
        n = self.entities
        rows = self.rows(keys)
        fresh_keys = np.sort(keys[rows < 0])
        fresh = len(fresh_keys)
        if n + fresh <= self.max_entities:
            return
        target = max(0, self.max_entities - fresh)
        victims = least_recent(self._changed, rows[rows >= 0], n, target)  # own keys stay
        # the new keys take the victims' places (nothing moves); more victims than new keys
        # only when already over the cap: the extra ones are dropped after
        victims, extra = victims[:fresh], victims[fresh:]
        taken = fresh_keys[: len(victims)]
        gone = self._keys[victims].copy()
        self._clear_rows(victims)
        self._touched[victims] = self.generation
        self._keys[victims] = taken
        self._index.map_keys_to_values(gone, np.full(len(gone), -1, dtype=np.int64))
        self._index.map_keys_to_values(taken, victims.astype(np.int64))
        self._tombstones += len(gone)
        self._maybe_rebuild()
        self.evicted += len(gone)
        if self.report_drops:
            self._dropped.append(gone)
        if len(extra):
            keep = np.ones(n, dtype=np.bool_)
            keep[extra] = False
            self.drop(keep)

    def drop(self, keep: npt.NDArray[np.bool_]) -> I64:
        """Keep only the rows where ``keep`` (over the kept rows); the keys dropped."""
        n = self.entities
        gone = self._keys[:n][~keep].copy()
        if len(gone) == 0:
            return gone
        m = int(keep.sum())
        holes = np.flatnonzero(~keep[:m])
        movers = m + np.flatnonzero(keep[m:])
        for arr in (self._keys, self._newest, self._changed, *self.columns.values()):
            arr[holes] = arr[movers]
        self._touched[holes] = self.generation
        self._clear(m, n)
        self.entities = m
        self._index.map_keys_to_values(gone, np.full(len(gone), -1, dtype=np.int64))
        self._index.map_keys_to_values(self._keys[holes], holes.astype(np.int64))
        self._tombstones += len(gone)
        self._maybe_rebuild()
        self.evicted += len(gone)
        if self.report_drops:
            self._dropped.append(gone)
        return gone

    def take_dropped(self) -> I64:
        """The keys dropped (by the cap or the expiry) since the last call (``report_drops``)."""
        out = np.concatenate(self._dropped) if self._dropped else np.empty(0, dtype=np.int64)
        self._dropped = []
        return out

    def _clear(self, start: int, stop: int) -> None:
        self._clear_rows(slice(start, stop))
        self._touched[start:stop] = 0

    def _clear_rows(self, rows: Any) -> None:
        self._newest[rows] = NO_TIME
        self._changed[rows] = 0
        for name, (_, fill) in self.spec.items():
            self.columns[name][rows] = fill

    def _maybe_rebuild(self) -> None:
        n = self.entities
        if self._tombstones > max(n, 1024):
            self._index = int64_map(max(len(self._keys), 16))
            if n:
                self._index.map_keys_to_values(self._keys[:n], np.arange(n, dtype=np.int64))
            self._tombstones = 0

    # -- incremental state ---------------------------------------------------
    def mark(self) -> int:
        """A point to take :meth:`dirty_state_since` from."""
        return self.generation

    def dirty_state_since(self, mark: int) -> dict[str, npt.NDArray[Any]]:
        """The places written after ``mark`` (whole rows, with positions) and the clock."""
        n = self.entities
        rows = np.flatnonzero(self._touched[:n] > mark).astype(np.int64)
        out: dict[str, npt.NDArray[Any]] = {
            "rows": rows,
            "keys": self._keys[rows].copy(),
            "newest": self._newest[rows].copy(),
            "changed": self._changed[rows].copy(),
            "clock": np.array([self.generation, self.evicted, n], dtype=np.int64),
            "time": np.array([self.newest_time], dtype=np.float64),
        }
        for name, column in self.columns.items():
            out[name] = column[rows].copy()
        return out

    def load_state_delta(self, delta: Mapping[str, npt.NDArray[Any]]) -> None:
        """Apply :meth:`dirty_state_since`'s output to the state at its mark (same places)."""
        generation, evicted, n = (int(c) for c in np.asarray(delta["clock"]))

        def write(rows: I64) -> None:
            self._newest[rows] = np.asarray(delta["newest"], dtype=np.float64)
            self._changed[rows] = np.asarray(delta["changed"], dtype=np.int64)
            for name, (dtype, _) in self.spec.items():
                self.columns[name][rows] = np.asarray(delta[name], dtype=dtype)

        place_delta(self, delta, n, generation, write)
        self._maybe_rebuild()
        self.generation, self.evicted = generation, evicted
        self.newest_time = float(np.asarray(delta["time"])[0])

    # -- checkpoints ---------------------------------------------------------
    def state_dict(self, key_name: str = "keys") -> dict[str, npt.NDArray[Any]]:
        """The kept rows (keys and columns; with a cap or expiry, the bookkeeping too)."""
        n = self.entities
        out: dict[str, npt.NDArray[Any]] = {key_name: self._keys[:n].copy()}
        for name, column in self.columns.items():
            out[name] = column[:n].copy()
        if self.bounded:
            out["newest"] = self._newest[:n].copy()
            out["changed"] = self._changed[:n].copy()
            out["clock"] = np.array([self.generation, self.evicted, n], dtype=np.int64)
            out["time"] = np.array([self.newest_time], dtype=np.float64)
        return out

    def load_state_dict(
        self, state: Mapping[str, npt.NDArray[Any]], key_name: str = "keys"
    ) -> None:
        """Restore what :meth:`state_dict` returned (columns it lacks take their fill)."""
        keys = np.asarray(state[key_name], dtype=np.int64)
        n = len(keys)
        self.__init__(  # type: ignore[misc]
            self.spec,
            max_entities=self.max_entities,
            ttl_seconds=self.ttl_seconds,
            capacity=max(n, 16),
            report_drops=self.report_drops,
        )
        self._grow(n)
        self._index.map_keys_to_values(keys, np.arange(n, dtype=np.int64))
        self._keys[:n] = keys
        for name, (dtype, _) in self.spec.items():
            if name in state:
                self.columns[name][:n] = np.asarray(state[name], dtype=dtype)
        if "clock" in state:
            self._newest[:n] = np.asarray(state["newest"], dtype=np.float64)
            self._changed[:n] = np.asarray(state["changed"], dtype=np.int64)
            self.generation, self.evicted, _ = (int(c) for c in np.asarray(state["clock"]))
            self.newest_time = float(np.asarray(state["time"])[0])
        self.entities = n
