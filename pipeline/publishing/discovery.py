"""Which version a publisher continues after: the highest *verified* version on the delta topic.

A restarted publisher numbers on from the highest version already published. Anyone who can
write to the topic can put a chunk there, so a version is believed only when its records pass
the checks a replica applies before serving it::

    tail records (offset, value)
      │ parse the chunk header                      else skipped: format
      │ HMAC of the header (when a key is set)      else skipped: signature
      │ group the chunks of one payload
      ├─ complete: sha256 and size of the payload,  else skipped: checksum / format
      │            a delta bundle naming the same
      │            version and base
      └─ incomplete: believed only with a key (its header HMAC proves the publisher sent it;
                     the rest of it was never sent), else skipped: incomplete
    version > 2**63 - 1                             skipped: format (no publisher gets there)

Every skipped record is logged with its offset and counted by reason
(:attr:`VersionDiscovery.skipped`), so a forged record claiming version ``10**300`` neither
stops every restart nor takes over the numbering.

>>> from datetime import UTC, datetime
>>> from pipeline.publishing.chunks import Signer, encode_chunks
>>> from pipeline.publishing.delta import ModelDelta
>>> when = datetime(2024, 1, 1, tzinfo=UTC)
>>> key = Signer(b"k")
>>> def chunks(version, signer):
...     payload = ModelDelta(version, version - 1, when, when, 0).to_bytes()
...     return encode_chunks(payload, version=version, base=version - 1, created_at=when,
...                          max_message_bytes=4096, signer=signer)
>>> records = list(enumerate(chunks(4, key) + chunks(10**300, Signer(b"forger"))))
>>> found = discover_last_version(records, key)
>>> found.version, found.skipped
(4, {'signature': 1})
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from pipeline.publishing.chunks import ChunkHeader, Signer, parse_chunk
from pipeline.publishing.delta import ModelDelta
from pipeline.publishing.errors import DeltaFormatError, SignatureError

log = logging.getLogger(__name__)

MAX_VERSION: Final = (1 << 63) - 1
"""Versions are int64 on the wire and in snapshot names; a larger one is forged or corrupt."""


class Skip(StrEnum):
    """Why a record of the delta topic was not believed (the metric's ``reason`` label)."""

    FORMAT = "format"
    SIGNATURE = "signature"
    CHECKSUM = "checksum"
    INCOMPLETE = "incomplete"


_Report = Callable[["Skip", Iterable[int], str], None]


@dataclass(frozen=True)
class VersionDiscovery:
    """The highest verified version among some records, and what was skipped, by reason."""

    version: int | None
    skipped: dict[str, int] = field(default_factory=dict)
    records: int = 0
    incomplete: tuple[int, ...] = ()
    """Versions seen in part only and not believed (their first chunks may lie further back)."""

    def look_further(self) -> bool:
        """Whether older records could change the answer.

        They could when no version was believed, or a higher version was seen only in part.
        """
        return self.version is None or any(v > self.version for v in self.incomplete)


def discover_last_version(
    records: Iterable[tuple[int, bytes]], signer: Signer | None, *, where: str = "delta topic"
) -> VersionDiscovery:
    """The highest version whose records verify among ``(offset, value)`` records."""
    skipped: Counter[str] = Counter()
    groups: dict[tuple[int, str, int, int], dict[int, tuple[int, bytes]]] = {}
    headers: dict[tuple[int, str, int, int], ChunkHeader] = {}
    total = 0

    def skip(reason: Skip, offsets: Iterable[int], detail: str) -> None:
        for offset in offsets:
            skipped[reason.value] += 1
            log.warning("%s offset %d: skipped (%s): %s", where, offset, reason.value, detail)

    for offset, value in records:
        total += 1
        try:
            header, data = parse_chunk(value)
        except DeltaFormatError as err:
            skip(Skip.FORMAT, [offset], str(err))
            continue
        if signer is not None:
            try:
                signer.verify(header)
            except SignatureError as err:
                skip(Skip.SIGNATURE, [offset], str(err))
                continue
        if header.version > MAX_VERSION:
            skip(Skip.FORMAT, [offset], f"version {str(header.version)[:30]}... is impossible")
            continue
        key = (header.version, header.sha256, header.chunks, header.size)
        headers.setdefault(key, header)
        groups.setdefault(key, {}).setdefault(header.chunk, (offset, data))

    best: int | None = None
    incomplete: list[int] = []
    for key, parts in groups.items():
        header = headers[key]
        offsets = sorted(o for o, _ in parts.values())
        what = f"delta v{header.version} (base {header.base})"
        if len(parts) < header.chunks:
            if signer is None:
                skip(Skip.INCOMPLETE, offsets, f"{what}: {len(parts)} of {header.chunks} chunks")
                incomplete.append(header.version)
                continue
        elif not _payload_verifies(header, parts, what, offsets, skip):
            continue
        best = header.version if best is None else max(best, header.version)
    return VersionDiscovery(best, dict(skipped), total, tuple(sorted(incomplete)))


def _payload_verifies(
    header: ChunkHeader,
    parts: dict[int, tuple[int, bytes]],
    what: str,
    offsets: list[int],
    report: _Report,
) -> bool:
    payload = b"".join(parts[i][1] for i in range(header.chunks))
    actual = hashlib.sha256(payload).hexdigest()
    if len(payload) != header.size or actual != header.sha256:
        report(Skip.CHECKSUM, offsets, f"{what}: sha256 {actual[:12]}... differs from its header")
        return False
    try:
        delta = ModelDelta.from_bytes(payload)
    except DeltaFormatError as err:
        report(Skip.FORMAT, offsets, str(err))
        return False
    if (delta.version, delta.base) != (header.version, header.base):
        report(Skip.FORMAT, offsets, f"{what}: the payload is {delta.describe()}")
        return False
    return True
