"""Named numeric arrays plus JSON metadata in one versioned envelope (never pickle).

Deltas and snapshot files are bundles. The layout, little-endian throughout::

    +--------+---------+----------+--------------------+---------+---------------------------+
    | "FSHB" | format  | reserved | header length (u32)| header  | pad to 8 | array bytes ... |
    | 4 B    | u8 = 1  | 3 B      | 4 B                | JSON    |          | (8-aligned each)|
    +--------+---------+----------+--------------------+---------+---------------------------+

    header = {"meta": {...}, "arrays": [{"name", "dtype", "shape", "offset", "nbytes"}, ...]}

Only boolean, integer and floating dtypes are accepted (``<i8``, ``<f4``, ``|b1``, ...), so
nothing executable can travel inside; offsets are relative to the first array byte.

>>> blob = encode_bundle({"version": 3}, {"ids": np.array([5, 7], np.int64)})
>>> meta, arrays = decode_bundle(blob, "example")
>>> meta["version"], arrays["ids"].tolist(), arrays["ids"].dtype.str
(3, [5, 7], '<i8')
>>> decode_bundle(blob[:-1], "example")
Traceback (most recent call last):
...
pipeline.publishing.errors.DeltaFormatError: example: array 'ids' runs past the end of the data
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from pipeline.publishing.array_patch import AnyArray
from pipeline.publishing.errors import DeltaFormatError

MAGIC: Final = b"FSHB"
FORMAT_VERSION: Final = 1
_PREFIX = struct.Struct("<4sB3xI")
_ALIGN = 8
_KINDS: Final = frozenset("biuf")
MAX_HEADER_BYTES: Final = 64 << 20


def _pad(n: int) -> int:
    return -n % _ALIGN


def _little(a: AnyArray) -> AnyArray:
    if a.dtype.kind not in _KINDS:
        raise TypeError(f"only bool, int and float arrays can be bundled, got {a.dtype}")
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)


def encode_bundle(meta: Mapping[str, Any], arrays: Mapping[str, AnyArray]) -> bytes:
    """Serialise ``meta`` (JSON-ready) and ``arrays`` into one bundle."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    offset = 0
    for name, raw in arrays.items():
        a = _little(np.asarray(raw))
        data = a.tobytes()
        entries.append(
            {
                "name": name,
                "dtype": a.dtype.str,
                "shape": list(a.shape),
                "offset": offset,
                "nbytes": len(data),
            }
        )
        blobs.append(data)
        blobs.append(b"\0" * _pad(len(data)))
        offset += len(data) + _pad(len(data))
    header = json.dumps(
        {"meta": dict(meta), "arrays": entries}, separators=(",", ":"), sort_keys=True
    ).encode()
    head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header
    return b"".join([head, b"\0" * _pad(len(head)), *blobs])


def _dtype(entry: Mapping[str, Any], what: str) -> np.dtype[Any]:
    text = entry.get("dtype")
    if not isinstance(text, str) or len(text) > 8:
        raise DeltaFormatError(what, f"array {entry.get('name')!r} has no valid dtype")
    try:
        dtype = np.dtype(text)
    except TypeError as err:
        raise DeltaFormatError(what, f"array {entry.get('name')!r}: bad dtype {text!r}") from err
    if dtype.kind not in _KINDS or dtype.byteorder == ">" or dtype.fields is not None:
        raise DeltaFormatError(what, f"array {entry.get('name')!r}: dtype {text!r} not allowed")
    return dtype


def decode_bundle(
    data: bytes | bytearray | memoryview, what: str = "bundle"
) -> tuple[dict[str, Any], dict[str, AnyArray]]:
    """Parse a bundle into ``(meta, arrays)``; arrays are fresh, writable copies.

    Raises :class:`~pipeline.publishing.errors.DeltaFormatError` naming ``what`` and the problem.
    """
    buf = memoryview(data)
    if len(buf) < _PREFIX.size:
        raise DeltaFormatError(what, f"{len(buf)} bytes is too short for a bundle")
    magic, fmt, header_len = _PREFIX.unpack_from(buf, 0)
    if magic != MAGIC:
        raise DeltaFormatError(what, f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if fmt != FORMAT_VERSION:
        raise DeltaFormatError(what, f"format version {fmt} is not supported ({FORMAT_VERSION})")
    end = _PREFIX.size + header_len
    if header_len > MAX_HEADER_BYTES or end > len(buf):
        raise DeltaFormatError(what, f"header of {header_len} bytes runs past the end")
    try:
        header = json.loads(bytes(buf[_PREFIX.size : end]))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DeltaFormatError(what, f"header is not JSON: {err}") from err
    if not isinstance(header, dict) or not isinstance(header.get("meta"), dict):
        raise DeltaFormatError(what, "header has no meta object")
    entries = header.get("arrays")
    if not isinstance(entries, list):
        raise DeltaFormatError(what, "header has no array list")
    start = end + _pad(end)
    body = buf[start:]
    arrays: dict[str, AnyArray] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise DeltaFormatError(what, "an array entry has no name")
        name = entry["name"]
        if name in arrays:
            raise DeltaFormatError(what, f"array {name!r} appears twice")
        dtype = _dtype(entry, what)
        shape, offset, nbytes = entry.get("shape"), entry.get("offset"), entry.get("nbytes")
        if (
            not isinstance(shape, list)
            or not all(isinstance(s, int) and s >= 0 for s in shape)
            or not isinstance(offset, int)
            or not isinstance(nbytes, int)
            or offset < 0
        ):
            raise DeltaFormatError(what, f"array {name!r} has a bad shape, offset or size")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * dtype.itemsize != nbytes:
            raise DeltaFormatError(what, f"array {name!r}: {nbytes} bytes do not fit {shape}")
        if offset + nbytes > len(body):
            raise DeltaFormatError(what, f"array {name!r} runs past the end of the data")
        flat = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
        arrays[name] = flat.reshape(shape).copy()
    return header["meta"], arrays
