"""The feature spec as the pipeline sees it: frozen dataclasses, checked for consistency.

YAML is read and validated at the edge (:mod:`configs.features`, pydantic) and arrives here
as a :class:`FeatureSpec`. A spec maps event fields to:

::

    sparse features ──► store tables (one int64 id per feature and event; a table gets a
      categorical        (B, F) grid of its features, or jagged ids for one multi-hot feature)
      cross              id of the tuple of other features' ids
      multi_hot          a list field, jagged
      time               hour of day / day of week / hour of week of the time field, bucketed
      bucketize          a numeric field by boundaries or by log steps
    aggregates  ──► per-entity windowed state (count, sum, sum of squares of a value or of
                    the label, optionally delayed) that dense features read
    dense features ──► float32 columns: a field or an aggregate statistic, then
                    fill, log1p, clip, running standardisation

>>> spec = FeatureSpec(
...     label="label",
...     sparse=(CategoricalSpec("customer", "tx", "customer_id", "int"),
...             CategoricalSpec("terminal", "tx", "terminal_id", "int"),
...             CrossSpec("cust_x_term", "tx_cross", ("customer", "terminal"))),
...     dense=(DenseSpec("log_amount", field="amount", log1p=True),),
... )
>>> spec.tables, spec.table_features("tx")
(('tx', 'tx_cross'), ('customer', 'terminal'))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from pipeline.features.errors import FeatureSpecError
from pipeline.features.hashing import ValueType

TimePart = Literal["hour_of_day", "day_of_week", "hour_of_week", "minute_of_day"]
AggStat = Literal["count", "sum", "mean", "std", "zscore", "log_ratio", "rate"]
AGG_STATS: tuple[AggStat, ...] = ("count", "sum", "mean", "std", "zscore", "log_ratio", "rate")
VALUE_STATS: frozenset[str] = frozenset({"sum", "mean", "std", "zscore", "log_ratio", "rate"})


@dataclass(frozen=True)
class CategoricalSpec:
    """One field, hashed to one id (``None`` gets the feature's own missing id)."""

    name: str
    table: str
    field: str
    value_type: ValueType = "str"
    salt: str | None = None


@dataclass(frozen=True)
class CrossSpec:
    """The cross of other sparse features (by name): one id per combination of their ids."""

    name: str
    table: str
    of: tuple[str, ...]
    salt: str | None = None


@dataclass(frozen=True)
class MultiHotSpec:
    """A list-valued field: a bag of ids per event (at most ``max_len``; ``None`` = empty)."""

    name: str
    table: str
    field: str
    value_type: ValueType = "str"
    max_len: int | None = None
    salt: str | None = None


@dataclass(frozen=True)
class TimePartSpec:
    """A calendar part (UTC) of a timestamp field, divided by ``width`` (e.g. 4-hour blocks).

    ``field``: the timestamp field (``None``: the spec's ``time_field``). A missing value
    gets the feature's missing id.
    """

    name: str
    table: str
    part: TimePart
    width: int = 1
    salt: str | None = None
    field: str | None = None


@dataclass(frozen=True)
class BucketizeSpec:
    """A numeric field as a bucket id: by sorted ``boundaries`` or by ``log_step`` of log1p(x)."""

    name: str
    table: str
    field: str
    boundaries: tuple[float, ...] = ()
    log_step: float | None = None
    salt: str | None = None


SparseSpec: TypeAlias = CategoricalSpec | CrossSpec | MultiHotSpec | TimePartSpec | BucketizeSpec


@dataclass(frozen=True)
class AggregateSpec:
    """Windowed per-entity statistics of ``value`` (a numeric field or the label).

    Time is cut into buckets of ``bucket_seconds``; an event in bucket ``b`` reads the
    records in buckets ``[b - delay - window + 1, b - delay]``, and with ``delay == 0`` only
    those of events before it. ``value=None`` counts events.
    """

    name: str
    key: tuple[str, ...]
    value: str | None = None
    window: int = 7
    bucket_seconds: float = 86400.0
    delay: int = 0
    key_type: ValueType = "int"


@dataclass(frozen=True)
class EntityStateSpec:
    """Per-entity state read by a dense column (``aggregate=name``), past events only.

    ``since_previous``: seconds since the entity's previous event (needs the time field).
    ``distinct``: how many distinct values of ``value`` the entity had before the event.
    """

    name: str
    kind: Literal["since_previous", "distinct"]
    key: tuple[str, ...]
    value: str | None = None
    key_type: ValueType = "int"
    value_type: ValueType = "str"


@dataclass(frozen=True)
class DenseSpec:
    """One dense column: a numeric ``field`` or ``aggregate``'s ``stat``, then transforms.

    Order: missing -> ``fill``; clip to +-1e30; ``log1p`` (of max(x, 0)); ``clip``; running
    ``standardize``.
    """

    name: str
    field: str | None = None
    aggregate: str | None = None
    stat: AggStat | None = None
    fill: float = 0.0
    log1p: bool = False
    clip: tuple[float, float] | None = None
    standardize: bool = False


@dataclass(frozen=True)
class FeatureSpec:
    """Everything the featurizer computes from one kind of event."""

    label: str = "label"
    time_field: str | None = None
    sparse: tuple[SparseSpec, ...] = ()
    dense: tuple[DenseSpec, ...] = ()
    aggregates: tuple[AggregateSpec, ...] = ()
    epoch_units: tuple[tuple[str, str], ...] = ()
    """Timestamp fields that hold epoch numbers, with their unit (s, ms, us, ns)."""
    entity_states: tuple[EntityStateSpec, ...] = ()

    def __post_init__(self) -> None:
        self._check_names()
        self._check_tables()
        self._check_references()

    def _check_names(self) -> None:
        names = [s.name for s in self.sparse] + [d.name for d in self.dense]
        names += [a.name for a in self.aggregates] + [e.name for e in self.entity_states]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise FeatureSpecError("names", f"duplicate feature or aggregate names {dup}")

    def _check_tables(self) -> None:
        for spec in self.sparse:
            if isinstance(spec, MultiHotSpec) and len(self.table_features(spec.table)) > 1:
                raise FeatureSpecError(
                    f"multi_hot {spec.name!r}",
                    f"table {spec.table!r} must hold only this feature (it is jagged)",
                )

    def _check_references(self) -> None:
        known = {s.name: s for s in self.sparse}
        for spec in self.sparse:
            if isinstance(spec, CrossSpec):
                for other in spec.of:
                    ref = known.get(other)
                    if ref is None or ref is spec or isinstance(ref, MultiHotSpec):
                        raise FeatureSpecError(
                            f"cross {spec.name!r}",
                            f"{other!r} is not a single-valued sparse feature defined before it",
                        )
                    if list(known).index(other) > list(known).index(spec.name):
                        raise FeatureSpecError(
                            f"cross {spec.name!r}", f"{other!r} must be declared before the cross"
                        )
            if isinstance(spec, TimePartSpec) and spec.field is None and self.time_field is None:
                raise FeatureSpecError(f"time {spec.name!r}", "the spec declares no time field")
        aggs = {a.name: a for a in self.aggregates}
        for agg in self.aggregates:
            if self.time_field is None:
                raise FeatureSpecError(f"aggregate {agg.name!r}", "the spec declares no time field")
            if agg.value == self.label and agg.delay < 1:
                raise FeatureSpecError(
                    f"aggregate {agg.name!r}",
                    "an aggregate of the label needs delay >= 1 bucket (labels arrive late)",
                )
        states = {e.name: e for e in self.entity_states}
        for state in self.entity_states:
            where = f"{state.kind} {state.name!r}"
            if state.kind == "since_previous" and self.time_field is None:
                raise FeatureSpecError(where, "the spec declares no time field")
            if state.kind == "distinct" and state.value is None:
                raise FeatureSpecError(where, "a distinct count needs a value field")
        for dense in self.dense:
            where = f"dense {dense.name!r}"
            if (dense.field is None) == (dense.aggregate is None):
                raise FeatureSpecError(where, "give exactly one of field or aggregate")
            if dense.aggregate in states:
                if dense.stat is not None:
                    raise FeatureSpecError(where, f"{dense.aggregate!r} takes no stat")
                continue
            if dense.aggregate is not None:
                agg_ref = aggs.get(dense.aggregate)
                if agg_ref is None:
                    raise FeatureSpecError(where, f"unknown aggregate {dense.aggregate!r}")
                if dense.stat is None:
                    raise FeatureSpecError(where, "an aggregate column needs a stat")
                if dense.stat in VALUE_STATS and agg_ref.value is None:
                    raise FeatureSpecError(
                        where, f"stat {dense.stat!r} needs an aggregate with a value"
                    )
                if dense.stat in ("zscore", "log_ratio") and agg_ref.value == self.label:
                    raise FeatureSpecError(where, f"stat {dense.stat!r} would read the label")

    def epoch_unit(self, name: str) -> str | None:
        """The epoch unit of timestamp field ``name`` (``None``: ISO text or datetimes)."""
        return dict(self.epoch_units).get(name)

    @property
    def tables(self) -> tuple[str, ...]:
        """Sparse table names in order of first use."""
        return tuple(dict.fromkeys(s.table for s in self.sparse))

    def table_features(self, table: str) -> tuple[str, ...]:
        """Names of the sparse features that map to ``table`` (its grid's columns, in order)."""
        return tuple(s.name for s in self.sparse if s.table == table)

    def is_jagged(self, table: str) -> bool:
        """Whether ``table`` holds a multi-hot feature (jagged values + offsets)."""
        return any(isinstance(s, MultiHotSpec) and s.table == table for s in self.sparse)

    @property
    def dense_names(self) -> tuple[str, ...]:
        """Names of the dense columns, in order."""
        return tuple(d.name for d in self.dense)
