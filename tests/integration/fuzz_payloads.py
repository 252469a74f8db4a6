"""Hypothesis strategies for event payloads whose validity is known by construction.

A valid payload is a record of :func:`pipeline.events.generators.generate` with up to three fields
redrawn anywhere inside the schema of :mod:`pipeline.events.kinds`, in any key order and JSON
spacing.
A malformed one starts from a valid record and is spoilt in a way the schema refuses (a field
dropped, a value of the wrong type or out of range, bytes that are not UTF-8 or not JSON, ...),
so the tests know it is bad, and which ``reason_code`` may name it, without asking the
validator; :func:`check_oracle` then asks it, to catch a wrong construction (or validator).

::

    Payload(data=b'{"label":7,...}', spoil="out_of_range", codes={OUT_OF_RANGE})
            \\____ the bytes ____/        \\__ how ___/         \\_ codes a dead letter
                                                                may carry ({} = valid)
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, timedelta, timezone
from functools import cache
from typing import Any, Final, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipeline.errors import DecodeError, DecodeFailure
from pipeline.events.generators import generate
from pipeline.events.kinds import MAX_ID, N_DENSE, N_SPARSE, decode

T = TypeVar("T")
Draw = Callable[[st.SearchStrategy[Any]], Any]
Items = list[tuple[str, str]]
"""A JSON object as ``(key, raw JSON value)`` pairs: keeps order, duplicates, raw literals."""

F = DecodeFailure


@dataclass(frozen=True)
class Field:
    """One event field: ``int`` / ``amount`` (float) in ``[lo, hi]``, ``hex`` or ``time``."""

    name: str
    type: str
    lo: int = 0
    hi: int = 0
    nullable: bool = False


FIELDS: Final[dict[str, tuple[Field, ...]]] = {
    "ctr": (
        Field("label", "int", 0, 1),
        *(Field(f"i{k}", "int", -(10**9), 10**12, True) for k in range(1, N_DENSE + 1)),
        *(Field(f"c{k}", "hex", nullable=True) for k in range(1, N_SPARSE + 1)),
    ),
    "transaction": (
        Field("transaction_id", "int", 0, MAX_ID - 1),
        Field("timestamp", "time"),
        Field("customer_id", "int", 0, MAX_ID - 1),
        Field("terminal_id", "int", 0, MAX_ID - 1),
        Field("amount", "amount", 0, 10**9),  # [0, 1e9)
        Field("label", "int", 0, 1),
    ),
}
JSON_SPACE: Final = " \t\r\n"
HEX8: Final = re.compile(r"[0-9a-f]{8}")
POOL: Final = 1024


@dataclass(frozen=True)
class Payload:
    """A message payload, how it was made, and the reason codes it may be refused with."""

    data: bytes
    spoil: str
    codes: frozenset[DecodeFailure] = frozenset()

    @property
    def valid(self) -> bool:
        return not self.codes


def raw(value: object) -> str:
    return json.dumps(value)


def render(items: Items, compact: bool = True) -> str:
    sep, colon = (",", ":") if compact else (", ", ": ")
    return "{" + sep.join(f"{raw(k)}{colon}{v}" for k, v in items) + "}"


# ------------------------------------------------------------------------- valid values

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
offsets = st.integers(-(24 * 60) + 1, 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
aware_times = st.datetimes(timezones=st.just(UTC) | offsets).map(
    lambda d: d.isoformat().replace("+00:00", "Z")
)


@cache
def valid_value(field: Field) -> st.SearchStrategy[Any]:
    if field.type == "int":
        values: st.SearchStrategy[Any] = st.integers(field.lo, field.hi)
    elif field.type == "amount":
        values = st.floats(0.0, 1e9, exclude_max=True) | st.integers(0, 10**9 - 1)
    elif field.type == "hex":
        values = st.text("0123456789abcdef", min_size=8, max_size=8)
    else:
        values = aware_times
    return st.none() | values if field.nullable else values


@cache
def base_records(kind: str) -> st.SearchStrategy[Items]:
    """Realistic records from :func:`pipeline.events.generators.generate`, as ``Items``."""
    records = [[(k, raw(v)) for k, v in r.items()] for r in generate(kind, POOL, seed=8)]
    return st.sampled_from(records)


@cache
def some_fields(kind: str) -> st.SearchStrategy[list[Field]]:
    return st.lists(fields_of(kind), max_size=3)


def valid_items(draw: Draw, kind: str) -> Items:
    """A generated record, up to three of its fields replaced by any value the schema allows.

    Drawing a few fields rather than all 40 keeps a draw cheap enough for 10,000 of them.
    """
    items: Items = draw(base_records(kind))
    for field in draw(some_fields(kind)):
        items = _replace(items, field.name, raw(draw(valid_value(field))))
    return items


PADDING: Final = st.text(JSON_SPACE, max_size=3)
SHUFFLES: Final = st.integers(0, 2**32)


@st.composite
def valid_payloads(draw: Draw, kind: str) -> Payload:
    """A valid event in any key order and JSON spacing."""
    items = valid_items(draw, kind)
    random.Random(draw(SHUFFLES)).shuffle(items)
    text = render(items, compact=draw(st.booleans()))
    return Payload((draw(PADDING) + text + draw(PADDING)).encode(), "valid")


# --------------------------------------------------------------------- invalid values


@cache
def wrong_type_value(field: Field) -> st.SearchStrategy[Any]:
    """A JSON value of a type the field refuses (strict: no ``"1"`` for 1, no 1.0 for 1)."""
    containers = st.lists(json_leaves, max_size=3) | st.dictionaries(
        st.text(max_size=5), json_leaves, max_size=3
    )
    if field.type == "int":
        other = st.text(max_size=20) | st.floats() | st.booleans()
    elif field.type == "amount":
        other = st.text(max_size=20) | st.booleans()
    elif field.type == "hex":
        other = st.integers() | st.floats() | st.booleans()
    else:  # a timestamp is a string
        other = st.integers() | st.floats() | st.booleans()
    values = other | containers
    return values if field.nullable else values | st.none()


@cache
def out_of_range_value(field: Field) -> st.SearchStrategy[Any]:
    if field.type == "int":
        return (
            st.integers(max_value=field.lo - 1)
            | st.integers(min_value=field.hi + 1)
            | st.integers(1, 400).map(lambda e: field.hi + 10**e)
            | st.integers(1, 400).map(lambda e: field.lo - 10**e)
        )
    return (
        st.floats(max_value=-1e-300)  # a bound, not a filter: -0.0 and 0.0 are in range
        | st.floats(min_value=1e9)
        | st.just(float("nan"))
        | st.integers(max_value=-1)
        | st.integers(min_value=10**9)
    )


@cache
def invalid_value(field: Field) -> st.SearchStrategy[str]:
    """A string the ``hex`` pattern or the aware-datetime parser refuses."""
    if field.type == "hex":
        near = st.text("0123456789abcdef", max_size=16).filter(lambda s: len(s) != 8)
        upper = st.text("0123456789ABCDEF", min_size=8, max_size=8).filter(lambda s: s.lower() != s)
        return (
            near
            | upper
            | st.text("0123456789abcdef", min_size=8, max_size=8).map(lambda s: s + "\n")
            | st.integers(9, 200_000).map(lambda n: "a" * n)
            | st.text(max_size=16)
        ).filter(lambda s: HEX8.fullmatch(s) is None)
    bad_part = st.sampled_from(
        [
            "2018-13-01T00:00:00Z",
            "2018-02-30T00:00:00Z",
            "2018-04-01T25:00:00Z",
            "2018-04-01T00:61:00Z",
            "2018-04-01T00:00:61Z",
            "2018-04-01T00:00:00+24:00",
            "2018-04-01T00:00:00+05:30:15",
            "2018-04-01",
            "  2018-04-01T00:00:31Z",
            "2018-04-01T00:00:31Z junk",
        ]
    )
    naive = st.datetimes().map(lambda d: d.isoformat())
    no_digits = st.text(max_size=30).filter(lambda s: not any(c.isdigit() for c in s))
    return bad_part | naive | no_digits


# --------------------------------------------------------------------------- spoilers


@cache
def fields_of(kind: str, types: tuple[str, ...] = ("int", "amount", "hex", "time")) -> Any:
    return st.sampled_from([f for f in FIELDS[kind] if f.type in types])


@cache
def field_name_sets(kind: str) -> st.SearchStrategy[frozenset[str]]:
    """A non-empty set of field names, as one bit mask (one choice, not one per name)."""
    names = [f.name for f in FIELDS[kind]]
    return st.integers(1, 2 ** len(names) - 1).map(
        lambda mask: frozenset(n for i, n in enumerate(names) if mask >> i & 1)
    )


def _field(draw: Draw, kind: str, types: tuple[str, ...] | None = None) -> Field:
    field: Field = draw(fields_of(kind) if types is None else fields_of(kind, types))
    return field


def _replace(items: Items, name: str, value: str) -> Items:
    return [(k, value if k == name else v) for k, v in items]


def spoil_value(draw: Draw, kind: str, items: Items, how: str) -> tuple[Items, DecodeFailure]:
    """Replace one field's value: ``wrong_type``, ``out_of_range`` or ``invalid_value``."""
    if how == "wrong_type":
        field = _field(draw, kind)
        return _replace(items, field.name, raw(draw(wrong_type_value(field)))), F.WRONG_TYPE
    if how == "out_of_range":
        field = _field(draw, kind, ("int", "amount"))
        value = draw(out_of_range_value(field))
        return _replace(items, field.name, raw(value)), F.OUT_OF_RANGE
    field = _field(draw, kind, ("hex", "time"))
    return _replace(items, field.name, raw(draw(invalid_value(field)))), F.INVALID_VALUE


