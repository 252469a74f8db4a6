"""Freshet's store behind ``StoreEmbeddingBag``: tiered (DRAM budget) or all-DRAM.

::

    prepare:  import every id's row into RocksDB (store.import_rows, ascending ids)
              load the hot set: the ``hot_rows`` most popular ids (all ids when all-DRAM)
              by lookups, so the run starts where LFU would settle
    step i:   prefetch(batch i+K) ─► wait(ticket i) ─► bag(ids) ─► MLP ─► backward
              ─► dense step ─► store.step() ─► release(ticket i)

Pre-warm rows are random values in [-0.05, 0.05] written with ``import_rows`` (a table that
was trained before); creating them through lookups would run the store's deterministic
initializer for every row, which is not what a steady-state step does.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from benchmarks.systems.base import SPARSE_LR, DenseHead, SystemContext, id_chunks, random_rows
from benchmarks.workload import Workload
from embedding_store import (
    EmbeddingStore,
    OptimizerConfig,
    PrefetchTicket,
    StoreConfig,
    StoreEmbeddingBag,
    TableConfig,
)
from embedding_store.rows import RowLayout

TABLE = "emb"
IMPORT_CHUNK = 65_536


class FreshetSystem:
    """One Freshet store; ``hot_fraction=None`` keeps every row in DRAM.

    ``slab_fraction`` adds a slab (SSD) tier of that share of the ids between DRAM and
    RocksDB (``freshet_3tier``); its pre-warm loads the next most popular ids into it.
    """

    def __init__(
        self,
        ctx: SystemContext,
        hot_fraction: float | None = 0.1,
        lookahead: int = 2,
        num_shards: int = 4,
        prewarm: Literal["all", "hot", "none"] = "all",
        store_path: str | None = None,
        slab_fraction: float | None = None,
    ) -> None:
        self.ctx = ctx
        self.hot_fraction = hot_fraction
        self.lookahead = lookahead if hot_fraction is not None else 0
        self.num_shards = num_shards
        self.prewarm = prewarm
        w = ctx.workload
        self.hot_rows = None if hot_fraction is None else max(1, int(w.num_ids * hot_fraction))
        self.slab_rows = (
            None if slab_fraction is None else max(1, int(w.num_ids * slab_fraction))
        )
        self.table = replace(table_config(w.dim, self.hot_rows), slab_rows=self.slab_rows)
        path = store_path or str(ctx.workdir / "store")
        self.config = StoreConfig(path, (self.table,), num_shards=num_shards)
        self.store = EmbeddingStore(self.config)
        self.bag = StoreEmbeddingBag(self.store, TABLE)
        self.dense = DenseHead(w)
        self._tickets: deque[tuple[int, PrefetchTicket]] = deque()
        self._issued = 0
        layout = RowLayout(w.dim, self.table.state_dim)
        self.notes = [
            f"{num_shards} shards, row-wise Adagrad (lr {SPARSE_LR}), row of {layout.row_bytes} B",
            "one table shared by all features; ids of every feature from one Zipf, no offsets",
            {
                "all": "pre-warm: every id's row imported into RocksDB, then the hot set loaded",
                "hot": "pre-warm: the store directory (built beforehand by import_rows) holds "
                "every id's row; the hot set is loaded by lookups",
                "none": "no pre-warm: rows are created on first sight",
            }[prewarm],
        ]
        if self.lookahead:
            self.notes.append(f"look-ahead prefetch of the next {self.lookahead} batches")
        if self.slab_rows:
            self.notes.append(
                f"slab tier of {self.slab_rows} rows between DRAM and RocksDB (memory-mapped "
                f"file under the store directory); pre-warm loads the next most popular ids "
                f"into it"
            )

    def prepare(self) -> None:
        """Open the store, import every row (``all``), load the hot set (``all``, ``hot``)."""
        store = self.store
        store.open()
        if self.prewarm == "all":
            import_all_rows(store, self.ctx.workload)
        if self.prewarm in ("all", "hot") and self.slab_rows and self.hot_rows:
            # lookups pass the slab's share through DRAM; end_step evicts it into the slab
            warm = self.ctx.ranked_ids[self.hot_rows : self.hot_rows + self.slab_rows]
            for start in range(0, len(warm), IMPORT_CHUNK):
                store.lookup(TABLE, np.sort(warm[start : start + IMPORT_CHUNK]), pin=False)
                store.end_step()
            store.demote(TABLE, store.stats(TABLE).hot_rows)  # DRAM is for the hot set
        if self.prewarm in ("all", "hot"):
            hot = self.ctx.ranked_ids[: self.hot_rows] if self.hot_rows else self.ctx.ranked_ids
            if self.hot_rows is None or self.hot_rows >= len(hot):
                hot = np.sort(hot)  # every id: ascending reads RocksDB in key order
            for start in range(0, len(hot), IMPORT_CHUNK):
                part = np.ascontiguousarray(hot[start : start + IMPORT_CHUNK])
                store.lookup(TABLE, part, pin=False)
                store.end_step()

    def _issue(self, upto: int) -> None:
        n = len(self.ctx.batches)
        while self._issued < min(upto, n):
            ids = self.ctx.batches.grid(self._issued).reshape(-1)
            self._tickets.append((self._issued, self.store.prefetch([{TABLE: ids}])))
            self._issued += 1

    def train_step(self, i: int) -> float:
        """Train batch ``i`` (prefetching ``lookahead`` batches ahead when tiered)."""
        ticket = None
        if self.lookahead:
            self._issue(i + 1 + self.lookahead)
            while self._tickets and self._tickets[0][0] < i:  # batches skipped: drop their pins
                self._tickets.popleft()[1].release()
            if self._tickets and self._tickets[0][0] == i:
                ticket = self._tickets.popleft()[1]
                ticket.wait()
        batches = self.ctx.batches
        emb = self.bag(torch.from_numpy(batches.grid(i)))
        loss = self.dense.backward(emb, batches.label(i))
        self.store.step()
        if ticket is not None:
            ticket.release()
        return loss

    def counters(self) -> dict[str, float]:
        """Lookup hits and misses, RocksDB reads (step or prefetch), evictions; stall seconds."""
        s = self.store.stats(TABLE)
        return {
            "hits": float(s.hits),
            "misses": float(s.misses),
            "cold_reads": float(s.cold_reads),
            "prefetched": float(s.prefetched),
            "evicted": float(s.evicted),
            "written_back": float(s.written_back),
            "slab_rows": float(s.slab_rows),
            "slab_demoted": float(s.slab_demoted),
            "prefetch_stall_seconds": float(self.store.prefetch_stall_seconds),
        }

    def quiesce(self) -> None:
        """Wait for every issued prefetch to land (polling ``done``: no stall is recorded)."""
        while not all(t.done for _, t in self._tickets):
            time.sleep(0.0005)

    def finish(self) -> dict[str, Any]:
        """Release pending tickets; the store is not closed (its final flush is not measured)."""
        while self._tickets:
            self._tickets.popleft()[1].release()
        s = self.store.stats(TABLE)
        return {"hot_rows": s.hot_rows, "hot_budget_rows": self.hot_rows, "shards": self.num_shards,
                "slab_rows": s.slab_rows, "slab_budget_rows": self.slab_rows}


def table_config(dim: int, hot_rows: int | None) -> TableConfig:
    """The benchmark's one table: row-wise Adagrad, ``hot_rows`` DRAM budget."""
    return TableConfig(
        TABLE, dim, OptimizerConfig("rowwise_adagrad", lr=SPARSE_LR), hot_rows=hot_rows
    )


