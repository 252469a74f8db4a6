"""The store over several ranks: each rank owns the rows whose id hashes to it.

Each rank keeps an ordinary :class:`~embedding_store.store.EmbeddingStore` on its own
directory (``<path>/rank-NNNN``) holding the rows it owns: ``owner = hash(id, RANK_SALT) %
world`` (a salt other than the shards', so ranks and shards split ids independently). A
lookup dedups its ids, sends each to its owner, and the owner answers from its local store,
pinning the rows for the step. Backward sends each unique row's gradient back to its owner,
which sums the contributions of every rank per id and applies its table's fused optimizer::

    forward (per table)                          rank 0                 rank 1
      ids ─► unique ─► sort by owner     uniq [a b | c]          uniq [b | c d]
      counts  ──all_to_all──►            recv counts [2, 1]      recv counts [1, 2]
      ids     ──all_to_all──►            serves a b b            serves c c d
                                         (unique a b, pin)       (unique c d, pin)
      rows    ◄─all_to_all──             W = rows of a b c       W = rows of b c d
    backward (store.step())
      W.grad  ──all_to_all──►  owner: index_add per id ─► fused optimizer ─► end_step
    dense parameters: all_reduce(SUM) of .grad (see collectives.all_reduce_gradients)

With a loss summed over samples, the sum of every rank's gradients is the gradient of the
union batch, so N ranks train to the same numbers as one rank fed the union of their
batches (up to float summation order). Every rank must run the same collectives in the same
order each step, so a rank without data trains an empty batch.

``DistributedStore`` offers what :class:`~embedding_store.module.StoreEmbeddingBag` and the
trainer use (``_lookup_unique``, ``register``, ``step``, ``version``, ``tables``), so models
built for a single store run over it; :class:`DistributedEmbeddingBag` is the same module
typed for it (and safe on empty batches).

>>> import tempfile, numpy as np, torch
>>> from embedding_store.collectives import single_process_group
>>> from embedding_store.config import StoreConfig, TableConfig, OptimizerConfig
>>> table = TableConfig("t", 4, OptimizerConfig("sgd", lr=1.0))
>>> with tempfile.TemporaryDirectory() as d, single_process_group():
...     with DistributedStore(StoreConfig(d, (table,), num_shards=2)) as store:
...         bag = DistributedEmbeddingBag(store, "t")
...         out = bag(torch.tensor([[1, 2], [2, 3]]))
...         out.sum().backward()
...         written = store.step()
...         rank_dirs = sorted(os.listdir(d))
>>> tuple(out.shape), written, store.version, rank_dirs
((2, 2, 4), 3, 1, ['rank-0000'])
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from embedding_store.collectives import Exchange, ExchangeStats, ProcessGroup, all_reduce_gradients
from embedding_store.config import StoreConfig, TableConfig
from embedding_store.dedup import unique, unique_inverse
from embedding_store.errors import (
    EmbeddingStoreError,
    InvalidIdsError,
    ShapeError,
    StoreClosedError,
    StoreNotOpenError,
)
from embedding_store.initializers import hash_ids
from embedding_store.module import StoreEmbeddingBag
from embedding_store.prefetch import PrefetchTicket
from embedding_store.store import EmbeddingStore
from embedding_store.tier import RowBlock
from embedding_store.types import BoolArray, FloatArray, IdArray

RANK_SALT = 0x0DD5_CA1E_7A2C_0D15
"""Salt of the id hash that picks a row's owner rank (not the shards' ``SHARD_SALT``)."""


class DistributedStoreError(EmbeddingStoreError, RuntimeError):
    """The distributed store was misused or its collectives could not run on a rank."""

    def __init__(self, rank: int | None, detail: str, table: str | None = None) -> None:
        self.rank = rank
        self.table = table
        where = "rank ?" if rank is None else f"rank {rank}"
        if table is not None:
            where += f", table {table!r}"
        super().__init__(f"{where}: {detail}")


def owner_of(ids: IdArray, world_size: int) -> IdArray:
    """The rank that owns each id in a world of ``world_size`` ranks.

    >>> owner_of(np.arange(6, dtype=np.int64), 1).tolist()
    [0, 0, 0, 0, 0, 0]
    >>> sorted(set(owner_of(np.arange(1000, dtype=np.int64), 3).tolist()))
    [0, 1, 2]
    """
    if world_size < 1:
        raise DistributedStoreError(None, f"world size must be >= 1, got {world_size}")
    if world_size == 1:
        return np.zeros(len(ids), dtype=np.int64)
    return (hash_ids(ids, RANK_SALT) % np.uint64(world_size)).astype(np.int64)


def rank_path(path: str, rank: int) -> str:
    """The directory of ``rank``'s local store under the distributed store's ``path``."""
    return os.path.join(path, f"rank-{rank:04d}")


@dataclass
class _Route:
    """How one lookup's ids travelled, kept for the step so the gradients go the same way."""

    table: str
    uniq: IdArray  # the requester's unique ids (the array given to _lookup_unique)
    order: IdArray  # positions of ``uniq`` sorted by owner rank
    send_counts: list[int]  # ids sent to each rank
    recv_counts: list[int]  # ids received from each rank
    served: IdArray  # owner side: unique ids asked of this rank by anyone
    inverse: IdArray  # owner side: received position -> index in ``served``
    weight: torch.Tensor | None = None  # set by register(): its .grad is sent back


