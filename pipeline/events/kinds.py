"""The built-in event kinds, as they travel through Kafka: one JSON object per message.

This is the edge of the pipeline, so the schemas are strict pydantic models (frozen, unknown
fields refused, no type coercion, bounded values). :func:`decode` turns a message payload into an
event or raises :class:`~pipeline.errors.DecodeError` naming what is wrong; the source sends such
messages to the dead-letter topic.

::

    kind "ctr" (Criteo layout)                kind "transaction"
    {"label": 0|1,                            {"transaction_id": int >= 0,
     "i1".."i13": int | null,                  "timestamp": "2018-04-01T00:00:31Z",
     "c1".."c26": "68fd1e64" | null}           "customer_id": int >= 0,
                                               "terminal_id": int >= 0,
                                               "amount": 0 <= float < 1e9,
                                               "label": 0|1}

>>> event = decode("transaction", b'{"transaction_id": 7, "timestamp": "2018-04-01T00:00:31Z",'
...                b' "customer_id": 596, "terminal_id": 3156, "amount": 57.16, "label": 0}')
>>> event.customer_id, event.timestamp.isoformat()
(596, '2018-04-01T00:00:31+00:00')
>>> decode("transaction", b'{"transaction_id": 7}')
Traceback (most recent call last):
...
pipeline.errors.DecodeError: transaction: missing field 'timestamp' (and 4 more problems)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Any, Final, Self, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from pipeline.errors import DecodeError, DecodeFailure, UnknownEventKindError
from pipeline.events.schema import EventSchema, SchemaEvent, schema_model

__all__ = [
    "EVENT_KINDS",
    "CtrEvent",
    "DecodeError",
    "Event",
    "TransactionEvent",
    "decode",
    "encode",
    "event_model",
    "to_record",
]

MAX_ID: Final = 2**63
"""Ids (transaction, customer, terminal) lie in ``[0, MAX_ID)``, so they fit an int64."""

Label = Annotated[int, Field(ge=0, le=1, description="1 = click / fraud, 0 = not")]
EntityId = Annotated[int, Field(ge=0, lt=MAX_ID)]
CriteoCount = Annotated[
    int | None, Field(ge=-(10**9), le=10**12, description="Criteo integer feature, may be -1")
]
CriteoCategory = Annotated[
    str | None, Field(pattern=r"^[0-9a-f]{8}$", description="32-bit hashed category, 8 hex digits")
]

N_DENSE: Final = 13
N_SPARSE: Final = 26
_CRITEO_COLUMNS: Final = 1 + N_DENSE + N_SPARSE


class _Event(BaseModel):
    """Shared pydantic configuration of every event model."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False, validate_default=False
    )


class CtrEvent(_Event):
    r"""One ad impression in the Criteo layout: a click label, 13 counts and 26 hashed categories.

    >>> line = "1\t5\t\t-1" + "\t" * 10 + "\t68fd1e64" + "\t" * 25
    >>> ev = CtrEvent.from_criteo_line(line)
    >>> ev.label, ev.dense[:3], ev.categorical[0], ev.categorical[1]
    (1, (5, None, -1), '68fd1e64', None)
    """

    label: Label
    i1: CriteoCount
    i2: CriteoCount
    i3: CriteoCount
    i4: CriteoCount
    i5: CriteoCount
    i6: CriteoCount
    i7: CriteoCount
    i8: CriteoCount
    i9: CriteoCount
    i10: CriteoCount
    i11: CriteoCount
    i12: CriteoCount
    i13: CriteoCount
    c1: CriteoCategory
    c2: CriteoCategory
    c3: CriteoCategory
    c4: CriteoCategory
    c5: CriteoCategory
    c6: CriteoCategory
    c7: CriteoCategory
    c8: CriteoCategory
    c9: CriteoCategory
    c10: CriteoCategory
    c11: CriteoCategory
    c12: CriteoCategory
    c13: CriteoCategory
    c14: CriteoCategory
    c15: CriteoCategory
    c16: CriteoCategory
    c17: CriteoCategory
    c18: CriteoCategory
    c19: CriteoCategory
    c20: CriteoCategory
    c21: CriteoCategory
    c22: CriteoCategory
    c23: CriteoCategory
    c24: CriteoCategory
    c25: CriteoCategory
    c26: CriteoCategory

    @property
    def dense(self) -> tuple[int | None, ...]:
        """The 13 integer features ``i1..i13`` in order (``None`` where missing)."""
        return tuple(getattr(self, f"i{k}") for k in range(1, N_DENSE + 1))

    @property
    def categorical(self) -> tuple[str | None, ...]:
        """The 26 hashed categories ``c1..c26`` in order (``None`` where missing)."""
        return tuple(getattr(self, f"c{k}") for k in range(1, N_SPARSE + 1))

    @classmethod
    def from_criteo_line(cls, line: str) -> Self:
        """Parse one line of a Criteo TSV file: label, I1..I13, C1..C26, empty = missing.

        Raises :class:`~pipeline.errors.DecodeError` on a wrong column count or a bad value.
        """
        cols = line.rstrip("\r\n").split("\t")
        if len(cols) != _CRITEO_COLUMNS:
            raise DecodeError(
                DecodeFailure.INVALID_VALUE,
                f"ctr: a Criteo line has {_CRITEO_COLUMNS} tab-separated columns, got {len(cols)}",
            )
        record: dict[str, Any] = {}
        names = ["label"] + [f"i{k}" for k in range(1, N_DENSE + 1)]
        for name, text in zip(names, cols[: 1 + N_DENSE], strict=True):
            if text == "":
                record[name] = None
                continue
            try:
                record[name] = int(text)
            except ValueError:
                raise DecodeError(
                    DecodeFailure.WRONG_TYPE,
                    f"ctr: wrong type for {name!r}: expected an integer, got {text[:40]!r}",
                    field=name,
                ) from None
        for k, text in enumerate(cols[1 + N_DENSE :], start=1):
            record[f"c{k}"] = text or None
        return cls.from_record(record)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        """Validate a dict with the JSON message's fields, as :func:`decode` would its JSON."""
        return _validate_python(cls, "ctr", record)


