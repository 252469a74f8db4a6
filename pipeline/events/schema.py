"""Declared event schemas: the fields of a stream, from which its validator is generated.

A job file's ``schema:`` section (validated at the edge by :mod:`configs.schema`) arrives here
as an :class:`EventSchema`: an ordered tuple of :class:`FieldSchema`. :func:`schema_model`
turns it into a strict pydantic model (what :func:`pipeline.events.kinds.decode` validates
with); :class:`~pipeline.events.fast_decode.FastDecoder` mirrors that model with a msgspec
Struct, so the thread and the process source give the same verdicts. The schema crosses to a
source process as JSON (:meth:`EventSchema.to_wire`).

::

    type        JSON value               event attribute        constraints
    ─────────   ──────────────────────   ────────────────────   ─────────────────────────────
    int         integer                  int (int64)            ge gt le lt
    float       number (finite)          float                  ge gt le lt
    string      string                   str                    pattern min_length max_length
    bool        true / false             bool
    timestamp   "2018-04-01T00:00:31Z"   aware datetime         format: iso (offset required)
                1522540831000            float (epoch units)    unit: s | ms | us | ns
    list        [item, ...]              list                   items (int | float | string |
                                                                bool), min_length max_length

    required: true   the key must be present (nullable: true lets its value be null)
    required: false  the key may be absent: the event gets ``default`` (null if none given)

An ISO timestamp may be any aware time Python represents (``0001-01-01T00:00:00+14:00`` and
``9999-12-31T23:59:59-14:00`` included, though their UTC instants lie outside years 1..9999):
every stage after validation carries it without overflowing. Epoch numbers are bounded to the
instants of years 1 to 9999 UTC.

>>> s = EventSchema("clicks", (FieldSchema("label", "int", ge=0, le=1),
...                            FieldSchema("user", "string", pattern="^[0-9a-f]{8}$"),
...                            FieldSchema("ts", "timestamp", unit="ms")))
>>> model = schema_model(s)
>>> ev = model.model_validate_json(b'{"label": 1, "user": "04258293", "ts": 1522540831000}')
>>> ev.user, ev.ts
('04258293', 1522540831000.0)
>>> EventSchema.from_wire(s.to_wire()) == s
True
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model

from pipeline.errors import ConfigError

__all__ = [
    "EPOCH_SCALE",
    "FIELD_TYPES",
    "MAX_EPOCH_SECONDS",
    "MIN_EPOCH_SECONDS",
    "EventSchema",
    "FieldSchema",
    "schema_model",
]

FieldType = Literal["int", "float", "string", "bool", "timestamp", "list"]
FIELD_TYPES: Final[tuple[str, ...]] = ("int", "float", "string", "bool", "timestamp", "list")
ItemType = Literal["int", "float", "string", "bool"]
EpochUnit = Literal["s", "ms", "us", "ns"]
EPOCH_SCALE: Final[Mapping[str, float]] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
"""Seconds per unit of an epoch timestamp."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MIN_EPOCH_SECONDS: Final = int((datetime(1, 1, 1, tzinfo=UTC) - _EPOCH).total_seconds())
"""Earliest instant an epoch timestamp may name: 0001-01-01 UTC."""
MAX_EPOCH_SECONDS: Final = int(
    (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH).total_seconds()
)
"""Latest instant an epoch timestamp may name: 9999-12-31T23:59:59 UTC."""

INT64: Final = 2**63
_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")
_RESERVED: Final = frozenset(dir(BaseModel)) | {"dense", "categorical"}


