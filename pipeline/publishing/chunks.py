"""Kafka framing of a delta: chunks under a size limit, a sha256 and an optional HMAC.

A payload (a :class:`~pipeline.publishing.delta.ModelDelta` bundle) is cut into chunks that
each fit one
Kafka message. Every chunk repeats the version header, so a replica can reassemble them in
any order and tell which version a stray chunk belongs to::

    +--------+--------+---------------------+------------------------+------------------+
    | "FSHD" | u8 = 1 | header length (u32) | header JSON            | payload[a:b]     |
    +--------+--------+---------------------+------------------------+------------------+
    header = {"version": 12, "base": 11, "chunk": 0, "chunks": 3, "size": 2400000,
              "sha256": "<hex of the whole payload>", "hmac": "<hex>" | null,
              "created_at": "2024-05-01T12:00:00+00:00"}

The HMAC-SHA256 (when a key is configured) covers ``version``, ``base``, ``size`` and the
payload's sha256, so neither the payload nor the version it claims can be changed without the
key. A version is handed over only once all its chunks arrived and both checks pass.

>>> from datetime import UTC, datetime
>>> signer = Signer(b"secret")
>>> when = datetime(2024, 1, 1, tzinfo=UTC)
>>> msgs = encode_chunks(b"x" * 10000, version=7, base=6, created_at=when,
...                      max_message_bytes=4096, signer=signer)
>>> len(msgs), max(len(m) for m in msgs) <= 4096
(4, True)
>>> assembler = ChunkAssembler(signer)
>>> [assembler.add(m) for m in reversed(msgs[1:])]
[None, None, None]
>>> done = assembler.add(msgs[0])
>>> done.header.version, done.header.base, len(done.payload)
(7, 6, 10000)
>>> forged = encode_chunks(b"x", version=1, base=0, created_at=when, max_message_bytes=4096,
...                        signer=Signer(b"other"))
>>> assembler.add(forged[0])
Traceback (most recent call last):
...
pipeline.publishing.errors.SignatureError: delta v1 (base 0): HMAC does not verify
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pipeline.publishing.errors import (
    ChecksumError,
    DeltaFormatError,
    SignatureError,
    SigningKeyError,
)
from pipeline.runtime.secrets import SecretError, read_secret_bytes

CHUNK_MAGIC: Final = b"FSHD"
CHUNK_FORMAT: Final = 1
_PREFIX = struct.Struct("<4sBI")
HEADER_ROOM: Final = 1024
"""Bytes of every message kept for the prefix and the JSON header."""
MIN_MESSAGE_BYTES: Final = 4096


def _describe(version: object, base: object) -> str:
    return f"delta v{version} (base {base})"


class Signer:
    """HMAC-SHA256 over a payload's identity; the key never appears in ``repr`` or logs.

    >>> Signer(b"k")
    Signer(<hidden key>)
    """

    def __init__(self, key: bytes) -> None:
        if not key:
            raise SigningKeyError("the caller", "the key is empty")
        self._key = key

    def __repr__(self) -> str:
        return "Signer(<hidden key>)"

    @classmethod
    def load(
        cls, env: str | None = None, path: str | os.PathLike[str] | None = None
    ) -> Signer | None:
        """The key from environment variable ``env`` or file ``path``; ``None`` if neither.

        Surrounding whitespace is stripped.

        >>> Signer.load() is None
        True
        """
        if env is not None and path is not None:
            raise SigningKeyError(f"${env} and {path}", "give one source, not both")
        if env is None and path is None:
            return None
        try:
            return cls(read_secret_bytes("signing key", env, path))
        except SecretError as err:
            raise SigningKeyError(err.source, err.detail) from err.__cause__

    def sign(self, version: int, base: int | None, size: int, sha256: str) -> str:
        """Hex HMAC of one payload's identity."""
        text = f"freshet-delta/1|{version}|{base}|{size}|{sha256}".encode()
        return hmac.new(self._key, text, hashlib.sha256).hexdigest()

    def sign_bytes(self, data: bytes) -> str:
        """Hex HMAC of arbitrary bytes (snapshot manifests)."""
        return hmac.new(self._key, b"freshet-manifest/1|" + data, hashlib.sha256).hexdigest()

    def verify(self, header: ChunkHeader) -> None:
        """Raise :class:`SignatureError` unless ``header`` carries a valid HMAC."""
        what = _describe(header.version, header.base)
        if header.hmac is None:
            raise SignatureError(what, "unsigned, but a signing key is configured")
        expected = self.sign(header.version, header.base, header.size, header.sha256)
        if not hmac.compare_digest(expected, header.hmac):
            raise SignatureError(what, "HMAC does not verify")


