"""Streaming per-entity window statistics, vectorised over a batch, computed from the past only.

Time is cut into buckets (e.g. days). Each entity (a hashed key such as a customer id) owns
a ring of ``window + delay`` slots; a slot holds one bucket's count, sum and sum of squares.

::

    entity row r:  slot  0      1      2     ...  R-1        R = window + delay
                   bucket b0    b1     b2         (-inf = empty)
                   count  .     .      .
                   sum    .     .      .
                   sumsq  .     .      .

    an event in bucket b reads buckets [b - delay - window + 1, b - delay]:
      from the rings (earlier batches)  +  from earlier events of its own batch
      (a stable sort by (entity, bucket) and prefix sums; with delay 0 only the events
      ahead of it in the batch, so an event never sees itself).
    then the batch is written into the rings (a newer bucket resets its slot).

With ``delay >= 1`` an event reads nothing from its own bucket: that is how label
aggregates respect label delay (a label becomes readable ``delay`` buckets later).

Budget and expiry (both decided by the data alone, so a restarted job evicts what the
uninterrupted one did): after each :meth:`WindowedAggregate.update`, an entity whose newest
bucket is more than ``ttl_buckets`` behind the newest bucket seen is dropped, and when a
batch's new entities would take the count past ``max_entities`` the least recently updated
ones (not of this batch) make room: the new entities take their places. After an expiry
the kept rows above the new end fill the holes; otherwise rows do not move. The key index is
rebuilt only once it holds as many dropped keys as live ones.
``ttl_buckets >= window + delay`` drops nothing an in-order event could still read. Every row
carries the update that last changed it (for the eviction order) and the update that last
wrote its place (changed, created or moved into a hole), so
:meth:`WindowedAggregate.dirty_state_since` gives only the places written since a mark, with
their positions, and :meth:`WindowedAggregate.load_state_delta` rebuilds the same rows in the
same places: a state restored from deltas evicts exactly what the uninterrupted one does.

>>> agg = WindowedAggregate(window=2, delay=0)
>>> keys = np.array([7, 7, 8, 7], dtype=np.int64)
>>> buckets = np.array([0, 0, 1, 2], dtype=np.int64)
>>> values = np.array([10.0, 20.0, 5.0, 1.0])
>>> stats = agg.query(keys, buckets, values)
>>> stats.count.tolist(), stats.total.tolist()   # 4th event: bucket 0 is out of its window
([0.0, 1.0, 0.0, 0.0], [0.0, 10.0, 0.0, 0.0])
>>> agg.update(keys, buckets, values)
>>> later = agg.query(np.array([7]), np.array([3]), np.zeros(1))  # key 7 in bucket 3
>>> later.total.tolist()
[1.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from embedding_store.hash_index import int64_map
from pipeline.features.entity_rows import least_recent, place_delta

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
EMPTY: Final = np.int64(-(1 << 62))
_INDEX_BYTES: Final = 48
"""Hash index bytes per entity (khash: 16 B a slot, sized to a power of two over 0.77 load)."""


@dataclass(frozen=True)
class WindowStats:
    """Per-event window statistics: count of records, sum and sum of squares of their values."""

    count: F64
    total: F64
    squares: F64

    def mean(self) -> F64:
        """Return the mean value (NaN where the window is empty)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out: F64 = np.where(self.count > 0, self.total / self.count, np.nan)
        return out

    def std(self) -> F64:
        """Return the population standard deviation (NaN where the window is empty)."""
        mean = self.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            var = self.squares / self.count - mean * mean
        out: F64 = np.sqrt(np.maximum(var, 0.0))
        return out