def import_all_rows(store: EmbeddingStore, workload: Workload) -> None:
    """Write a row for every id into RocksDB (random embeddings, zero optimizer state)."""
    table = store.config.table(TABLE)
    layout = RowLayout(workload.dim, table.state_dim)
    rng = np.random.default_rng(workload.seed + 1)
    for ids in id_chunks(workload.num_ids, IMPORT_CHUNK):
        rows = layout.empty(len(ids))
        for name in ("version", "last_step", "last_time", "freq", "epoch"):
            rows[name] = 0
        rows["emb"] = random_rows(rng, len(ids), workload.dim)
        rows["state"] = 0.0
        store.import_rows(TABLE, ids, rows)
    store.truncate_write_log(store.version)  # imports are not training writes


def build_store(path: Path, workload: Workload, num_shards: int = 4) -> None:
    """A closed, flushed store directory holding a row for every id of ``workload``."""
    cfg = StoreConfig(str(path), (table_config(workload.dim, None),), num_shards=num_shards)
    with EmbeddingStore(cfg) as store:
        import_all_rows(store, workload)


def clone_store(src: Path, dst: Path) -> None:
    """Copy a closed store directory; RocksDB's immutable ``.sst`` files are hard-linked.

    This is how RocksDB's own checkpoints copy a database: SST files are never modified in
    place, so each clone can be trained (and compacted) without touching the others.
    """
    for dirpath, _, files in os.walk(src):
        target = dst / Path(dirpath).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            if name.endswith(".sst"):
                os.link(Path(dirpath, name), target / name)
            else:
                shutil.copy2(Path(dirpath, name), target / name)
