"""CPU per cold row pair (read + write-back) from the slab tier, beside RocksDB's.

::

    one shard-table's lower tiers, ``rows`` rows of dim 64 (row-wise Adagrad, 292 B):
      rocksdb:   RocksTier      get(batch) ─► put(batch)     (multi-get, write batch)
      slab:      SlabChain      get(batch) ─► put(batch)     (slab holds every row)
    batch = ``batch`` random distinct ids, as one shard sees per training step
    price = process CPU seconds (user + system) / pairs          target <= 1.5 us a pair

``python -m benchmarks.slab_read_bench [--rows N] [--batches B] [--resident-mb M]``; the
slab runs once with its pages left mapped and, with ``--resident-mb``, once handing them back
(``madvise(MADV_DONTNEED)``) whenever that many MiB could be mapped. Beside the slab's own
modes, the same file is priced with the other ways of keeping its pages out of the process:

    slab_pio        positional I/O on the slab's file, no mapping: each batch's slots sorted,
                    adjacent slots coalesced into runs, one os.preadv / os.pwrite per run
                    (driven by map(): no bytecode loop), on the calling thread
    slab_pageout    pages mapped, then madvise(MADV_PAGEOUT) on the whole mapping each
                    ``--resident-mb``: the kernel writes dirty pages and drops them from the
                    page cache, so the next touch reads the device (what memory pressure does)

Each mode reports ``rss_after`` (RssAnon / RssFile of the process when it ends, bytes).

``--bookkeeping-rows N`` instead measures what a slab costs in DRAM (anon) for N rows split
over ``--shards`` slab tiers, as the store holds them: RssAnon before and after inserting N
random ids of a 10N-id space, beside ``SlabTier.nbytes()`` and the index's share.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from itertools import repeat
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from benchmarks.measure import rss_parts
from embedding_store.chain import SlabChain
from embedding_store.rocks import RocksShard
from embedding_store.rows import RowLayout
from embedding_store.slab import SlabTier
from embedding_store.tier import RowBlock
from embedding_store.types import BoolArray, IdArray, SlotArray

TARGET_US = 1.5
LAYOUT = RowLayout(64, 1)
CHUNK = 65536
MADV_PAGEOUT = 21  # Linux 5.4+; Python's mmap module does not name it


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class PairTier(Protocol):
    """What :func:`price` drives: batch reads and writes."""

    def get(self, ids: IdArray) -> tuple[BoolArray, RowBlock]: ...
    def put(self, ids: IdArray, rows: RowBlock) -> None: ...


def fill(tier: PairTier, rows: int) -> None:
    """Write ``rows`` rows (ids 0..rows-1) into ``tier``."""
    rng = np.random.default_rng(0)
    for start in range(0, rows, CHUNK):
        ids = np.arange(start, min(rows, start + CHUNK), dtype=np.int64)
        block = LAYOUT.empty(len(ids))
        for name in ("version", "last_step", "last_time", "freq", "epoch"):
            block[name] = 0
        block["emb"] = rng.uniform(-0.05, 0.05, (len(ids), 64)).astype(np.float32)
        block["state"] = 0.0
        tier.put(ids, block)


def price(tier: PairTier, rows: int, batch: int, batches: int, warmup: int = 5) -> dict[str, Any]:
    """CPU and wall microseconds per read + write-back pair over ``batches`` random batches."""
    rng = np.random.default_rng(1)
    draws = [np.unique(rng.integers(0, rows, batch)) for _ in range(batches + warmup)]
    for ids in draws[:warmup]:
        tier.put(ids, tier.get(ids)[1])
    pairs = sum(len(ids) for ids in draws[warmup:])
    cpu, wall = _cpu(), time.perf_counter()
    for ids in draws[warmup:]:
        _, got = tier.get(ids)
        got["version"] += 1
        tier.put(ids, got)
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    return {
        "pairs": pairs,
        "cpu_us_per_pair": cpu / pairs * 1e6,
        "wall_us_per_pair": wall / pairs * 1e6,
    }


def runs_of(slots: SlotArray) -> tuple[SlotArray, SlotArray]:
    """Sorted slots as runs of adjacent slots: ``(first slot, length)`` of each.

    >>> [x.tolist() for x in runs_of(np.array([7, 3, 4, 5, 9, 8]))]
    [[3, 7], [3, 3]]
    """
    s = np.sort(slots)
    start = np.flatnonzero(np.diff(s, prepend=s[:1] - 2) != 1)
    return s[start], np.diff(np.append(start, len(s)))


class PositionalSlab:
    """The slab's file read and written with positional I/O (no mapping), as a ``Tier``.

    Slots come from the slab's index (in DRAM); each batch does one ``preadv`` per run of
    adjacent slots (into one buffer) and one ``pwrite`` per run.
    """

    def __init__(self, slab: SlabTier) -> None:
        self.slab = slab
        self.fd = os.open(slab.path, os.O_RDWR)
        self.row_bytes = slab.layout.row_bytes
        self.syscalls = 0
        self.rows_read = 0

    def _plan(self, ids: IdArray) -> tuple[SlotArray, SlotArray, SlotArray]:
        slots = self.slab.find(ids)
        order = np.argsort(slots, kind="stable")
        first, length = runs_of(slots[order])
        return order, first, length

    def get(self, ids: IdArray) -> tuple[BoolArray, RowBlock]:
        """Rows of ``ids`` (all present), one read per run."""
        order, first, length = self._plan(ids)
        buf = bytearray(len(ids) * self.row_bytes)
        view = memoryview(buf)
        ends = np.cumsum(length) * self.row_bytes
        parts = [[view[a:b]] for a, b in zip((ends - length * self.row_bytes).tolist(),
                                             ends.tolist(), strict=True)]
        list(map(os.preadv, repeat(self.fd), parts, (first * self.row_bytes).tolist()))
        self.syscalls += len(first)
        self.rows_read += len(ids)
        out = self.slab.layout.empty(len(ids))
        out[order] = np.frombuffer(buf, dtype=self.slab.layout.dtype)
        return np.ones(len(ids), dtype=np.bool_), out

    def put(self, ids: IdArray, rows: RowBlock) -> None:
        """Overwrite the rows of ``ids`` (all present), one write per run."""
        order, first, length = self._plan(ids)
        data = memoryview(np.ascontiguousarray(rows[order]).tobytes())
        ends = np.cumsum(length) * self.row_bytes
        chunks = [data[a:b] for a, b in zip((ends - length * self.row_bytes).tolist(),
                                            ends.tolist(), strict=True)]
        list(map(os.pwrite, repeat(self.fd), chunks, (first * self.row_bytes).tolist()))
        self.syscalls += len(first)

    def close(self) -> None:
        """Close the file descriptor."""
        os.close(self.fd)


def _rss() -> dict[str, int]:
    parts = rss_parts()
    return {k: parts[k] for k in ("RssAnon", "RssFile") if k in parts}


def run_bench(rows: int, batch: int, batches: int, resident_mb: int | None) -> dict[str, Any]:
    """Price RocksDB's pair and the slab's (resident, and handing pages back if asked)."""
    out: dict[str, Any] = {
        "rows": rows,
        "batch": batch,
        "batches": batches,
        "row_bytes": LAYOUT.row_bytes,
        "target_us_per_pair": TARGET_US,
    }
    with tempfile.TemporaryDirectory(prefix="freshet-slab-bench-") as d:
        db = RocksShard(str(Path(d) / "rocks"), ["t"])
        db.open()
        rocks = db.tier("t", LAYOUT)
        fill(rocks, rows)
        db.flush()
        out["rocksdb"] = price(rocks, rows, batch, batches)
        out["rocksdb"]["rss_after"] = _rss()
        modes: list[tuple[str, int | None]] = [("slab_resident", None)]
        if resident_mb is not None:
            modes.append((f"slab_release_{resident_mb}mb", resident_mb << 20))
        for name, resident in modes:
            slab = SlabTier(str(Path(d) / f"{name}.slab"), LAYOUT, rows, resident).open()
            chain = SlabChain(slab, rocks)
            fill(chain, rows)
            out[name] = {**price(chain, rows, batch, batches), "releases": slab.releases,
                         "release_cpu_seconds_upper": slab.release_seconds,
                         "rss_after": _rss()}
            chain.slab.close()
        out["slab_pio"] = _price_pio(Path(d), rows, batch, batches)
        if resident_mb is not None:
            out[f"slab_pageout_{resident_mb}mb"] = _price_pageout(
                Path(d), rows, batch, max(10, batches // 10), resident_mb << 20)
        db.close()
    for value in out.values():
        if isinstance(value, dict):
            value["meets_target"] = value["cpu_us_per_pair"] <= TARGET_US
    return out


def _price_pio(d: Path, rows: int, batch: int, batches: int) -> dict[str, Any]:
    slab = SlabTier(str(d / "pio.slab"), LAYOUT, rows).open()
    fill(slab, rows)
    slab.release()  # the fill's pages leave the process; the file stays in the page cache
    pio = PositionalSlab(slab)
    try:
        res = price(pio, rows, batch, batches)
        res["syscalls_per_pair"] = pio.syscalls / pio.rows_read  # warm-up included
        res["rss_after"] = _rss()
    finally:
        pio.close()
        slab.close()
    return res


def _price_pageout(d: Path, rows: int, batch: int, batches: int, every: int) -> dict[str, Any]:
    slab = SlabTier(str(d / "pageout.slab"), LAYOUT, rows, every, MADV_PAGEOUT).open()
    fill(slab, rows)
    slab.release()
    res = price(slab, rows, batch, batches)
    res.update(releases=slab.releases, release_cpu_seconds_upper=slab.release_seconds,
               rss_after=_rss())
    slab.close()
    return res


def bookkeeping(rows: int, shards: int) -> dict[str, Any]:
    """DRAM (anon) bytes of ``shards`` slab tiers holding ``rows`` rows in all."""
    import gc

    rng = np.random.default_rng(0)
    ids = rng.permutation(10 * rows)[:rows].astype(np.int64)
    with tempfile.TemporaryDirectory(prefix="freshet-slab-bk-") as d:
        before = rss_parts().get("RssAnon", 0)
        tiers = []
        for s in range(shards):
            part = ids[s::shards]
            tier = SlabTier(str(Path(d) / f"s{s}.slab"), LAYOUT, len(part)).open()
            tiers.append(tier)
            for start in range(0, len(part), CHUNK):
                chunk = part[start : start + CHUNK]
                block = LAYOUT.empty(len(chunk))
                block["freq"], block["epoch"] = 1.0, 0
                tier.insert(chunk, block)
            tier.release()  # the file's pages leave the process: only DRAM bookkeeping stays
        gc.collect()
        after = rss_parts().get("RssAnon", 0)
        out = {
            "rows": rows,
            "shards": shards,
            "anon_delta_bytes": after - before,
            "anon_bytes_per_row": (after - before) / rows,
            "nbytes": sum(t.nbytes() for t in tiers),
            "index_nbytes": sum(t._index.nbytes() for t in tiers),
        }
        for tier in tiers:
            tier.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Run and print the JSON (``--out`` also writes it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_500_000, help="rows in the tier")
    parser.add_argument("--batch", type=int, default=2600, help="ids per batch (one shard)")
    parser.add_argument("--batches", type=int, default=200, help="timed batches")
    parser.add_argument("--resident-mb", type=int, default=None, help="also hand pages back")
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--bookkeeping-rows", type=int, help="only measure DRAM per slab row")
    parser.add_argument("--shards", type=int, default=4, help="slab tiers (with the above)")
    args = parser.parse_args(argv)
    if args.bookkeeping_rows:
        result = bookkeeping(args.bookkeeping_rows, args.shards)
    else:
        result = run_bench(args.rows, args.batch, args.batches, args.resident_mb)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
