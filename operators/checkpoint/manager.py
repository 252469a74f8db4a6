"""Full and incremental checkpoints of a store, as chains under one directory.

::

    <root>/chains.json                           the commit point (atomic replace)
    <root>/chain-000006/ckpt-0000  full          ┐ older chain, kept by retention
    <root>/chain-000006/ckpt-0001  incremental   ┘
    <root>/chain-000007/ckpt-0000  full   v=1500 ┐
    <root>/chain-000007/ckpt-0001  incr.  v=1600 │ newest chain: each increment holds the rows
    <root>/chain-000007/ckpt-0002  incr.  v=1700 ┘ written since its parent, and tombstones

A checkpoint holds, for one step boundary (design decision 3): every row (base + increments),
the dense parameters and optimizer state (named arrays), the LFU counters (inside the rows) and
aging epochs, the store's version, the source offsets of the next unread event, a config hash
and free JSON ``extra``. See :mod:`operators.checkpoint.chain` and
:mod:`operators.checkpoint.format`.

Writing has two halves. The capture holds training off (``store.step_boundary()``) only
while it copies the rows: all of them for a full checkpoint, those written since the parent
for an increment. The write (files, fsyncs, manifest, rename, commit) then runs on a
background thread with ``submit_*``, or inline with ``write_*`` (a synchronous full checkpoint
streams rows to disk inside the boundary instead of copying them, so memory stays bounded).
One write is in flight at a time: the next one waits, because its parent must be committed.

A ``patches`` source (:mod:`operators.checkpoint.patches`) is asked at each capture for a
layer of dense arrays that changes in part (a featurizer's per-entity state): the whole for a
full checkpoint, the changes since the base for an increment. A restore returns the chain's
layers in order; a compaction keeps them all.

After a commit the store's write log is truncated up to the checkpoint's version (through
:class:`~operators.checkpoint.write_log.WriteLogWatermarks`, shared with other consumers of
the log).
Increments need a base this manager wrote or restored for the same store object: after a
process restart, restore first (or write a full checkpoint).

>>> import tempfile, numpy as np
>>> from embedding_store import EmbeddingStore, StoreConfig, TableConfig
>>> def train(store, ids):
...     emb = store.lookup("t", ids); store.apply_gradients("t", ids, emb.numpy()); store.end_step()
>>> with tempfile.TemporaryDirectory() as d:
...     manager = CheckpointManager(d + "/ckpt", retention=2)
...     cfg = StoreConfig(d + "/a", (TableConfig("t", 4),), num_shards=2)
...     with EmbeddingStore(cfg) as store:
...         train(store, np.arange(10, dtype=np.int64))
...         full = manager.write_full(store, {"w": np.ones(3)}, {"events/0": 10}, "cfg-1")
...         train(store, np.array([3, 4], dtype=np.int64))
...         incr = manager.write_incremental(store, {"w": np.ones(3)}, {"events/0": 12}, "cfg-1")
...         before = store.read_rows("t", np.arange(10, dtype=np.int64))[1]["emb"]
...     with EmbeddingStore(StoreConfig(d + "/b", cfg.tables, num_shards=2)) as fresh:
...         state = manager.restore(fresh)
...         after = fresh.read_rows("t", np.arange(10, dtype=np.int64))[1]["emb"]
>>> (full.kind.value, incr.kind.value, incr.rows, state.version, state.offsets)
('full', 'incremental', 2, 2, {'events/0': 12})
>>> bool((before == after).all())
True
"""

from __future__ import annotations

