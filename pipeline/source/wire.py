r"""The frames a source process and its trainer exchange over the child's stdin and stdout.

No pickle, nothing executable: a frame is a JSON header and a body of raw little-endian
arrays and UTF-8 text that the header describes.

::

    frame   ┌──────────┬───────────┬───────────┬───────────────┬────────────────┐
            │ "FSW1"   │ u32 hlen  │ u64 blen  │ header (JSON) │ body (bytes)   │
            └──────────┴───────────┴───────────┴───────────────┴────────────────┘

    trainer ──► source process          source process ──► trainer
    {"op": "start", config, seek}       {"type": "started", stats}
    {"op": "took", "seq"}               {"type": "batch", seq, n, offsets, columns, ...} + body
    {"op": "mark_trained", "seq"}       {"type": "status", stats}        (when idle)
    {"op": "commit", "id", offsets}     {"type": "reply", "id"} | {"type": "error", "id", ...}
    {"op": "close"}                     {"type": "error", ...} (fatal) | {"type": "closed"}

A batch's events travel as columns, one per event field (see :func:`encode_column`)::

    "int"      int64 values (None -> 0)     + "nulls": one byte per event, 1 = None
    "float"    float64 values               + nulls
    "str"      UTF-8 text, "\n" between values  + nulls       (no value holds a "\n")
               + "hashes": each value's unsalted uint64 base (``StringHasher``), when the
                 source was given a hasher: the featurizer then never reads the text
    "datetime" int64 µs since the epoch, int32 UTC offsets in s (absent: all naive)
    "json"     a JSON list (anything else JSON can carry: bools, mixed types, ...)
    "null"     every value None (no bytes)

>>> from datetime import UTC, datetime
>>> values = [5, None, -1]
>>> spec, chunks = encode_column("i1", values, 0)
>>> spec["enc"], decode_column(spec, b"".join(chunks), 3)
('int', [5, None, -1])
>>> stamps = [datetime(2018, 4, 1, 0, 0, 31, tzinfo=UTC), None]
>>> spec, chunks = encode_column("timestamp", stamps, 0)
>>> decode_column(spec, b"".join(chunks), 2) == stamps
True
"""

from __future__ import annotations

import functools
import itertools
import json
import operator
import struct
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from typing import IO, Any, Final

import msgspec
import numpy as np
import numpy.typing as npt

from pipeline.errors import (
    BrokerError,
    BrokerUnreachableError,
    ConfigError,
    PipelineError,
    SourceError,
)
from pipeline.events.columnar import ColumnarEvents
from pipeline.events.schema import EventSchema
from pipeline.features.hashing import U64, StringHasher
from pipeline.source.kafka import Assignment, Offsets, SourceBatch, SourceConfig

__all__ = [
    "WireError",
    "config_from_wire",
    "config_to_wire",
    "decode_batch",
    "decode_column",
    "decode_hashes",
    "encode_batch",
    "encode_column",
    "error_from_wire",
    "error_to_wire",
    "offsets_from_wire",
    "offsets_to_wire",
    "read_frame",
    "write_frame",
]

MAGIC: Final = b"FSW1"
_PREFIX: Final = struct.Struct("<4sIQ")
MAX_HEADER: Final = 256 << 20
MAX_BODY: Final = 16 << 30
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH: Final = datetime(1970, 1, 1)  # noqa: DTZ001 - the epoch of naive datetimes
_MICROSECOND: Final = timedelta(microseconds=1)
_NoneType: Final = type(None)

Header = dict[str, Any]


class WireError(SourceError):
    """A frame from the other process is malformed or cut short."""


# -------------------------------------------------------------------------------- frames


def write_frame(out: IO[bytes], header: Mapping[str, Any], body: Sequence[bytes] = ()) -> None:
    """Write one frame (header, then the body chunks back to back) and flush."""
    head = json.dumps(header, separators=(",", ":")).encode()
    size = sum(len(c) for c in body)
    out.write(_PREFIX.pack(MAGIC, len(head), size) + head)
    for chunk in body:
        out.write(chunk)
    out.flush()


def read_frame(inp: IO[bytes]) -> tuple[Header, bytes] | None:
    """Read one frame: ``(header, body)``, or ``None`` at a clean end of stream.

    Raises :class:`WireError` on a bad prefix or a stream that ends inside a frame.
    """
    prefix = _read_exactly(inp, _PREFIX.size, allow_eof=True)
    if prefix is None:
        return None
    magic, hlen, blen = _PREFIX.unpack(prefix)
    if magic != MAGIC or hlen > MAX_HEADER or blen > MAX_BODY:
        raise WireError(f"bad frame prefix {prefix!r} (not a source-process frame)")
    head = _read_exactly(inp, hlen)
    body = _read_exactly(inp, blen) if blen else b""
    assert head is not None and body is not None
    try:
        header = json.loads(head)
    except ValueError as err:
        raise WireError(f"bad frame header: {err}") from err
    if not isinstance(header, dict):
        raise WireError(f"bad frame header: expected an object, got {type(header).__name__}")
    return header, body


