"""From events to a training batch: hashed sparse ids per table, dense columns, labels.

::

    events (dicts, objects with the fields as attributes (pydantic models), or ColumnarEvents)
      │ columns per field
      ├─ sparse features ──► hashed int64 ids ──► Batch.sparse[table]: (B, F_t) grid
      │                                                      or JaggedIds(values, offsets)
      ├─ aggregates ── query state (past only) ──► stats ──┐   then the batch is written in
      ├─ numeric fields ───────────────────────────────────┴─► fill, log1p, clip,
      │                                                         running standardisation
      │                                                         ──► Batch.dense (B, D)
      └─ label ──► Batch.labels (B,) float32 (NaN where an event has none)

``transform`` reads and then updates the streaming state (aggregates, running moments), so
events must be given once each, in time order. ``sparse_ids`` and ``transform(update=False)``
leave the state alone (look-ahead prefetch, serving).

>>> spec = FeatureSpec(
...     label="label", time_field="timestamp",
...     sparse=(CategoricalSpec("customer", "tx", "customer_id", "int"),
...             TimePartSpec("hour", "tx", "hour_of_day")),
...     aggregates=(AggregateSpec("cust_1d", ("customer_id",), "amount", window=1),),
...     dense=(DenseSpec("amount", field="amount", log1p=True),
...            DenseSpec("cust_mean", aggregate="cust_1d", stat="mean", fill=-1.0)),
... )
>>> events = [
...     {"timestamp": "2018-04-01T00:00:31+00:00", "customer_id": 5, "amount": 10.0, "label": 0},
...     {"timestamp": "2018-04-01T09:10:00+00:00", "customer_id": 5, "amount": 30.0, "label": 1},
... ]
>>> batch = Featurizer(spec).transform(events)
>>> batch.sparse["tx"].shape, batch.dense[:, 1].tolist(), batch.labels.tolist()
((2, 2), [-1.0, 10.0], [0.0, 1.0])
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

from embedding_store.initializers import splitmix64
from pipeline.events.columnar import ColumnarEvents
from pipeline.features.aggregates import WindowedAggregate, WindowStats
from pipeline.features.entity_state import DistinctCount, SincePrevious
from pipeline.features.errors import FeatureValueError
from pipeline.features.hashing import (
    MISSING_BASE,
    StringHasher,
    base_values,
    cross_ids,
    hash_bases,
    hash_column,
    salt64,
)
from pipeline.features.moments import RunningMoments
from pipeline.features.spec import (
    AggregateSpec,
    BucketizeSpec,
    CategoricalSpec,
    CrossSpec,
    DenseSpec,
    EntityStateSpec,
    FeatureSpec,
    MultiHotSpec,
    SparseSpec,
    TimePartSpec,
)
from pipeline.features.state_budget import StateBudget

__all__ = [
    "AggregateSpec",
    "Batch",
    "BucketizeSpec",
    "CategoricalSpec",
    "CrossSpec",
    "DenseSpec",
    "FeatureSpec",
    "Featurizer",
    "JaggedIds",
    "MultiHotSpec",
    "TimePartSpec",
    "string_category_fields",
]

AHEAD_KEPT = 8
"""Batches whose sparse ids ``Featurizer.sparse_ids`` keeps for their ``transform``."""

DENSE_LIMIT = 1e30
"""Dense inputs are clipped to +-this before any transform (float32 and squares stay finite)."""

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Column = Callable[[str], list[Any]]
Hashed = Callable[[str], "npt.NDArray[np.uint64] | None"]
"""A field's string hashes computed ahead (:meth:`ColumnarEvents.string_hashes`), or None."""


@dataclass(frozen=True)
class JaggedIds:
    """Variable-length bags of ids: bag ``i`` is ``values[offsets[i]:offsets[i] + lengths[i]]``.

    ``offsets`` are the bag starts (what ``StoreEmbeddingBag`` takes).

    >>> bags = JaggedIds.from_lengths(np.array([3, 4, 5], np.int64), np.array([2, 0, 1]))
    >>> bags.offsets.tolist(), bags.lengths.tolist()
    ([0, 2, 2], [2, 0, 1])
    """

    values: I64
    offsets: I64

    @classmethod
    def from_lengths(cls, values: I64, lengths: npt.NDArray[np.integer]) -> JaggedIds:
        """Bags from their lengths."""
        offsets = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        return cls(values, offsets)

    @property
    def lengths(self) -> I64:
        """Size of each bag."""
        ends = np.append(self.offsets[1:], len(self.values))
        out: I64 = (ends - self.offsets).astype(np.int64)
        return out

    def __len__(self) -> int:
        return len(self.offsets)


