"""Per-entity state beyond windows: time since the previous event, distinct values seen.

Both read only the past (earlier batches, then earlier events of the same batch; an event
never sees itself) and are vectorised over a batch: one stable sort by entity, then
shifts and cumulative sums, with a hash table from entity (or entity-value pair) to its row
(:class:`~pipeline.features.entity_rows.EntityRows`: bounded by a cap and an expiry like the
window aggregates, with incremental deltas).

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

from collections.abc import Mapping
from typing import Final

import numpy as np
import numpy.typing as npt

from pipeline.features.entity_rows import ROW_BYTES, EntityRows
from pipeline.features.hashing import cross_ids

__all__ = ["PAIRS_PER_ENTITY", "DistinctCount", "SincePrevious"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
_PAIR_SALT: Final = "distinct/pair"
PAIRS_PER_ENTITY: Final = 4
"""(entity, value) pairs a :class:`DistinctCount` keeps per entity of its cap."""


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


class SincePrevious:
    """Seconds since each entity's previous event (NaN for an entity's first event).

    ``max_entities`` and ``ttl_seconds`` bound the entities kept
    (:mod:`pipeline.features.entity_rows`); a dropped entity's next event reads as its first.
    """

    def __init__(
        self, *, max_entities: int | None = None, ttl_seconds: float | None = None
    ) -> None:
        self._rows = EntityRows(
            {"last": (np.float64, -np.inf)}, max_entities=max_entities, ttl_seconds=ttl_seconds
        )

    @staticmethod
    def bytes_per_entity() -> int:
        """Bytes one kept entity costs (its row, bookkeeping and index entry)."""
        return ROW_BYTES + 8

    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return self._rows.nbytes()

    def query(self, keys: I64, times: F64) -> F64:
        """Seconds since the previous event of each event's entity."""
        _, prev = _previous_in_group(keys)
        before = np.full(len(keys), np.nan)
        inside = prev >= 0
        before[inside] = times[prev[inside]]
        first = ~inside
        if first.any():
            rows = self._rows.rows(keys[first])
            known = rows >= 0
            got = np.full(len(rows), np.nan)
            got[known] = self._rows.columns["last"][rows[known]]
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
        rows = self._rows.touch(uniq, newest)
        last = self._rows.columns["last"]
        last[rows] = np.maximum(last[rows], newest)
        self._rows.expire()

    def mark(self) -> int:
        """A point to take :meth:`dirty_state_since` from."""
        return self._rows.mark()

    def dirty_state_since(self, mark: int) -> dict[str, npt.NDArray[np.generic]]:
        """The entities written since ``mark`` (see :class:`EntityRows`)."""
        return self._rows.dirty_state_since(mark)

    def load_state_delta(self, delta: Mapping[str, npt.NDArray[np.generic]]) -> None:
        """Apply :meth:`dirty_state_since`'s output to the state at its mark."""
        self._rows.load_state_delta(delta)

    def state_dict(self) -> dict[str, npt.NDArray[np.generic]]:
        """Plain arrays for a checkpoint."""
        return self._rows.state_dict()

    def load_state_dict(self, state: Mapping[str, npt.NDArray[np.generic]]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._rows.load_state_dict(state)


class DistinctCount:
    """How many distinct values each entity had before each event (exact, all time).

    With ``max_entities`` (and ``ttl_seconds``) at most that many entities are kept, and
    :data:`PAIRS_PER_ENTITY` times as many (entity, value) pairs; a dropped entity goes with its
    pairs and counts from zero when it comes back. A pair dropped for room while its entity
    stays counts again if it comes back (the count is then an overestimate).
    """

    def __init__(
        self, *, max_entities: int | None = None, ttl_seconds: float | None = None
    ) -> None:
        self._entities = EntityRows(
            {"counts": (np.float64, 0.0)},
            max_entities=max_entities,
            ttl_seconds=ttl_seconds,
            report_drops=True,
        )
        pairs = None if max_entities is None else PAIRS_PER_ENTITY * max_entities
        self._pairs = EntityRows(
            {"entity": (np.int64, -1)}, max_entities=pairs, ttl_seconds=ttl_seconds
        )

    @staticmethod
    def bytes_per_entity() -> int:
        """Bytes one kept entity costs, with room for :data:`PAIRS_PER_ENTITY` pairs."""
        return (ROW_BYTES + 8) * (1 + PAIRS_PER_ENTITY)

    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return self._entities.nbytes() + self._pairs.nbytes()

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
        stored[known] = self._entities.columns["counts"][rows[known]]
        out: F64 = stored + within
        return out

    def update(
        self,
        keys: I64,
        values: I64,
        valid: npt.NDArray[np.bool_] | None = None,
        times: F64 | None = None,
    ) -> None:
        """Count the batch's new (entity, value) pairs (``times``: for the expiry)."""
        if valid is not None:
            keys, values = keys[valid], values[valid]
            times = times[valid] if times is not None else None
        if not len(keys):
            return
        pairs, new = self._new_pairs(keys, values)
        uniq, inv = np.unique(keys, return_inverse=True)
        newest = None
        if times is not None:
            newest = np.full(len(uniq), -np.inf)
            np.maximum.at(newest, inv, times)
        rows = self._entities.touch(uniq, newest)
        self._entities.columns["counts"][rows] += np.bincount(inv[new], minlength=len(uniq))
        upairs, first_at, pinv = np.unique(pairs, return_index=True, return_inverse=True)
        pair_newest = None
        if times is not None:
            pair_newest = np.full(len(upairs), -np.inf)
            np.maximum.at(pair_newest, pinv, times)
        prow = self._pairs.touch(upairs, pair_newest)
        self._pairs.columns["entity"][prow] = keys[first_at]
        self._pairs.expire()
        self._entities.expire()
        gone = self._entities.take_dropped()
        if len(gone):  # a dropped entity's pairs go with it
            n = self._pairs.entities
            self._pairs.drop(~np.isin(self._pairs.columns["entity"][:n], gone))

    def mark(self) -> int:
        """A point to take :meth:`dirty_state_since` from (both tables step together)."""
        return self._entities.mark()

    def dirty_state_since(self, mark: int) -> dict[str, npt.NDArray[np.generic]]:
        """The entities and pairs written since ``mark`` (pairs' arrays prefixed ``pair_``)."""
        out = self._entities.dirty_state_since(mark)
        out.update({f"pair_{k}": v for k, v in self._pairs.dirty_state_since(mark).items()})
        return out

    def load_state_delta(self, delta: Mapping[str, npt.NDArray[np.generic]]) -> None:
        """Apply :meth:`dirty_state_since`'s output to the state at its mark."""
        mine = {k: v for k, v in delta.items() if not k.startswith("pair_")}
        self._entities.load_state_delta(mine)
        self._pairs.load_state_delta(
            {k.removeprefix("pair_"): v for k, v in delta.items() if k.startswith("pair_")}
        )

    def state_dict(self) -> dict[str, npt.NDArray[np.generic]]:
        """Plain arrays for a checkpoint: ``keys``, ``counts``, ``pairs`` (and ``pair_*``)."""
        out = self._entities.state_dict()
        for k, v in self._pairs.state_dict(key_name="pairs").items():
            out[k if k == "pairs" else f"pair_{k}"] = v
        return out

    def load_state_dict(self, state: Mapping[str, npt.NDArray[np.generic]]) -> None:
        """Restore what :meth:`state_dict` returned (pairs' owners unknown in old states)."""
        self._entities.load_state_dict(
            {k: v for k, v in state.items() if k != "pairs" and not k.startswith("pair_")}
        )
        pairs = {k.removeprefix("pair_"): v for k, v in state.items() if k.startswith("pair_")}
        pairs["pairs"] = state["pairs"]
        self._pairs.load_state_dict(pairs, key_name="pairs")
