"""Checkpoint costs: an incremental checkpoint after 1% of rows were written vs a full one.

::

    import N rows in bulk (dim 16, row-wise Adagrad, DRAM budget 1% of rows: mostly cold)
      ─► full checkpoint (write_full: rows stream to disk inside the step boundary)
      ─► train steps writing 1% of the rows ─► incremental checkpoint (write_incremental)
      ─► train 1% more ─► incremental checkpoint on the background thread (submit_incremental:
         how long training is held off vs how long the write takes)
      ─► verify the chain, restore it into a fresh store (timed), spot-check rows

Target (issue 4): the incremental checkpoint costs <= 10% of the full one, in time and bytes.
N is 10M (``--quick``: 1M; ``--rows`` overrides). ``python -m benchmarks.checkpoint_bench
--quick --out FILE.json`` runs it alone; ``freshet bench`` will register it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import run_header
from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from embedding_store.rows import RowLayout
from operators.checkpoint.manager import CheckpointManager

log = logging.getLogger(__name__)

TABLE = "emb"
TARGET_RATIO = 0.10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the checkpoint benchmark (``--quick``/``--out`` come from the caller)."""
    parser.add_argument("--rows", type=int, default=None, help="rows in the store")
    parser.add_argument("--dim", type=int, default=16, help="embedding dimension")
    parser.add_argument(
        "--written-fraction", type=float, default=0.01, help="share of rows written between"
    )
    parser.add_argument("--shards", type=int, default=4, help="store shards")
    parser.add_argument("--work-dir", default=None, help="where the store and checkpoints go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")