@cache
def unknown_keys(kind: str) -> st.SearchStrategy[list[str]]:
    names = {f.name for f in FIELDS[kind]}
    key = st.text(max_size=20) | st.integers(1_000, 100_000).map(lambda n: "k" * n)
    return st.lists(key.filter(lambda k: k not in names), min_size=1, max_size=3, unique=True)


def add_unknown(draw: Draw, kind: str, items: Items) -> Items:
    extra = draw(unknown_keys(kind))
    out = list(items)
    for k in extra:
        out.insert(draw(st.integers(0, len(out))), (k, raw(draw(json_values))))
    return out


RECORD_SPOILS: Final = (
    "missing",
    "unknown",
    "wrong_type",
    "out_of_range",
    "invalid_value",
    "huge_integer",
    "duplicate_key",
    "nested_field",
    "stacked",
)
"""Spoils that keep a JSON object (so a /predict body can carry the event)."""
RECORD_SPOIL_DRAWS: Final = st.sampled_from(RECORD_SPOILS)
SIGNS: Final = st.sampled_from(["", "-"])
DIGITS: Final = st.integers(20, 6_000)
FIELD_DEPTHS: Final = st.integers(1, 3_000)
STACKED_STEPS: Final = st.lists(
    st.sampled_from(["wrong_type", "out_of_range", "invalid_value", "unknown"]),
    min_size=2,
    max_size=4,
)


