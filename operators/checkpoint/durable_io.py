"""Durable file writes: hashed as written, fsynced, renamed into place.

The pattern every checkpoint file follows::

    open(tmp) ─► write (sha256 updated on the fly) ─► flush ─► fsync(file)
              ─► os.replace(tmp, final) ─► fsync(directory)

``.npy`` files are written with ``allow_pickle=False``, so a structured dtype is fine but an
object array is refused: nothing executable is ever stored.

>>> import tempfile, os, numpy as np
>>> with tempfile.TemporaryDirectory() as d:
...     digest, size = write_npy(os.path.join(d, "a.npy"), np.arange(3, dtype=np.int64))
...     same = digest == sha256_file(os.path.join(d, "a.npy"))
...     back = np.load(os.path.join(d, "a.npy"), allow_pickle=False).tolist()
>>> same, size, back
(True, 152, [0, 1, 2])
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt


class HashingWriter:
    """A write-only binary stream that updates a sha256 and a byte count as it writes.

    >>> import io
    >>> w = HashingWriter(io.BytesIO())
    >>> w.write(b"abc")
    3
    >>> w.hexdigest()[:12], w.size
    ('ba7816bf8f01', 3)
    """

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data``, hashing it."""
        self._sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def hexdigest(self) -> str:
        """The sha256 of everything written so far."""
        return self._sha.hexdigest()


def fsync_dir(path: str) -> None:
    """Make a directory's entries (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_npy(path: str, array: npt.NDArray[Any]) -> tuple[str, int]:
    """Write ``array`` as ``.npy`` (no pickle), fsync it; returns ``(sha256, bytes)``."""
    with open(path, "wb") as fh:
        writer = HashingWriter(fh)
        np.lib.format.write_array(writer, np.require(array, requirements="C"), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    return writer.hexdigest(), writer.size


def write_bytes(path: str, data: bytes) -> tuple[str, int]:
    """Write ``data`` to ``path`` and fsync it; returns ``(sha256, bytes)``."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(data).hexdigest(), len(data)


def json_bytes(obj: object) -> bytes:
    """Canonical JSON (sorted keys, indented) as UTF-8."""
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def replace_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` by ``data`` so readers see the old or the new file, never a mix."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write_bytes(tmp, data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def sha256_file(path: str) -> str:
    """The sha256 of a file's contents, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