def _read_exactly(inp: IO[bytes], n: int, allow_eof: bool = False) -> bytes | None:
    data = inp.read(n)
    if len(data) == n:
        return data
    if not data and allow_eof:
        return None
    raise WireError(f"the stream ended inside a frame ({len(data)} of {n} bytes)")


# ------------------------------------------------------------------- config and offsets


def config_to_wire(config: SourceConfig) -> dict[str, Any]:
    """``config`` as JSON values (``client_config`` included: send it over a pipe only).

    >>> cfg = SourceConfig(bootstrap_servers="k:9092", topics=("t",), assignment=Assignment.MANUAL,
    ...                    partitions=(("t", 0),))
    >>> config_from_wire(json.loads(json.dumps(config_to_wire(cfg)))) == cfg
    True
    """
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name == "client_config":
            value = dict(value)
            try:
                json.dumps(value)
            except (TypeError, ValueError) as err:
                raise ConfigError(
                    "client_config", f"a source process needs JSON values here: {err}"
                ) from None
        elif f.name == "schema" and value is not None:
            value = value.to_wire()
        elif f.name == "partitions" and value is not None:
            value = [list(p) for p in value]
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def config_from_wire(raw: Mapping[str, Any]) -> SourceConfig:
    """Inverse of :func:`config_to_wire`."""
    values = dict(raw)
    servers = values["bootstrap_servers"]
    values["bootstrap_servers"] = servers if isinstance(servers, str) else tuple(servers)
    values["topics"] = tuple(values["topics"])
    values["hash_fields"] = tuple(values.get("hash_fields", ()))
    values["assignment"] = Assignment(values["assignment"])
    if values.get("schema") is not None:
        values["schema"] = EventSchema.from_wire(values["schema"])
    if values.get("partitions") is not None:
        values["partitions"] = tuple((str(t), int(p)) for t, p in values["partitions"])
    return SourceConfig(**values)


def offsets_to_wire(offsets: Mapping[tuple[str, int], int]) -> list[list[Any]]:
    """``{(topic, partition): offset}`` as ``[[topic, partition, offset], ...]``."""
    return [[t, p, o] for (t, p), o in sorted(offsets.items())]


def offsets_from_wire(raw: Sequence[Sequence[Any]]) -> Offsets:
    """Inverse of :func:`offsets_to_wire`."""
    return {(str(t), int(p)): int(o) for t, p, o in raw}


# ------------------------------------------------------------------------------ errors


def error_to_wire(err: BaseException) -> dict[str, Any]:
    """The class name and message of ``err`` (and a ``ConfigError``'s field)."""
    out: dict[str, Any] = {"error": type(err).__name__, "message": str(err)}
    if isinstance(err, ConfigError):
        out["what"] = err.what
    return out


def error_from_wire(header: Mapping[str, Any]) -> PipelineError:
    """The same exception type as the other process raised, with its message.

    ``SourceError`` subclasses, and anything that is not a pipeline error, arrive as
    ``SourceError``.

    >>> error_from_wire(error_to_wire(ConfigError("seek", "bad position")))
    ConfigError('seek: bad position')
    """
    name = str(header.get("error", "SourceError"))
    message = str(header.get("message", "(no message)"))
    if name == "ConfigError":
        what = str(header.get("what", ""))
        return ConfigError(what, message.removeprefix(f"{what}: "))
    if name == "BrokerError":
        return BrokerError(message)
    if name == "BrokerUnreachableError":
        return BrokerUnreachableError(message)
    if name in ("SourceError", "SourceStateError", "WireError"):
        return SourceError(message)
    return SourceError(f"{name}: {message}")


# ----------------------------------------------------------------------------- columns

Chunks = list[bytes]