@dataclass(frozen=True)
class ChunkHeader:
    """The header every chunk of one version carries."""

    version: int
    base: int | None
    chunk: int
    chunks: int
    size: int
    sha256: str
    hmac: str | None
    created_at: str

    def to_json(self) -> bytes:
        """Compact JSON."""
        return json.dumps(self.__dict__, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ChunkHeader:
        """Parse and check a header; raises ``DeltaFormatError``."""
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DeltaFormatError("delta chunk", f"header is not JSON: {err}") from err
        if not isinstance(obj, dict):
            raise DeltaFormatError("delta chunk", "header is not an object")
        return cls._checked(obj)

    @classmethod
    def _checked(cls, obj: Mapping[str, Any]) -> ChunkHeader:
        what = _describe(obj.get("version"), obj.get("base"))
        ints = ("version", "chunk", "chunks", "size")
        if not all(isinstance(obj.get(k), int) and not isinstance(obj.get(k), bool) for k in ints):
            raise DeltaFormatError(what, f"chunk header needs integer {', '.join(ints)}")
        if "base" not in obj:
            raise DeltaFormatError(what, "chunk header needs a base (an integer or null)")
        base = obj["base"]
        if base is not None and not isinstance(base, int):
            raise DeltaFormatError(what, "chunk header's base must be an integer or null")
        if not 0 <= obj["chunk"] < obj["chunks"] or obj["size"] < 0 or obj["version"] < 0:
            raise DeltaFormatError(what, f"chunk {obj['chunk']} of {obj['chunks']} is impossible")
        sha = obj.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64:
            raise DeltaFormatError(what, "chunk header has no sha256")
        mac = obj.get("hmac")
        if mac is not None and not isinstance(mac, str):
            raise DeltaFormatError(what, "chunk header's hmac must be a string or null")
        created = obj.get("created_at")
        if not isinstance(created, str):
            raise DeltaFormatError(what, "chunk header has no created_at")
        return cls(
            obj["version"], base, obj["chunk"], obj["chunks"], obj["size"], sha, mac, created
        )


def encode_chunks(
    payload: bytes,
    *,
    version: int,
    base: int | None,
    created_at: datetime,
    max_message_bytes: int,
    signer: Signer | None = None,
) -> list[bytes]:
    """Cut ``payload`` into messages of at most ``max_message_bytes`` each."""
    if max_message_bytes < MIN_MESSAGE_BYTES:
        raise ValueError(f"max_message_bytes must be >= {MIN_MESSAGE_BYTES}")
    if created_at.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    room = max_message_bytes - HEADER_ROOM
    chunks = max(1, -(-len(payload) // room))
    sha = hashlib.sha256(payload).hexdigest()
    mac = signer.sign(version, base, len(payload), sha) if signer is not None else None
    out: list[bytes] = []
    for i in range(chunks):
        header = ChunkHeader(
            version, base, i, chunks, len(payload), sha, mac, created_at.isoformat()
        ).to_json()
        out.append(
            _PREFIX.pack(CHUNK_MAGIC, CHUNK_FORMAT, len(header))
            + header
            + payload[i * room : (i + 1) * room]
        )
    return out


def parse_chunk(message: bytes) -> tuple[ChunkHeader, bytes]:
    """Split one message into its header and its slice of the payload."""
    if len(message) < _PREFIX.size:
        raise DeltaFormatError("delta chunk", f"{len(message)} bytes is too short")
    magic, fmt, header_len = _PREFIX.unpack_from(message, 0)
    if magic != CHUNK_MAGIC:
        raise DeltaFormatError("delta chunk", f"bad magic {magic!r}, expected {CHUNK_MAGIC!r}")
    if fmt != CHUNK_FORMAT:
        raise DeltaFormatError("delta chunk", f"format {fmt} is not supported ({CHUNK_FORMAT})")
    end = _PREFIX.size + header_len
    if end > len(message) or header_len > HEADER_ROOM * 4:
        raise DeltaFormatError("delta chunk", f"header of {header_len} bytes runs past the end")
    return ChunkHeader.from_json(message[_PREFIX.size : end]), message[end:]


def highest_version(messages: Iterable[bytes]) -> int | None:
    """The highest version named by the parsable chunks among ``messages``.

    >>> highest_version([b"junk"]) is None
    True
    """
    best: int | None = None
    for message in messages:
        try:
            header, _ = parse_chunk(message)
        except DeltaFormatError:
            continue
        best = header.version if best is None else max(best, header.version)
    return best


@dataclass(frozen=True)
class Assembled:
    """A version's payload, complete and verified."""

    header: ChunkHeader
    payload: bytes


@dataclass
class _Partial:
    header: ChunkHeader
    parts: dict[int, bytes]

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.parts.values())


class ChunkAssembler:
    """Collects chunks per version and hands over a payload once it is complete and verified.

    At most ``max_pending`` incomplete versions are kept (the oldest is dropped first); a
    completed version drops every incomplete older one, whose chunks can no longer matter.
    """

    def __init__(
        self, signer: Signer | None = None, max_pending: int = 8, max_pending_bytes: int = 1 << 30
    ) -> None:
        self.signer = signer
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._pending: dict[tuple[int, str, int, int], _Partial] = {}

    @property
    def pending_versions(self) -> list[int]:
        """Versions with some but not all chunks."""
        return sorted(k[0] for k in self._pending)

    def reset(self) -> None:
        """Forget every incomplete version."""
        self._pending.clear()

    def add(self, message: bytes) -> Assembled | None:
        """Take one message; return the version it completes, if any.

        Raises ``DeltaFormatError`` (unparsable chunk), ``ChecksumError`` or ``SignatureError``
        (the completed payload does not verify; its chunks are dropped).
        """
        header, data = parse_chunk(message)
        key = (header.version, header.sha256, header.chunks, header.size)
        partial = self._pending.get(key)
        if partial is None:
            partial = self._pending[key] = _Partial(header, {})
        partial.parts.setdefault(header.chunk, data)
        if len(partial.parts) < header.chunks:
            self._bound()
            return None
        del self._pending[key]
        for k in [k for k in self._pending if k[0] < header.version]:
            del self._pending[k]
        payload = b"".join(partial.parts[i] for i in range(header.chunks))
        what = _describe(header.version, header.base)
        actual = hashlib.sha256(payload).hexdigest()
        if len(payload) != header.size or actual != header.sha256:
            raise ChecksumError(what, header.sha256, actual)
        if self.signer is not None:
            self.signer.verify(header)
        return Assembled(header, payload)

    def _bound(self) -> None:
        while len(self._pending) > self.max_pending or (
            self._pending and sum(p.nbytes for p in self._pending.values()) > self.max_pending_bytes
        ):
            oldest = min(self._pending, key=lambda k: k[0])
            del self._pending[oldest]
