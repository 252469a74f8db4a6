"""A faster decoder for the source process: msgspec first, the pydantic model when in doubt.

:func:`pipeline.events.kinds.decode` validates each message with its pydantic model, ~14 µs for a
40-field CTR event here, most of it 26 regular-expression checks. :class:`FastDecoder` gives
the same verdicts for a fraction of that:

::

    payload ──► msgspec, a Struct derived from the pydantic model ──ok──► post-checks ──ok──► Struct
                (types, ranges, required and unknown fields;        (patterns: a set of values
                 strict: no coercion)                                 seen to pass; datetimes:
                      │ rejected                                       strict RFC 3339; finite
                      ▼                                                floats)      │ doubtful
                pipeline.events.kinds.decode(kind, payload) ◄──────────────────────────────┘
                (the pydantic model: the event, or DecodeError with the reason)

The fast path only ever *accepts*; every message it does not accept is decided by the model,
so dead letters carry exactly the reasons :func:`~pipeline.events.kinds.decode` gives. It accepts
only what the model accepts, with equal values (``tests/unit/test_fast_decode.py`` checks
this on the fuzzing corpus and on generated payloads). A model with a field type the fast
path does not know is always decoded by pydantic.

Accepted events are msgspec Structs with the model's fields as attributes (what the source
process turns into columns), not pydantic models.

>>> dec = FastDecoder("transaction")
>>> ev = dec(b'{"transaction_id": 7, "timestamp": "2018-04-01T00:00:31Z",'
...          b' "customer_id": 596, "terminal_id": 3156, "amount": 57.16, "label": 0}')
>>> ev.customer_id, ev.timestamp.isoformat(), dec.fast, dec.slow
(596, '2018-04-01T00:00:31+00:00', 1, 0)
>>> dec(b'{"transaction_id": 7}')
Traceback (most recent call last):
...
pipeline.errors.DecodeError: transaction: missing field 'timestamp' (and 4 more problems)
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from datetime import datetime
from types import NoneType, UnionType
from typing import Annotated, Any, Final, Union, get_args, get_origin

import annotated_types
import msgspec
from pydantic import AwareDatetime
from pydantic.fields import FieldInfo

from pipeline.events.kinds import Event, decode, event_model
from pipeline.events.schema import EventSchema, SchemaEvent

__all__ = ["FastDecoder", "fast_struct"]

PATTERN_CACHE_LIMIT: Final = 1 << 18
"""Values remembered per pattern as passing; the set is emptied when it grows past this."""

_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})", re.ASCII
)
"""Timestamps the fast path parses itself; any other spelling goes to the model."""

_BOUNDS: Final = (
    (annotated_types.Ge, "ge"),
    (annotated_types.Gt, "gt"),
    (annotated_types.Le, "le"),
    (annotated_types.Lt, "lt"),
)


_KIND_TYPES: Final[dict[str, type]] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "list": list,
    "datetime": datetime,
}


class _Unsupported(Exception):
    """A field the fast path cannot check exactly as the model does."""


def _bounds_of(name: str, info_metadata: list[Any]) -> tuple[dict[str, Any], str | None]:
    """Numeric bounds, lengths and the pattern among a field's constraints."""
    bounds: dict[str, Any] = {}
    pattern: str | None = None
    flat: list[Any] = []
    for meta in info_metadata:  # Annotated[X, Field(...)] keeps its constraints in a FieldInfo
        flat.extend(meta.metadata if isinstance(meta, FieldInfo) else [meta])
    for meta in flat:
        for cls, key in _BOUNDS:
            if isinstance(meta, cls):
                bounds[key] = getattr(meta, key)
                break
        else:
            if isinstance(meta, annotated_types.MinLen):
                bounds["min_length"] = meta.min_length
                continue
            if isinstance(meta, annotated_types.MaxLen):
                bounds["max_length"] = meta.max_length
                continue
            pattern = getattr(meta, "pattern", None)
            if pattern is None or set(vars(meta)) - {"pattern"}:
                raise _Unsupported(f"{name}: constraint {meta!r}")
    return bounds, pattern


_ITEMS: Final[dict[Any, str]] = {int: "int", float: "float", str: "str", bool: "bool"}


