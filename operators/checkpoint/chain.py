"""The chain manifest: which checkpoints exist, in which chain, in which order.

::

    <root>/
      chains.json             ◄── the commit point: a checkpoint exists once it is listed here
      .lock                   flock held by whoever writes (one writer at a time)
      .tmp-<uuid>/            a checkpoint being written (removed if a writer died)
      chain-000006/           an older chain (kept while retention allows)
        ckpt-0000/            full        v=1200
        ckpt-0001/            incremental v=1300  parent 000006-0000
      chain-000007/           the newest chain
        ckpt-0000/            full        v=1500
        ckpt-0001/            incremental v=1600  parent 000007-0000
        ckpt-0002/            incremental v=1700  parent 000007-0001

    restore(000007-0002) = full 000007-0000 ─► + increment 0001 ─► + increment 0002

``chains.json`` records each checkpoint's kind, version and the sha256 of its
``manifest.json``; the manifest records the sha256 of every other file. It is replaced
atomically (write a temporary file, fsync, ``os.replace``, fsync the directory).

>>> from datetime import UTC, datetime
>>> info = CheckpointInfo("000001-0000", 1, 0, CheckpointKind.FULL, 10,
...                       datetime(2024, 1, 1, tzinfo=UTC), "ab" * 32)
>>> index = ChainIndex().appended(info)
>>> index.find("000001-0000").relpath, index.latest_chain().id
('chain-000001/ckpt-0000', 1)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from operators.checkpoint.durable_io import json_bytes, replace_atomically
from operators.checkpoint.format import FORMAT_VERSION, CheckpointKind
from operators.errors import ChainManifestError, CheckpointNotFoundError

CHAINS_FILE = "chains.json"


def checkpoint_id(chain: int, index: int) -> str:
    """The id of the ``index``-th checkpoint of chain ``chain`` (sorts by age)."""
    return f"{chain:06d}-{index:04d}"


def chain_dirname(chain: int) -> str:
    """The directory of a chain, relative to the root."""
    return f"chain-{chain:06d}"


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed checkpoint as the chain manifest lists it (no verification implied)."""

    id: str
    chain: int
    index: int
    kind: CheckpointKind
    version: int
    created_at: datetime
    manifest_sha256: str
    bytes: int = 0
    rows: int = 0
    tombstones: int = 0
    parent: str | None = None
    compacted_from: str | None = None

    @property
    def relpath(self) -> str:
        """The checkpoint's directory relative to the root."""
        return f"{chain_dirname(self.chain)}/ckpt-{self.index:04d}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "id": self.id,
            "chain": self.chain,
            "index": self.index,
            "kind": self.kind.value,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "manifest_sha256": self.manifest_sha256,
            "bytes": self.bytes,
            "rows": self.rows,
            "tombstones": self.tombstones,
            "parent": self.parent,
            "compacted_from": self.compacted_from,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointInfo:
        """Parse :meth:`to_json`'s output."""
        return cls(
            id=str(data["id"]),
            chain=int(data["chain"]),
            index=int(data["index"]),
            kind=CheckpointKind(data["kind"]),
            version=int(data["version"]),
            created_at=datetime.fromisoformat(str(data["created_at"])),
            manifest_sha256=str(data["manifest_sha256"]),
            bytes=int(data.get("bytes", 0)),
            rows=int(data.get("rows", 0)),
            tombstones=int(data.get("tombstones", 0)),
            parent=data.get("parent"),
            compacted_from=data.get("compacted_from"),
        )


@dataclass(frozen=True)
class Chain:
    """A full checkpoint followed by the increments built on it, oldest first."""

    id: int
    checkpoints: tuple[CheckpointInfo, ...]

    @property
    def tip(self) -> CheckpointInfo:
        """The newest checkpoint of the chain."""
        return self.checkpoints[-1]

    def upto(self, checkpoint: str) -> tuple[CheckpointInfo, ...]:
        """The checkpoints needed to restore ``checkpoint``: the base through it."""
        for i, info in enumerate(self.checkpoints):
            if info.id == checkpoint:
                return self.checkpoints[: i + 1]
        raise CheckpointNotFoundError(checkpoint, [c.id for c in self.checkpoints])


@dataclass(frozen=True)
class ChainIndex:
    """The parsed ``chains.json``: chains oldest first, and the next chain number."""

    chains: tuple[Chain, ...] = ()
    next_chain: int = 1

    def all(self) -> tuple[CheckpointInfo, ...]:
        """Every checkpoint, oldest chain first, each chain in order."""
        return tuple(c for chain in self.chains for c in chain.checkpoints)

    def find(self, checkpoint: str) -> CheckpointInfo:
        """The checkpoint called ``checkpoint``."""
        for info in self.all():
            if info.id == checkpoint:
                return info
        raise CheckpointNotFoundError(checkpoint, [c.id for c in self.all()])

    def chain(self, chain: int) -> Chain:
        """The chain numbered ``chain``."""
        for c in self.chains:
            if c.id == chain:
                return c
        raise CheckpointNotFoundError(f"chain {chain}", [str(c.id) for c in self.chains])

    def latest_chain(self) -> Chain | None:
        """The newest chain, if any."""
        return self.chains[-1] if self.chains else None

    def appended(self, info: CheckpointInfo) -> ChainIndex:
        """A copy with ``info`` added (a full one opens a new chain)."""
        if info.kind is CheckpointKind.FULL:
            return replace(
                self,
                chains=(*self.chains, Chain(info.chain, (info,))),
                next_chain=max(self.next_chain, info.chain + 1),
            )
        chains = tuple(
            Chain(c.id, (*c.checkpoints, info)) if c.id == info.chain else c for c in self.chains
        )
        return replace(self, chains=chains)

    def without(self, chain_ids: Iterable[int]) -> ChainIndex:
        """A copy without the chains in ``chain_ids``."""
        drop = set(chain_ids)
        return replace(self, chains=tuple(c for c in self.chains if c.id not in drop))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "format": FORMAT_VERSION,
            "next_chain": self.next_chain,
            "chains": [
                {"chain": c.id, "checkpoints": [i.to_json() for i in c.checkpoints]}
                for c in self.chains
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChainIndex:
        """Parse :meth:`to_json`'s output."""
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {data.get('format')!r}, this code reads {FORMAT_VERSION}")
        chains = tuple(
            Chain(int(c["chain"]), tuple(CheckpointInfo.from_json(i) for i in c["checkpoints"]))
            for c in data["chains"]
        )
        return cls(
            chains=tuple(c for c in chains if c.checkpoints), next_chain=int(data["next_chain"])
        )


def load_index(root: str) -> ChainIndex:
    """Read ``<root>/chains.json`` (an absent file is an empty index)."""
    path = os.path.join(root, CHAINS_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return ChainIndex()
    except (OSError, ValueError) as err:
        raise ChainManifestError(path, f"unreadable: {err}") from err
    try:
        return ChainIndex.from_json(data)
    except (KeyError, TypeError, ValueError) as err:
        raise ChainManifestError(path, f"malformed: {err!r}") from err


def save_index(root: str, index: ChainIndex) -> None:
    """Replace ``<root>/chains.json`` atomically by ``index``."""
    path = os.path.join(root, CHAINS_FILE)
    try:
        replace_atomically(path, json_bytes(index.to_json()))
    except OSError as err:
        raise ChainManifestError(path, f"cannot be written: {err}") from err