import builtins
import fcntl
import logging
import os
import shutil
import threading
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from embedding_store import EmbeddingStore
from embedding_store.rows import RowLayout
from embedding_store.tier import RowBlock
from embedding_store.types import IdArray
from operators.checkpoint.chain import (
    CHAINS_FILE,
    Chain,
    ChainIndex,
    CheckpointInfo,
    chain_dirname,
    load_index,
    save_index,
)
from operators.checkpoint.chain_merge import merge_table
from operators.checkpoint.chain_recovery import chain_dirs, rebuild_index
from operators.checkpoint.dense_state import DenseValue
from operators.checkpoint.format import CheckpointKind
from operators.checkpoint.patches import PatchSource, chain_layers, split_layers, with_layers
from operators.checkpoint.reader import CheckpointReader, VerificationProblem
from operators.checkpoint.restore import RestoredState, restore_chain
from operators.checkpoint.snapshot import (
    CheckpointSnapshot,
    TableSnapshot,
    capture_full,
    capture_incremental,
)
from operators.checkpoint.write_log import WriteLogWatermarks
from operators.checkpoint.writer import TMP_PREFIX, FileHook, write_checkpoint
from operators.errors import (
    ChainManifestError,
    CheckpointError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    NoBaseCheckpointError,
    NoCompleteCheckpointError,
)

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
WRITE_LOG_CONSUMER = "checkpoint"


@dataclass(frozen=True)
class _Base:
    """The checkpoint the next increment builds on, and the store whose log it relies on."""

    info: CheckpointInfo
    store: weakref.ReferenceType[EmbeddingStore]


class CheckpointHandle:
    """A checkpoint captured at a step boundary and being written in the background.

    ``result()`` waits for the commit and returns its :class:`CheckpointInfo` (or raises the
    write's error); ``capture_seconds`` is how long training was held off.
    """

    def __init__(self, future: Future[CheckpointInfo], snapshot: CheckpointSnapshot) -> None:
        self.future = future
        self.kind = snapshot.kind
        self.version = snapshot.version
        self.rows = snapshot.rows
        self.capture_seconds = snapshot.capture_seconds

    def done(self) -> bool:
        """Whether the write finished (committed or failed)."""
        return self.future.done()

    def result(self, timeout: float | None = None) -> CheckpointInfo:
        """Wait for the commit; raises the write's error if it failed."""
        return self.future.result(timeout)