def _field_type(name: str, info: FieldInfo) -> tuple[Any, str | None, str]:
    """The msgspec type of one model field, its pattern (checked apart) and its base kind."""
    annotation = info.annotation
    optional = False
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not NoneType]
        optional = len(args) < len(get_args(annotation))
        if len(args) != 1:
            raise _Unsupported(f"{name}: union {annotation!r}")
        annotation = args[0]
    bounds, pattern = _bounds_of(name, list(info.metadata))
    if get_origin(annotation) is Annotated:  # list[...] with lengths arrives annotated
        extra, extra_pattern = _bounds_of(name, list(get_args(annotation)[1:]))
        bounds |= extra
        pattern = pattern or extra_pattern
        annotation = get_args(annotation)[0]
    lengths = {k: bounds[k] for k in ("min_length", "max_length") if k in bounds}
    if lengths and annotation is not str and get_origin(annotation) is not list:
        raise _Unsupported(f"{name}: lengths on {annotation!r}")
    if annotation is AwareDatetime:
        if bounds or pattern:
            raise _Unsupported(f"{name}: a constrained datetime")
        base: Any = str  # parsed by FastDecoder, strict RFC 3339 only
        kind = "datetime"
    elif get_origin(annotation) is list:
        (item,) = get_args(annotation)
        if item not in _ITEMS or pattern or set(bounds) - set(lengths):
            raise _Unsupported(f"{name}: list {annotation!r}")
        if item is float:  # finite floats are checked after msgspec, per item
            raise _Unsupported(f"{name}: a list of floats")
        listed: Any = list[item]  # type: ignore[valid-type]
        base = Annotated[listed, msgspec.Meta(**lengths)] if lengths else listed
        kind = "list"
    elif annotation is bool:
        if bounds or pattern:
            raise _Unsupported(f"{name}: a constrained bool")
        base, kind = bool, "bool"
    elif annotation in (int, float, str):
        if annotation is int:  # msgspec's int bounds are int64 and inclusive-friendly
            if "lt" in bounds:
                bounds["le"] = bounds.pop("lt") - 1
            if "gt" in bounds:
                bounds["ge"] = bounds.pop("gt") + 1
            if not all(-(2**63) <= v < 2**63 for v in bounds.values()):
                raise _Unsupported(f"{name}: int bounds beyond int64")
            if any(not isinstance(v, int) for v in bounds.values()):
                raise _Unsupported(f"{name}: int bounds that are not integers")
        if annotation is str and set(bounds) - set(lengths):
            raise _Unsupported(f"{name}: a bounded str")
        base = Annotated[annotation, msgspec.Meta(**bounds)] if bounds else annotation
        kind = annotation.__name__
    else:
        raise _Unsupported(f"{name}: type {annotation!r}")
    return (base | None if optional else base), pattern, kind


def fast_struct(
    kind: str, schema: EventSchema | None = None
) -> tuple[type[msgspec.Struct], dict[str, str], list[str], list[str]]:
    """The Struct mirroring ``kind``'s model; fields by pattern; datetime and float fields.

    Raises ``_Unsupported`` (private) when the model cannot be mirrored exactly.
    """
    model = event_model(kind, schema)
    config = model.model_config
    if not (config.get("strict") and config.get("extra") == "forbid"):
        raise _Unsupported(f"{kind}: the model is not strict with unknown fields forbidden")
    if config.get("allow_inf_nan", True):
        raise _Unsupported(f"{kind}: the model allows inf and nan")
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    patterns: dict[str, str] = {}
    datetimes: list[str] = []
    floats: list[str] = []
    kinds: dict[str, type] = {}
    for name, info in model.model_fields.items():
        if info.alias not in (None, name):
            raise _Unsupported(f"{kind}.{name}: an alias")
        typ, pattern, base = _field_type(name, info)
        if info.is_required():
            fields.append((name, typ))
        else:
            default = info.get_default(call_default_factory=True)
            if not isinstance(default, int | float | str | bool | NoneType):
                raise _Unsupported(f"{kind}.{name}: a default of type {type(default).__name__}")
            fields.append((name, typ, default))
        kinds[name] = _KIND_TYPES[base]
        if pattern is not None:
            patterns[name] = pattern
        if base == "datetime":
            datetimes.append(name)
        elif base == "float":
            floats.append(name)
    struct = msgspec.defstruct(
        f"Fast{model.__name__}",
        fields,
        forbid_unknown_fields=True,
        kw_only=True,  # a field with a default may come before one without
        gc=False,
        # the Python type each field holds once FastDecoder accepted the event (datetimes
        # are parsed after msgspec); the source process encodes columns by it
        namespace={"field_kinds": kinds},
    )
    return struct, patterns, datetimes, floats


_CLASS_REPEAT: Final = re.compile(r"\^(\[([^\]\[\\]+)\])(\{(\d+)(?:(,)(\d*))?\}|[+*?])?\$")
"""Patterns of one character class, repeated: ``^[0-9a-f]{8}$``, ``^[A-Z]+$``..."""

_SEP: Final = "\x00"


def _repeat_bounds(quantifier: re.Match[str]) -> tuple[int, int | None]:
    """(fewest, most) repetitions a ``_CLASS_REPEAT`` match allows (``None``: no limit)."""
    symbol, low, comma, high = quantifier.group(3, 4, 5, 6)
    if low is not None:
        return int(low), (int(high) if high else None) if comma else int(low)
    return {None: (1, 1), "+": (1, None), "*": (0, None), "?": (0, 1)}[symbol]


