"""The ``features:`` and ``model:`` sections of a job's YAML, validated by pydantic.

The pipeline receives frozen dataclasses: :meth:`FeaturesConfig.to_spec` gives a
:class:`pipeline.features.spec.FeatureSpec`, :meth:`ModelConfig.to_spec` a
:class:`pipeline.training.models.ModelSpec`. Each loader reads only its own section, so a job file
may carry other sections (source, store, ...) validated elsewhere.

::

    features:
      label: label                  # the label field
      time_field: timestamp         # ISO-8601 with a timezone, aware datetime, or epoch seconds
      sparse:                       # type: categorical | cross | multi_hot | time | bucketize
        - {type: categorical, name: customer, table: tx, field: customer_id, value_type: int}
      aggregates:                   # windowed per-entity state, past events only
        - {name: cust_7d, key: [customer_id], value: amount, window: 7, bucket_seconds: 86400}
      dense:
        - {name: cust_mean_7d, aggregate: cust_7d, stat: mean, log1p: true, standardize: true}
    model:
      type: deepfm                  # deepfm | logistic
      embedding_dim: 8

>>> cfg = FeaturesConfig.model_validate({"sparse": [
...     {"type": "categorical", "name": "c1", "table": "cat", "field": "c1"}]})
>>> cfg.to_spec().tables
('cat',)
>>> FeaturesConfig.model_validate({"sparse": [{"type": "categorical", "name": "c1",
...     "table": "cat", "field": "c1", "colour": "red"}]})
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for FeaturesConfig
...
"""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from embedding_store import OptimizerConfig
from pipeline.events.schema import EventSchema, FieldSchema
from pipeline.features.errors import FeatureSpecError
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
from pipeline.training.models import DenseOptimizerSpec, ModelSpec

Name = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        min_length=1,
        max_length=64,
        description="identifier: a letter, then letters, digits or underscores",
    ),
]
TableName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_-]+$",
        min_length=1,
        max_length=64,
        description="embedding store table this feature's ids go to",
    ),
]
FieldName = Annotated[
    str, Field(min_length=1, max_length=128, description="name of an event field")
]
Salt = Annotated[
    str | None,
    Field(
        default=None,
        max_length=128,
        description="hash salt; defaults to the feature name, so equal values of different "
        "features get different ids",
    ),
]
ValueTypeField = Annotated[
    Literal["int", "str"],
    Field(description="int: hashed as a 64-bit integer; str: blake2b-8 of the text"),
]