def encode_column(
    name: str,
    values: Sequence[Any],
    at: int,
    kind_hint: type | None = None,
    hasher: StringHasher | None = None,
) -> tuple[Header, Chunks]:
    """Describe and serialise one event field across a batch; its bytes start at ``at``.

    ``kind_hint``: the type every value not ``None`` is known to have (FastDecoder's
    Structs declare it), which spares a pass asking each value its type. ``hasher``: a
    string column also carries its values' hashes (read back with :func:`decode_hashes`).
    Returns the column's header entry and its body chunks.

    >>> from pipeline.features.hashing import StringHasher
    >>> spec, chunks = encode_column("c1", ["a", None], 0, str, StringHasher())
    >>> decode_hashes(spec, b"".join(chunks), 2).tolist() == StringHasher()(["a", None]).tolist()
    True
    """
    n = len(values)
    if kind_hint is not None:
        has_nulls = None in values
        kinds = {kind_hint} if n - (values.count(None) if has_nulls else 0) else set()
    else:
        kinds = set(map(type, values))
        has_nulls = _NoneType in kinds
        kinds.discard(_NoneType)
    spec: Header = {"name": name}
    chunks: Chunks = []
    if not kinds:
        spec["enc"] = "null"
        return spec, chunks
    kind = kinds.pop() if len(kinds) == 1 else None
    nulls = _nulls(values) if has_nulls else None
    data: bytes | None = None
    extra: Chunks = []
    if kind is int or kind is float:
        data = _fixed_width(values, nulls, "<i8" if kind is int else "<f8")
        spec["enc"] = "int" if kind is int else "float"
    elif kind is str:
        texts = values
        if nulls is not None:
            texts = list(values)
            for i in np.flatnonzero(nulls).tolist():
                texts[i] = ""
        text = "\n".join(texts)
        if text.count("\n") == n - 1:
            data = text.encode("utf-8", "surrogatepass")
            spec["enc"] = "str"
    elif kind is not None and issubclass(kind, datetime):
        data, extra, naive = _encode_datetimes(values)
        if data is not None:
            spec["enc"] = "datetime"
            spec["naive"] = naive
    if data is None:  # anything else JSON carries exactly
        try:
            data = json.dumps(list(values), allow_nan=True).encode()
        except (TypeError, ValueError) as err:
            raise SourceError(
                f"field {name!r} cannot be sent to the trainer process: {err}"
            ) from None
        spec["enc"] = "json"
        nulls = None
    chunks.append(data)
    spec["at"], spec["size"] = at, len(data)
    at += len(data)
    for chunk in extra:
        spec["offsets_at"] = at
        chunks.append(chunk)
        at += len(chunk)
    if nulls is not None:
        spec["nulls_at"] = at
        chunks.append(nulls.tobytes())
        at += n
    if hasher is not None and spec["enc"] == "str":
        spec["hashes_at"] = at
        chunks.append(hasher(values).astype("<u8", copy=False).tobytes())
    return spec, chunks


def _nulls(values: Sequence[Any]) -> npt.NDArray[np.bool_]:
    return np.fromiter(map(operator.is_, values, itertools.repeat(None)), np.bool_, len(values))


_EXACT_IN_FLOAT64: Final = 2**53
"""Integers up to this magnitude survive a trip through float64 unchanged."""


def _fixed_width(
    values: Sequence[Any], nulls: npt.NDArray[np.bool_] | None, dtype: str
) -> bytes | None:
    """int64 / float64 bytes of ``values`` (``None`` as 0); ``None`` if one does not fit."""
    try:
        if nulls is None:
            return np.asarray(values, dtype=dtype).tobytes()
        if dtype == "<i8":  # through float64 (None -> nan) when every value is exact there
            wide = np.array(values, dtype=np.float64)
            wide[nulls] = 0.0
            if len(wide) == 0 or np.abs(wide).max() <= _EXACT_IN_FLOAT64:
                return wide.astype(dtype).tobytes()
        filled = np.array(values, dtype=object)
        filled[nulls] = 0
        return filled.astype(dtype).tobytes()
    except OverflowError:
        return None