class _PatternCheck:
    """Fields sharing one pattern: all of an event's values checked at once.

    A pattern of one character class repeated (``^[0-9a-f]{8}$``), whose class excludes the
    NUL character, is checked on the event's values joined by NULs; a value holding a NUL
    (which fails the class anyway) is caught by counting the separators. A class of ASCII
    characters only (not negated) is checked with ``bytes.translate`` deleting the class's
    bytes, which must leave only the separators, then the values' lengths; other classes
    with one regex call on the joined text. About 1 µs and 3 µs for the 26 categories of a
    generated CTR event here, however many distinct values the stream has (the cache of
    values seen to pass, which other patterns still use, went cold on such streams).
    """

    def __init__(self, pattern: str, names: list[str]) -> None:
        self._regex = re.compile(pattern)
        self._get: Callable[[Any], Any] = operator.attrgetter(*names)
        self._single = len(names) == 1
        self._good: set[str | None] = {None}  # None reached here only where the type allows it
        self._joined: re.Pattern[str] | None = None
        self._delete: bytes | None = None  # the class's bytes, for an ASCII-only class
        self._bounds: tuple[int, int | None] = (0, None)
        form = _CLASS_REPEAT.fullmatch(pattern)
        klass = re.compile(form.group(1)) if form is not None else None
        if form is not None and klass is not None and klass.fullmatch(_SEP) is None:
            piece = form.group(1) + (form.group(3) or "")
            self._joined = re.compile(f"(?:{piece}{_SEP})*{piece}")
            body = form.group(2)
            if body.isascii() and not body.startswith("^"):
                ascii_chars = map(chr, range(128))
                self._delete = "".join(c for c in ascii_chars if klass.fullmatch(c)).encode()
                self._bounds = _repeat_bounds(form)

    def _joined_check(self, values: Any) -> bool:
        if None in values:
            values = [v for v in values if v is not None]
            if not values:
                return True
        k = len(values)
        text = _SEP.join(values)
        if self._delete is None:
            assert self._joined is not None
            return text.count(_SEP) == k - 1 and self._joined.fullmatch(text) is not None
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError:  # a character outside the class
            return False
        seps = b"\x00" * (k - 1)
        if raw.translate(None, self._delete) != seps:
            return False  # a character outside the class, or a NUL inside a value
        # the values are now the pieces between the k - 1 separators, all of class bytes
        low, high = self._bounds
        if low == high:  # every separator where pieces of exactly `low` characters put it
            return len(raw) == (low + 1) * k - 1 and raw[low :: low + 1] == seps
        lengths = set(map(len, values))
        return min(lengths) >= low and (high is None or max(lengths) <= high)

    def __call__(self, event: Any) -> bool:
        values = self._get(event)
        if self._single:
            values = (values,)
        if self._joined is not None:
            return self._joined_check(values)
        if self._good.issuperset(values):
            return True
        for value in set(values).difference(self._good):
            # the model's engine ends "$" only at the end; Python's also before a final
            # newline, so a value with a newline is left to the model
            if "\n" in value or self._regex.search(value) is None:
                return False
            if len(self._good) > PATTERN_CACHE_LIMIT:
                self._good = {None}
            self._good.add(value)
        return True


class FastDecoder:
    """Decode ``kind`` messages, with :func:`~pipeline.events.kinds.decode`'s verdicts, faster.

    ``fast`` and ``slow`` count the messages each path decided (``slow`` includes every
    rejected one).
    """

    def __init__(self, kind: str, schema: EventSchema | None = None) -> None:
        self.kind = kind
        self.schema = schema
        self.fast = 0
        self.slow = 0
        try:
            struct, patterns, datetimes, floats = fast_struct(kind, schema)
        except _Unsupported:
            self._decoder: msgspec.json.Decoder[msgspec.Struct] | None = None
            return
        self._decoder = msgspec.json.Decoder(struct)
        by_pattern: dict[str, list[str]] = {}
        for name, pattern in patterns.items():
            by_pattern.setdefault(pattern, []).append(name)
        self._checks = [_PatternCheck(p, names) for p, names in by_pattern.items()]
        self._datetimes = datetimes
        self._floats = floats

    def __call__(self, payload: bytes) -> Event | SchemaEvent | msgspec.Struct:
        """The event of ``payload``, or :class:`~pipeline.errors.DecodeError`."""
        if self._decoder is not None and payload:
            try:
                event: msgspec.Struct = self._decoder.decode(payload)
            except (msgspec.DecodeError, ValueError):  # ValidationError; bad UTF-8 in a key
                pass
            else:
                if self._accept(event):
                    self.fast += 1
                    return event
        self.slow += 1
        return decode(self.kind, payload, self.schema)

    def _accept(self, event: Any) -> bool:
        for check in self._checks:
            if not check(event):
                return False
        for name in self._floats:
            value = getattr(event, name)
            if value is not None and not math.isfinite(value):
                return False
        for name in self._datetimes:
            text = getattr(event, name)
            if text is None:
                continue
            if _RFC3339.fullmatch(text) is None:
                return False
            try:
                stamp = datetime.fromisoformat(text)
            except ValueError:
                return False
            setattr(event, name, stamp)
        return True

    def __repr__(self) -> str:
        mode = "msgspec, then pydantic" if self._decoder is not None else "pydantic only"
        return f"FastDecoder({self.kind!r}, {mode}, fast={self.fast}, slow={self.slow})"