Width = Annotated[int, Field(ge=1, le=65536, description="units in one MLP layer")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategoricalConfig(_Section):
    """One field hashed to one id per event."""

    type: Literal["categorical"] = Field(description="feature kind")
    name: Name
    table: TableName
    field: FieldName
    value_type: ValueTypeField = "str"
    salt: Salt = None


class CrossConfig(_Section):
    """A crossed feature: one id per combination of the ids of earlier features."""

    type: Literal["cross"] = Field(description="feature kind")
    name: Name
    table: TableName
    of: list[Name] = Field(min_length=2, max_length=8, description="features to cross, in order")
    salt: Salt = None


class MultiHotConfig(_Section):
    """A list-valued field: a bag of ids per event (its table holds only this feature)."""

    type: Literal["multi_hot"] = Field(description="feature kind")
    name: Name
    table: TableName
    field: FieldName
    value_type: ValueTypeField = "str"
    max_len: int | None = Field(
        default=None, ge=1, le=65536, description="keep at most this many ids"
    )
    salt: Salt = None


class TimePartConfig(_Section):
    """A calendar part of the time field (UTC) as a sparse id."""

    type: Literal["time"] = Field(description="feature kind")
    name: Name
    table: TableName
    part: Literal["hour_of_day", "day_of_week", "hour_of_week", "minute_of_day"] = Field(
        description="calendar part; Monday is day 0"
    )
    width: int = Field(default=1, ge=1, le=1440, description="bucket width in the part's units")
    salt: Salt = None
    field: FieldName | None = Field(
        default=None, description="timestamp field (default: the time_field)"
    )


class BucketizeConfig(_Section):
    """A numeric field as a bucket id, by boundaries or by log steps."""

    type: Literal["bucketize"] = Field(description="feature kind")
    name: Name
    table: TableName
    field: FieldName
    boundaries: list[float] | None = Field(
        default=None, min_length=1, max_length=4096, description="strictly increasing bucket edges"
    )
    log_step: float | None = Field(
        default=None, gt=0, le=100, description="bucket width in sign(x) * log1p(|x|)"
    )
    salt: Salt = None

    @model_validator(mode="after")
    def _one_scheme(self) -> BucketizeConfig:
        if (self.boundaries is None) == (self.log_step is None):
            raise ValueError("give exactly one of boundaries or log_step")
        b = self.boundaries
        if b is not None and any(x >= y for x, y in itertools.pairwise(b)):
            raise ValueError("boundaries must be strictly increasing")
        return self


SparseConfig = Annotated[
    CategoricalConfig | CrossConfig | MultiHotConfig | TimePartConfig | BucketizeConfig,
    Field(discriminator="type"),
]


class AggregateConfig(_Section):
    """Per-entity state from past events only, that dense columns read by name.

    A window of count / sum / squares, the time since the previous event, or the number of
    distinct values seen.
    """

    type: Literal["window", "since_previous", "distinct"] = Field(
        default="window",
        description="window: count/sum/squares over time buckets; since_previous: seconds "
        "since the entity's previous event; distinct: distinct values of `value` so far",
    )
    name: Name
    key: list[FieldName] = Field(min_length=1, max_length=4, description="entity fields")
    value: FieldName | None = Field(
        default=None, description="numeric field or the label field; omitted: count events"
    )
    window: int = Field(default=7, ge=1, le=10000, description="window length in buckets")
    bucket_seconds: float = Field(
        default=86400.0, gt=0, le=366 * 86400, description="bucket length in seconds"
    )
    delay: int = Field(
        default=0,
        ge=0,
        le=10000,
        description="buckets between an event and the newest bucket it may read "
        "(>= 1 for the label: labels arrive late)",
    )
    key_type: ValueTypeField = "int"
    value_type: ValueTypeField = Field(
        default="str", description="distinct: how the value is hashed (int or str)"
    )


class DenseConfig(_Section):
    """One dense column: a numeric field or an aggregate statistic, then transforms."""

    name: Name
    field: FieldName | None = Field(default=None, description="numeric event field")
    aggregate: Name | None = Field(default=None, description="aggregate to read")
    stat: Literal["count", "sum", "mean", "std", "zscore", "log_ratio", "rate"] | None = Field(
        default=None,
        description="statistic of the aggregate (zscore/log_ratio compare the event's value)",
    )
    fill: float = Field(default=0.0, ge=-1e9, le=1e9, description="value for missing or undefined")
    log1p: bool = Field(default=False, description="apply log1p(max(x, 0))")
    clip: tuple[float, float] | None = Field(default=None, description="clip to [low, high]")
    standardize: bool = Field(default=False, description="running mean/variance standardisation")

    @model_validator(mode="after")
    def _clip_order(self) -> DenseConfig:
        if self.clip is not None and not self.clip[0] < self.clip[1]:
            raise ValueError("clip must be [low, high] with low < high")
        return self


class FeatureStateConfig(_Section):
    """``features.state``: how much per-entity state to keep, and for how long.

    See :mod:`pipeline.features.state_budget`; without it, every entity is kept for ever.
    """

    budget_mb: float | None = Field(
        default=None,
        gt=0,
        le=1_048_576,
        description=(
            "MiB all aggregates and entity states keep together; least recently updated go first"
        ),
    )
    ttl_seconds: float | None = Field(
        default=None, gt=0, description="drop an entity not updated for this long (event time)"
    )

    def to_budget(self) -> StateBudget:
        """The frozen budget the featurizer takes."""
        budget = None if self.budget_mb is None else int(self.budget_mb * (1 << 20))
        return StateBudget(budget_bytes=budget, ttl_seconds=self.ttl_seconds)


class FeaturesConfig(_Section):
    """The ``features:`` section: how events become sparse ids, dense columns and a label."""

    label: FieldName = Field(default="label", description="label field (1 / 0)")
    time_field: FieldName | None = Field(default=None, description="event time field")
    sparse: list[SparseConfig] = Field(
        default_factory=list, max_length=1024, description="sparse features, in order"
    )
    aggregates: list[AggregateConfig] = Field(
        default_factory=list, max_length=256, description="streaming per-entity aggregates"
    )
    dense: list[DenseConfig] = Field(
        default_factory=list, max_length=4096, description="dense columns, in order"
    )
    state: FeatureStateConfig | None = Field(
        default=None, description="budget and expiry of aggregate state (default: unbounded)"
    )

    def state_budget(self) -> StateBudget:
        """The featurizer's state budget (unbounded when ``state`` is not given)."""
        return self.state.to_budget() if self.state is not None else StateBudget()

    _epoch_units: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> FeaturesConfig:
        try:
            self.to_spec()
        except FeatureSpecError as err:
            raise ValueError(str(err)) from err
        return self

    def bind_schema(self, schema: EventSchema) -> None:
        """Take the epoch units of ``schema``'s timestamp fields (the job does, once valid)."""
        self._epoch_units = schema.epoch_units()

    def to_spec(self) -> FeatureSpec:
        """Build the frozen spec the featurizer takes."""
        return FeatureSpec(
            epoch_units=tuple(sorted(self._epoch_units.items())),
            label=self.label,
            time_field=self.time_field,
            sparse=tuple(_sparse(s) for s in self.sparse),
            dense=tuple(
                DenseSpec(
                    d.name, d.field, d.aggregate, d.stat, d.fill, d.log1p, d.clip, d.standardize
                )
                for d in self.dense
            ),
            aggregates=tuple(
                AggregateSpec(
                    a.name, tuple(a.key), a.value, a.window, a.bucket_seconds, a.delay, a.key_type
                )
                for a in self.aggregates
                if a.type == "window"
            ),
            entity_states=tuple(
                EntityStateSpec(a.name, a.type, tuple(a.key), a.value, a.key_type, a.value_type)
                for a in self.aggregates
                if a.type != "window"
            ),
        )


def _sparse(s: BaseModel) -> SparseSpec:
    if isinstance(s, CategoricalConfig):
        return CategoricalSpec(s.name, s.table, s.field, s.value_type, s.salt)
    if isinstance(s, CrossConfig):
        return CrossSpec(s.name, s.table, tuple(s.of), s.salt)
    if isinstance(s, MultiHotConfig):
        return MultiHotSpec(s.name, s.table, s.field, s.value_type, s.max_len, s.salt)
    if isinstance(s, TimePartConfig):
        return TimePartSpec(s.name, s.table, s.part, s.width, s.salt, s.field)
    assert isinstance(s, BucketizeConfig)
    return BucketizeSpec(s.name, s.table, s.field, tuple(s.boundaries or ()), s.log_step, s.salt)


Problem = tuple[str, str]
"""``(location, message)``: the dotted location in the job file (``features.sparse.2.field``)."""


def schema_problems(features: FeaturesConfig, schema: EventSchema) -> list[Problem]:
    """What in ``features`` the events of ``schema`` cannot give, first problem first.

    A feature on a field the schema lacks, a label that is missing or not binary, a time part,
    aggregate or time field on something that is not a timestamp, a number read from a
    string, an integer hash of a non-integer field.

    >>> from pipeline.events.schema import FieldSchema as F
    >>> schema = EventSchema("t", (F("label", "int", ge=0, le=1), F("user", "string")))
    >>> feats = FeaturesConfig.model_validate({"sparse": [{"type": "categorical",
    ...     "name": "u", "table": "t", "field": "usr"}]})
    >>> schema_problems(feats, schema)
    [('features.sparse.0.field', "no field 'usr' in schema 't' (did you mean 'user'?)")]
    """
    out: list[Problem] = []
    known = {f.name: f for f in schema.fields}

    def need(at: str, name: str, *types: str, what: str = "") -> FieldSchema | None:
        found = known.get(name)
        if found is None:
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (fields: {_listed(known)})"
            out.append((at, f"no field {name!r} in schema {schema.name!r}{hint}"))
            return None
        if types and found.type not in types and not ("epoch" in types and found.unit):
            kinds = " or ".join(t for t in types if t != "epoch")
            out.append((at, f"field {name!r} is a {_kind(found)}; {what or 'needs'} {kinds}"))
            return None
        return found

    label = need("features.label", features.label)
    if label is not None and not _binary(label):
        out.append(
            (
                "features.label",
                f"label field {features.label!r} is not binary: declare it "
                "{type: int, ge: 0, le: 1} or {type: bool}",
            )
        )
    if features.time_field is not None:
        need("features.time_field", features.time_field, "timestamp", what="a time field is a")
    for i, s in enumerate(features.sparse):
        at = f"features.sparse.{i}"
        if isinstance(s, CategoricalConfig):
            f = need(f"{at}.field", s.field, "string", "int", "bool")
            if f is not None and s.value_type == "int" and f.type not in ("int", "bool"):
                out.append(
                    (f"{at}.value_type", f"value_type int on {_kind(f)} {s.field!r}; use str")
                )
        elif isinstance(s, MultiHotConfig):
            f = need(f"{at}.field", s.field, "list", what="multi_hot needs a")
            if f is not None and s.value_type == "int" and f.items not in ("int", "bool"):
                out.append((f"{at}.value_type", f"value_type int on a list of {f.items}; use str"))
        elif isinstance(s, BucketizeConfig):
            need(f"{at}.field", s.field, "int", "float", "bool", "epoch", what="bucketize needs")
        elif isinstance(s, TimePartConfig):
            name = s.field or features.time_field
            if name is not None:
                where = f"{at}.field" if s.field else "features.time_field"
                need(where, name, "timestamp", what="a time part needs a")
    for i, a in enumerate(features.aggregates):
        at = f"features.aggregates.{i}"
        for j, k in enumerate(a.key):
            f = need(f"{at}.key.{j}", k, "string", "int", "bool")
            if f is not None and a.key_type == "int" and f.type not in ("int", "bool"):
                out.append((f"{at}.key_type", f"key_type int on {_kind(f)} {k!r}; use str"))
        if a.type == "distinct" and a.value is not None:
            f = need(f"{at}.value", a.value, "string", "int", "bool")
            if f is not None and a.value_type == "int" and f.type not in ("int", "bool"):
                out.append((f"{at}.value_type", f"value_type int on {_kind(f)} {a.value!r}"))
        elif a.value is not None and a.value != features.label:
            need(f"{at}.value", a.value, "int", "float", "bool", "epoch", what="a value is")
    for i, d in enumerate(features.dense):
        if d.field is not None:
            need(
                f"features.dense.{i}.field",
                d.field,
                "int",
                "float",
                "bool",
                "epoch",
                what="a dense column reads",
            )
    return out


def _kind(f: FieldSchema) -> str:
    if f.type == "list":
        return f"list of {f.items}"
    if f.type == "timestamp":
        return f"timestamp ({'epoch ' + f.unit if f.unit else 'iso'})"
    return f.type


def _listed(known: dict[str, FieldSchema]) -> str:
    names = list(known)
    return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")


def _binary(f: FieldSchema) -> bool:
    if f.type == "bool":
        return True
    if f.type != "int":
        return False
    low = f.ge if f.ge is not None else (f.gt + 1 if f.gt is not None else None)
    high = f.le if f.le is not None else (f.lt - 1 if f.lt is not None else None)
    return low is not None and high is not None and low >= 0 and high <= 1


class SparseOptimizerConfig(_Section):
    """A store table's fused optimizer (see ``embedding_store.OptimizerConfig``)."""

    kind: Literal["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"] = Field(
        default="adagrad", description="sparse optimizer"
    )
    lr: float = Field(default=0.05, gt=0, le=100, description="step size (FTRL's alpha)")
    eps: float = Field(default=1e-8, ge=0, le=1, description="guards divisions")
    l1: float = Field(default=0.0, ge=0, le=1e3, description="FTRL L1")
    l2: float = Field(default=0.0, ge=0, le=1e3, description="FTRL L2")
    beta: float = Field(default=1.0, ge=0, le=1e3, description="FTRL beta")
    initial_accumulator: float = Field(default=0.0, ge=0, le=1e3, description="Adagrad/FTRL start")


class DenseOptimizerConfig(_Section):
    """The torch optimizer of a model's dense parameters."""

    kind: Literal["adam", "adagrad", "sgd"] = Field(default="adam", description="dense optimizer")
    lr: float = Field(default=1e-3, gt=0, le=100, description="learning rate")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="L2 penalty")