class TransactionEvent(_Event):
    """One card transaction with its fraud label.

    >>> row = {"TRANSACTION_ID": "0", "TX_DATETIME": "2018-04-01 00:00:31", "CUSTOMER_ID": "596",
    ...        "TERMINAL_ID": "3156", "TX_AMOUNT": "57.16", "TX_FRAUD": "0"}
    >>> TransactionEvent.from_fraud_csv_row(row).model_dump_json()
    '{"transaction_id":0,"timestamp":"2018-04-01T00:00:31Z","customer_id":596,"terminal_id":3156,"amount":57.16,"label":0}'
    """

    transaction_id: EntityId
    timestamp: AwareDatetime
    customer_id: EntityId
    terminal_id: EntityId
    amount: Annotated[float, Field(ge=0.0, lt=1e9)]
    label: Label

    @classmethod
    def from_fraud_csv_row(cls, row: Mapping[str, str]) -> Self:
        """Build from a row of the fraud handbook's CSV (``TX_DATETIME`` is taken as UTC).

        Columns other than the six used (``TX_TIME_SECONDS``, ``TX_FRAUD_SCENARIO``, ...) are
        ignored: the scenario is how the fraud was simulated and never a feature.
        """
        columns = {
            "transaction_id": "TRANSACTION_ID",
            "customer_id": "CUSTOMER_ID",
            "terminal_id": "TERMINAL_ID",
            "label": "TX_FRAUD",
        }
        record: dict[str, Any] = {}
        columns |= {"amount": "TX_AMOUNT", "timestamp": "TX_DATETIME"}
        for name, column in columns.items():
            if column not in row:
                raise DecodeError(
                    DecodeFailure.MISSING_FIELD,
                    f"transaction: missing column {column!r}",
                    field=column,
                )
            text = row[column].strip()
            try:
                if name == "amount":
                    record[name] = float(text)
                elif name == "timestamp":
                    stamp = datetime.fromisoformat(text)
                    naive = stamp.tzinfo is None
                    record[name] = stamp.replace(tzinfo=UTC) if naive else stamp.astimezone(UTC)
                else:
                    record[name] = int(text)
            except ValueError:
                raise DecodeError(
                    DecodeFailure.WRONG_TYPE,
                    f"transaction: wrong type for column {column!r}: got {text[:40]!r}",
                    field=column,
                ) from None
        return cls.from_record(record)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        """Validate a dict with the JSON message's fields, as :func:`decode` would its JSON."""
        return _validate_python(cls, "transaction", record)


Event = CtrEvent | TransactionEvent
"""Any built-in event."""

EVENT_KINDS: Final[Mapping[str, type[CtrEvent] | type[TransactionEvent]]] = MappingProxyType(
    {"ctr": CtrEvent, "transaction": TransactionEvent}
)
"""Event kind name (as in configs and the CLI) -> its model."""


