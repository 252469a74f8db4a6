"""The job's checkpoints: restore at open, write on schedule and at a clean stop.

One rank writes chains with a :class:`~operators.checkpoint.manager.CheckpointManager` under
the checkpoint directory. N ranks (or one rank resuming N ranks' checkpoints) write
coordinated ones with :class:`~operators.checkpoint.distributed.WorldCheckpoints`: every rank
its part at the same step, rank 0 commits ``world.json`` with the offsets of every partition::

    <dir>/                   one rank: chains.json, chain-NNNN/...   (SoloCheckpoints)
    <dir>/world.json         N ranks:  the commit point              (WorldCheckpointsOf)
    <dir>/rank-NNNN/         rank N's chains

A checkpoint holds the rows, the dense parameters and optimizer state, the source offsets,
``events_trained`` (the lineage's events, for ``max_events``) and, with one rank, the
featurizer state: a patch layer (:mod:`pipeline.training.featurizer_patches`), whole in a
full checkpoint, only the entities changed since the base in an increment; a restore applies
the chain's layers in order. With N ranks each rank's featurizer state is its own and goes in
its own part: restoring with the same world size loads it, a re-shard starts it empty.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     kind = checkpoint_layout(d, World.solo())
>>> kind
'solo'
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist

from embedding_store import EmbeddingStore
from operators.checkpoint.chain import CHAINS_FILE
from operators.checkpoint.dense_state import DenseValue, flatten_tree, unflatten_tree
from operators.checkpoint.distributed import WORLD_FILE, WorldCheckpoints
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.write_log import WriteLogWatermarks
from pipeline.errors import PipelineError
from pipeline.features.featurizer import Featurizer
from pipeline.training.featurizer_patches import FeaturizerPatches
from pipeline.training.spec import CheckpointSpec
from pipeline.training.world import World

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]


def offsets_to_json(offsets: Mapping[tuple[str, int], int]) -> dict[str, int]:
    """``{(topic, partition): offset}`` as ``{"topic/partition": offset}``.

    >>> offsets_to_json({("t", 1): 5})
    {'t/1': 5}
    """
    return {f"{t}/{p}": int(o) for (t, p), o in sorted(offsets.items())}


def offsets_from_json(raw: Mapping[str, Any]) -> Offsets:
    """Inverse of :func:`offsets_to_json`.

    >>> offsets_from_json({"t/1": 5})
    {('t', 1): 5}
    """
    out: Offsets = {}
    for key, value in raw.items():
        topic, _, part = key.rpartition("/")
        out[(topic, int(part))] = int(value)
    return out


class CheckpointLayoutError(PipelineError, ValueError):
    """N ranks were asked to resume from checkpoints one rank wrote (not supported yet)."""

    def __init__(self, root: str, ranks: int) -> None:
        self.root = root
        super().__init__(
            f"{root} holds checkpoints of a 1-rank run; {ranks} ranks cannot resume from them "
            "(run 1 rank, or give N ranks a --checkpoint-dir of their own)"
        )


def checkpoint_layout(root: str, world: World) -> Literal["solo", "world"]:
    """``world`` for N ranks or a directory N ranks wrote; ``solo`` otherwise."""
    if world.distributed or os.path.exists(os.path.join(root, WORLD_FILE)):
        return "world"
    return "solo"


class TrainedState(Protocol):
    """What a checkpoint saves and restores besides the rows (the job provides it)."""

    def dense_tree(self, featurizer: bool) -> dict[str, Any]:
        """``{"model": ..., "optim": ..., "featurizer": ...}`` now."""
        ...

    def load_dense_tree(self, tree: Mapping[str, Any]) -> None:
        """Load what :meth:`dense_tree` gave."""
        ...


@dataclass(frozen=True)
class Resumed:
    """Where a restored job resumes: offsets, lineage events, store version."""

    offsets: Offsets
    events_trained: int
    version: int
    checkpoint: str
    resharded: bool = False


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    return value


class JobCheckpoints:
    """Restore and write the checkpoints of one rank of a job (see the module docstring).

    Constructing does no I/O. ``discard_unchecked`` (before the store opens) removes a store
    directory no checkpoint vouches for; ``restore`` loads the newest checkpoint;
    ``write`` writes one now (a collective with N ranks: every rank, the same step).
    """

    def __init__(
        self,
        spec: CheckpointSpec,
        world: World,
        *,
        config_hash: str = "",
        watermarks: WriteLogWatermarks | None = None,
        file_hook: Callable[[str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.world = world
        self.config_hash = config_hash
        self.watermarks = watermarks if watermarks is not None else WriteLogWatermarks()
        self.file_hook = file_hook
        self.layout = checkpoint_layout(spec.dir, world)
        self.manager: CheckpointManager | None = None
        self.coordinated: WorldCheckpoints | None = None
        self._own_group: str | None = None  # a 1-rank gloo group for world checkpoints
        self._dense_cache: tuple[int, dict[str, DenseValue], Any] | None = None
        self.last_version: int | None = None
        self.patches: FeaturizerPatches | None = None

    def attach(self, featurizer: Featurizer) -> None:
        """Save ``featurizer``'s state as patch layers (call before :meth:`open`)."""
        self.patches = FeaturizerPatches(featurizer)

    # -- life cycle ----------------------------------------------------------
    def open(self) -> JobCheckpoints:
        """Create the writers (no files are read or written yet)."""
        if self.manager is not None or self.coordinated is not None:
            return self
        if self.layout == "solo":
            self.manager = CheckpointManager(
                self.spec.dir,
                self.spec.retention,
                self.spec.rows_per_file,
                watermarks=self.watermarks,
                file_hook=self.file_hook,
                patches=self.patches,
            )
        else:
            self.coordinated = WorldCheckpoints(
                self.spec.dir,
                self.world.rank,
                group=self.world.group,
                retention=self.spec.retention,
                full_every=self.spec.max_chain_length or 8,
                watermarks=self.watermarks,
                file_hook=self.file_hook,
                patches=self.patches,
            )
        return self

    def close(self) -> None:
        """Wait for a write in flight; leave a 1-rank group this object made."""
        try:
            if self.manager is not None:
                self.manager.close()
            if self.coordinated is not None:
                self.coordinated.close()
        finally:
            self.manager = self.coordinated = None
            if self._own_group is not None:
                dist.destroy_process_group()
                shutil.rmtree(self._own_group, ignore_errors=True)
                self._own_group = None

    def wait(self) -> None:
        """Wait for a background write in flight."""
        if self.manager is not None:
            self.manager.wait()

    # -- before the store opens -----------------------------------------------
    def has_checkpoint(self) -> bool:
        """Whether a complete checkpoint exists to resume from."""
        if self.layout == "solo":
            manager = CheckpointManager(self.spec.dir)
            try:
                return manager.latest_complete() is not None
            finally:
                manager.close()
        return WorldCheckpoints(self.spec.dir, self.world.rank).latest() is not None

    def discard_unchecked(self, store_dir: str) -> None:
        """Delete ``store_dir`` when no complete checkpoint vouches for its rows.

        A store left by a crashed (or checkpoint-less) run holds updates no checkpoint
        covers, while the source would resume at the last committed offsets: start it
        empty, or events would count twice.
        """
        if not os.path.exists(store_dir) or self.has_checkpoint():
            return
        log.warning(
            "no complete checkpoint in %s: discarding store %s left by an earlier run",
            self.spec.dir,
            store_dir,
        )
        keep = os.path.abspath(self.spec.dir)
        if keep.startswith(os.path.abspath(store_dir) + os.sep):
            for name in os.listdir(store_dir):  # keep the checkpoint directory inside it
                path = os.path.join(store_dir, name)
                if os.path.abspath(path) != keep and not keep.startswith(path + os.sep):
                    if os.path.isdir(path):
                        shutil.rmtree(path)
                    else:
                        os.unlink(path)
        else:
            shutil.rmtree(store_dir)

    # -- restoring -------------------------------------------------------------
    def restore(self, store: EmbeddingStore, state: TrainedState) -> Resumed | None:
        """Load the newest complete checkpoint into ``store`` and ``state`` (None: none)."""
        self.open()
        if self.manager is not None:
            if self.manager.latest_complete() is None:
                log.info("no complete checkpoint under %s: starting fresh", self.spec.dir)
                return None
            restored = self.manager.restore(store, clear=True)
            layers = restored.patches
            hash_, extra = restored.config_hash, restored.extra
            dense, offsets, version = restored.dense_tensors(), restored.offsets, restored.version
            checkpoint, resharded = restored.checkpoint, False
        else:
            assert self.coordinated is not None
            if self.coordinated.latest() is None:
                if os.path.exists(os.path.join(self.spec.dir, CHAINS_FILE)):
                    raise CheckpointLayoutError(self.spec.dir, self.world.size)
                log.info("no world checkpoint under %s: starting fresh", self.spec.dir)
                return None
            got = self.coordinated.restore(store, self.world.size, clear=True)
            layers = got.patches
            if got.resharded and self.patches is not None:
                log.warning(
                    "rank %d: re-sharded world v%d: this rank's featurizer state starts empty "
                    "(it is per rank and follows no re-shard)",
                    self.world.rank,
                    got.version,
                )
            hash_, extra = got.checkpoint.config_hash, got.extra
            dense, offsets, version = got.dense_tensors(), got.offsets, got.version
            checkpoint, resharded = f"world v{got.version}", got.resharded
        if hash_ and self.config_hash and hash_ != self.config_hash:
            log.warning(
                "checkpoint %s was written with config hash %s, this job has %s",
                checkpoint,
                hash_,
                self.config_hash,
            )
        skeleton = extra.get("dense_skeleton")
        if skeleton is not None:
            state.load_dense_tree(unflatten_tree(dense, skeleton))
        if self.patches is not None:  # after the tree: checkpoints before patches held it there
            self.patches.restore(version, layers)
        self.last_version = version
        return Resumed(
            offsets=offsets_from_json(dict(offsets)),
            events_trained=int(extra.get("events_trained", 0)),
            version=version,
            checkpoint=checkpoint,
            resharded=resharded,
        )

    # -- writing ---------------------------------------------------------------
    def dense(
        self, store: EmbeddingStore, state: TrainedState
    ) -> tuple[dict[str, DenseValue], Any]:
        """The dense arrays (copies) and their skeleton at the store's version (cached)."""
        version = store.version
        if self._dense_cache is None or self._dense_cache[0] != version:
            # an attached featurizer travels as a patch layer (the manager asks at capture)
            with_featurizer = self.layout == "solo" and self.patches is None
            arrays, skeleton = flatten_tree(state.dense_tree(featurizer=with_featurizer))
            # copies: a background checkpoint must not see later steps' in-place updates
            self._dense_cache = (version, {k: _copy(v) for k, v in arrays.items()}, skeleton)
        return self._dense_cache[1], self._dense_cache[2]

    def write(
        self,
        store: EmbeddingStore,
        state: TrainedState,
        offsets: Mapping[tuple[str, int], int],
        events_trained: int,
        *,
        full: bool = False,
    ) -> int:
        """Write a checkpoint now, synchronously (collective with N ranks); its version."""
        self.open()
        self._join_if_needed()
        arrays, skeleton = self.dense(store, state)
        extra = {"dense_skeleton": skeleton, "events_trained": int(events_trained)}
        if self.manager is not None:
            self.manager.wait()
            has_base = self.manager.has_base(store)
            write = self.manager.write_incremental if has_base and not full else None
            info = (write or self.manager.write_full)(
                store,
                dense=arrays,
                offsets=offsets_to_json(offsets),
                config_hash=self.config_hash,
                extra=extra,
            )
            version, name = info.version, info.id
        else:
            assert self.coordinated is not None
            entry = self.coordinated.write(
                store,
                arrays,
                offsets_to_json(offsets),
                config_hash=self.config_hash,
                extra=extra,
                full=full,
            )
            version, name = entry.version, f"world v{entry.version}"
        self.last_version = version
        log.info("checkpoint %s at version %d (%d events trained)", name, version, events_trained)
        return version

    def _join_if_needed(self) -> None:
        """World checkpoints in a 1-rank job need a (1-rank) process group for their commit."""
        if self.coordinated is None or self.world.distributed or dist.is_initialized():
            return
        folder = tempfile.mkdtemp(prefix="freshet-rank0-")
        init = "file://" + os.path.join(folder, "rendezvous")
        dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
        self._own_group = folder