class ModelConfig(_Section):
    """The ``model:`` section: architecture and optimizers."""

    type: Literal["deepfm", "logistic"] = Field(description="model family")
    embedding_dim: int = Field(default=8, ge=1, le=1024, description="factor size k (deepfm)")
    hidden: list[Width] = Field(
        default_factory=lambda: [64, 32], max_length=8, description="top MLP widths (deepfm)"
    )
    bottom: list[Width] = Field(
        default_factory=lambda: [32], max_length=8, description="dense MLP widths (deepfm)"
    )
    init_scale: float = Field(default=0.05, ge=0, le=10, description="uniform init of sparse rows")
    seed: int = Field(default=0, ge=0, lt=2**63, description="table seed and torch seed")
    hot_rows: int | None = Field(default=None, ge=0, description="DRAM budget per table (rows)")
    sparse_optimizer: SparseOptimizerConfig = Field(
        default=SparseOptimizerConfig(), description="fused optimizer of the sparse tables"
    )
    linear_optimizer: SparseOptimizerConfig = Field(
        default=SparseOptimizerConfig(kind="ftrl", lr=1.0),
        description="fused optimizer of the first-order weights and the bias (both models)",
    )
    dense_optimizer: DenseOptimizerConfig = Field(
        default=DenseOptimizerConfig(), description="torch optimizer of the dense parameters"
    )

    def to_spec(self) -> ModelSpec:
        """Build the frozen spec the model builders take."""
        do = self.dense_optimizer
        return ModelSpec(
            kind=self.type,
            embedding_dim=self.embedding_dim,
            hidden=tuple(self.hidden),
            bottom=tuple(self.bottom),
            init_scale=self.init_scale,
            seed=self.seed,
            hot_rows=self.hot_rows,
            sparse_optimizer=_optimizer(self.sparse_optimizer),
            linear_optimizer=_optimizer(self.linear_optimizer),
            dense_optimizer=DenseOptimizerSpec(do.kind, do.lr, do.weight_decay),
        )


def _optimizer(cfg: SparseOptimizerConfig) -> OptimizerConfig:
    return OptimizerConfig(
        cfg.kind,
        lr=cfg.lr,
        eps=cfg.eps,
        l1=cfg.l1,
        l2=cfg.l2,
        beta=cfg.beta,
        initial_accumulator=cfg.initial_accumulator,
    )


def _section(path: str | Path, key: str) -> Any:
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    if not isinstance(raw, dict) or key not in raw:
        raise FeatureSpecError(str(path), f"no top-level {key!r} section")
    return raw[key]


def load_feature_spec(path: str | Path) -> FeatureSpec:
    """Read the ``features:`` section of ``path`` as a :class:`FeatureSpec`."""
    return FeaturesConfig.model_validate(_section(path, "features")).to_spec()


def load_model_spec(path: str | Path, section: str = "model") -> ModelSpec:
    """Read the ``model:`` (or another, e.g. ``baseline:``) section as a ModelSpec."""
    return ModelConfig.model_validate(_section(path, section)).to_spec()
