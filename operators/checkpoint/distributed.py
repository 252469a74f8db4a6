"""Checkpoints of N ranks at one step, restorable into any number of ranks.

Every rank writes its own rows with its own :class:`~operators.checkpoint.manager.CheckpointManager`
(full, then increments); once all have committed, rank 0 lists the parts, the version and
the union of the source offsets in ``world.json`` (the commit point)::

    <root>/world.json          {"checkpoints": [{version, world_size, parts, offsets}, ...]}
    <root>/rank-0000/          rank 0's chains (dense parameters live in rank 0's part only;
                               each rank's patch layers, if any, in its own part)
    <root>/rank-0001/          rank 1's chains
    write (every rank, same step):
      part = manager.write_full / write_incremental(local store, offsets of this rank)
      all_gather(JSON reports) ─► rank 0: all committed, same version? ─► world.json
      all_reduce(committed flag) ─► every rank returns the entry (or raises)

Restoring into M ranks: with M equal to the world that wrote it, rank r restores its own
part (with its patch layers, :mod:`operators.checkpoint.patches`). Otherwise rank r reads
every part and keeps the rows it owns under the new world (``owner_of(id, M) == r``), so
each row lands exactly once, on its owner (patch layers are per rank: none follow)::

    old rank 0 part ─┬─ ids owned by new rank 0 ─► new rank 0 local store
                     └─ ids owned by new rank 1 ─► new rank 1 local store
    old rank 1 part ─┬─ ...

Restoring needs no process group (``restore_rank`` takes the rank and world size), so a
new world's stores can also be rebuilt one after another by one process.

>>> entry = WorldCheckpoint(3, 2, (WorldPart(0, "rank-0000", "000001-0000"),
...     WorldPart(1, "rank-0001", "000001-0000")), {"t/0": 7, "t/1": 9}, "", {})
>>> WorldCheckpoint.from_json(entry.to_json()) == entry
True
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from embedding_store import EmbeddingStore, EmbeddingStoreError
from embedding_store.admission import SightingBlock
from embedding_store.collectives import ProcessGroup, all_gather_json, all_reduce_ints
from embedding_store.distributed import owner_of, rank_path
from operators.checkpoint.chain import load_index
from operators.checkpoint.dense_state import DenseArray, DenseValue
from operators.checkpoint.durable_io import json_bytes, replace_atomically
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.patches import PatchSource, split_layers
from operators.checkpoint.reader import CheckpointReader
from operators.checkpoint.restore import check_compatible, ensure_empty
from operators.checkpoint.write_log import WriteLogWatermarks
from operators.checkpoint.writer import FileHook
from operators.errors import CheckpointError, NoCompleteCheckpointError, OperatorError

log = logging.getLogger(__name__)

WORLD_FILE = "world.json"
FORMAT = 1


class WorldCheckpointError(CheckpointError):
    """A coordinated checkpoint could not be written or restored; names the rank at fault."""

    def __init__(self, rank: int | None, detail: str) -> None:
        self.rank = rank
        super().__init__("world" if rank is None else f"world (rank {rank})", detail)


@dataclass(frozen=True)
class WorldPart:
    """One rank's part of a coordinated checkpoint: its manager's root and checkpoint id."""

    rank: int
    root: str
    checkpoint: str


@dataclass(frozen=True)
class WorldCheckpoint:
    """A committed coordinated checkpoint: one part per rank, all at ``version``."""

    version: int
    world_size: int
    parts: tuple[WorldPart, ...]
    offsets: Mapping[str, int]
    config_hash: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "version": self.version,
            "world_size": self.world_size,
            "parts": [
                {"rank": p.rank, "root": p.root, "checkpoint": p.checkpoint} for p in self.parts
            ],
            "offsets": dict(self.offsets),
            "config_hash": self.config_hash,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> WorldCheckpoint:
        """Inverse of :meth:`to_json`."""
        return cls(
            version=int(raw["version"]),
            world_size=int(raw["world_size"]),
            parts=tuple(
                WorldPart(int(p["rank"]), str(p["root"]), str(p["checkpoint"]))
                for p in raw["parts"]
            ),
            offsets={str(k): int(v) for k, v in raw["offsets"].items()},
            config_hash=str(raw.get("config_hash", "")),
            extra=dict(raw.get("extra", {})),
        )


@dataclass(frozen=True)
class WorldRestored:
    """What a rank got back from a coordinated checkpoint besides its rows."""

    checkpoint: WorldCheckpoint
    resharded: bool
    rows: Mapping[str, int]
    dense: Mapping[str, DenseArray]
    extra: Mapping[str, Any]
    patches: tuple[Mapping[str, npt.NDArray[Any]], ...] = ()
    """This rank's patch layers (same world size only; a re-shard starts without them)."""

    @property
    def version(self) -> int:
        """The step the checkpoint was taken after."""
        return self.checkpoint.version

    @property
    def offsets(self) -> Mapping[str, int]:
        """Every partition's next unread offset (the union of all parts)."""
        return self.checkpoint.offsets

    def dense_tensors(self) -> dict[str, torch.Tensor]:
        """The dense arrays as torch tensors of their original dtypes."""
        return {name: arr.tensor() for name, arr in self.dense.items()}