def _encode_datetimes(values: Sequence[Any]) -> tuple[bytes | None, Chunks, bool]:
    present = [v for v in values if v is not None]
    naive = present[0].tzinfo is None
    if any((v.tzinfo is None) != naive for v in present):
        return None, [], naive  # mixed: JSON cannot carry datetimes either -> an error
    epoch = _NAIVE_EPOCH if naive else _EPOCH
    micros = np.array(
        [0 if v is None else (v - epoch) // _MICROSECOND for v in values], dtype="<i8"
    )
    if naive:
        return micros.tobytes(), [], True
    offsets = np.array([0 if v is None else _offset_seconds(v) for v in values], dtype="<i4")
    return micros.tobytes(), [offsets.tobytes()], False


def _offset_seconds(value: datetime) -> int:
    offset = value.utcoffset()
    assert offset is not None
    return int(offset // timedelta(seconds=1))


def decode_column(spec: Mapping[str, Any], body: bytes, n: int) -> list[Any]:
    """The values :func:`encode_column` wrote (``body`` is the whole frame body)."""
    enc = spec["enc"]
    if enc == "null":
        return [None] * n
    at, size = int(spec["at"]), int(spec["size"])
    values: list[Any]
    if at + size > len(body):
        raise WireError(f"column {spec.get('name')!r}: bytes {at}..{at + size} not in the body")
    if enc == "int":
        values = np.frombuffer(body, "<i8", n, at).tolist()
    elif enc == "float":
        values = np.frombuffer(body, "<f8", n, at).tolist()
    elif enc == "str":
        text = body[at : at + size].decode("utf-8", "surrogatepass")
        values = list(text.split("\n"))
    elif enc == "datetime":
        values = _decode_datetimes(spec, body, n)
    elif enc == "json":
        values = json.loads(body[at : at + size])
    else:
        raise WireError(f"column {spec.get('name')!r}: unknown encoding {enc!r}")
    if len(values) != n:
        raise WireError(f"column {spec.get('name')!r}: {len(values)} values, expected {n}")
    if "nulls_at" in spec:
        nulls = np.frombuffer(body, np.bool_, n, int(spec["nulls_at"]))
        for i in np.flatnonzero(nulls).tolist():
            values[i] = None
    return values


def decode_hashes(spec: Mapping[str, Any], body: bytes, n: int) -> U64:
    """The hashes a string column carries (see :func:`encode_column`)."""
    at = int(spec["hashes_at"])
    if at + 8 * n > len(body):
        raise WireError(f"column {spec.get('name')!r}: hashes at {at} not in the body")
    return np.frombuffer(body, "<u8", n, at).astype(np.uint64, copy=False)


def _decode_datetimes(spec: Mapping[str, Any], body: bytes, n: int) -> list[Any]:
    """Datetimes from µs since the epoch (UTC) and UTC offsets.

    An aware time is rebuilt from its *local* wall time (UTC time + offset), which is in
    range whenever the original was: ``9999-12-31T23:59:59-14:00`` lies past year 9999 in UTC
    and cannot be built as a UTC datetime first.
    """
    micros = np.frombuffer(body, "<i8", n, int(spec["at"]))
    if spec.get("naive"):
        return [_NAIVE_EPOCH + timedelta(microseconds=us) for us in micros.tolist()]
    offsets = np.frombuffer(body, "<i4", n, int(spec["offsets_at"]))
    local = (micros + offsets.astype(np.int64) * 1_000_000).tolist()
    zones: dict[int, timezone] = {0: UTC}
    out: list[Any] = []
    for us, off in zip(local, offsets.tolist(), strict=True):
        zone = zones.get(off)
        if zone is None:
            zone = zones[off] = timezone(timedelta(seconds=off))
        out.append((_NAIVE_EPOCH + timedelta(microseconds=us)).replace(tzinfo=zone))
    return out


def encode_batch(
    batch: SourceBatch,
    names: Sequence[str],
    hasher: StringHasher | None = None,
    hash_fields: Collection[str] = (),
) -> tuple[Header, Chunks]:
    """A ``"batch"`` frame's header and body chunks for ``batch`` (events with ``names``).

    The events are objects with the fields as attributes (the pydantic event models).
    With ``hasher`` the string columns of ``hash_fields`` carry their hashes too.
    """
    n = len(batch.events)
    header: Header = {
        "type": "batch",
        "seq": batch.seq,
        "n": n,
        "offsets": offsets_to_wire(batch.offsets),
        "dead_letters": batch.dead_letters,
    }
    chunks: Chunks = []
    at = 0

    def add(key: str, data: bytes) -> None:
        nonlocal at
        header[key] = [at, len(data)]
        chunks.append(data)
        at += len(data)

    if n:
        topics, partitions, offsets = zip(*batch.positions, strict=True)
        names_of_topics = sorted(set(topics))
        header["topics"] = names_of_topics
        if len(names_of_topics) > 1:
            index = {t: i for i, t in enumerate(names_of_topics)}
            add("topic_index", np.array([index[t] for t in topics], "<u2").tobytes())
        add("partitions", np.array(partitions, "<i4").tobytes())
        add("positions", np.array(offsets, "<i8").tobytes())
        add("timestamps", np.array(batch.timestamps_ms, "<i8").tobytes())
        keys = batch.keys
        add("key_lengths", np.array([-1 if k is None else len(k) for k in keys], "<i4").tobytes())
        add("key_bytes", b"".join(k for k in keys if k is not None))
    specs: list[Header] = []
    struct = _one_struct_class(batch.events)
    # FastDecoder's Structs declare the type each field holds (``field_kinds``)
    kinds: Mapping[str, type] = getattr(struct, "field_kinds", None) or {}
    for name, values in zip(names, _transpose(batch.events, names, struct), strict=True):
        spec, data = encode_column(
            name, values, at, kinds.get(name), hasher if name in hash_fields else None
        )
        specs.append(spec)
        chunks.extend(data)
        at += sum(len(c) for c in data)
    header["columns"] = specs
    return header, chunks


def decode_batch(header: Mapping[str, Any], body: bytes) -> SourceBatch:
    """The :class:`~pipeline.source.kafka.SourceBatch` of a ``"batch"`` frame.

    Its ``events`` are :class:`~pipeline.events.columnar.ColumnarEvents` whose columns are decoded
    when first read (by the featurizer, on the training thread).
    """
    n = int(header["n"])
    columns = header["columns"]
    events = ColumnarEvents(
        n,
        {str(s["name"]): functools.partial(decode_column, s, body, n) for s in columns},
        {
            str(s["name"]): functools.partial(decode_hashes, s, body, n)
            for s in columns
            if "hashes_at" in s
        },
    )
    keys: tuple[bytes | None, ...] = ()
    positions: tuple[tuple[str, int, int], ...] = ()
    timestamps: tuple[int, ...] = ()
    if n:
        topics = [str(t) for t in header["topics"]]
        partitions = _array(body, header["partitions"], "<i4", n).tolist()
        offsets = _array(body, header["positions"], "<i8", n).tolist()
        if "topic_index" in header:
            index = _array(body, header["topic_index"], "<u2", n).tolist()
            names: Iterable[str] = [topics[i] for i in index]
        else:
            names = itertools.repeat(topics[0], n)
        positions = tuple(zip(names, partitions, offsets, strict=False))  # names may repeat
        timestamps = tuple(_array(body, header["timestamps"], "<i8", n).tolist())
        keys = _keys(body, header, n)
    return SourceBatch(
        seq=int(header["seq"]),
        events=events,
        keys=keys,
        positions=positions,
        timestamps_ms=timestamps,
        offsets=offsets_from_wire(header["offsets"]),
        dead_letters=int(header["dead_letters"]),
    )


def _array(body: bytes, where: Sequence[int], dtype: str, n: int) -> npt.NDArray[Any]:
    at, size = int(where[0]), int(where[1])
    if size != n * np.dtype(dtype).itemsize or at + size > len(body):
        raise WireError(f"an array of {n} x {dtype} does not fit bytes {at}..{at + size}")
    return np.frombuffer(body, dtype, n, at)


def _keys(body: bytes, header: Mapping[str, Any], n: int) -> tuple[bytes | None, ...]:
    lengths = _array(body, header["key_lengths"], "<i4", n).tolist()
    at, size = (int(v) for v in header["key_bytes"])
    if max(lengths) < 0:
        return (None,) * n
    data = body[at : at + size]
    keys: list[bytes | None] = []
    pos = 0
    for length in lengths:
        if length < 0:
            keys.append(None)
        else:
            keys.append(data[pos : pos + length])
            pos += length
    return tuple(keys)


def _one_struct_class(events: Sequence[Any]) -> type[msgspec.Struct] | None:
    """The class of ``events`` when all are instances of one msgspec Struct class."""
    if not events or not isinstance(events[0], msgspec.Struct):
        return None
    first = type(events[0])
    return first if all(type(e) is first for e in events) else None


def _transpose(
    events: Sequence[Any], names: Sequence[str], struct: type[msgspec.Struct] | None = None
) -> list[tuple[Any, ...]]:
    """One tuple of values per field of ``events`` (objects with the fields as attributes).

    ``struct``: the one Struct class of every event (:func:`_one_struct_class`), whose
    fields are transposed with ``astuple`` when they are exactly ``names``. Pydantic
    models of one class keep their fields in ``__dict__`` in declaration order, so when the
    first event's dict has exactly ``names`` and every event is of its class, the dicts'
    values are transposed directly.
    """
    if not events:
        return [() for _ in names]
    if struct is not None and struct.__struct_fields__ == tuple(names):  # FastDecoder's
        return list(zip(*map(msgspec.structs.astuple, events), strict=True))
    first = events[0]
    fast = list(getattr(first, "__dict__", ())) == list(names) and len(names) > 1
    if fast and all(type(e) is type(first) for e in events):
        return list(zip(*[e.__dict__.values() for e in events], strict=True))
    getter = operator.attrgetter(*names)
    if len(names) == 1:
        return [tuple(getter(e) for e in events)]
    return list(zip(*map(getter, events), strict=True))