class WindowedAggregate:
    """Count, sum and sum of squares per entity over a sliding window of time buckets."""

    def __init__(
        self,
        window: int,
        delay: int = 0,
        capacity: int = 1024,
        *,
        max_entities: int | None = None,
        ttl_buckets: int | None = None,
    ) -> None:
        if window < 1 or delay < 0:
            raise ValueError(f"window must be >= 1 and delay >= 0, got {window}, {delay}")
        if max_entities is not None and max_entities < 1:
            raise ValueError(f"max_entities must be >= 1, got {max_entities}")
        if ttl_buckets is not None and ttl_buckets < 0:
            raise ValueError(f"ttl_buckets must be >= 0, got {ttl_buckets}")
        self.window = window
        self.delay = delay
        self.ring = window + delay
        self.max_entities = max_entities
        self.ttl_buckets = ttl_buckets
        if max_entities is not None:
            capacity = min(capacity, max_entities)
        capacity = max(capacity, 1)
        self._index = int64_map(max(capacity, 16))
        self._keys: I64 = np.empty(capacity, dtype=np.int64)
        self._bucket: I64 = np.full((capacity, self.ring), EMPTY, dtype=np.int64)
        self._stats: F64 = np.zeros((capacity, 3, self.ring), dtype=np.float64)
        self._newest: I64 = np.full(capacity, EMPTY, dtype=np.int64)  # newest bucket per row
        self._changed: I64 = np.zeros(capacity, dtype=np.int64)  # update that last changed it
        self._touched: I64 = np.zeros(capacity, dtype=np.int64)  # update that last wrote its place
        self.entities = 0
        self.generation = 0  # updates applied so far
        self.newest_bucket = int(EMPTY)
        self.evicted = 0  # entities dropped by budget or expiry, ever
        self._tombstones = 0  # dropped keys still in the index (mapped to -1)

    @staticmethod
    def bytes_per_entity(window: int, delay: int = 0) -> int:
        """Bytes one kept entity costs: ring slots, row bookkeeping and its index entry.

        >>> WindowedAggregate.bytes_per_entity(30)
        1040
        """
        ring = window + delay
        return 8 * ring + 24 * ring + 4 * 8 + _INDEX_BYTES  # bucket, stats, 4 ints, index

    def nbytes(self) -> int:
        """Bytes held by the arrays (capacity, not only the kept entities)."""
        arrays = (self._keys, self._bucket, self._stats, self._newest, self._changed, self._touched)
        return sum(a.nbytes for a in arrays) + _INDEX_BYTES * len(self._keys)

    # -- rows ----------------------------------------------------------------
    def _rows(self, keys: I64) -> I64:
        """Row of each key, -1 where unknown."""
        if self.entities == 0 or len(keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        rows = np.asarray(self._index.lookup(keys), dtype=np.int64)
        return rows

    def _rows_create(self, keys: I64) -> I64:
        rows = self._rows(keys)
        new = rows < 0
        if new.any():
            fresh = np.unique(keys[new])
            start = self.entities
            self._grow(start + len(fresh))
            slots = np.arange(start, start + len(fresh), dtype=np.int64)
            self._index.map_keys_to_values(fresh, slots)
            self._keys[slots] = fresh
            self.entities += len(fresh)
            rows[new] = np.asarray(self._index.lookup(keys[new]), dtype=np.int64)
        return rows

    def _grow(self, needed: int) -> None:
        cap = len(self._keys)
        if needed <= cap:
            return
        new_cap = max(needed, 2 * cap)
        if self.max_entities is not None:  # never more than the budget (and this batch)
            new_cap = max(needed, min(new_cap, self.max_entities))
        keys = np.empty(new_cap, dtype=np.int64)
        keys[:cap] = self._keys
        bucket = np.full((new_cap, self.ring), EMPTY, dtype=np.int64)
        bucket[:cap] = self._bucket
        stats = np.zeros((new_cap, 3, self.ring), dtype=np.float64)
        stats[:cap] = self._stats
        newest = np.full(new_cap, EMPTY, dtype=np.int64)
        newest[:cap] = self._newest
        changed = np.zeros(new_cap, dtype=np.int64)
        changed[:cap] = self._changed
        touched = np.zeros(new_cap, dtype=np.int64)
        touched[:cap] = self._touched
        self._keys, self._bucket, self._stats = keys, bucket, stats
        self._newest, self._changed, self._touched = newest, changed, touched

    # -- reading -------------------------------------------------------------
    def query(
        self,
        keys: I64,
        buckets: I64,
        values: F64,
        valid: npt.NDArray[np.bool_] | None = None,
        *,
        within_batch: bool = True,
    ) -> WindowStats:
        """Window statistics for each event, from earlier batches and earlier events of this one.

        ``valid`` marks the events whose value counts as a record (default: all). With
        ``within_batch=False`` each event reads the stored rings only, as if it came alone
        (serving: a score must not depend on the other events of a request).
        """
        n = len(keys)
        ok = np.ones(n, dtype=np.bool_) if valid is None else valid
        vals = np.where(ok, values, 0.0)
        hi_b = buckets - self.delay
        lo_b = hi_b - (self.window - 1)
        out = np.zeros((3, n), dtype=np.float64)
        rows = self._rows(keys)
        known = rows >= 0
        if known.any():
            r = rows[known]
            stored = self._bucket[r]
            inside = (stored >= lo_b[known, None]) & (stored <= hi_b[known, None])
            out[:, known] = np.einsum("mkr,mr->km", self._stats[r], inside.astype(np.float64))
        if n > 1 and within_batch:
            out += self._within_batch(keys, buckets, lo_b=lo_b, hi_b=hi_b, vals=vals, ok=ok)
        return WindowStats(out[0], out[1], out[2])

    def _within_batch(
        self,
        keys: I64,
        buckets: I64,
        *,
        lo_b: I64,
        hi_b: I64,
        vals: F64,
        ok: npt.NDArray[np.bool_],
    ) -> F64:
        n = len(keys)
        _, group = np.unique(keys, return_inverse=True)
        bmin = int(buckets.min())
        span = int(buckets.max()) - bmin + 2
        sort_key = group.astype(np.int64) * span + (buckets - bmin)
        order = np.argsort(sort_key, kind="stable")
        sorted_key = sort_key[order]
        lo = np.searchsorted(
            sorted_key, group * span + np.clip(lo_b - bmin, 0, span - 1), side="left"
        )
        if self.delay == 0:
            hi = np.empty(n, dtype=np.int64)
            hi[order] = np.arange(n, dtype=np.int64)
        else:
            hi = np.searchsorted(
                sorted_key, group * span + np.clip(hi_b - bmin, -1, span - 2), side="right"
            )
        hi = np.maximum(hi, lo)
        columns = np.stack([ok.astype(np.float64), vals, vals * vals])[:, order]
        prefix = np.zeros((3, n + 1), dtype=np.float64)
        np.cumsum(columns, axis=1, out=prefix[:, 1:])
        out: F64 = prefix[:, hi] - prefix[:, lo]
        return out

    # -- writing -------------------------------------------------------------
    def update(
        self, keys: I64, buckets: I64, values: F64, valid: npt.NDArray[np.bool_] | None = None
    ) -> None:
        """Write the batch's records into the rings (call after :meth:`query`)."""
        if valid is not None:
            keys, buckets, values = keys[valid], buckets[valid], values[valid]
        if len(keys) == 0:
            return
        self.generation += 1
        if self.max_entities is not None:
            self._make_room(keys)
        rows = self._rows_create(keys)
        np.maximum.at(self._newest, rows, buckets)
        self._changed[rows] = self.generation
        self._touched[rows] = self.generation
        self.newest_bucket = max(self.newest_bucket, int(buckets.max()))
        slot = buckets % self.ring
        pair = rows * self.ring + slot
        upair, inv = np.unique(pair, return_inverse=True)
        newest = np.full(len(upair), EMPTY, dtype=np.int64)
        np.maximum.at(newest, inv, buckets)
        keep = buckets == newest[inv]
        ur, us = upair // self.ring, upair % self.ring
        stored = self._bucket[ur, us]
        newer = newest > stored
        self._stats[ur[newer], :, us[newer]] = 0.0
        self._bucket[ur[newer], us[newer]] = newest[newer]
        live = newest >= stored
        k = inv[keep]
        v = values[keep]
        m = len(upair)
        add = np.stack(
            [np.bincount(k, minlength=m), np.bincount(k, v, m), np.bincount(k, v * v, m)]
        ).astype(np.float64)
        self._stats[ur[live], :, us[live]] += add[:, live].T
        if self.ttl_buckets is not None:
            n = self.entities
            stale = self._newest[:n] < self.newest_bucket - self.ttl_buckets
            if stale.any():
                self._drop(~stale)

    # -- budget and expiry ---------------------------------------------------
    def _make_room(self, keys: I64) -> None:
        """Drop least recently updated entities so this batch's new keys fit the budget."""
        assert self.max_entities is not None
        n = self.entities
        rows = self._rows(keys)
        fresh_keys = np.unique(keys[rows < 0])
        fresh = len(fresh_keys)
        if n + fresh <= self.max_entities:
            return
        target = max(0, self.max_entities - fresh)
        # least recently updated first; this batch's own keys stay
        victims = least_recent(self._changed, rows[rows >= 0], n, target)
        # more victims than new keys only when already over the cap (an earlier batch had more
        # keys than it): the extra ones are dropped after the others are taken
        victims, extra = victims[:fresh], victims[fresh:]
        # the new keys take the victims' places: nothing moves, so a delta carries the
        # changed rows only
        taken = fresh_keys[: len(victims)]
        gone = self._keys[victims].copy()
        self._bucket[victims] = EMPTY
        self._stats[victims] = 0.0
        self._newest[victims] = EMPTY
        self._changed[victims] = 0
        self._touched[victims] = self.generation
        self._keys[victims] = taken
        self._index.map_keys_to_values(gone, np.full(len(gone), -1, dtype=np.int64))
        self._index.map_keys_to_values(taken, victims.astype(np.int64))
        self._tombstones += len(gone)
        self._rebuild_index_if_stale()
        self.evicted += len(gone)
        if len(extra):
            keep = np.ones(n, dtype=np.bool_)
            keep[extra] = False
            self._drop(keep)

    def _rebuild_index_if_stale(self) -> None:
        m = self.entities
        if self._tombstones > max(m, 1024):
            self._index = int64_map(max(len(self._keys), 16))
            if m:
                self._index.map_keys_to_values(self._keys[:m], np.arange(m, dtype=np.int64))
            self._tombstones = 0

    def _drop(self, keep: npt.NDArray[np.bool_]) -> None:
        """Keep only the rows where ``keep`` (over the first ``entities``)."""
        n = self.entities
        gone = self._keys[:n][~keep]
        if len(gone) == 0:
            return
        m = int(keep.sum())
        # fill the holes below m with the kept rows above it: rows that stay keep their place,
        # so a published patch of these arrays carries the changed and moved rows only
        holes = np.flatnonzero(~keep[:m])
        movers = m + np.flatnonzero(keep[m:])
        for arr in (self._keys, self._bucket, self._stats, self._newest, self._changed):
            arr[holes] = arr[movers]
        self._touched[holes] = self.generation
        self._clear(m, n)
        self.entities = m
        # the index cannot delete: a dropped key maps to -1 (unknown) until the next rebuild
        self._index.map_keys_to_values(gone, np.full(len(gone), -1, dtype=np.int64))
        self._index.map_keys_to_values(self._keys[holes], holes.astype(np.int64))
        self._tombstones += len(gone)
        self._rebuild_index_if_stale()
        self.evicted += len(gone)

    def _clear(self, start: int, stop: int) -> None:
        """Empty the places ``start:stop`` (above the kept entities)."""
        self._bucket[start:stop] = EMPTY
        self._stats[start:stop] = 0.0
        self._newest[start:stop] = EMPTY
        self._changed[start:stop] = 0
        self._touched[start:stop] = 0

    # -- incremental state ---------------------------------------------------
    def mark(self) -> int:
        """A point to take :meth:`dirty_state_since` from."""
        return self.generation

    def forget_before(self, mark: int) -> None:
        """Nothing to release: a delta is read from the rows themselves (kept for the API)."""

    def dirty_state_since(self, mark: int) -> dict[str, npt.NDArray[np.generic]]:
        """The places written after ``mark`` (whole rows, with their positions) and the clock.

        Its size is proportional to the entities changed, created or moved since ``mark``,
        not to those kept; apply it to the state at ``mark`` with :meth:`load_state_delta`.
        Dropped entities need no record: the delta's entity count ends the kept rows, and
        every place below it that was not written holds what it held at ``mark``.
        """
        n = self.entities
        rows = np.flatnonzero(self._touched[:n] > mark)
        return {
            "rows": rows.astype(np.int64),
            "keys": self._keys[rows].copy(),
            "bucket": self._bucket[rows].copy(),
            "stats": self._stats[rows].copy(),
            "newest": self._newest[rows].copy(),
            "changed": self._changed[rows].copy(),
            "clock": np.array(
                [self.generation, self.newest_bucket, self.evicted, n], dtype=np.int64
            ),
        }

    def load_state_delta(self, delta: Mapping[str, npt.NDArray[np.generic]]) -> None:
        """Apply :meth:`dirty_state_since`'s output to the state at its mark (same places)."""
        generation, newest_bucket, evicted, n = (int(c) for c in np.asarray(delta["clock"]))

        def write(rows: npt.NDArray[np.int64]) -> None:
            self._bucket[rows] = np.asarray(delta["bucket"], dtype=np.int64)
            self._stats[rows] = np.asarray(delta["stats"], dtype=np.float64)
            self._newest[rows] = np.asarray(delta["newest"], dtype=np.int64)
            self._changed[rows] = np.asarray(delta["changed"], dtype=np.int64)

        place_delta(self, delta, n, generation, write)
        self._rebuild_index_if_stale()
        self.generation, self.newest_bucket, self.evicted = generation, newest_bucket, evicted

    # -- checkpoints ---------------------------------------------------------
    def state_dict(self) -> dict[str, npt.NDArray[np.generic]]:
        """Plain arrays (keys, buckets, stats) for a checkpoint."""
        n = self.entities
        out: dict[str, npt.NDArray[np.generic]] = {
            "keys": self._keys[:n].copy(),
            "bucket": self._bucket[:n].copy(),
            "stats": self._stats[:n].copy(),
        }
        if self.max_entities is not None or self.ttl_buckets is not None:
            out["newest"] = self._newest[:n].copy()
            out["changed"] = self._changed[:n].copy()
            out["clock"] = np.array([self.generation, self.newest_bucket, self.evicted], np.int64)
        return out

    def load_state_dict(self, state: dict[str, npt.NDArray[np.generic]]) -> None:
        """Restore what :meth:`state_dict` returned (the window shape must match)."""
        keys = np.asarray(state["keys"], dtype=np.int64)
        bucket = np.asarray(state["bucket"], dtype=np.int64)
        if bucket.shape[1:] != (self.ring,):
            raise ValueError(f"state has {bucket.shape[1:]} slots per entity, expected {self.ring}")
        n = len(keys)
        self.__init__(  # type: ignore[misc]
            self.window,
            self.delay,
            max(n, 16),
            max_entities=self.max_entities,
            ttl_buckets=self.ttl_buckets,
        )
        self._grow(n)
        self._index.map_keys_to_values(keys, np.arange(n, dtype=np.int64))
        self._keys[:n] = keys
        self._bucket[:n] = bucket
        self._stats[:n] = np.asarray(state["stats"], dtype=np.float64)
        if "newest" in state:
            self._newest[:n] = np.asarray(state["newest"], dtype=np.int64)
            self._changed[:n] = np.asarray(state["changed"], dtype=np.int64)
            clock = np.asarray(state["clock"], dtype=np.int64)
            self.generation, self.newest_bucket, self.evicted = (int(c) for c in clock)
        else:  # written without budget or expiry: rebuild what the rows tell
            self._newest[:n] = bucket.max(axis=1, initial=int(EMPTY))
        self.entities = n
