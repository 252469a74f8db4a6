"""``freshet bench embed-service``: lookups through the service beside a local store, and
the RSS of a replica that reads the service against one that holds a full copy.

::

    lookups   shards: real ``freshet embed-serve`` processes on loopback (1 shard, then 2)
              table:  ``--rows`` rows of dim ``--dim``, published as versions of <=250k rows
              batch:  4,096 distinct ids, Zipf(1.05) over the rows; ``--lookups`` batches
              client: ServiceClient.lookup(unique=True) (routing, version agreement, Arrow
                      buffers; distinct ids, as replicas and frozen tables send them)
              local:  EmbeddingStore.lookup(pin=False) of the same batches, same process
              both read every row once first, so both serve from DRAM
              targets p99 <= 5 ms and >= 1M rows/s per shard (1 shard, one client)
    replicas  a ServingModel (DeepFM, table ``users`` of ``--replica-rows`` rows) in a fresh
              process each: full copy (every row resident: DRAM unbounded, all rows read)
              vs ``embedding_service`` (2 shards, LFU cache ``--cache-rows``), after the same
              deltas and the same ``--requests`` request batches; target RSS <= 25% of full

``python -m benchmarks.embed_service_bench --child full|service ...`` is one replica.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from pipeline.embedservice.client import ServiceClient
from pipeline.embedservice.shard import RowUpdate, TableSchema
from pipeline.testing.embed_shards import ShardProcess, start_shards

BATCH = 4096
CHUNK = 250_000  # rows per published version (bounds the shards' transient memory)
TARGET_P99_MS = 5.0
TARGET_ROWS_PER_S = 1_000_000
TARGET_RSS_RATIO = 0.25


def _rows(start: int, stop: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.arange(start, stop, dtype=np.int64)
    emb = np.random.default_rng(start).uniform(-0.05, 0.05, (stop - start, dim)).astype(np.float32)
    return ids, emb


def _batches(rows: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        draw = np.unique((rng.zipf(1.05, BATCH * 3) - 1) % rows)
        if len(draw) < BATCH:
            draw = np.unique(np.concatenate([draw, rng.integers(0, rows, BATCH * 2)]))
        out.append(rng.permutation(draw)[:BATCH].astype(np.int64))
    return out


def _publish(client: ServiceClient, rows: int, dim: int) -> int:
    client.register(TableSchema("users", dim, seed=1, init_scale=0.05, owner="bench"))
    version = 0
    for start in range(0, rows, CHUNK):
        ids, emb = _rows(start, min(rows, start + CHUNK), dim)
        version += 1
        client.publish(RowUpdate("users", "bench", version, version - 1, ids, emb))
    return version


def _stats(seconds: list[float]) -> dict[str, float]:
    lat = np.array(seconds)
    return {
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "mean_ms": float(lat.mean() * 1e3),
        "rows_per_s": float(BATCH / lat.mean()),
    }


def lookup_bench(root: Path, shards: int, rows: int, dim: int, lookups: int) -> dict[str, Any]:
    """Service lookups through ``shards`` shard processes, and a local store beside them."""
    procs = start_shards(root / f"svc-{shards}", shards)
    try:
        client = ServiceClient([p.endpoint for p in procs])
        t0 = time.perf_counter()
        version = _publish(client, rows, dim)
        publish_s = time.perf_counter() - t0
        batches = _batches(rows, lookups + 50, seed=shards)
        for start in range(0, rows, 65536):  # every row read once: in DRAM, as in the local store
            client.lookup("users", np.arange(start, min(rows, start + 65536), dtype=np.int64))
        for b in batches[:50]:
            client.lookup("users", b, unique=True)  # warm-up: channels, buffers
        seconds = []
        for b in batches[50:]:
            t = time.perf_counter()
            got = client.lookup("users", b, unique=True)  # distinct ids, as replicas send
            seconds.append(time.perf_counter() - t)
            assert got.version == version and got.found.all()
        service = _stats(seconds)
        client.close()
    finally:
        for p in procs:
            p.stop()
    table = TableConfig("users", dim, OptimizerConfig("sgd", lr=1.0), seed=1)
    with EmbeddingStore(
        StoreConfig(str(root / f"local-{shards}"), (table,), num_shards=1)
    ) as store:
        for start in range(0, rows, CHUNK):
            ids, _ = _rows(start, min(rows, start + CHUNK), dim)
            store.lookup("users", ids, pin=False)
            store.end_step()
        for b in batches[:50]:
            store.lookup("users", b, pin=False)
        seconds = []
        for b in batches[50:]:
            t = time.perf_counter()
            store.lookup("users", b, pin=False)
            seconds.append(time.perf_counter() - t)
    local = _stats(seconds)
    return {
        "shards": shards,
        "rows": rows,
        "dim": dim,
        "lookups": lookups,
        "publish_seconds": publish_s,
        "service": service,
        "service_rows_per_s_per_shard": service["rows_per_s"] / shards,
        "local_store": local,
    }


# -- replicas -----------------------------------------------------------------
def _blueprint(dim: int, rows: Any = None) -> Any:
    from pipeline.features.spec import CategoricalSpec, FeatureSpec
    from pipeline.serving.model import Blueprint
    from pipeline.training.models import ModelSpec

    spec = FeatureSpec(sparse=(CategoricalSpec("user", "users", "user"),))
    model = ModelSpec(kind="deepfm", embedding_dim=dim, hidden=(16,), bottom=(), seed=0)
    return Blueprint(spec, model, num_shards=1, rows=rows)


def _rss() -> int:
    import psutil

    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _child(mode: str, rows: int, dim: int, requests: int, path: str, extra: list[str]) -> int:
    from embedding_store.allocator import tune_allocator
    from pipeline.publishing.delta import ModelDelta, TableDelta
    from pipeline.serving.model import ServingModel

    tune_allocator()  # as the freshet command does
    from pipeline.embedservice.tables import ServiceRows

    rows_source = None
    if mode == "service":
        endpoints, cache_rows = extra[0].split(","), int(extra[1])
        rows_source = ServiceRows(ServiceClient(endpoints), ["users"], cache_rows)
    model = ServingModel(_blueprint(dim, rows_source), Path(path) / "replica").open()
    rss_empty = _rss()
    now = datetime.now(tz=UTC)
    version = 0
    none = np.empty(0, np.int64)
    for start in range(0, rows, CHUNK):
        ids, emb = _rows(start, min(rows, start + CHUNK), dim)
        version += 1
        delta = ModelDelta(
            version, version - 1, now, now, version, (TableDelta("users", ids, emb, none),)
        )
        model.commit(model.prepare(delta))
        del ids, emb, delta
    view = model._model.bags["users"].store  # type: ignore[union-attr]
    if mode == "full":
        for start in range(0, rows, CHUNK):  # a full copy: every row resident in DRAM
            view._lookup_unique("users", np.arange(start, min(rows, start + CHUNK), dtype=np.int64))
    for b in _batches(rows, requests, seed=99):
        view._lookup_unique("users", np.sort(b))
    rss = _rss()
    out = {"mode": mode, "rss_bytes": rss, "rss_empty_bytes": rss_empty, "version": model.version}
    if mode == "full":
        st = model.store.stats("users")
        out["hot_rows"] = st.hot_rows
    else:
        assert rows_source is not None
        out["cached_rows"] = rows_source.cached_rows()
    out["local_rows"] = model.store.stats("users", count_cold=True).cold_rows
    Path(path, f"{mode}.json").write_text(json.dumps(out))
    os._exit(0)  # skip flushing the replica's store


def replica_bench(
    root: Path, rows: int, dim: int, requests: int, cache_rows: int
) -> dict[str, Any]:
    """RSS of a full-copy replica and of one on a 2-shard service, each in a fresh process."""
    from benchmarks.runner import python_env

    procs = start_shards(root / "svc-replica", 2)
    try:
        client = ServiceClient([p.endpoint for p in procs])
        _publish(client, rows, dim)
        client.close()
        results = {}
        for mode, extra in (
            ("full", []),
            ("service", [",".join(p.endpoint for p in procs), str(cache_rows)]),
        ):
            with tempfile.TemporaryDirectory(dir=root, prefix=f"replica-{mode}-") as tmp:
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks.embed_service_bench",
                    "--child",
                    mode,
                    str(rows),
                    str(dim),
                    str(requests),
                    tmp,
                    *extra,
                ]
                subprocess.run(cmd, env=python_env(), check=True)
                results[mode] = json.loads(Path(tmp, f"{mode}.json").read_text())
        shard_rss = [_proc_rss(p) for p in procs]
    finally:
        for p in procs:
            p.stop()
    ratio = results["service"]["rss_bytes"] / results["full"]["rss_bytes"]
    return {
        "rows": rows,
        "dim": dim,
        "requests": requests,
        "cache_rows": cache_rows,
        "full_copy": results["full"],
        "service_backed": results["service"],
        "rss_ratio": ratio,
        "service_shard_rss_bytes": shard_rss,
        "met": ratio <= TARGET_RSS_RATIO,
    }


def _proc_rss(p: ShardProcess) -> int:
    import psutil

    return int(psutil.Process(p.pid()).memory_info().rss)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``freshet bench embed-service``."""
    parser.add_argument("--rows", type=int, help="lookup table rows (default 1M, quick 100k)")
    parser.add_argument("--dim", type=int, default=16, help="embedding width (default 16)")
    parser.add_argument("--lookups", type=int, help="timed 4,096-id lookups (500, quick 100)")
    parser.add_argument("--replica-rows", type=int, help="replica table rows (10M, quick 200k)")
    parser.add_argument("--requests", type=int, default=200, help="4,096-id request batches")
    parser.add_argument("--cache-rows", type=int, default=100_000, help="replica LFU cache rows")
    parser.add_argument("--skip-replicas", action="store_true", help="lookups only")
    parser.add_argument("--skip-lookups", action="store_true", help="replica RSS only")


