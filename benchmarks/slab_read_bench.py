"""CPU per cold row pair (read + write-back) from the slab tier, beside RocksDB's.

::

    one shard-table's lower tiers, ``rows`` rows of dim 64 (row-wise Adagrad, 292 B):
      rocksdb:   RocksTier      get(batch) ─► put(batch)     (multi-get, write batch)
      slab:      SlabChain      get(batch) ─► put(batch)     (slab holds every row)
    batch = ``batch`` random distinct ids, as one shard sees per training step
    price = process CPU seconds (user + system) / pairs          target <= 1.5 us a pair

``python -m benchmarks.slab_read_bench [--rows N] [--batches B] [--resident-mb M]``; the
slab runs once with its pages left mapped and, with ``--resident-mb``, once handing them back
(``madvise(MADV_DONTNEED)``) whenever that many MiB could be mapped.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedding_store.chain import SlabChain
from embedding_store.rocks import RocksShard
from embedding_store.rows import RowLayout
from embedding_store.slab import SlabTier
from embedding_store.tier import Tier

TARGET_US = 1.5
LAYOUT = RowLayout(64, 1)
CHUNK = 65536


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def fill(tier: Tier, rows: int) -> None:
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


def price(tier: Tier, rows: int, batch: int, batches: int, warmup: int = 5) -> dict[str, float]:
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
        modes: list[tuple[str, int | None]] = [("slab_resident", None)]
        if resident_mb is not None:
            modes.append((f"slab_release_{resident_mb}mb", resident_mb << 20))
        for name, resident in modes:
            slab = SlabTier(str(Path(d) / f"{name}.slab"), LAYOUT, rows, resident).open()
            chain = SlabChain(slab, rocks)
            fill(chain, rows)
            out[name] = {**price(chain, rows, batch, batches), "releases": slab.releases}
            chain.slab.close()
        db.close()
    for value in out.values():
        if isinstance(value, dict):
            value["meets_target"] = value["cpu_us_per_pair"] <= TARGET_US
    return out


def main(argv: list[str] | None = None) -> int:
    """Run and print the JSON (``--out`` also writes it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_500_000, help="rows in the tier")
    parser.add_argument("--batch", type=int, default=2600, help="ids per batch (one shard)")
    parser.add_argument("--batches", type=int, default=200, help="timed batches")
    parser.add_argument("--resident-mb", type=int, default=None, help="also hand pages back")
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args(argv)
    result = run_bench(args.rows, args.batch, args.batches, args.resident_mb)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