def load_world(root: str) -> tuple[WorldCheckpoint, ...]:
    """Every committed coordinated checkpoint under ``root``, oldest first."""
    path = os.path.join(root, WORLD_FILE)
    if not os.path.exists(path):
        return ()
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
        return tuple(WorldCheckpoint.from_json(c) for c in raw["checkpoints"])
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise WorldCheckpointError(None, f"{path} is unreadable: {err!r}") from err


def _manager_root(root: str, rank: int) -> str:
    return rank_path(root, rank)


def _union_offsets(reports: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """Merge the ranks' offsets; a partition two ranks read (after a rebalance) keeps the max."""
    out: dict[str, int] = {}
    for offsets in reports:
        for key, value in offsets.items():
            out[key] = max(out.get(key, value), int(value))
    return dict(sorted(out.items()))


class WorldCheckpoints:
    """Coordinated checkpoints of every rank under ``root`` (see the module docstring).

    ``write`` is a collective (every rank, the same step); ``restore`` is not. A full
    checkpoint opens a new chain every ``full_every`` writes, increments in between;
    ``retention`` chains are kept per rank; ``watermarks`` (shared with a delta publisher) and
    ``file_hook`` go to this rank's manager. Constructing does no I/O.
    """

    def __init__(
        self,
        root: str,
        rank: int,
        *,
        group: ProcessGroup | None = None,
        retention: int = 3,
        full_every: int = 8,
        keep: int = 16,
        watermarks: WriteLogWatermarks | None = None,
        file_hook: FileHook | None = None,
        patches: PatchSource | None = None,
    ) -> None:
        self.root = os.path.abspath(root)
        self.rank = rank
        self.group = group
        self.full_every = full_every
        self.keep = keep
        self.manager = CheckpointManager(
            _manager_root(self.root, rank),
            retention=retention,
            watermarks=watermarks,
            file_hook=file_hook,
            patches=patches,  # each rank's own, in its own part
        )
        self._since_full = 0

    def close(self) -> None:
        """Wait for this rank's writer."""
        self.manager.close()

    def list(self) -> tuple[WorldCheckpoint, ...]:
        """Every committed coordinated checkpoint, oldest first."""
        return load_world(self.root)

    def latest(self) -> WorldCheckpoint | None:
        """The newest coordinated checkpoint whose every part is still listed."""
        for entry in reversed(self.list()):
            if all(_part_listed(self.root, p) for p in entry.parts):
                return entry
        return None

    # -- writing (a collective) -----------------------------------------------
    def write(
        self,
        local: EmbeddingStore,
        dense: Mapping[str, DenseValue],
        offsets: Mapping[str, int],
        *,
        config_hash: str = "",
        extra: Mapping[str, Any] | None = None,
        full: bool = False,
    ) -> WorldCheckpoint:
        """Write this rank's part at the current step, then commit the world (collective).

        Every rank calls it at the same step; ``dense`` is kept from rank 0 only (the ranks'
        dense parameters are identical). Raises :class:`WorldCheckpointError` on every rank
        if any rank failed; nothing is committed then.
        """
        error = ""
        checkpoint = ""
        try:
            mine = dict(dense) if self.rank == 0 else {}
            if full or not self.manager.has_base(local) or self._since_full >= self.full_every:
                info = self.manager.write_full(local, mine, offsets, config_hash, extra)
                self._since_full = 0
            else:
                info = self.manager.write_incremental(local, mine, offsets, config_hash, extra)
                self._since_full += 1
            checkpoint = info.id
        except (OperatorError, EmbeddingStoreError, OSError) as err:
            log.exception("rank %d: checkpoint part failed", self.rank)
            error = repr(err)
        report = {
            "rank": self.rank,
            "checkpoint": checkpoint,
            "error": error,
            "version": local.version,
            "offsets": dict(offsets),
        }
        reports = all_gather_json(report, self.group)
        entry = WorldCheckpoint(
            version=int(reports[0]["version"]),
            world_size=len(reports),
            parts=tuple(
                WorldPart(
                    int(r["rank"]),
                    os.path.basename(_manager_root(self.root, int(r["rank"]))),
                    r["checkpoint"],
                )
                for r in reports
            ),
            offsets=_union_offsets([r["offsets"] for r in reports]),
            config_hash=config_hash,
            extra=dict(extra or {}),
        )
        problem = next(((r["rank"], r["error"]) for r in reports if r["error"]), None)
        versions = sorted({int(r["version"]) for r in reports})
        if problem is None and len(versions) > 1:
            problem = (None, f"ranks are at different versions {versions}")
        committed = 0
        if problem is None and self.rank == 0:
            try:
                self._commit(entry)
                committed = 1
            except (OSError, OperatorError) as err:  # an unreadable world.json too: every
                # rank must reach the all-reduce below, or the others wait in it forever
                log.exception("rank 0: cannot write %s", WORLD_FILE)
                cause = str(err) if isinstance(err, OperatorError) else repr(err)
                problem = (0, f"cannot write {WORLD_FILE}: {cause}")
        committed = all_reduce_ints([committed], self.group)[0]
        if problem is not None:
            raise WorldCheckpointError(
                problem[0], f"checkpoint at version {versions} failed: {problem[1]}"
            )
        if not committed:
            raise WorldCheckpointError(0, f"{WORLD_FILE} was not written")
        return entry

    def _commit(self, entry: WorldCheckpoint) -> None:
        entries = [
            e for e in self.list() if e.version != entry.version or e.world_size != entry.world_size
        ]
        entries = [*entries, entry][-self.keep :]
        body = {"format": FORMAT, "checkpoints": [e.to_json() for e in entries]}
        os.makedirs(self.root, exist_ok=True)
        replace_atomically(os.path.join(self.root, WORLD_FILE), json_bytes(body))
        log.info(
            "world checkpoint v%d committed: %d parts, %d partitions",
            entry.version,
            len(entry.parts),
            len(entry.offsets),
        )

    # -- restoring (no collective) --------------------------------------------
    def restore(
        self,
        local: EmbeddingStore,
        world_size: int,
        entry: WorldCheckpoint | None = None,
        verify: bool = True,
        clear: bool = False,
    ) -> WorldRestored:
        """Rebuild this rank's local store for a world of ``world_size`` ranks.

        The same world size restores this rank's own part (and increments continue on it);
        another one re-shards: see :func:`restore_rank`. The store must be empty unless
        ``clear`` (then its rows are deleted first).
        """
        entry = entry if entry is not None else self.latest()
        if entry is None:
            raise NoCompleteCheckpointError(self.root, "no world.json entry with all its parts")
        if entry.world_size == world_size:
            part = entry.parts[self.rank]
            state = self.manager.restore(local, part.checkpoint, clear=clear, verify=verify)
            rows = {t.name: _count_rows(local, t.name) for t in local.tables}
            dense = (
                _dense_of(self.root, entry, verify)  # rank 0's part, checked as this rank's
                if self.rank != 0
                else {k: DenseArray(v, state.dense_dtypes.get(k)) for k, v in state.dense.items()}
            )
            return WorldRestored(entry, False, rows, dense, entry.extra, state.patches)
        return restore_rank(
            self.root, local, self.rank, world_size, entry, verify=verify, clear=clear
        )


def _part_listed(root: str, part: WorldPart) -> bool:
    try:
        load_index(os.path.join(root, part.root)).find(part.checkpoint)
    except (OperatorError, KeyError):
        return False
    return True


def _readers(root: str, part: WorldPart, verify: bool) -> list[CheckpointReader]:
    part_root = os.path.join(root, part.root)
    index = load_index(part_root)
    info = index.find(part.checkpoint)
    infos = index.chain(info.chain).upto(info.id)
    if verify:
        problems = CheckpointManager(part_root).verify(info.id)
        if problems:
            raise WorldCheckpointError(
                part.rank, f"part {part.checkpoint} is damaged: {problems[0]}"
            )
    return [CheckpointReader(part_root, c) for c in infos]


def _dense_of(root: str, entry: WorldCheckpoint, verify: bool) -> dict[str, DenseArray]:
    part0 = next(p for p in entry.parts if p.rank == 0)
    return split_layers(_readers(root, part0, verify)[-1].dense())[0]


def _count_rows(local: EmbeddingStore, table: str) -> int:
    return sum(len(ids) for ids, _ in local.export_rows(table))


def restore_rank(
    root: str,
    local: EmbeddingStore,
    rank: int,
    world_size: int,
    entry: WorldCheckpoint,
    *,
    verify: bool = True,
    clear: bool = False,
) -> WorldRestored:
    """Fill ``local`` (empty) with the rows ``rank`` owns in a world of ``world_size`` ranks.

    Reads every part of ``entry`` (base, then increments with their tombstones) and keeps
    the ids with ``owner_of(id, world_size) == rank``; then sets the store's version. With
    ``clear`` the store's rows are deleted first.
    """
    if not 0 <= rank < world_size:
        raise WorldCheckpointError(rank, f"rank outside a world of {world_size}")
    root = os.path.abspath(root)
    ensure_empty(local, f"world v{entry.version}", clear=clear)
    state: Mapping[str, Any] | None = None
    dense: dict[str, DenseArray] = {}
    sightings: dict[str, list[SightingBlock]] = {}
    with local.step_boundary():
        for part in entry.parts:
            readers = _readers(root, part, verify)
            for reader in readers:
                manifest = reader.manifest()
                check_compatible(local, manifest)
                for table in manifest.tables:
                    tomb = reader.tombstones(table)
                    tomb = tomb[owner_of(tomb, world_size) == rank]
                    if len(tomb):
                        local.delete_rows(table.name, tomb)
                    for ids, block in reader.table_blocks(table):
                        keep: npt.NDArray[np.bool_] = owner_of(ids, world_size) == rank
                        if keep.any():
                            local.import_rows(table.name, ids[keep], block[keep])
            tip = readers[-1].manifest()
            for table in tip.tables:  # each part's tip holds its rank's complete sightings
                seen = readers[-1].sightings(table)
                seen = seen[owner_of(np.ascontiguousarray(seen["id"]), world_size) == rank]
                sightings.setdefault(table.name, []).append(seen)
            if part.rank == 0:
                state = tip.store_state
                dense = split_layers(readers[-1].dense())[0]
        if state is None:
            raise WorldCheckpointError(0, f"world v{entry.version} has no part of rank 0")
        for name, blocks in sightings.items():
            local.load_sightings(name, np.concatenate(blocks))
        local.load_state(state)
        local.flush()
    rows = {t.name: _count_rows(local, t.name) for t in local.tables}
    log.info(
        "rank %d of %d: re-sharded world v%d (%d parts; patch layers are per rank and not "
        "carried over): %s",
        rank,
        world_size,
        entry.version,
        len(entry.parts),
        rows,
    )
    return WorldRestored(entry, True, rows, dense, entry.extra)
