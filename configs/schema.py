"""The ``schema:`` section of a job file: the declared fields of the event stream.

It is given inline, or as the name of a shipped schema (``ctr``, ``transaction``: the files in
``configs/schemas/``), or as a path to a YAML file with the same ``name`` and ``fields`` keys
(relative to the job file's directory).
:meth:`SchemaConfig.to_schema` gives the frozen :class:`pipeline.events.schema.EventSchema`
from which the event validator is generated.

::

    schema:
      name: clicks
      fields:
        label:     {type: int, ge: 0, le: 1}
        user_id:   {type: string, pattern: "^[0-9a-f]{8}$"}     # stays a string
        ts:        {type: timestamp, unit: ms}                  # epoch milliseconds
        seen_at:   {type: timestamp, format: iso}               # RFC 3339, offset required
        price:     {type: float, ge: 0, required: false}        # may be absent: null
        tags:      {type: list, items: string, max_length: 32}

>>> cfg = SchemaConfig.model_validate({"name": "t", "fields": {
...     "label": {"type": "int", "ge": 0, "le": 1}, "ts": {"type": "timestamp", "unit": "ms"}}})
>>> cfg.to_schema().names, cfg.to_schema().epoch_units()
(('label', 'ts'), {'ts': 'ms'})
>>> load_schema("ctr").names[:3]
('label', 'i1', 'i2')
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import ConfigError
from pipeline.events.schema import EventSchema, FieldSchema

__all__ = [
    "SHIPPED_SCHEMAS",
    "FieldConfig",
    "SchemaConfig",
    "load_schema",
    "relative_to",
    "resolve_schema",
]

SHIPPED_DIR = Path(__file__).parent / "schemas"
SHIPPED_SCHEMAS = ("ctr", "transaction")
"""Schemas shipped with Freshet (``configs/schemas/<name>.yaml``); ``kind:`` names one."""

Bound = Annotated[int | float | None, Field(default=None, description="numeric bound")]


class FieldConfig(BaseModel):
    """One event field: type, presence, default and constraints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["int", "float", "string", "bool", "timestamp", "list"] = Field(
        description="value type"
    )
    required: bool = Field(default=True, description="the key must be present in every event")
    nullable: bool = Field(default=False, description="the value may be null")
    default: int | float | str | bool | None = Field(
        default=None, description="value of an absent optional field (required: false)"
    )
    ge: Bound = None
    gt: Bound = None
    le: Bound = None
    lt: Bound = None
    pattern: str | None = Field(default=None, max_length=1024, description="regex a string matches")
    min_length: int | None = Field(default=None, ge=0, description="shortest string / list")
    max_length: int | None = Field(default=None, ge=1, description="longest string / list")
    items: Literal["int", "float", "string", "bool"] | None = Field(
        default=None, description="type of a list's items"
    )
    format: Literal["iso"] | None = Field(
        default=None, description="timestamp as RFC 3339 / ISO-8601 text with a UTC offset"
    )
    unit: Literal["s", "ms", "us", "ns"] | None = Field(
        default=None, description="timestamp as an epoch number in this unit"
    )
    description: str = Field(default="", max_length=1024, description="what the field means")

    def to_field(self, name: str) -> FieldSchema:
        """The frozen field (raises ``ConfigError`` on an inconsistent declaration)."""
        values = self.model_dump()
        for key in ("ge", "gt", "le", "lt"):  # integral bounds stay ints for int fields
            v = values[key]
            if v is not None and self.type == "int" and float(v).is_integer():
                values[key] = int(v)
        return FieldSchema(name=name, **values)


class SchemaConfig(BaseModel):
    """A declared event schema: a name and its fields, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$", max_length=64, description="event kind name"
    )
    fields: dict[str, FieldConfig] = Field(
        min_length=1, max_length=4096, description="field name -> declaration, in order"
    )

    @model_validator(mode="after")
    def _consistent(self) -> SchemaConfig:
        try:
            self.to_schema()
        except ConfigError as err:
            raise ValueError(str(err)) from err
        return self

    def to_schema(self) -> EventSchema:
        """The frozen schema the pipeline takes."""
        return EventSchema(self.name, tuple(f.to_field(n) for n, f in self.fields.items()))


def resolve_schema(value: Any) -> Any:
    """A shipped schema's name or a YAML path -> its mapping; a mapping is returned as is.

    Raises ``ValueError`` (pydantic reports it at the ``schema`` key) for an unknown name or
    an unreadable file.
    """
    if not isinstance(value, str):
        return value
    path = SHIPPED_DIR / f"{value}.yaml" if value in SHIPPED_SCHEMAS else Path(value)
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except OSError as err:
        raise ValueError(
            f"no schema {value!r}: neither a shipped schema {list(SHIPPED_SCHEMAS)} nor a "
            f"readable file ({err.strerror})"
        ) from None
    except yaml.YAMLError as err:
        raise ValueError(f"schema file {value!r} is not valid YAML: {err}") from None
    if isinstance(raw, dict) and "schema" in raw and "fields" not in raw:
        raw = raw["schema"]
    if not isinstance(raw, dict):
        raise ValueError(f"schema file {value!r} must hold a mapping with name and fields")
    return raw


def relative_to(raw: dict[str, Any], job_file: str | Path) -> dict[str, Any]:
    """``raw`` with a relative ``schema:`` path taken from the job file's directory.

    >>> relative_to({"schema": "s.yaml"}, "/jobs/job.yaml")["schema"]
    '/jobs/s.yaml'
    >>> relative_to({"schema": "ctr"}, "/jobs/job.yaml")["schema"]
    'ctr'
    """
    value = raw.get("schema")
    if isinstance(value, str) and value not in SHIPPED_SCHEMAS and not Path(value).is_absolute():
        return {**raw, "schema": str(Path(job_file).parent / value)}
    return raw


def load_schema(value: str | dict[str, Any]) -> EventSchema:
    """The schema named (shipped), at a path, or given as a mapping."""
    return SchemaConfig.model_validate(resolve_schema(value)).to_schema()