def run(args: argparse.Namespace) -> int:
    """``freshet bench embed-service``."""
    from benchmarks.machine import run_header
    from benchmarks.report import write_json

    out = Path(args.out)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    lookups = args.lookups or (100 if args.quick else 500)
    replica_rows = args.replica_rows or (200_000 if args.quick else 10_000_000)
    result = run_header("embed-service", args.quick)
    with tempfile.TemporaryDirectory(prefix="freshet-embed-bench-") as tmp:
        root = Path(tmp)
        result["lookups"] = (
            []
            if args.skip_lookups
            else [lookup_bench(root, m, rows, args.dim, lookups) for m in (1, 2)]
        )
        if not args.skip_replicas:
            result["replicas"] = replica_bench(
                root, replica_rows, args.dim, args.requests, args.cache_rows
            )
    result["targets"] = []
    if result["lookups"]:
        one = result["lookups"][0]
        result["targets"] = [
            {
                "name": "p99 of a 4,096-id lookup, 1 shard (ms)",
                "target": TARGET_P99_MS,
                "value": one["service"]["p99_ms"],
                "met": one["service"]["p99_ms"] <= TARGET_P99_MS,
            },
            {
                "name": "rows/s per shard, 1 shard, one client",
                "target": TARGET_ROWS_PER_S,
                "value": one["service_rows_per_s_per_shard"],
                "met": one["service_rows_per_s_per_shard"] >= TARGET_ROWS_PER_S,
            },
        ]
    if "replicas" in result:
        r = result["replicas"]
        result["targets"].append(
            {
                "name": "replica RSS / full-copy RSS",
                "target": TARGET_RSS_RATIO,
                "value": r["rss_ratio"],
                "met": r["met"],
            }
        )
    result["load_average_end"] = list(os.getloadavg())
    write_json(result, out)
    for lk in result["lookups"]:
        s, loc = lk["service"], lk["local_store"]
        print(
            f"{lk['shards']} shard(s), {lk['rows']:,} rows dim {lk['dim']}: service p50 "
            f"{s['p50_ms']:.2f} ms p99 {s['p99_ms']:.2f} ms {s['rows_per_s']:,.0f} rows/s "
            f"({lk['service_rows_per_s_per_shard']:,.0f}/shard); local store p50 "
            f"{loc['p50_ms']:.2f} ms p99 {loc['p99_ms']:.2f} ms {loc['rows_per_s']:,.0f} rows/s"
        )
    if "replicas" in result:
        r = result["replicas"]
        full_mib = r["full_copy"]["rss_bytes"] / 2**20
        print(
            f"replica RSS at {r['rows']:,} rows: full copy {full_mib:,.0f} MiB,"
            f" service-backed {r['service_backed']['rss_bytes'] / 2**20:,.0f} MiB = "
            f"{r['rss_ratio']:.1%} (target <= {TARGET_RSS_RATIO:.0%})"
        )
    for t in result["targets"]:
        print(
            f"  {t['name']}: {t['value']:,.3f} vs {t['target']:,} {'MET' if t['met'] else 'MISSED'}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 7 and sys.argv[1] == "--child":
        a = sys.argv[2:]
        sys.exit(_child(a[0], int(a[1]), int(a[2]), int(a[3]), a[4], a[5:]))
    sys.exit("usage: python -m benchmarks.embed_service_bench --child MODE ROWS DIM REQ DIR [...]")
