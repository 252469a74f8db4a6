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

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from pandas._libs.hashtable import Int64HashTable

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
EMPTY: Final = np.int64(-(1 << 62))


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

    def __init__(self, window: int, delay: int = 0, capacity: int = 1024) -> None:
        if window < 1 or delay < 0:
            raise ValueError(f"window must be >= 1 and delay >= 0, got {window}, {delay}")
        self.window = window
        self.delay = delay
        self.ring = window + delay
        self._index = Int64HashTable(max(capacity, 16))
        self._keys: I64 = np.empty(capacity, dtype=np.int64)
        self._bucket: I64 = np.full((capacity, self.ring), EMPTY, dtype=np.int64)
        self._stats: F64 = np.zeros((capacity, 3, self.ring), dtype=np.float64)
        self.entities = 0

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
        keys = np.empty(new_cap, dtype=np.int64)
        keys[:cap] = self._keys
        bucket = np.full((new_cap, self.ring), EMPTY, dtype=np.int64)
        bucket[:cap] = self._bucket
        stats = np.zeros((new_cap, 3, self.ring), dtype=np.float64)
        stats[:cap] = self._stats
        self._keys, self._bucket, self._stats = keys, bucket, stats

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
        rows = self._rows_create(keys)
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

    # -- checkpoints ---------------------------------------------------------
    def state_dict(self) -> dict[str, npt.NDArray[np.generic]]:
        """Plain arrays (keys, buckets, stats) for a checkpoint."""
        n = self.entities
        return {
            "keys": self._keys[:n].copy(),
            "bucket": self._bucket[:n].copy(),
            "stats": self._stats[:n].copy(),
        }

    def load_state_dict(self, state: dict[str, npt.NDArray[np.generic]]) -> None:
        """Restore what :meth:`state_dict` returned (the window shape must match)."""
        keys = np.asarray(state["keys"], dtype=np.int64)
        bucket = np.asarray(state["bucket"], dtype=np.int64)
        if bucket.shape[1:] != (self.ring,):
            raise ValueError(f"state has {bucket.shape[1:]} slots per entity, expected {self.ring}")
        n = len(keys)
        self.__init__(self.window, self.delay, max(n, 16))  # type: ignore[misc]
        self._index.map_keys_to_values(keys, np.arange(n, dtype=np.int64))
        self._keys[:n] = keys
        self._bucket[:n] = bucket
        self._stats[:n] = np.asarray(state["stats"], dtype=np.float64)
        self.entities = n
