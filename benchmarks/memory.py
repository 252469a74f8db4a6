"""``freshet bench memory``: DRAM bytes per hot row against the row's raw bytes.

::

    child process: open an all-DRAM store (dim 64, row-wise Adagrad, 4 shards), empty
                   RSS_0 ─► insert N rows (lookups of ids 0..N-1 in chunks, the store's
                   own path) ─► RSS_N         bytes per row = (RSS_N - RSS_0) / N
    target: bytes per row <= 1.5 x RowLayout(dim, state_dim).row_bytes

The raw bytes of a row are its embedding, optimizer state and metadata (version, last
step, last time, LFU count and epoch) as laid out in ``embedding_store.rows``; what the
DRAM tier adds (slot arrays for id, live, dirty, pins; the hash index; spare capacity)
and what the allocator keeps of the lookups' temporaries is the overhead measured here.
The full run repeats the measurement, each in a fresh process, for lookups of 4096,
16384 and 65536 ids at a time (the headline): the temporaries, and so the RSS, grow with
the chunk.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

TARGET_RATIO = 1.5
DIM = 64
CHECKPOINTS = 4
HEADLINE_CHUNK = 65536
CHUNKS = (4096, 16384, HEADLINE_CHUNK)


def measure_rows(rows: int, path: str, chunk: int, num_shards: int = 4) -> dict[str, Any]:
    """In this process: RSS of an empty all-DRAM store, then after inserting ``rows`` rows."""
    import numpy as np

    from benchmarks import measure
    from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
    from embedding_store.rows import RowLayout

    table = TableConfig("emb", DIM, OptimizerConfig("rowwise_adagrad"), hot_rows=None)
    store = EmbeddingStore(StoreConfig(path, (table,), num_shards=num_shards)).open()
    ids = np.arange(rows, dtype=np.int64)
    gc.collect()
    rss_empty = measure.current_rss_bytes()
    measure.reset_peak_rss()
    curve: list[dict[str, int]] = []
    marks = {rows * (k + 1) // CHECKPOINTS for k in range(CHECKPOINTS)}
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        store.lookup("emb", ids[start:stop], pin=False)
        store.end_step()
        if any(start < m <= stop for m in marks):
            gc.collect()
            curve.append({"rows": stop, "rss_bytes": measure.current_rss_bytes()})
    gc.collect()
    rss_full = measure.current_rss_bytes()
    trimmed = _malloc_trim()
    rss_trimmed = measure.current_rss_bytes() if trimmed else None
    hot = store.stats("emb").hot_rows
    row_bytes = RowLayout(DIM, table.state_dim).row_bytes
    per_row = (rss_full - rss_empty) / rows
    half = curve[len(curve) // 2 - 1] if len(curve) >= 2 else None
    marginal = (
        (curve[-1]["rss_bytes"] - half["rss_bytes"]) / (curve[-1]["rows"] - half["rows"])
        if half
        else None
    )
    return {
        "rows": rows,
        "insert_chunk": chunk,
        "hot_rows": hot,
        "num_shards": num_shards,
        "dim": DIM,
        "optimizer": "rowwise_adagrad",
        "row_bytes": row_bytes,
        "rss_empty_bytes": rss_empty,
        "rss_full_bytes": rss_full,
        "peak_rss_during_insert_bytes": measure.peak_rss_since_reset(),
        "rss_bytes_per_row": per_row,
        "ratio": per_row / row_bytes,
        "target_ratio": TARGET_RATIO,
        "met": per_row / row_bytes <= TARGET_RATIO,
        "marginal_bytes_per_row_second_half": marginal,
        "diagnostic_rss_after_malloc_trim_bytes": rss_trimmed,
        "curve": curve,
    }


def _malloc_trim() -> bool:
    """Ask glibc to return free heap memory (diagnostic only: shows allocator retention)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def run_memory_bench(out: Path, quick: bool, rows: int | None = None) -> dict[str, Any]:
    """Measure in a fresh process; write ``out`` and its PNG; returns the result."""
    from benchmarks.machine import run_header
    from benchmarks.plot import plot_memory
    from benchmarks.report import write_json
    from benchmarks.runner import python_env

    rows = rows or (200_000 if quick else 1_000_000)
    result = run_header("memory", quick)
    by_chunk = []
    for chunk in (HEADLINE_CHUNK,) if quick else CHUNKS:
        with tempfile.TemporaryDirectory(prefix="freshet-memory-") as tmp:
            cmd = [sys.executable, "-m", "benchmarks.memory", "--child", str(rows), str(chunk), tmp]
            subprocess.run(cmd, env=python_env(), check=True)
            by_chunk.append(json.loads((Path(tmp) / "result.json").read_text(encoding="utf-8")))
    headline = next(r for r in by_chunk if r["insert_chunk"] == HEADLINE_CHUNK)
    result.update(headline)
    result["by_insert_chunk"] = [
        {
            k: r[k]
            for k in (
                "insert_chunk",
                "rss_bytes_per_row",
                "ratio",
                "met",
                "marginal_bytes_per_row_second_half",
                "diagnostic_rss_after_malloc_trim_bytes",
                "rss_empty_bytes",
            )
        }
        for r in by_chunk
    ]
    result["notes"] = [
        "rows inserted through store.lookup (pin=False) in chunks of insert_chunk ids, into an "
        "all-DRAM store (4 shards, dim 64, row-wise Adagrad); a fresh process per chunk size",
        "RSS from psutil after gc; delta against the same store empty; the headline (and the "
        f"target) uses insert_chunk={HEADLINE_CHUNK}",
        "row_bytes = RowLayout(dim, state_dim).row_bytes: metadata + embedding + state",
        "diagnostic_rss_after_malloc_trim_bytes: RSS after glibc malloc_trim(0), to show how much "
        "is freed memory the allocator kept; not used for the target",
        "the child calls embedding_store.allocator.tune_allocator() first, as the freshet "
        "command does (fixed 1 MiB mmap threshold, 2 arenas); FRESHET_MALLOC_TUNING=0 measures "
        "glibc's defaults (2.01x at the headline chunk on 2026-11-23)",
    ]
    result["load_average_end"] = list(os.getloadavg())
    write_json(result, out)
    plot_memory(result, out.with_suffix(".png"))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``freshet bench memory``."""
    parser.add_argument("--rows", type=int, help="hot rows to insert (default 1M, quick 200k)")


def run(args: argparse.Namespace) -> int:
    """``freshet bench memory``."""
    from benchmarks.report import mib

    out = Path(args.out)
    r = run_memory_bench(out, args.quick, args.rows)
    print(
        f"{r['rows']:,} hot rows: RSS {mib(r['rss_empty_bytes'])} -> {mib(r['rss_full_bytes'])}, "
        f"{r['rss_bytes_per_row']:.1f} B/row vs raw row {r['row_bytes']} B = {r['ratio']:.2f}x "
        f"(target <= {TARGET_RATIO}x) {'MET' if r['met'] else 'MISSED'}"
    )
    for c in r["by_insert_chunk"]:
        print(
            f"  insert chunk {c['insert_chunk']:>6}: {c['rss_bytes_per_row']:.1f} B/row = "
            f"{c['ratio']:.2f}x {'MET' if c['met'] else 'MISSED'}"
        )
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _child(argv: list[str]) -> int:
    from embedding_store.allocator import tune_allocator

    tune_allocator()  # as the freshet command does (FRESHET_MALLOC_TUNING=0: glibc defaults)
    rows, chunk, tmp = int(argv[0]), int(argv[1]), argv[2]
    result = measure_rows(rows, os.path.join(tmp, "store"), chunk)
    Path(tmp, "result.json").write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        code = _child(sys.argv[2:])
        sys.stdout.flush()
        os._exit(code)  # skip the store's final flush of every row
    sys.exit("usage: python -m benchmarks.memory --child ROWS CHUNK DIR")