SparseIds: TypeAlias = I64 | JaggedIds


@dataclass(frozen=True)
class Batch:
    """A featurised batch of ``B`` events.

    ::

        labels     float32 (B,)           1 / 0 (NaN where the event carried no label)
        dense      float32 (B, D)         columns named by dense_names
        sparse     {table: int64 (B, F_t) grid, columns named by sparse_names[table]
                    | JaggedIds}          (one bag per event)
        timestamps float64 (B,) | None    seconds since the epoch, UTC
    """

    labels: F32
    dense: F32
    sparse: Mapping[str, SparseIds]
    dense_names: tuple[str, ...] = ()
    sparse_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    timestamps: F64 | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def unique_ids(self) -> dict[str, I64]:
        """Sorted unique ids per table (what a prefetch of this batch asks for)."""
        out: dict[str, I64] = {}
        for table, ids in self.sparse.items():
            flat = ids.values if isinstance(ids, JaggedIds) else ids.reshape(-1)
            out[table] = np.unique(flat)
        return out


def event_columns(events: Sequence[Any]) -> Column:
    """Return a function giving one field's values across ``events`` (``None`` where absent).

    Accepts mappings (decoded JSON), objects carrying the fields as attributes (pydantic
    event models; ``model_dump()`` is not needed), or
    :class:`~pipeline.events.columnar.ColumnarEvents`
    (already columns: nothing is built per event).

    >>> event_columns([{"a": 1}, {"b": 2}])("a")
    [1, None]
    """
    if isinstance(events, ColumnarEvents):
        return events.column
    if events and isinstance(events[0], Mapping):
        return lambda name: [e.get(name) for e in events]
    return lambda name: [getattr(e, name, None) for e in events]


def string_category_fields(spec: FeatureSpec) -> tuple[str, ...]:
    """The event fields ``spec`` hashes as string categories (what a source may hash ahead).

    >>> spec = FeatureSpec(sparse=(CategoricalSpec("c1", "t", "c1"),
    ...                            CategoricalSpec("user", "t", "user_id", value_type="int")))
    >>> string_category_fields(spec)
    ('c1',)
    """
    return tuple(
        dict.fromkeys(
            s.field for s in spec.sparse if isinstance(s, CategoricalSpec) and s.value_type == "str"
        )
    )


def _no_hashes(name: str) -> None:
    return None


def _hashed(events: Sequence[Any]) -> Hashed:
    """The string hashes a source computed ahead for ``events`` (none for plain events)."""
    if isinstance(events, ColumnarEvents):
        return events.string_hashes
    return _no_hashes


_UNIT_SECONDS: Final = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def epoch_seconds(
    values: Sequence[Any],
    name: str = "timestamp",
    unit: str | None = None,
    *,
    missing: bool = False,
) -> F64:
    """Seconds since the epoch (UTC) of ISO-8601 strings, aware datetimes or numbers.

    ``unit``: numbers are epoch counts of this unit (s, ms, us, ns; default s). ``missing``:
    ``None`` becomes NaN (else it is an error). Every aware time Python represents converts,
    the ends of its range included (those pandas cannot hold are converted one by one).

    >>> epoch_seconds(["1970-01-01T00:01:00+00:00", "1970-01-01T02:00:00+01:00"]).tolist()
    [60.0, 3600.0]
    >>> epoch_seconds([1500, None], unit="ms", missing=True).tolist()
    [1.5, nan]
    >>> epoch_seconds(["9999-12-31T23:59:59-14:00"]).tolist()
    [253402351199.0]
    """
    if not len(values):
        return np.empty(0, dtype=np.float64)
    absent = [i for i, v in enumerate(values) if v is None]
    if absent and not missing:
        raise FeatureValueError(name, "timestamp", "missing timestamp")
    present = [v for v in values if v is not None] if absent else values
    try:
        secs = _present_seconds(present, name, unit)
    except (TypeError, ValueError, OverflowError) as err:
        if isinstance(err, FeatureValueError):
            raise
        raise FeatureValueError(name, "timestamp", err) from err
    if not absent:
        return secs
    out = np.full(len(values), np.nan)
    mask = np.ones(len(values), dtype=np.bool_)
    mask[absent] = False
    out[mask] = secs
    return out