@dataclass(frozen=True)
class FieldSchema:
    """One event field: its type, presence and constraints (see the module docstring)."""

    name: str
    type: FieldType
    required: bool = True
    nullable: bool = False
    default: Any = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    items: ItemType | None = None
    format: Literal["iso"] | None = None
    unit: EpochUnit | None = None
    description: str = ""

    def __post_init__(self) -> None:
        where = f"schema field {self.name!r}"
        if not _NAME.match(self.name) or self.name in _RESERVED or self.name.startswith("model_"):
            raise ConfigError(
                where,
                "a field name is a letter, then letters, digits or underscores "
                "(at most 128), and not a name pydantic reserves",
            )
        if self.type not in FIELD_TYPES:
            raise ConfigError(where, f"unknown type {self.type!r}; known: {list(FIELD_TYPES)}")
        numeric = self.type in ("int", "float") or (self.type == "timestamp" and self.unit)
        if not numeric and any(b is not None for b in (self.ge, self.gt, self.le, self.lt)):
            raise ConfigError(
                where, f"bounds apply to int, float and epoch fields, not {self.type}"
            )
        if self.type not in ("string", "list") and (
            self.pattern is not None or self.min_length is not None or self.max_length is not None
        ):
            raise ConfigError(where, "pattern and lengths apply to string and list fields")
        if self.pattern is not None:
            if self.type != "string":
                raise ConfigError(where, "a pattern applies to a string field")
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ConfigError(where, f"bad pattern {self.pattern!r}: {err}") from None
        if (self.type == "list") != (self.items is not None):
            raise ConfigError(where, "a list field (and only a list) names its items' type")
        if self.type == "timestamp" and (self.format is None) == (self.unit is None):
            raise ConfigError(where, "a timestamp has either format: iso or an epoch unit")
        if self.type != "timestamp" and (self.format is not None or self.unit is not None):
            raise ConfigError(where, "format and unit apply to timestamp fields")
        if self.required and self.default is not None:
            raise ConfigError(where, "a default applies to an optional field (required: false)")

    @property
    def allows_null(self) -> bool:
        """Whether the value may be null (nullable, or optional without a default)."""
        return self.nullable or (not self.required and self.default is None)

    @property
    def numeric(self) -> bool:
        """Whether the featurizer can read the value as a number."""
        return self.type in ("int", "float", "bool") or (
            self.type == "timestamp" and self.unit is not None
        )

    def annotation(self) -> Any:
        """The pydantic annotation of this field (type, bounds, validators)."""
        tp: Any
        if self.type == "int":
            lo = self.ge if self.ge is not None else (None if self.gt is not None else -INT64)
            hi = self.lt if self.lt is not None else (None if self.le is not None else INT64)
            tp = Annotated[int, Field(ge=lo, gt=self.gt, le=self.le, lt=hi)]
        elif self.type == "float":
            tp = Annotated[float, Field(ge=self.ge, gt=self.gt, le=self.le, lt=self.lt)]
        elif self.type == "string":
            tp = Annotated[
                str,
                Field(pattern=self.pattern, min_length=self.min_length, max_length=self.max_length),
            ]
        elif self.type == "bool":
            tp = bool
        elif self.type == "timestamp" and self.unit is not None:
            scale = EPOCH_SCALE[self.unit]
            tp = Annotated[
                float,
                Field(
                    ge=MIN_EPOCH_SECONDS / scale if self.ge is None else self.ge,
                    le=MAX_EPOCH_SECONDS / scale if self.le is None else self.le,
                    gt=self.gt,
                    lt=self.lt,
                ),
            ]
        elif self.type == "timestamp":
            tp = AwareDatetime
        else:
            item: Any = {"int": int, "float": float, "string": str, "bool": bool}[self.items or ""]
            tp = Annotated[
                list[item], Field(min_length=self.min_length, max_length=self.max_length)
            ]
        return tp | None if self.allows_null else tp


@dataclass(frozen=True)
class EventSchema:
    """The fields of one kind of event, in order (see the module docstring)."""

    name: str
    fields: tuple[FieldSchema, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.fields:
            raise ConfigError(f"schema {self.name!r}", "declare at least one field")
        names = [f.name for f in self.fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"schema {self.name!r}", f"duplicate fields {dup}")

    @property
    def names(self) -> tuple[str, ...]:
        """The field names, in order."""
        return tuple(f.name for f in self.fields)

    def get(self, name: str) -> FieldSchema | None:
        """The field called ``name``, or ``None``."""
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def epoch_units(self) -> dict[str, str]:
        """``{field: unit}`` of the epoch-number timestamp fields."""
        return {f.name: f.unit for f in self.fields if f.unit is not None}

    def to_wire(self) -> dict[str, Any]:
        """The schema as JSON values (what crosses to a source process)."""
        return {"name": self.name, "fields": [_compact(asdict(f)) for f in self.fields]}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> EventSchema:
        """Inverse of :meth:`to_wire`."""
        return cls(str(raw["name"]), tuple(FieldSchema(**dict(f)) for f in raw["fields"]))

    def key(self) -> str:
        """A canonical JSON text of the schema (equal schemas, equal keys)."""
        return json.dumps(self.to_wire(), sort_keys=True, separators=(",", ":"))


def _compact(raw: dict[str, Any]) -> dict[str, Any]:
    defaults = {"required": True, "nullable": False, "description": ""}
    return {k: v for k, v in raw.items() if v is not None and defaults.get(k, object()) != v}


class SchemaEvent(BaseModel):
    """Base of every generated event model: frozen, strict, unknown fields refused."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False, validate_default=False
    )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        """Validate a dict as its JSON message would be (datetimes as ISO-8601 text)."""

        def text(value: object) -> str:
            if isinstance(value, datetime):
                return value.isoformat()
            raise TypeError(f"{type(value).__name__} is not a JSON type")

        return cls.model_validate_json(json.dumps(dict(record), default=text))


def schema_model(schema: EventSchema) -> type[SchemaEvent]:
    """The pydantic model validating ``schema``'s events (cached per schema)."""
    return _model_for(schema.key())


@functools.lru_cache(maxsize=64)
def _model_for(key: str) -> type[SchemaEvent]:
    schema = EventSchema.from_wire(json.loads(key))
    definitions: dict[str, Any] = {}
    for f in schema.fields:
        annotation = f.annotation()
        if f.required:
            definitions[f.name] = (annotation, Field(description=f.description or None))
        else:
            definitions[f.name] = (annotation, Field(default=f.default))
    title = "".join(p[:1].upper() + p[1:] for p in re.split(r"[^A-Za-z0-9]+", schema.name) if p)
    model: type[SchemaEvent] = create_model(
        f"{title or 'Schema'}Event", __base__=SchemaEvent, **definitions
    )
    return model