def record_level(
    draw: Draw, kind: str, items: Items
) -> tuple[Items, frozenset[DecodeFailure], str]:
    """``items`` spoilt into a JSON object refused for its fields (JSON still, so a /predict
    body can carry it)."""
    how = draw(RECORD_SPOIL_DRAWS)
    if how == "missing":
        drop = draw(field_name_sets(kind))
        return [(k, v) for k, v in items if k not in drop], frozenset({F.MISSING_FIELD}), how
    if how == "unknown":
        return add_unknown(draw, kind, items), frozenset({F.UNKNOWN_FIELD}), how
    if how in ("wrong_type", "out_of_range", "invalid_value"):
        spoilt, code = spoil_value(draw, kind, items, how)
        return spoilt, frozenset({code}), how
    if how == "huge_integer":  # a literal json.dumps cannot write: past 4,300 digits
        field = _field(draw, kind, ("int", "amount"))
        literal = draw(SIGNS) + "9" * draw(DIGITS)
        return _replace(items, field.name, literal), frozenset({F.OUT_OF_RANGE, F.BAD_JSON}), how
    if how == "duplicate_key":  # the last one wins, and it is bad
        field = _field(draw, kind, ("int", "amount"))
        return (
            [*items, (field.name, raw(draw(out_of_range_value(field))))],
            frozenset({F.OUT_OF_RANGE}),
            how,
        )
    if how == "nested_field":  # past jiter's depth limit it is bad JSON
        depth = draw(FIELD_DEPTHS)
        field = _field(draw, kind)
        return (
            _replace(items, field.name, "[" * depth + "]" * depth),
            frozenset({F.WRONG_TYPE, F.BAD_JSON}),
            how,
        )
    codes: set[DecodeFailure] = set()
    for step in draw(STACKED_STEPS):
        if step == "unknown":
            items = add_unknown(draw, kind, items)
            codes.add(F.UNKNOWN_FIELD)
        else:
            items, code = spoil_value(draw, kind, items, step)
            codes.add(code)
    return items, frozenset(codes), how