def _present_seconds(values: Sequence[Any], name: str, unit: str | None) -> F64:
    if not len(values):
        return np.empty(0, dtype=np.float64)
    first = values[0]
    if isinstance(first, str):
        try:
            parsed = pd.to_datetime(pd.Series(values), utc=True, format="ISO8601")
            secs = (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
            return np.asarray(secs, dtype=np.float64)
        except (ValueError, OverflowError):  # out of pandas' range (years 1677..2262)
            stamps = [datetime.fromisoformat(v) for v in values]
            return _datetime_seconds(stamps, name)
    if isinstance(first, datetime):
        return _datetime_seconds(values, name)
    out = np.asarray(values, dtype=np.float64)
    if unit is not None and unit != "s":
        out = out * _UNIT_SECONDS[unit]
    return out


def _datetime_seconds(values: Sequence[Any], name: str) -> F64:
    if any(v.tzinfo is None for v in values):
        raise FeatureValueError(name, "timezone-aware datetime", "naive datetime")
    return np.array([v.timestamp() for v in values], dtype=np.float64)


def numeric(values: Sequence[Any], name: str) -> F64:
    """Floats, NaN where a value is ``None``."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise FeatureValueError(name, "numeric", err) from err


_SECONDS = {"minute_of_day": 60, "hour_of_day": 3600, "hour_of_week": 3600, "day_of_week": 86400}
_PERIOD = {"minute_of_day": 1440, "hour_of_day": 24, "hour_of_week": 168, "day_of_week": 7}
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


def time_part(seconds: F64, part: str, width: int = 1) -> I64:
    """Calendar part of UTC epoch seconds (Monday = day 0), divided by ``width``.

    >>> time_part(np.array([0.0, 3600.0 * 30]), "hour_of_day").tolist()
    [0, 6]
    >>> time_part(np.array([0.0]), "day_of_week").tolist()
    [3]
    """
    units = np.floor(seconds / _SECONDS[part]).astype(np.int64)
    if part in ("day_of_week", "hour_of_week"):
        units = units + _EPOCH_WEEKDAY * (1 if part == "day_of_week" else 24)
    out: I64 = (units % _PERIOD[part]) // width
    return out


def bucket_of(x: F64, spec: BucketizeSpec) -> I64:
    """Bucket number of each value (NaN gets its own bucket ``-2**62``).

    >>> s = BucketizeSpec("b", "t", "x", boundaries=(1.0, 10.0))
    >>> bucket_of(np.array([0.5, 1.0, 50.0, np.nan]), s).tolist()[:3]
    [0, 1, 2]
    """
    nan = np.isnan(x)
    if spec.boundaries:
        b = np.searchsorted(np.asarray(spec.boundaries), np.nan_to_num(x), side="right")
    else:
        step = spec.log_step if spec.log_step is not None else 1.0
        y = np.sign(x) * np.log1p(np.abs(np.nan_to_num(x)))
        b = np.floor(y / step)
    out: I64 = np.where(nan, -(1 << 62), np.nan_to_num(b)).astype(np.int64)
    return out


def log_buckets(x: F64, steps: F64) -> I64:
    """:func:`bucket_of` of several ``log_step`` features at once: row ``i`` by ``steps[i]``.

    >>> s = BucketizeSpec("b", "t", "x", log_step=0.5)
    >>> x = np.array([[0.5, 3.0, np.nan], [-2.0, 0.0, 1e9]])
    >>> rows = log_buckets(x, np.array([0.5, 0.5]))
    >>> rows.tolist() == [bucket_of(x[0], s).tolist(), bucket_of(x[1], s).tolist()]
    True
    """
    nan = np.isnan(x)
    clean = np.nan_to_num(x)
    b = np.floor(np.sign(x) * np.log1p(np.abs(clean)) / steps[:, None])
    out: I64 = np.where(nan, -(1 << 62), np.nan_to_num(b)).astype(np.int64)
    return out


def _memo(col: Column) -> Column:
    """``col``, reading each field once (sparse and dense features often share fields)."""
    seen: dict[str, list[Any]] = {}

    def read(name: str) -> list[Any]:
        got = seen.get(name)
        if got is None:
            got = seen[name] = col(name)
        return got

    return read


def _numeric_rows(col: Column, fields: Sequence[str]) -> F64:
    """Several numeric fields as the rows of one (fields, events) array."""
    try:
        return np.asarray([col(f) for f in fields], dtype=np.float64)
    except (TypeError, ValueError):
        for f in fields:  # name the field that is not numeric
            numeric(col(f), f)
        raise


class Featurizer:
    """Stateful feature computation for one :class:`FeatureSpec` (see the module docstring)."""

    def __init__(self, spec: FeatureSpec, budget: StateBudget | None = None) -> None:
        self.spec = spec
        self.budget = budget or StateBudget()
        caps = self.budget.entity_caps(spec.aggregates, spec.entity_states)
        self._aggs: dict[str, WindowedAggregate] = {
            a.name: WindowedAggregate(
                a.window,
                a.delay,
                max_entities=caps[a.name],
                ttl_buckets=self.budget.ttl_buckets(a),
            )
            for a in spec.aggregates
        }
        self._states: dict[str, SincePrevious | DistinctCount] = {
            e.name: (SincePrevious if e.kind == "since_previous" else DistinctCount)(
                max_entities=caps[e.name], ttl_seconds=self.budget.ttl_seconds
            )
            for e in spec.entity_states
        }
        self._std_cols = np.array([d.standardize for d in spec.dense], dtype=np.bool_)
        self._transforms = (
            np.array([d.fill for d in spec.dense], dtype=np.float64),
            np.flatnonzero([d.log1p for d in spec.dense]),
            np.array([d.clip[0] if d.clip else -np.inf for d in spec.dense], dtype=np.float64),
            np.array([d.clip[1] if d.clip else np.inf for d in spec.dense], dtype=np.float64),
        )
        self.moments = RunningMoments(int(self._std_cols.sum()))
        self.events_seen = 0
        self._strings: dict[str, int] = {}
        self._salts: dict[str, np.uint64] = {}
        # sparse ids and times of batches seen by sparse_ids(), for their transform() later
        self._ahead: OrderedDict[int, tuple[Sequence[Any], dict[str, SparseIds], F64 | None]]
        self._ahead = OrderedDict()
        self._plan()

    def _plan(self) -> None:
        """What every batch needs from the spec, worked out once (no per-batch setup)."""
        spec = self.spec
        self._hasher = StringHasher()  # string categories' hashes, looked up vectorised
        simple = [s for s in spec.sparse if not isinstance(s, CrossSpec | MultiHotSpec)]
        self._simple = simple
        self._simple_salts = np.array([self._salt(s) for s in simple], dtype=np.uint64)[:, None]
        # log-step buckets of all features in one vectorised pass
        logb = [
            (i, s)
            for i, s in enumerate(simple)
            if isinstance(s, BucketizeSpec) and not s.boundaries
        ]
        self._log_rows = np.array([i for i, _ in logb], dtype=np.intp)
        self._log_fields = [s.field for _, s in logb]
        self._log_steps = np.array(
            [1.0 if s.log_step is None else s.log_step for _, s in logb], dtype=np.float64
        )
        self._per_feature = [i for i in range(len(simple)) if i not in set(self._log_rows.tolist())]
        position = {s.name: i for i, s in enumerate(simple)}
        self._table_rows: dict[str, npt.NDArray[np.intp] | None] = {
            t: (
                np.array([position[n] for n in spec.table_features(t)], dtype=np.intp)
                if all(n in position for n in spec.table_features(t)) and not spec.is_jagged(t)
                else None
            )
            for t in spec.tables
        }
        self._sparse_names = {t: spec.table_features(t) for t in spec.tables}
        self._dense_names = spec.dense_names
        raw_dense = [j for j, d in enumerate(spec.dense) if d.aggregate is None]
        self._raw_dense = np.array(raw_dense, dtype=np.intp)
        self._raw_fields = [str(spec.dense[j].field) for j in raw_dense]

    # -- sparse (stateless) --------------------------------------------------
    def _bases(
        self, spec: SparseSpec, col: Column, times: F64 | None, hashed: Hashed
    ) -> npt.NDArray[np.uint64] | None:
        """Unsalted bases of a single-valued, non-cross feature (None: a str column to batch)."""
        if isinstance(spec, CategoricalSpec):
            if spec.value_type == "str":
                return hashed(spec.field)  # computed by the source process, or None
            return base_values(col(spec.field), "int", spec.field, self._strings)[0]
        if isinstance(spec, TimePartSpec):
            return self._time_part_bases(spec, col, times)
        assert isinstance(spec, BucketizeSpec)
        return bucket_of(numeric(col(spec.field), spec.field), spec).view(np.uint64)

    def _sparse(self, col: Column, times: F64 | None, hashed: Hashed) -> dict[str, SparseIds]:
        """Ids of every sparse feature, salted in one pass over a (features, events) matrix.

        String categories of all features are factorised together (one pandas call, one
        blake2b per distinct string of the batch), so a batch's fixed cost does not grow
        with a hash call per feature.
        """
        simple = self._simple
        n = len(col(self.spec.label))
        bases = np.empty((len(simple), n), dtype=np.uint64)
        text_rows: list[int] = []
        text_values: list[Any] = []
        if len(self._log_rows):
            x = _numeric_rows(col, self._log_fields)
            bases[self._log_rows] = log_buckets(x, self._log_steps).view(np.uint64)
        for i in self._per_feature:
            spec = simple[i]
            got = self._bases(spec, col, times, hashed)
            if got is None:
                assert isinstance(spec, CategoricalSpec)
                text_rows.append(i)
                text_values.extend(col(spec.field))
            else:
                bases[i] = got
        if text_rows:
            flat = self._hasher.strings(text_values)
            if flat is not None:
                bases[text_rows] = flat.reshape(len(text_rows), n)
            else:  # some value is not a string: each column hashes its own str() of it
                for k, i in enumerate(text_rows):
                    part = text_values[k * n : (k + 1) * n]
                    bases[i] = base_values(part, "str", "category", self._strings)[0]
        ids = splitmix64(bases ^ self._simple_salts).view(np.int64)
        out: dict[str, SparseIds] = {}
        if len(simple) == len(self.spec.sparse):  # every table a grid of simple features
            for table, rows in self._table_rows.items():
                assert rows is not None
                out[table] = np.ascontiguousarray(ids[rows].T)
            return out
        done: dict[str, SparseIds] = {s.name: ids[i] for i, s in enumerate(simple)}
        for other in self.spec.sparse:
            if isinstance(other, CrossSpec):
                parts = [done[o] for o in other.of]
                done[other.name] = cross_ids(
                    [p for p in parts if isinstance(p, np.ndarray)], other.salt or other.name
                )
            elif isinstance(other, MultiHotSpec):
                done[other.name] = self._multi_hot(other, col)
        for table in self.spec.tables:
            names = self.spec.table_features(table)
            if self.spec.is_jagged(table):
                out[table] = done[names[0]]
            else:
                out[table] = np.stack([done[n] for n in names], axis=1)  # type: ignore[misc]
        return out

    def _salt(self, spec: SparseSpec) -> np.uint64:
        salt = spec.salt or spec.name
        value = self._salts.get(salt)
        if value is None:
            value = self._salts[salt] = salt64(salt)
        return value

    def _time_part_bases(
        self, spec: TimePartSpec, col: Column, times: F64 | None
    ) -> npt.NDArray[np.uint64]:
        name = spec.field or self.spec.time_field
        assert name is not None
        if name == self.spec.time_field and times is not None:
            secs = times
        else:
            secs = epoch_seconds(col(name), name, self.spec.epoch_unit(name), missing=True)
        nan = np.isnan(secs)
        parts = time_part(np.where(nan, 0.0, secs), spec.part, spec.width).view(np.uint64)
        if nan.any():
            parts = np.where(nan, MISSING_BASE, parts)
        return parts

    def _multi_hot(self, spec: MultiHotSpec, col: Column) -> JaggedIds:
        lists = [v if v is not None else () for v in col(spec.field)]
        if spec.max_len is not None:
            lists = [v[: spec.max_len] for v in lists]
        lengths = np.fromiter((len(v) for v in lists), dtype=np.int64, count=len(lists))
        flat = [x for v in lists for x in v]
        base, _ = base_values(flat, spec.value_type, spec.field, self._strings)
        return JaggedIds.from_lengths(hash_bases(base, spec.salt or spec.name), lengths)

    def sparse_ids(self, events: Sequence[Any]) -> dict[str, I64]:
        """Sorted unique ids per table of ``events``, without touching any state.

        Sparse ids are a pure function of the events, so for an immutable batch (a tuple or
        :class:`~pipeline.events.columnar.ColumnarEvents`) they are kept until :meth:`transform`
        takes that same batch (the last ``AHEAD_KEPT`` batches): a batch looked at ahead for
        prefetching is not hashed twice.
        """
        col = _memo(event_columns(events))
        times = self._times(col) if self._needs_time() else None
        sparse = self._sparse(col, times, _hashed(events))
        if isinstance(events, tuple | ColumnarEvents):
            self._ahead[id(events)] = (events, sparse, times)
            while len(self._ahead) > AHEAD_KEPT:
                self._ahead.popitem(last=False)
        return Batch(np.zeros(0, np.float32), np.zeros((0, 0), np.float32), sparse).unique_ids()

    def _sparse_and_times(
        self, events: Sequence[Any], col: Column
    ) -> tuple[dict[str, SparseIds], F64 | None]:
        kept = self._ahead.pop(id(events), None)
        if kept is not None and kept[0] is events:
            return kept[1], kept[2]
        times = self._times(col) if self._needs_time() else None
        return self._sparse(col, times, _hashed(events)), times

    # -- dense (stateful) ----------------------------------------------------
    def _needs_time(self) -> bool:
        return self.spec.time_field is not None and (
            bool(self.spec.aggregates)
            or any(e.kind == "since_previous" for e in self.spec.entity_states)
            or any(
                isinstance(s, TimePartSpec) and s.field in (None, self.spec.time_field)
                for s in self.spec.sparse
            )
        )

    def _times(self, col: Column) -> F64:
        name = self.spec.time_field
        assert name is not None
        return epoch_seconds(col(name), name, self.spec.epoch_unit(name))

    def _entity_keys(
        self, agg: AggregateSpec | EntityStateSpec, col: Column, memo: dict[str, I64]
    ) -> I64:
        keys = []
        for k in agg.key:
            name = f"{k}:{agg.key_type}"
            if name not in memo:
                memo[name] = hash_column(col(k), agg.key_type, "agg/" + k, self._strings)
            keys.append(memo[name])
        return keys[0] if len(keys) == 1 else cross_ids(keys, "agg/" + "/".join(agg.key))

    def _entity_state(
        self,
        spec: EntityStateSpec,
        col: Column,
        times: F64 | None,
        *,
        update: bool,
        memo: dict[str, I64],
    ) -> F64:
        keys = self._entity_keys(spec, col, memo)
        state = self._states[spec.name]
        if isinstance(state, SincePrevious):
            assert times is not None
            out = state.query(keys, times)
            if update:
                state.update(keys, times)
            return out
        assert spec.value is not None
        raw = col(spec.value)
        base, missing = base_values(raw, spec.value_type, spec.value, self._strings)
        values = base.view(np.int64)
        valid = ~missing
        out = state.query(keys, values, valid)
        if update:
            state.update(keys, values, valid, times)
        return out

    def _aggregate(
        self,
        agg: AggregateSpec,
        col: Column,
        times: F64,
        labels: F32,
        *,
        update: bool,
        memo: dict[str, I64],
        alone: bool = False,
    ) -> tuple[WindowStats, F64]:
        key = self._entity_keys(agg, col, memo)
        buckets = np.floor(times / agg.bucket_seconds).astype(np.int64)
        if agg.value is None:
            values = np.zeros(len(times), dtype=np.float64)
            valid = None
        else:
            if agg.value == self.spec.label:
                values = labels.astype(np.float64)
            else:
                values = np.clip(numeric(col(agg.value), agg.value), -DENSE_LIMIT, DENSE_LIMIT)
            valid = np.isfinite(values)
        state = self._aggs[agg.name]
        stats = state.query(key, buckets, values, valid, within_batch=not alone)
        if update:
            state.update(key, buckets, values, valid)
        return stats, values

    @staticmethod
    def _stat(dense: DenseSpec, stats: WindowStats, x: F64) -> F64:
        stat = dense.stat
        with np.errstate(invalid="ignore", divide="ignore"):
            if stat == "count":
                return stats.count
            if stat == "sum":
                return stats.total
            if stat in ("mean", "rate"):
                return stats.mean()
            if stat == "std":
                return stats.std()
            mean = stats.mean()
            if stat == "log_ratio":
                out: F64 = np.log1p(np.maximum(x, 0.0)) - np.log1p(np.maximum(mean, 0.0))
                return out
            std = stats.std()
            scale = np.maximum(std, 1e-3 * np.abs(mean) + 1e-6)
            z: F64 = np.where(stats.count >= 2, (x - mean) / scale, np.nan)
            return z

    def _dense(
        self, col: Column, times: F64 | None, labels: F32, update: bool, alone: bool = False
    ) -> F32:
        n = len(labels)
        results: dict[str, tuple[WindowStats, F64]] = {}
        memo: dict[str, I64] = {}
        for agg in self.spec.aggregates:
            assert times is not None
            results[agg.name] = self._aggregate(
                agg, col, times, labels, update=update, memo=memo, alone=alone
            )
        states = {
            e.name: self._entity_state(e, col, times, update=update, memo=memo)
            for e in self.spec.entity_states
        }
        raw = np.empty((len(self.spec.dense), n), dtype=np.float64)
        if len(self._raw_dense):
            raw[self._raw_dense] = _numeric_rows(col, self._raw_fields)
        for j, d in enumerate(self.spec.dense):
            if d.aggregate is None:
                continue
            if d.aggregate in states:
                raw[j] = states[d.aggregate]
            else:
                stats, values = results[d.aggregate]
                raw[j] = self._stat(d, stats, values)
        # every column's transforms at once: missing -> fill; beyond +-1e30 clipped (float32
        # columns and running moments stay finite); log1p; clip
        fill, log_rows, low, high = self._transforms
        x = np.where(np.isfinite(raw), raw, fill[:, None])
        np.clip(x, -DENSE_LIMIT, DENSE_LIMIT, out=x)
        if log_rows.size:
            x[log_rows] = np.log1p(np.maximum(x[log_rows], 0.0))
        np.clip(x, low[:, None], high[:, None], out=x)
        cols = np.ascontiguousarray(x.T)
        if self._std_cols.any():
            part = cols[:, self._std_cols]
            if update:
                self.moments.update(part)
            if self.moments.count > 0:
                cols[:, self._std_cols] = self.moments.standardize(part)
        return cols.astype(np.float32)

    # -- the batch -----------------------------------------------------------
    def transform(
        self, events: Sequence[Any], update: bool = True, *, alone: bool = False
    ) -> Batch:
        """Featurise ``events`` (in time order); with ``update`` also advance the state.

        Every aggregate reads only events before each event (and labels ``delay`` buckets
        old); running standardisation uses the moments of everything seen including this
        batch's inputs (never labels). ``alone`` (only without ``update``) featurises each
        event against the state alone, as if it were the only event: aggregates do not read
        the earlier events of the same call (serving scores one event independently).
        """
        if alone and update:
            raise ValueError("alone=True reads the state only; it needs update=False")
        col = _memo(event_columns(events))
        labels = numeric(col(self.spec.label), self.spec.label).astype(np.float32)
        sparse, times = self._sparse_and_times(events, col)
        dense = self._dense(col, times, labels, update, alone)
        if update:
            self.events_seen += len(labels)
        return Batch(
            labels=labels,
            dense=dense,
            sparse=sparse,
            dense_names=self._dense_names,
            sparse_names=self._sparse_names,
            timestamps=times,
        )

    # -- checkpoints ---------------------------------------------------------
    def state_dict(self) -> dict[str, npt.NDArray[np.generic]]:
        """Return the streaming state as plain named arrays (no pickle)."""
        out: dict[str, npt.NDArray[np.generic]] = {
            f"moments.{k}": v for k, v in self.moments.state_dict().items()
        }
        for name, agg in self._aggs.items():
            out.update({f"agg.{name}.{k}": v for k, v in agg.state_dict().items()})
        for name, state in self._states.items():
            out.update({f"entity.{name}.{k}": v for k, v in state.state_dict().items()})
        out["events_seen"] = np.array([self.events_seen], dtype=np.int64)
        return out

    def load_state_dict(self, state: Mapping[str, npt.NDArray[np.generic]]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.moments.load_state_dict(
            {k: np.asarray(state[f"moments.{k}"], np.float64) for k in ("count", "mean", "m2")}
        )
        for name, agg in self._aggs.items():
            prefix = f"agg.{name}."
            agg.load_state_dict(
                {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            )
        for name, entity in self._states.items():
            prefix = f"entity.{name}."
            entity.load_state_dict(
                {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            )
        self.events_seen = int(state["events_seen"][0])

    # -- incremental state ---------------------------------------------------
    def state_mark(self) -> dict[str, int]:
        """A point to take :meth:`dirty_state_since` from: each aggregate's and state's updates."""
        mark = {name: agg.mark() for name, agg in self._aggs.items()}
        mark.update({f"entity.{name}": state.mark() for name, state in self._states.items()})
        return mark

    def forget_before(self, mark: Mapping[str, int]) -> None:
        """Release what only deltas from before ``mark`` needed (nothing now; kept for callers)."""
        for name, agg in self._aggs.items():
            agg.forget_before(mark[name])

    def dirty_state_since(self, mark: Mapping[str, int]) -> dict[str, npt.NDArray[np.generic]]:
        """The state changed after ``mark``: each aggregate's rows written since, with places.

        Named arrays like :meth:`state_dict`'s (``agg.<name>.keys``, ``agg.<name>.rows``, ...),
        plus the entity states' rows written since (``entity.<name>.rows``, ...), the moments
        and ``events_seen``. Its bytes grow with the entities changed since ``mark``, not with
        the entities kept. :meth:`load_state_delta` applies it to the state
        at ``mark``, so that :meth:`state_dict` then equals this one's exactly.
        """
        out: dict[str, npt.NDArray[np.generic]] = {
            f"moments.{k}": v for k, v in self.moments.state_dict().items()
        }
        for name, agg in self._aggs.items():
            delta = agg.dirty_state_since(mark[name])
            out.update({f"agg.{name}.{k}": v for k, v in delta.items()})
        for name, state in self._states.items():
            delta = state.dirty_state_since(mark[f"entity.{name}"])
            out.update({f"entity.{name}.{k}": v for k, v in delta.items()})
        out["events_seen"] = np.array([self.events_seen], dtype=np.int64)
        return out

    def load_state_delta(self, delta: Mapping[str, npt.NDArray[np.generic]]) -> None:
        """Apply what :meth:`dirty_state_since` returned to the state at its mark."""
        self.moments.load_state_dict(
            {k: np.asarray(delta[f"moments.{k}"], np.float64) for k in ("count", "mean", "m2")}
        )
        for name, agg in self._aggs.items():
            prefix = f"agg.{name}."
            agg.load_state_delta(
                {k.removeprefix(prefix): v for k, v in delta.items() if k.startswith(prefix)}
            )
        for name, entity in self._states.items():
            prefix = f"entity.{name}."
            entity.load_state_delta(
                {k.removeprefix(prefix): v for k, v in delta.items() if k.startswith(prefix)}
            )
        self.events_seen = int(delta["events_seen"][0])

    def state_nbytes(self) -> int:
        """Bytes the aggregates' and entity states' arrays hold (what the budget bounds)."""
        aggs = sum(agg.nbytes() for agg in self._aggs.values())
        return aggs + sum(state.nbytes() for state in self._states.values())