@dataclass
class _StepRoutes:
    routes: list[_Route] = field(default_factory=list)


class DistributedStore:
    """An :class:`EmbeddingStore` per rank, rows owned by id hash, exchanged by all-to-all.

    Constructing it does no I/O and needs no process group; ``open()`` reads the rank and
    world size from ``group`` (default: the world, which must be initialised) and opens this
    rank's local store at ``<config.path>/rank-NNNN``.
    """

    def __init__(
        self,
        config: StoreConfig,
        group: ProcessGroup | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.group = group
        self.clock = clock
        self.exchange = Exchange(group)
        self._local: EmbeddingStore | None = None
        self._rank = -1
        self._world = 0
        self._step = _StepRoutes()
        self._closed = False
        self.dense_bytes = 0

    # -- lifecycle -----------------------------------------------------------
    def open(self) -> DistributedStore:
        """Join the group and open this rank's local store."""
        if self._closed:
            raise StoreClosedError(f"distributed store at {self.config.path!r}")
        if self._local is not None:
            return self
        if not dist.is_available() or not dist.is_initialized():
            raise DistributedStoreError(
                None, "torch.distributed is not initialised; call init_process_group first"
            )
        self._rank = int(dist.get_rank(self.group))
        self._world = int(dist.get_world_size(self.group))
        local_cfg = replace(self.config, path=rank_path(self.config.path, self._rank))
        self._local = EmbeddingStore(local_cfg, clock=self.clock).open()
        return self

    def close(self) -> None:
        """Flush and close this rank's local store (idempotent; no collective)."""
        if self._local is not None and not self._closed:
            self._local.close()
        self._closed = True

    def __enter__(self) -> DistributedStore:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- introspection -------------------------------------------------------
    def _check_open(self) -> EmbeddingStore:
        if self._closed:
            raise StoreClosedError(f"distributed store at {self.config.path!r}")
        if self._local is None:
            raise StoreNotOpenError(f"distributed store at {self.config.path!r}")
        return self._local

    @property
    def local(self) -> EmbeddingStore:
        """The local store of this rank (the rows it owns)."""
        return self._check_open()

    @property
    def rank(self) -> int:
        """The rank of this process (after ``open()``)."""
        self._check_open()
        return self._rank

    @property
    def world_size(self) -> int:
        """Ranks sharing the tables (after ``open()``)."""
        self._check_open()
        return self._world

    @property
    def version(self) -> int:
        """Steps completed (the same on every rank; still readable after ``close()``)."""
        return self._local.version if self._local is not None else 0

    @property
    def tables(self) -> tuple[TableConfig, ...]:
        """The tables (every rank has all of them, each holding its own rows)."""
        return self.config.tables

    @property
    def stats(self) -> ExchangeStats:
        """Calls, bytes and seconds of this rank's all-to-alls so far."""
        return self.exchange.stats

    def owned(self, ids: IdArray) -> BoolArray:
        """Which of ``ids`` this rank owns."""
        out: BoolArray = owner_of(ids, self.world_size) == self.rank
        return out

    # -- lookups -------------------------------------------------------------
    def _ids(self, table: str, ids: object) -> IdArray:
        if isinstance(ids, torch.Tensor):
            if ids.dtype != torch.int64:
                raise InvalidIdsError(table, f"got a tensor of {ids.dtype}")
            arr: IdArray = ids.detach().cpu().numpy()
        elif isinstance(ids, np.ndarray) and ids.dtype == np.int64:
            arr = ids
        else:
            raise InvalidIdsError(table, f"got {getattr(ids, 'dtype', type(ids))}")
        if arr.ndim != 1:
            raise InvalidIdsError(table, f"got shape {tuple(arr.shape)}")
        return arr

    def _dim(self, table: str) -> int:
        return self.config.table(table).dim  # UnknownTableError names the known tables

    def _route(self, table: str, uniq: IdArray) -> _Route:
        """Send ``uniq`` to their owners (two all-to-alls); returns the route both ways."""
        world = self.world_size
        owners = owner_of(uniq, world)
        order = np.argsort(owners, kind="stable").astype(np.int64)
        send_counts = np.bincount(owners, minlength=world).astype(np.int64)
        try:
            recv_counts = self.exchange.counts(send_counts)
            recv_ids = self.exchange.exchange(
                torch.from_numpy(np.ascontiguousarray(uniq[order])),
                send_counts.tolist(),
                recv_counts.tolist(),
            )
        except RuntimeError as err:
            raise DistributedStoreError(self._rank, f"id all-to-all failed: {err}", table) from err
        served, inverse = unique_inverse(recv_ids.numpy())
        return _Route(
            table, uniq, order, send_counts.tolist(), recv_counts.tolist(), served, inverse
        )

    def _lookup_unique(self, table: str, uniq: IdArray, pin: bool) -> FloatArray:
        """Rows of ``uniq`` (unique ids, any order) from their owners, as ``(len, dim)``.

        A collective: every rank calls it for the same tables in the same order. With
        ``pin`` the owners keep the rows in DRAM until the step ends.
        """
        dim = self._dim(table)
        route = self._route(table, uniq)
        rows = self.local._lookup_unique(table, route.served, pin)
        reply = torch.from_numpy(rows[route.inverse])
        try:
            got = self.exchange.exchange(
                reply.reshape(-1, dim), route.recv_counts, route.send_counts
            )
        except RuntimeError as err:
            raise DistributedStoreError(self._rank, f"row all-to-all failed: {err}", table) from err
        out = np.empty((len(uniq), dim), dtype=np.float32)
        out[route.order] = got.numpy()
        self._step.routes.append(route)
        return out

    def lookup(self, table: str, ids: object, pin: bool = True) -> torch.Tensor:
        """Embeddings of ``ids`` (duplicates allowed) as a float32 tensor (a collective)."""
        arr = self._ids(table, ids)
        uniq, inverse = unique_inverse(arr)
        out = self._lookup_unique(table, uniq, pin)
        return torch.from_numpy(out[inverse])

    def register(self, table: str, uniq_ids: IdArray, weight: torch.Tensor) -> None:
        """Attach the leaf tensor of a lookup's rows; ``step()`` sends its ``.grad`` home."""
        for route in reversed(self._step.routes):
            if route.table == table and route.uniq is uniq_ids and route.weight is None:
                route.weight = weight
                return
        raise DistributedStoreError(
            self._rank, "register() of ids that no lookup of this step returned", table
        )

    # -- updates -------------------------------------------------------------
    def _send_home(self, route: _Route, grads: torch.Tensor) -> int:
        """Send the gradients of ``route.uniq`` to their owners; apply what arrives here."""
        dim = self._dim(route.table)
        try:
            got = self.exchange.exchange(
                grads[torch.from_numpy(route.order)],
                route.send_counts,
                route.recv_counts,
            )
        except RuntimeError as err:
            raise DistributedStoreError(
                self._rank, f"gradient all-to-all failed: {err}", route.table
            ) from err
        if not len(route.served):
            return 0
        summed = torch.zeros((len(route.served), dim), dtype=torch.float32)
        summed.index_add_(0, torch.from_numpy(route.inverse), got.reshape(-1, dim))
        return self.local._apply_unique(route.table, route.served, summed.numpy())

    def step(self, worker: int | None = None) -> int:
        """Send every registered lookup's row gradients to their owners, apply, end the step.

        A collective (one all-to-all per registered lookup). Returns the rows this rank wrote.
        """
        written = 0
        for route in self._step.routes:
            if route.weight is None:
                continue
            grad = route.weight.grad
            if grad is None:
                grad = torch.zeros_like(route.weight)
            written += self._send_home(route, grad.detach().to(torch.float32).cpu())
        self._step = _StepRoutes()
        self.local.end_step(worker)
        return written

    def end_step(self, worker: int | None = None) -> None:
        """End the step without applying gradients (releases this rank's pins)."""
        self._step = _StepRoutes()
        self.local.end_step(worker)

    def apply_gradients(self, table: str, ids: object, grads: object) -> int:
        """Apply gradients of ``ids`` (duplicates summed) at their owners (a collective)."""
        arr = self._ids(table, ids)
        dim = self._dim(table)
        g = grads if isinstance(grads, torch.Tensor) else torch.from_numpy(np.asarray(grads))
        if g.dtype != torch.float32 or tuple(g.shape) != (len(arr), dim):
            raise ShapeError(table, f"gradients must be float32 ({len(arr)}, {dim})")
        uniq, inverse = unique_inverse(arr)
        summed = torch.zeros((len(uniq), dim), dtype=torch.float32)
        summed.index_add_(0, torch.from_numpy(inverse), g)
        route = self._route(table, uniq)
        return self._send_home(route, summed)

    def sync_dense_gradients(self, parameters: Iterable[torch.Tensor]) -> None:
        """Sum the dense parameters' gradients over the ranks (a collective all-reduce)."""
        try:
            self.dense_bytes += all_reduce_gradients(parameters, self.group)
        except RuntimeError as err:
            raise DistributedStoreError(self._rank, f"dense all-reduce failed: {err}") from err

    # -- prefetch and maintenance (this rank's rows; no collective) ----------
    def prefetch(self, batches: Sequence[Mapping[str, object]]) -> PrefetchTicket:
        """Load into DRAM the rows this rank owns among the ids of upcoming local batches.

        Rows that other ranks own are left to them (they do not see this rank's batches).
        """
        mine: list[dict[str, object]] = []
        for batch in batches:
            part: dict[str, object] = {}
            for table, ids in batch.items():
                arr = unique(self._ids(table, ids))
                part[table] = arr[self.owned(arr)]
            mine.append(part)
        return self.local.prefetch(mine)

    @contextmanager
    def step_boundary(self) -> Iterator[int]:
        """The step boundary of the local store (see ``EmbeddingStore.step_boundary``)."""
        with self.local.step_boundary() as version:
            yield version

    def flush(self) -> int:
        """Flush this rank's local store."""
        return self.local.flush()

    def state(self) -> dict[str, object]:
        """The small state of the local store (version, LFU epochs; versions agree on all ranks)."""
        return self.local.state()

    def export_rows(self, table: str, chunk: int = 65536) -> Iterator[tuple[IdArray, RowBlock]]:
        """Every row this rank owns."""
        return self.local.export_rows(table, chunk)

    def import_rows(self, table: str, ids: object, rows: RowBlock) -> None:
        """Write rows this rank owns; ids owned by other ranks are refused."""
        arr = self._ids(table, ids)
        if len(arr) and not self.owned(arr).all():
            raise DistributedStoreError(
                self._rank, f"{int((~self.owned(arr)).sum())} ids belong to other ranks", table
            )
        self.local.import_rows(table, arr, rows)

    def read_rows(self, table: str, ids: object) -> tuple[np.ndarray[Any, Any], RowBlock]:
        """Full rows of ``ids`` this rank owns (``found`` is False for others' ids)."""
        return self.local.read_rows(table, self._ids(table, ids))


class DistributedEmbeddingBag(StoreEmbeddingBag):
    """:class:`StoreEmbeddingBag` over a :class:`DistributedStore` (also on empty batches).

    Every rank must call it the same number of times per step, with whatever ids it has
    (possibly none): its forward is a collective.
    """

    def __init__(
        self, store: DistributedStore, table: str, mode: Literal["sum", "mean"] = "sum"
    ) -> None:
        super().__init__(cast(EmbeddingStore, store), table, mode)

    def forward(
        self,
        ids: torch.Tensor,
        offsets: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled embeddings ``(B, dim)``, or ``(B, F, dim)`` for a 2-D grid of ids."""
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64:
            raise InvalidIdsError(self.table, f"got {getattr(ids, 'dtype', type(ids))}")
        if offsets is None and lengths is None and ids.dim() != 2:
            raise ShapeError(self.table, "without offsets or lengths, ids must be (B, F)")
        if (offsets is not None or lengths is not None) and ids.dim() != 1:
            raise ShapeError(self.table, "with offsets or lengths, ids must be 1-D values")
        uniq, inverse = unique_inverse(ids.reshape(-1).detach().cpu().numpy())
        training = torch.is_grad_enabled() and self.training
        rows = self.store._lookup_unique(self.table, uniq, pin=training)
        weight = torch.from_numpy(rows)
        if training:
            weight.requires_grad_(True)
            self.store.register(self.table, uniq, weight)
        inv = torch.from_numpy(inverse.reshape(-1))
        if offsets is None and lengths is None:
            return weight.index_select(0, inv).view(ids.shape[0], ids.shape[1], weight.shape[1])
        if offsets is None:
            assert lengths is not None
            offsets = torch.zeros(len(lengths), dtype=torch.int64)
            offsets[1:] = torch.cumsum(lengths, 0)[:-1]
        return F.embedding_bag(inv, weight, offsets.to(torch.int64), mode=self.mode)


def distribute_bags(model: torch.nn.Module, store: DistributedStore) -> int:
    """Swap every :class:`StoreEmbeddingBag` inside ``model`` for a distributed one.

    For models built by code that creates plain bags (``pipeline.training.models.build_model``);
    returns how many were swapped.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, StoreEmbeddingBag) and not isinstance(
                child, DistributedEmbeddingBag
            ):
                setattr(parent, name, DistributedEmbeddingBag(store, child.table, child.mode))
                swapped += 1
    return swapped