BAD_UTF8: Final = st.sampled_from(
    [b"\xff", b"\xfe", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88"]
)
BYTE_SPOILS: Final = (
    "empty",
    "whitespace",
    "truncated",
    "trailing",
    "not_utf8",
    "binary",
    "not_object",
    "deep",
    "bad_string",
)
"""Spoils of the message bytes: not JSON, not UTF-8, not an object."""
SPOILS: Final = RECORD_SPOILS + BYTE_SPOILS
SOURCE_SPOIL_DRAWS: Final = st.sampled_from(["record"] * len(RECORD_SPOILS) + list(BYTE_SPOILS))
WHITESPACE: Final = st.text(JSON_SPACE, min_size=1, max_size=20)
JUNK: Final = st.text(min_size=1, max_size=20).filter(lambda s: s.strip(JSON_SPACE) != "")
BLOBS: Final = st.binary(max_size=200)
NOT_OBJECTS: Final = st.one_of(
    st.sampled_from(["wrapped", "quoted", "null", "true", "0"]),
    st.one_of(st.lists(json_values, max_size=4), json_leaves, st.just(float("nan"))).map(raw),
)
DEPTHS: Final = st.integers(1, 20_000)
# not "\\t", "\\n", ...: after the opening quote of a key they are valid escapes
BAD_IN_STRING: Final = st.sampled_from(["\\q", "\\u12G", "\\x41", "\\\n", "\\'"]) | st.characters(
    max_codepoint=0x1F
)


def not_object_text(draw: Draw, items: Items) -> str:
    """A JSON value that is no object: the record in a list or a string, a scalar, a list."""
    text: str = draw(NOT_OBJECTS)
    if text == "wrapped":
        return "[" + render(items) + "]"
    return raw(render(items)) if text == "quoted" else text


@st.composite
def malformed_payloads(draw: Draw, kind: str) -> Payload:
    """A payload the ``kind`` schema refuses, with the reason codes that may name it."""
    how = draw(SOURCE_SPOIL_DRAWS)
    items: Items = draw(base_records(kind))
    good = render(items).encode()
    bad_json = frozenset({F.BAD_JSON})
    if how == "record":
        spoilt, codes, how = record_level(draw, kind, items)
        return Payload(render(spoilt, compact=draw(st.booleans())).encode(), how, codes)
    if how == "empty":
        return Payload(b"", how, frozenset({F.EMPTY_PAYLOAD}))
    if how == "whitespace":
        return Payload(draw(WHITESPACE).encode(), how, bad_json)
    if how == "truncated":
        return Payload(good[: draw(st.integers(1, len(good) - 1))], how, bad_json)
    if how == "trailing":
        return Payload(good + draw(JUNK).encode(), how, bad_json)
    if how == "not_utf8":
        at = draw(st.integers(0, len(good)))
        return Payload(good[:at] + draw(BAD_UTF8) + good[at:], how, bad_json)
    if how == "binary":
        blob = draw(BLOBS)
        at = draw(st.integers(0, len(blob)))
        return Payload(blob[:at] + b"\xff" + blob[at:], how, bad_json)
    if how == "not_object":
        return Payload(not_object_text(draw, items).encode(), how, bad_json)
    if how == "deep":  # a list is no object however deep; past jiter's limit, bad JSON
        depth = draw(DEPTHS)
        closed = draw(st.booleans())
        if draw(st.booleans()):
            return Payload(("[" * depth + "]" * depth * closed).encode(), how, bad_json)
        text = '{"a":' * depth + ("1" + "}" * depth) * closed
        return Payload(text.encode(), how, bad_json | {F.MISSING_FIELD})
    # a raw control character or a bad escape inside the first key
    return Payload(good[:2] + draw(BAD_IN_STRING).encode() + good[2:], how, bad_json)


# ------------------------------------------------------------------------- many draws


def draw_many(
    strategy: st.SearchStrategy[T],
    n: int,
    per_draw: int = 16,
    unique_by: Callable[[T], object] | None = None,
) -> list[T]:
    """Draw ``n`` values of ``strategy``, ``per_draw`` per hypothesis example, reproducibly.

    One example cannot hold 10,000 payloads (hypothesis bounds the data behind one example),
    so several are drawn, derandomized: the same run draws the same values.
    """
    out: list[T] = []

    @settings(
        derandomize=True,
        database=None,
        max_examples=-(-n // per_draw),  # invalid examples (overruns, duplicates) do not count
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(strategy, min_size=per_draw, max_size=per_draw, unique_by=unique_by))
    def collect(values: list[T]) -> None:
        if len(out) < n:
            out.extend(values)

    collect()
    assert len(out) >= n, f"hypothesis drew {len(out)} values, wanted {n}"
    return out[:n]


def check_oracle(kind: str, payloads: Iterable[Payload]) -> None:
    """Fail naming the first payload the validator classifies otherwise than its construction."""
    for p in payloads:
        try:
            decode(kind, p.data)
        except DecodeError as err:
            assert err.failure in p.codes, (p.spoil, p.data[:200], str(err), p.codes)
            assert str(err).startswith(f"{kind}: "), str(err)
        else:
            assert p.valid, (p.spoil, p.data[:200], "decoded as valid")