def event_model(
    kind: str, schema: EventSchema | None = None
) -> type[CtrEvent] | type[TransactionEvent] | type[SchemaEvent]:
    """Return the model of ``schema`` if given, else the one registered for ``kind``.

    Raises ``UnknownEventKindError`` for a kind without a schema that is not registered.
    """
    if schema is not None:
        return schema_model(schema)
    try:
        return EVENT_KINDS[kind]
    except KeyError:
        raise UnknownEventKindError(kind, list(EVENT_KINDS)) from None


def decode(kind: str, payload: bytes, schema: EventSchema | None = None) -> Event | SchemaEvent:
    """Parse and validate one message payload as an event of ``kind``.

    ``schema``: the declared schema of ``kind`` (none: a built-in kind). Raises
    :class:`~pipeline.errors.DecodeError` whose message names what is wrong: an empty
    payload, bad JSON, a missing, unknown or ill-typed field, or a value out of range.

    >>> decode("ctr", b"")
    Traceback (most recent call last):
    ...
    pipeline.errors.DecodeError: ctr: empty payload
    """
    model = event_model(kind, schema)
    if not payload:
        raise DecodeError(DecodeFailure.EMPTY_PAYLOAD, f"{kind}: empty payload")
    try:
        return model.model_validate_json(payload)
    except ValidationError as err:
        raise _decode_error(kind, err) from None


def encode(event: Event) -> bytes:
    """Serialise ``event`` to its JSON message (what :func:`decode` reads back)."""
    return event.model_dump_json().encode()


def to_record(event: Event) -> dict[str, Any]:
    """Return the event as a JSON-ready dict (timestamps as ISO-8601 strings)."""
    record: dict[str, Any] = json.loads(event.model_dump_json())
    return record


_M = TypeVar("_M", bound=_Event)


def _validate_python(model: type[_M], kind: str, record: Mapping[str, Any]) -> _M:
    """Validate ``record`` exactly as its JSON message would be (datetimes become ISO strings)."""
    try:
        payload = json.dumps(dict(record), default=_json_default)
    except (TypeError, ValueError) as err:
        raise DecodeError(
            DecodeFailure.WRONG_TYPE, f"{kind}: not JSON-serialisable: {err}"
        ) from None
    try:
        return model.model_validate_json(payload)
    except ValidationError as err:
        raise _decode_error(kind, err) from None


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a JSON type")


_RANGE_ERRORS: Final = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}
)
_TOP_LEVEL_TYPE_ERRORS: Final = frozenset({"model_type", "model_attributes_type", "dict_type"})


def _decode_error(kind: str, err: ValidationError) -> DecodeError:
    """Turn pydantic's first complaint into a ``DecodeError`` naming the field."""
    errors = err.errors(include_url=False)
    first = errors[0]
    failure, detail, field = _describe(first)
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return DecodeError(failure, f"{kind}: {detail}{more}", field=field)


_SHOWN_NAME: Final = 60
"""Longest field name a message quotes in full (an unknown key may be a megabyte long)."""


def _describe(error: ErrorDetails) -> tuple[DecodeFailure, str, str | None]:
    kind = error["type"]
    field = ".".join(str(part) for part in error["loc"]) or None
    name = field if field is None or len(field) <= _SHOWN_NAME else field[: _SHOWN_NAME - 3] + "..."
    if kind in ("json_invalid", "json_type"):
        msg = error["msg"].removeprefix("Invalid JSON: ")
        return DecodeFailure.BAD_JSON, f"bad JSON: {msg}", None
    if kind in _TOP_LEVEL_TYPE_ERRORS and field is None:
        got = type(error["input"]).__name__
        return DecodeFailure.BAD_JSON, f"bad JSON: expected an object, got {got}", None
    if kind == "missing":
        return DecodeFailure.MISSING_FIELD, f"missing field {name!r}", field
    if kind == "extra_forbidden":
        return DecodeFailure.UNKNOWN_FIELD, f"unknown field {name!r}", field
    shown = repr(error["input"])
    if len(shown) > 40:
        shown = shown[:37] + "..."
    if kind in _RANGE_ERRORS:
        detail = f"value out of range for {name!r}: {shown} ({error['msg'].lower()})"
        return DecodeFailure.OUT_OF_RANGE, detail, field
    if kind.endswith("_type"):
        got = type(error["input"]).__name__
        detail = f"wrong type for {name!r}: {error['msg'].lower()}, got {got} {shown}"
        return DecodeFailure.WRONG_TYPE, detail, field
    detail = f"invalid value for {name!r}: {shown} ({error['msg'].lower()})"
    return DecodeFailure.INVALID_VALUE, detail, field