def _store(path: Path, rows: int, dim: int, shards: int) -> EmbeddingStore:
    table = TableConfig(
        TABLE, dim, OptimizerConfig("rowwise_adagrad", lr=0.05), hot_rows=max(rows // 100, 1)
    )
    return EmbeddingStore(StoreConfig(str(path), (table,), num_shards=shards)).open()


def _import(store: EmbeddingStore, rows: int, dim: int) -> float:
    """Bulk-import ``rows`` cold rows (version 1); returns seconds."""
    layout = RowLayout(dim, store.config.table(TABLE).state_dim)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    chunk = 1 << 20
    for start in range(0, rows, chunk):
        ids = np.arange(start, min(start + chunk, rows), dtype=np.int64)
        block = layout.empty(len(ids))
        block["emb"] = rng.uniform(-0.05, 0.05, (len(ids), dim)).astype(np.float32)
        block["state"] = 0.0
        block["version"] = 1
        block["last_step"] = 1
        block["last_time"] = 0.0
        block["freq"] = 1.0
        block["epoch"] = 0
        store.import_rows(TABLE, ids, block)
    store.load_state({"version": 1, "epochs": {TABLE: 0}})
    store.flush()
    return time.perf_counter() - t0


def _train(store: EmbeddingStore, rows: int, count: int, seed: int) -> float:
    """Steps that write ``count`` distinct random rows (batches of 8192); returns seconds."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(rows, size=count, replace=False).astype(np.int64)
    t0 = time.perf_counter()
    for start in range(0, count, 8192):
        batch = ids[start : start + 8192]
        emb = store.lookup(TABLE, batch)
        store.apply_gradients(TABLE, batch, (emb * 0.1).numpy())
        store.end_step()
    return time.perf_counter() - t0


def run_bench(rows: int, dim: int, fraction: float, shards: int, work: Path) -> dict[str, Any]:
    """Measure; returns the result dict (without the header)."""
    dense = {"mlp/w": np.zeros((256, 128), np.float32)}
    written = max(int(rows * fraction), 1)
    manager = CheckpointManager(str(work / "ckpt"), retention=10)
    out: dict[str, Any] = {"rows": rows, "dim": dim, "rows_written": written, "shards": shards}
    store = _store(work / "store", rows, dim, shards)
    try:
        out["import_s"] = _import(store, rows, dim)
        log.info("imported %d rows in %.1f s", rows, out["import_s"])

        t0 = time.perf_counter()
        full = manager.write_full(store, dense, {"events/0": 0}, "bench")
        out["full"] = {"seconds": time.perf_counter() - t0, "bytes": full.bytes, "rows": full.rows}
        log.info("full checkpoint: %s", out["full"])

        out["train_s"] = _train(store, rows, written, seed=1)
        t0 = time.perf_counter()
        incr = manager.write_incremental(store, dense, {"events/0": 1}, "bench")
        out["incremental"] = {
            "seconds": time.perf_counter() - t0,
            "bytes": incr.bytes,
            "rows": incr.rows,
        }
        log.info("incremental checkpoint: %s", out["incremental"])

        _train(store, rows, written, seed=2)
        t0 = time.perf_counter()
        handle = manager.submit_incremental(store, dense, {"events/0": 2}, "bench")
        returned = time.perf_counter() - t0
        tip = handle.result()
        out["incremental_background"] = {
            "training_held_s": handle.capture_seconds,
            "submit_returned_s": returned,
            "committed_s": time.perf_counter() - t0,
            "bytes": tip.bytes,
            "rows": tip.rows,
        }
        sample = np.random.default_rng(3).choice(rows, 2000, replace=False).astype(np.int64)
        _, want = store.read_rows(TABLE, sample)
    finally:
        store.close()

    t0 = time.perf_counter()
    problems = manager.verify(tip.id)
    out["verify_s"] = time.perf_counter() - t0
    assert not problems, problems
    fresh = _store(work / "restored", rows, dim, shards)
    try:
        t0 = time.perf_counter()
        state = manager.restore(fresh, tip.id, verify=False)
        out["restore_s"] = time.perf_counter() - t0
        found, got = fresh.read_rows(TABLE, sample)
        out["restore_exact_on_sample"] = bool(found.all() and got.tobytes() == want.tobytes())
        out["restored_version"] = state.version
    finally:
        fresh.close()
    shutil.rmtree(work / "restored", ignore_errors=True)

    time_ratio = out["incremental"]["seconds"] / out["full"]["seconds"]
    bytes_ratio = out["incremental"]["bytes"] / out["full"]["bytes"]
    out["targets"] = [
        {
            "name": "incremental vs full, seconds",
            "ratio": time_ratio,
            "bound": TARGET_RATIO,
            "met": time_ratio <= TARGET_RATIO,
        },
        {
            "name": "incremental vs full, bytes",
            "ratio": bytes_ratio,
            "bound": TARGET_RATIO,
            "met": bytes_ratio <= TARGET_RATIO,
        },
    ]
    manager.close()
    return out


def _summary(result: dict[str, Any]) -> str:
    r = result
    lines = [
        f"checkpoint benchmark: {r['rows']:,} rows (dim {r['dim']}), "
        f"{r['rows_written']:,} written between checkpoints",
        f"  import             {r['import_s']:8.2f} s",
        f"  full checkpoint    {r['full']['seconds']:8.2f} s  {r['full']['bytes'] / 1e6:10.1f} MB",
        f"  incremental        {r['incremental']['seconds']:8.2f} s  "
        f"{r['incremental']['bytes'] / 1e6:10.1f} MB",
        f"  incremental (bg)   training held {r['incremental_background']['training_held_s']:.3f}"
        f" s, committed after {r['incremental_background']['committed_s']:.2f} s",
        f"  verify chain       {r['verify_s']:8.2f} s",
        f"  restore chain      {r['restore_s']:8.2f} s  (exact on sample: "
        f"{r['restore_exact_on_sample']})",
    ]
    for t in r["targets"]:
        mark = "met" if t["met"] else "MISSED"
        lines.append(f"  target {t['name']}: {t['ratio']:.4f} <= {t['bound']} {mark}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run, print a summary, save JSON to ``args.out``; 0 unless the run itself fails."""
    rows = args.rows or (1_000_000 if args.quick else 10_000_000)
    base = Path(args.work_dir) if args.work_dir else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="freshet-ckpt-bench-", dir=base))
    try:
        result = run_header("checkpoint", bool(args.quick))
        result.update(run_bench(rows, args.dim, args.written_fraction, args.shards, work))
    except Exception:
        log.exception("checkpoint benchmark failed")
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(_summary(result))
    print(f"saved {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.checkpoint_bench [--quick] --out FILE.json``."""
    parser = argparse.ArgumentParser(prog="checkpoint_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1M rows instead of 10M")
    parser.add_argument("--out", required=True, help="result JSON path")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