class CheckpointManager:
    """Writes, lists, verifies, restores, compacts and prunes the checkpoints under a directory.

    ``retention`` chains are kept; older ones are deleted only once a newer full checkpoint is
    committed. ``rows_per_file`` bounds the rows of one ``.npy`` part. ``file_hook(path)`` is
    called after each file is fsynced (tests use it to slow writes down). Constructing does no
    I/O; ``close()`` waits for a write in flight.
    """

    def __init__(
        self,
        root_dir: str,
        retention: int = 3,
        rows_per_file: int = 1 << 20,
        watermarks: WriteLogWatermarks | None = None,
        file_hook: FileHook | None = None,
        *,
        patches: PatchSource | None = None,
    ) -> None:
        if retention < 1:
            raise ValueError(f"retention must be >= 1, got {retention}")
        if rows_per_file < 1:
            raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
        self.root = os.path.abspath(root_dir)
        self.retention = retention
        self.rows_per_file = rows_per_file
        self.watermarks = watermarks if watermarks is not None else WriteLogWatermarks()
        self.file_hook = file_hook
        self.patches = patches
        self._base: _Base | None = None  # pragma: no mutate
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None  # pragma: no mutate
        self._inflight: Future[CheckpointInfo] | None = None  # pragma: no mutate

    # -- lifecycle -----------------------------------------------------------
    def close(self) -> None:
        """Wait for a write in flight and stop the writer thread."""
        self.wait()
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def busy(self) -> bool:
        """Whether a background write is still in flight."""
        with self._lock:
            return self._inflight is not None and not self._inflight.done()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a write in flight (its error, if any, stays with its handle)."""
        with self._lock:
            inflight = self._inflight
        if inflight is not None and not inflight.cancelled():
            inflight.exception(timeout)

    @property
    def base(self) -> CheckpointInfo | None:
        """The checkpoint the next increment would build on, if any."""
        with self._lock:
            return self._base.info if self._base is not None else None

    def has_base(self, store: EmbeddingStore) -> bool:
        """Whether an increment can be written for ``store`` now."""
        with self._lock:
            return self._base is not None and self._base.store() is store

    # -- listing -------------------------------------------------------------
    def _index(self, locked: bool = False) -> ChainIndex:
        """``chains.json``; rebuilt from the checkpoints that verify if it is lost or damaged.

        A missing file with no chain directories is an empty root. Missing or unreadable with
        chain directories present, the index is rebuilt
        (:mod:`operators.checkpoint.chain_recovery`) and
        written back, under the root lock, so that a commit never takes the intact
        checkpoints of a lost manifest for orphans and deletes them.
        """
        path = os.path.join(self.root, CHAINS_FILE)
        try:
            index = load_index(self.root)
        except ChainManifestError as err:
            problem = str(err)
        else:
            if index.chains or os.path.exists(path) or not chain_dirs(self.root):
                return index
            problem = "missing"
        if not locked:
            with self._root_lock():
                return self._index(locked=True)
        index = rebuild_index(self.root)
        log.warning(
            "%s: %s; rebuilt from the checkpoint directories that verify: %s",
            path,
            problem,
            [info.id for info in index.all()] or "none",
        )
        save_index(self.root, index)
        return index

    def list(self) -> tuple[CheckpointInfo, ...]:
        """Every committed checkpoint, oldest first (listed, not verified)."""
        return self._index().all()

    def chains(self) -> tuple[Chain, ...]:
        """Every chain, oldest first."""
        return self._index().chains

    def info(self, checkpoint_id: str) -> CheckpointInfo:
        """The listing of one checkpoint."""
        return self._index().find(checkpoint_id)

    def reader(self, checkpoint_id: str) -> CheckpointReader:
        """Read access to one checkpoint's files."""
        return CheckpointReader(self.root, self.info(checkpoint_id))

    # -- writing -------------------------------------------------------------
    def write_full(
        self,
        store: EmbeddingStore,
        dense: Mapping[str, DenseValue] | None = None,
        offsets: Mapping[str, Any] | None = None,
        config_hash: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> CheckpointInfo:
        """Write every row and the small state now; rows stream to disk inside the boundary."""
        self.wait()
        with store.step_boundary():
            snap = self._capture_full(store, dense, offsets, config_hash, extra, materialize=False)
            return self._commit(snap, None, store)

    def submit_full(
        self,
        store: EmbeddingStore,
        dense: Mapping[str, DenseValue] | None = None,
        offsets: Mapping[str, Any] | None = None,
        config_hash: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> CheckpointHandle:
        """Copy every row at the boundary, then write them on the background thread."""
        self.wait()
        with store.step_boundary():
            snap = self._capture_full(store, dense, offsets, config_hash, extra, materialize=True)
        return self._submit(snap, None, store)

    def _capture_full(
        self,
        store: EmbeddingStore,
        dense: Mapping[str, DenseValue] | None,
        offsets: Mapping[str, Any] | None,
        config_hash: str,
        extra: Mapping[str, Any] | None,
        *,
        materialize: bool,
    ) -> CheckpointSnapshot:
        """Every row and the small state (call inside the step boundary)."""
        return capture_full(
            store,
            self._with_patch(store, dense, None),
            offsets or {},
            config_hash=config_hash,
            extra=extra or {},
            materialize=materialize,
        )

    def write_incremental(
        self,
        store: EmbeddingStore,
        dense: Mapping[str, DenseValue] | None = None,
        offsets: Mapping[str, Any] | None = None,
        config_hash: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> CheckpointInfo:
        """Write the rows written (and ids expired) since the base, and the small state."""
        snap, base = self._capture_incremental(store, dense, offsets, config_hash, extra)
        return self._commit(snap, base, store)

    def submit_incremental(
        self,
        store: EmbeddingStore,
        dense: Mapping[str, DenseValue] | None = None,
        offsets: Mapping[str, Any] | None = None,
        config_hash: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> CheckpointHandle:
        """Capture the increment at the boundary, then write it on the background thread."""
        snap, base = self._capture_incremental(store, dense, offsets, config_hash, extra)
        return self._submit(snap, base, store)

    def _capture_incremental(
        self,
        store: EmbeddingStore,
        dense: Mapping[str, DenseValue] | None,
        offsets: Mapping[str, Any] | None,
        config_hash: str,
        extra: Mapping[str, Any] | None,
    ) -> tuple[CheckpointSnapshot, CheckpointInfo]:
        self.wait()
        with self._lock:
            base = self._base
        if base is None or base.store() is not store:
            raise NoBaseCheckpointError(self.root)
        with store.step_boundary():
            snap = capture_incremental(
                store,
                base.info.version,
                self._with_patch(store, dense, base.info.version),
                offsets or {},
                config_hash=config_hash,
                extra=extra or {},
            )
        return snap, base.info

    def _with_patch(
        self,
        store: EmbeddingStore,
        dense: Mapping[str, DenseValue] | None,
        base_version: int | None,
    ) -> Mapping[str, DenseValue]:
        """``dense`` plus the patch source's layer for this capture (inside the boundary)."""
        if self.patches is None:
            return dense or {}
        return with_layers(dense or {}, [self.patches.capture(store.version, base_version)])

    def _submit(
        self, snap: CheckpointSnapshot, parent: CheckpointInfo | None, store: EmbeddingStore
    ) -> CheckpointHandle:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
            future = self._executor.submit(self._commit, snap, parent, store)
            self._inflight = future
        future.add_done_callback(_log_failure)
        return CheckpointHandle(future, snap)

    @contextmanager
    def _root_lock(self) -> Iterator[None]:
        """Exclusive access to the directory (across processes): one writer at a time."""
        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, LOCK_FILE), "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _commit(
        self,
        snap: CheckpointSnapshot,
        parent: CheckpointInfo | None,
        store: EmbeddingStore | None,
        compacted_from: str | None = None,
    ) -> CheckpointInfo:
        """Write ``snap`` as the newest checkpoint and list it in the chain manifest."""
        with self._root_lock():
            index = self._index(locked=True)
            self._remove_orphans(index)
            newest = index.latest_chain()
            if compacted_from is not None and (newest is None or newest.tip.id != compacted_from):
                raise CheckpointError(compacted_from, "is no longer the newest; not compacting it")
            if snap.kind is CheckpointKind.FULL:
                chain, position = index.next_chain, 0
            else:
                assert parent is not None
                parent = self._append_point(index, parent)
                chain, position = parent.chain, parent.index + 1
            manifest, sha, path = write_checkpoint(
                self.root,
                snap,
                chain,
                position,
                parent.id if parent is not None else None,
                rows_per_file=self.rows_per_file,
                compacted_from=compacted_from,
                file_hook=self.file_hook,
            )
            info = CheckpointInfo(
                id=manifest.id,
                chain=chain,
                index=position,
                kind=snap.kind,
                version=snap.version,
                created_at=manifest.created_at,
                manifest_sha256=sha,
                bytes=manifest.bytes + os.path.getsize(os.path.join(path, "manifest.json")),
                rows=manifest.rows,
                tombstones=manifest.tombstones,
                parent=manifest.parent,
                compacted_from=compacted_from,
            )
            index = index.appended(info)
            save_index(self.root, index)
            log.info(
                "checkpoint %s committed: %s, version %d, %d rows, %d tombstones, %d bytes, "
                "captured in %.3f s",
                info.id,
                info.kind.value,
                info.version,
                info.rows,
                info.tombstones,
                info.bytes,
                snap.capture_seconds,
            )
            if snap.kind is CheckpointKind.FULL:
                self._prune(index)
        if store is not None:
            with self._lock:
                self._base = _Base(info, weakref.ref(store))
            self.watermarks.advance(store, WRITE_LOG_CONSUMER, info.version)
        return info

    def _append_point(self, index: ChainIndex, parent: CheckpointInfo) -> CheckpointInfo:
        """Where an increment on ``parent`` goes: after it, or after its compaction."""
        newest = index.latest_chain()
        if newest is not None:
            if newest.tip.id == parent.id:
                return newest.tip
            if newest.tip.compacted_from == parent.id and newest.tip.version == parent.version:
                return newest.tip
        with self._lock:
            self._base = None
        raise CheckpointError(
            parent.id,
            "is no longer the newest checkpoint (another writer or a retention/compaction "
            "moved on); write a full checkpoint",
        )

    def _remove_orphans(self, index: ChainIndex) -> None:
        """Delete temporary and unlisted directories left by writers that died."""
        if not os.path.isdir(self.root):
            return
        listed = {info.relpath for info in index.all()}
        chains = {chain_dirname(c.id) for c in index.chains}
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if not os.path.isdir(path):
                continue
            if name.startswith(TMP_PREFIX) or (name.startswith("chain-") and name not in chains):
                log.info("removing %s (left by an interrupted write or a pruned chain)", path)
                shutil.rmtree(path, ignore_errors=True)
            elif name in chains:
                for sub in os.listdir(path):
                    if f"{name}/{sub}" not in listed:
                        log.info("removing uncommitted checkpoint directory %s/%s", path, sub)
                        shutil.rmtree(os.path.join(path, sub), ignore_errors=True)

    def _prune(self, index: ChainIndex) -> None:
        """Keep the newest ``retention`` chains (the manifest first, then the directories)."""
        drop = [c.id for c in index.chains[: -self.retention]]
        if not drop:
            return
        save_index(self.root, index.without(drop))
        for chain in drop:
            shutil.rmtree(os.path.join(self.root, chain_dirname(chain)), ignore_errors=True)
        log.info("retention %d: deleted chains %s", self.retention, drop)

    # -- verifying -----------------------------------------------------------
    def verify(
        self, checkpoint_id: str, with_chain: bool = True
    ) -> builtins.list[VerificationProblem]:
        """Problems with a checkpoint (and, by default, every checkpoint it builds on)."""
        index = self._index()
        info = index.find(checkpoint_id)
        infos = index.chain(info.chain).upto(checkpoint_id) if with_chain else (info,)
        problems: builtins.list[VerificationProblem] = []
        previous: CheckpointInfo | None = None  # pragma: no mutate
        for c in infos:
            problems.extend(CheckpointReader(self.root, c).verify())
            if previous is not None and c.parent not in (previous.id, None):
                problems.append(
                    VerificationProblem(c.id, "chains.json", f"parent {c.parent} != {previous.id}")
                )
            previous = c
        return problems

    def latest_complete(self) -> CheckpointInfo | None:
        """The newest checkpoint whose whole chain verifies; a bad one is logged and skipped."""
        index = self._index()
        for chain in reversed(index.chains):
            good = self._good_prefix(chain)
            if good is not None:
                return good
        return None

    def _good_prefix(self, chain: Chain) -> CheckpointInfo | None:
        good: CheckpointInfo | None = None  # pragma: no mutate
        for info in chain.checkpoints:
            problems = CheckpointReader(self.root, info).verify()
            if problems:
                fallback = good.id if good is not None else "an older chain"
                for p in problems:
                    log.warning("%s; skipping it, falling back to %s", p, fallback)
                return good
            good = info
        return good

    # -- restoring -----------------------------------------------------------
    def restore(
        self,
        store: EmbeddingStore,
        checkpoint_id: str | None = None,
        clear: bool = False,
        verify: bool = True,
    ) -> RestoredState:
        """Rebuild ``store``'s rows and state from a checkpoint (default: the latest complete).

        ``store`` must hold no rows (open it on an empty directory) unless ``clear`` is set.
        With ``verify`` every file of the chain is checked against its sha256 first.
        """
        self.wait()
        index = self._index()
        if checkpoint_id is None:
            latest = self.latest_complete()  # verifies the chain on the way
            if latest is None:
                raise NoCompleteCheckpointError(self.root)
            checkpoint_id, verify = latest.id, False
        info = index.find(checkpoint_id)
        infos = index.chain(info.chain).upto(checkpoint_id)
        if verify:
            problems = self.verify(checkpoint_id)
            if problems:
                p = problems[0]
                if p.expected is not None and p.actual is not None:
                    raise ChecksumMismatchError(p.checkpoint, p.file, p.expected, p.actual)
                raise CorruptCheckpointError(p.checkpoint, p.file, p.message)
        readers = [CheckpointReader(self.root, c) for c in infos]
        state = restore_chain(store, readers, clear=clear)
        newest = index.latest_chain()
        with self._lock:
            is_tip = newest is not None and newest.tip.id == info.id
            self._base = _Base(info, weakref.ref(store)) if is_tip else None
        self.watermarks.advance(store, WRITE_LOG_CONSUMER, info.version)
        log.info(
            "restored checkpoint %s (version %d, %d checkpoints in its chain)",
            info.id,
            info.version,
            len(infos),
        )
        return state

    def read_table(self, checkpoint_id: str, table: str) -> tuple[IdArray, RowBlock]:
        """The rows ``table`` had at a checkpoint (base + increments), sorted by id."""
        index = self._index()
        info = index.find(checkpoint_id)
        readers = [CheckpointReader(self.root, c) for c in index.chain(info.chain).upto(info.id)]
        entry = readers[-1].manifest().table(table)
        if entry is None:
            raise CheckpointError(checkpoint_id, f"has no table {table!r}")
        return merge_table(readers, table, RowLayout(entry.dim, entry.state_dim))

    # -- compacting ----------------------------------------------------------
    def compact(self, chain: int | None = None) -> CheckpointInfo:
        """Fold a chain (default: the latest complete one) into one new full checkpoint.

        The new full checkpoint opens the newest chain, with the state of the chain's newest
        complete checkpoint; increments written for that checkpoint continue on it. If the
        chain has grown meanwhile the compaction is abandoned (:class:`CheckpointError`).
        """
        self.wait()
        return self._compact(chain)

    def _compact(self, chain: int | None) -> CheckpointInfo:
        index = self._index()
        if chain is None:
            latest = self.latest_complete()
            if latest is None:
                raise NoCompleteCheckpointError(self.root)
            tip = latest
        else:
            good = self._good_prefix(index.chain(chain))
            if good is None:
                raise NoCompleteCheckpointError(self.root, f"chain {chain} has no valid base")
            tip = good
        if tip.index == 0:
            log.info(
                "chain %d is a single full checkpoint %s: nothing to compact", tip.chain, tip.id
            )
            return tip
        readers = [CheckpointReader(self.root, c) for c in index.chain(tip.chain).upto(tip.id)]
        snap = _compacted_snapshot(readers)
        info = self._commit(snap, None, None, compacted_from=tip.id)
        with self._lock:
            if self._base is not None and self._base.info.id == tip.id:
                self._base = _Base(info, self._base.store)
        return info

    def submit_compact(self, chain: int | None = None) -> Future[CheckpointInfo]:
        """:meth:`compact` on the background thread."""
        self.wait()
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
            future = self._executor.submit(self._compact, chain)
            self._inflight = future
        future.add_done_callback(_log_failure)
        return future


def _compacted_snapshot(readers: builtins.list[CheckpointReader]) -> CheckpointSnapshot:
    tip = readers[-1].manifest()
    plain, _ = split_layers(readers[-1].dense())
    # every link's patch layers, in order: the compacted checkpoint restores to the same state
    dense = with_layers(plain, chain_layers(r.dense() for r in readers))
    tables = []
    for entry in tip.tables:
        layout = RowLayout(entry.dim, entry.state_dim)
        ids, rows = merge_table(readers, entry.name, layout)
        seen = readers[-1].sightings(entry)
        tables.append(
            TableSnapshot(entry.name, entry.dim, entry.state_dim, [(ids, rows)], sightings=seen)
        )
    return CheckpointSnapshot(
        kind=CheckpointKind.FULL,
        version=tip.version,
        base_version=None,
        store_state=tip.store_state,
        store_schema=tip.store_schema,
        tables=tuple(tables),
        dense=dense,
        offsets=tip.offsets,
        config_hash=tip.config_hash,
        extra=tip.extra,
    )


def _log_failure(future: Future[Any]) -> None:
    if future.cancelled():
        return
    err = future.exception()
    if err is not None:
        log.error("background checkpoint write failed: %s", err, exc_info=err)
