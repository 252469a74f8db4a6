"""Named numeric arrays plus JSON metadata in one file: safetensors (never pickle).

Deltas and snapshot files are bundles, written in the `safetensors
<https://huggingface.co/docs/safetensors>`_ format, so any safetensors reader can open them;
the JSON metadata travels in the header's ``__metadata__`` (string values only) under
``freshet.meta``::

    +-------------------+--------------------------------------------------+-----------------+
    | header size (u64) | {"__metadata__": {"freshet.format": "bundle/2",  | array bytes ... |
    | little-endian     |                   "freshet.meta": "{...JSON...}"},|                 |
    |                   |  "ids": {"dtype": "I64", "shape": [2],           |                 |
    |                   |          "data_offsets": [0, 16]}, ...}          |                 |
    +-------------------+--------------------------------------------------+-----------------+

Only boolean, integer and floating dtypes are accepted, so nothing executable can travel inside.
Bundles of the format before (magic ``FSHB``, Freshet <= 0.1.0) are still read.

>>> blob = encode_bundle({"version": 3}, {"ids": np.array([5, 7], np.int64)})
>>> meta, arrays = decode_bundle(blob, "example")
>>> meta["version"], arrays["ids"].tolist(), arrays["ids"].dtype.str
(3, [5, 7], '<i8')
>>> from safetensors.numpy import load
>>> load(blob)["ids"].tolist()  # any safetensors reader
[5, 7]
>>> decode_bundle(blob[:-1], "example")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pipeline.publishing.errors.DeltaFormatError: example: not a valid safetensors bundle: ...
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from pipeline.publishing.array_patch import AnyArray
from pipeline.publishing.errors import DeltaFormatError

FORMAT: Final = "bundle/2"
META_KEY: Final = "freshet.meta"
FORMAT_KEY: Final = "freshet.format"
MAGIC: Final = b"FSHB"
"""The magic of the format before safetensors (format 1), still read."""
FORMAT_VERSION: Final = 1
_SIZE = struct.Struct("<Q")
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
    """Serialise ``meta`` (JSON-ready) and ``arrays`` into one safetensors bundle."""
    tensors = {name: _little(np.asarray(raw)) for name, raw in arrays.items()}
    header = {
        FORMAT_KEY: FORMAT,
        META_KEY: json.dumps(dict(meta), separators=(",", ":"), sort_keys=True),
    }
    data: bytes = safetensors_save(tensors, metadata=header)
    return data


def _safetensors_meta(buf: memoryview, what: str) -> dict[str, Any]:
    (size,) = _SIZE.unpack_from(buf, 0)
    if size > MAX_HEADER_BYTES or _SIZE.size + size > len(buf):
        raise DeltaFormatError(what, f"header of {size} bytes runs past the end")
    try:
        header = json.loads(bytes(buf[_SIZE.size : _SIZE.size + size]))
        ours = header["__metadata__"]
        if ours[FORMAT_KEY] != FORMAT:
            raise DeltaFormatError(what, f"bundle format {ours[FORMAT_KEY]!r}, expected {FORMAT!r}")
        meta = json.loads(ours[META_KEY])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DeltaFormatError(what, f"header has no Freshet metadata: {err!r}") from err
    if not isinstance(meta, dict):
        raise DeltaFormatError(what, "header has no meta object")
    return meta


def decode_bundle(
    data: bytes | bytearray | memoryview, what: str = "bundle"
) -> tuple[dict[str, Any], dict[str, AnyArray]]:
    """Parse a bundle into ``(meta, arrays)``; arrays are fresh, writable copies.

    Reads safetensors bundles and the format before them. Raises
    :class:`~pipeline.publishing.errors.DeltaFormatError` naming ``what`` and the problem.
    """
    buf = memoryview(data)
    if len(buf) >= 4 and bytes(buf[:4]) == MAGIC:
        return _decode_format_1(buf, what)
    if len(buf) < _SIZE.size:
        raise DeltaFormatError(what, f"{len(buf)} bytes is too short for a bundle")
    meta = _safetensors_meta(buf, what)
    try:
        loaded = safetensors_load(bytes(buf))
    except SafetensorError as err:
        raise DeltaFormatError(what, f"not a valid safetensors bundle: {err}") from err
    arrays: dict[str, AnyArray] = {}
    for name, array in loaded.items():
        if array.dtype.kind not in _KINDS:
            raise DeltaFormatError(what, f"array {name!r}: dtype {array.dtype} not allowed")
        arrays[name] = array if array.flags.writeable else array.copy()
    return meta, arrays


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


def _decode_format_1(buf: memoryview, what: str) -> tuple[dict[str, Any], dict[str, AnyArray]]:
    """The bundle format before safetensors: ``FSHB`` | u8 format | JSON header | arrays."""
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
