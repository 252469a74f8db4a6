"""``freshet bench serve``: freshness, replica throughput and latency, delta bytes.

Three measurements, on one machine (trainer, broker, replica and load generator share it):

1. Serving: a replica (real HTTP, keep-alive clients posting batches of 256 events) measured
   in three phases of equal length: *idle* (no training), *training* (a trainer running flat
   out, nothing published: the same CPU contention without deltas) and *publishing* (the
   trainer publishes a version every second: deltas being applied). Samples/s, p50/p99 latency.
2. Freshness in the publishing phase: for every version applied from a delta, the time from
   the end of the training step that produced it to the moment it serves (p50/p99/max).
3. Delta bytes against rows changed for two table sizes: bytes follow the rows, not the table.

``--servers uvicorn,stdlib`` (the default) runs measurement 1 once per HTTP server, in the same
run: the replica's server (Starlette on uvicorn, :mod:`pipeline.serving.http`) and, as the
baseline, the standard-library threading server it replaced (:mod:`benchmarks.stdlib_http`).

``python -m benchmarks.serve_bench --quick --out serve.json`` runs it without the ``freshet``
command line (the quick mode takes a few minutes).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import run_header

log = logging.getLogger(__name__)

BATCH = 256


@dataclass(frozen=True)
class Sizes:
    phase_s: float
    warmup_s: float
    train_batch: int
    table_rows: tuple[int, int]
    rows_changed: tuple[int, ...]
    embedding_dim: int


QUICK = Sizes(8.0, 2.0, 512, (20_000, 200_000), (100, 1_000, 10_000), 16)
FULL = Sizes(30.0, 5.0, 512, (100_000, 1_000_000), (100, 1_000, 10_000, 100_000), 16)


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
        "n": len(values),
    }


class Client(threading.Thread):
    """Posts one body in a loop on a keep-alive connection; records latencies while measuring."""

    def __init__(self, host: str, port: int, body: bytes) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.body = host, port, body
        self.latencies: list[float] = []
        self.failures = 0
        self.measuring = threading.Event()
        self.stop = threading.Event()
        self.versions: set[int] = set()

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", self.body, headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                self.failures += 1
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                continue
            dt = time.perf_counter() - t0
            if resp.status != 200:
                self.failures += 1
                time.sleep(0.01)
                continue
            if self.measuring.is_set():
                self.latencies.append(dt)
                self.versions.add(json.loads(data)["version"])
        conn.close()


def _load_process(conn: Connection, port: int, body: bytes, clients: int) -> None:
    """The load generator, in its own process: commands ``measure``, ``report``, ``exit``."""
    pool = [Client("127.0.0.1", port, body) for _ in range(clients)]
    for c in pool:
        c.start()
    while True:
        cmd = conn.recv()
        if cmd == "measure":
            for c in pool:
                c.latencies.clear()
                c.versions.clear()
                c.measuring.set()
        elif cmd == "report":
            for c in pool:
                c.measuring.clear()
            lat = [x for c in pool for x in c.latencies]
            versions = sorted({v for c in pool for v in c.versions})
            conn.send((lat, versions, sum(c.failures for c in pool)))
        else:
            break
    for c in pool:
        c.stop.set()
    for c in pool:
        c.join(timeout=30)


SERVERS = ("uvicorn", "stdlib")


def _replica_process(
    conn: Connection, bootstrap: str, topic: str, tmp: str, embedding_dim: int, server_kind: str
) -> None:
    """The replica and its HTTP server, in their own process; reports freshness at ``exit``."""
    from benchmarks.stdlib_http import StdlibReplicaHttpServer
    from pipeline.serving.http import ReplicaHttpServer
    from pipeline.serving.model import Blueprint
    from pipeline.serving.replica import Replica, ReplicaSettings
    from pipeline.testing.replicas import transaction_specs

    if server_kind == "uvicorn":  # as freshet serve does (gil_switch_interval_ms, torch_threads)
        from configs.serving import ServeConfig
        from pipeline.cli.serve import tune_process

        tune_process(ServeConfig())
    fspec, mspec = transaction_specs(embedding_dim=embedding_dim)
    replica = Replica(
        Blueprint(fspec, mspec, num_shards=2),
        ReplicaSettings(topic=topic, snapshot_dir=f"{tmp}/snapshots", data_dir=f"{tmp}/replica"),
        bootstrap,
        name="bench",
    ).start()
    server: Any = (
        ReplicaHttpServer(replica, "transaction")
        if server_kind == "uvicorn"
        else StdlibReplicaHttpServer(replica, "transaction")
    ).start()
    try:
        conn.send(("ready" if replica.wait_ready(60) else "not ready", server.port))
        while conn.recv() != "exit":
            conn.send([(f.version, f.seconds) for f in replica.freshness])
        rejected = {r: replica.metrics.rejected(r) for r in ("gap", "checksum", "duplicate")}
        conn.send(([(f.version, f.seconds) for f in replica.freshness], rejected))
    finally:
        server.close()
        replica.close()


class Trainer(threading.Thread):
    """Trains flat out; publishes when due if ``publishing`` is set."""

    def __init__(self, harness: Any, publisher: Any, batches: Any) -> None:
        super().__init__(daemon=True)
        self.harness, self.publisher, self.batches = harness, publisher, batches
        self.publishing = threading.Event()
        self.running = threading.Event()
        self.stop = threading.Event()
        self.reports: list[Any] = []
        self.steps = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.running.is_set():
                    time.sleep(0.01)
                    continue
                self.harness.train(next(self.batches))
                self.steps += 1
                if self.publishing.is_set() and self.publisher.due():
                    report = self.harness.publish(self.publisher)
                    if report is not None:
                        self.reports.append(report)
        except BaseException as err:  # reported by the main thread
            self.error = err


def serving_and_freshness(
    sizes: Sizes, bootstrap: str, tmp: Path, clients: int, server_kind: str = "uvicorn"
) -> dict[str, Any]:
    """Trainer here, replica and load generator in processes of their own (no shared GIL)."""
    import multiprocessing as mp

    from pipeline.broker.embedded import ensure_topics
    from pipeline.events.generators import generate
    from pipeline.publishing.publisher import Publisher, PublisherSettings
    from pipeline.testing.replicas import (
        TrainingHarness,
        events_of,
        predict_body,
        transaction_specs,
    )

    tmp.mkdir(parents=True, exist_ok=True)
    fspec, mspec = transaction_specs(embedding_dim=sizes.embedding_dim)
    topic = f"bench-deltas-{int(time.time() * 1000)}"
    ensure_topics(bootstrap, {topic: 1})

    def batches() -> Any:
        seed = 0
        while True:
            chunk = list(generate("transaction", 200 * sizes.train_batch, seed=seed))
            for i in range(0, len(chunk), sizes.train_batch):
                yield chunk[i : i + sizes.train_batch]
            seed += 1

    harness = TrainingHarness(fspec, mspec, tmp / "trainer", num_shards=2).open()
    publisher = Publisher(
        bootstrap,
        topic,
        tmp / "snapshots",
        settings=PublisherSettings(topic=topic, interval_s=1.0, snapshot_every=60),
    ).start()
    stream = batches()
    for _ in range(20):  # a model with some rows before the first snapshot
        harness.train(next(stream))
    harness.publish(publisher)
    ctx = mp.get_context("spawn")
    rep_conn, rep_child = ctx.Pipe()
    replica = ctx.Process(
        target=_replica_process,
        args=(rep_child, bootstrap, topic, str(tmp), sizes.embedding_dim, server_kind),
        daemon=True,
    )
    replica.start()
    trainer = Trainer(harness, publisher, stream)
    load_conn, load_child = ctx.Pipe()
    load: Any = None
    phases: dict[str, Any] = {}
    try:
        if not rep_conn.poll(120):
            raise RuntimeError("the replica process did not start within 120 s")
        state, port = rep_conn.recv()
        if state != "ready":
            raise RuntimeError("the replica did not bootstrap within 60 s")
        probe = events_of("transaction", list(generate("transaction", BATCH, seed=999)))
        load = ctx.Process(
            target=_load_process, args=(load_child, port, predict_body(probe), clients), daemon=True
        )
        load.start()
        trainer.start()
        applied_before = 0
        for name in ("idle", "training", "publishing"):
            if name != "idle":
                trainer.running.set()
            if name == "publishing":
                rep_conn.send("freshness")
                applied_before = len(rep_conn.recv())
                trainer.publishing.set()
            time.sleep(sizes.warmup_s)
            steps0 = trainer.steps
            load_conn.send("measure")
            t0 = time.perf_counter()
            time.sleep(sizes.phase_s)
            load_conn.send("report")
            lat, versions, failures = load_conn.recv()
            elapsed = time.perf_counter() - t0
            phases[name] = {
                "seconds": elapsed,
                "requests": len(lat),
                "samples_per_s": len(lat) * BATCH / elapsed,
                "latency_s": percentiles(lat),
                "versions_served": len(versions),
                "trainer_steps_per_s": (trainer.steps - steps0) / elapsed,
                "trainer_samples_per_s": (trainer.steps - steps0) * sizes.train_batch / elapsed,
                "failed_requests": failures,
            }
            log.info("%s: %s", name, phases[name])
        trainer.stop.set()
        trainer.join(timeout=60)
        if trainer.error is not None:
            raise RuntimeError(f"trainer failed: {trainer.error!r}")
        rep_conn.send("exit")
        fresh_all, rejected = rep_conn.recv()
        fresh = [seconds for _, seconds in fresh_all[applied_before:]]
        reports = trainer.reports
        freshness = {
            **percentiles(fresh),
            "target_p99_s": 2.0,
            "versions_published": len(reports),
            "rejected": rejected,
            "publish_seconds": percentiles([r.seconds for r in reports]),
            "rows_per_delta": percentiles([float(r.rows) for r in reports]),
            "bytes_per_delta": percentiles([float(r.bytes) for r in reports]),
        }
    finally:
        trainer.stop.set()
        if load is not None:
            load_conn.send("exit")
            load.join(timeout=30)
        if replica.is_alive():
            try:
                rep_conn.send("exit")
            except OSError:
                pass
            replica.join(timeout=30)
            if replica.is_alive():
                replica.terminate()
        trainer.join(timeout=30)
        publisher.close()
        harness.close()
    return {
        "server": server_kind,
        "clients": clients,
        "batch": BATCH,
        "processes": "trainer+publisher | replica+HTTP | load generator",
        "phases": phases,
        "freshness_s": freshness,
    }


def delta_bytes(sizes: Sizes, tmp: Path) -> list[dict[str, Any]]:
    """Bytes of one delta for ``rows_changed`` rows, in tables of two sizes."""
    from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
    from pipeline.publishing.publisher import Publisher, PublisherSettings
    from pipeline.testing.replicas import MemoryTopic

    out: list[dict[str, Any]] = []
    dense = {"w": np.zeros(1000, np.float32)}
    for table_rows in sizes.table_rows:
        cfg = StoreConfig(
            str(tmp / f"bytes-{table_rows}"),
            (TableConfig("t", sizes.embedding_dim, OptimizerConfig("adagrad", lr=0.1)),),
            num_shards=2,
        )
        with EmbeddingStore(cfg) as store:
            for start in range(0, table_rows, 100_000):
                ids = np.arange(start, min(table_rows, start + 100_000), dtype=np.int64)
                store.apply_gradients(
                    "t", ids, np.ones((len(ids), sizes.embedding_dim), np.float32)
                )
                store.end_step()
            pub = Publisher(
                "unused:9092",
                "d",
                tmp / f"bytes-snaps-{table_rows}",
                settings=PublisherSettings(
                    topic="d", snapshot_every=10**6, snapshot_interval_s=None
                ),
                sink=MemoryTopic(),
            ).start()
            pub.publish(store, dense, {})
            rng = np.random.default_rng(0)
            for changed in sizes.rows_changed:
                ids = np.sort(rng.choice(table_rows, size=min(changed, table_rows), replace=False))
                store.apply_gradients(
                    "t", ids.astype(np.int64), np.ones((len(ids), sizes.embedding_dim), np.float32)
                )
                store.end_step()
                report = pub.publish(store, dense, {})
                assert report is not None
                out.append(
                    {
                        "table_rows": table_rows,
                        "rows_changed": report.rows,
                        "bytes": report.bytes,
                        "bytes_per_row": report.bytes / max(report.rows, 1),
                        "messages": report.messages,
                        "publish_seconds": report.seconds,
                    }
                )
    return out


def marginal(points: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares bytes per changed row, per table size."""
    out: dict[str, float] = {}
    for rows in sorted({p["table_rows"] for p in points}):
        xs = np.array([p["rows_changed"] for p in points if p["table_rows"] == rows], float)
        ys = np.array([p["bytes"] for p in points if p["table_rows"] == rows], float)
        out[str(rows)] = float(np.polyfit(xs, ys, 1)[0]) if len(xs) > 1 else float("nan")
    return out


def format_result(result: dict[str, Any]) -> str:
    lines = [f"serve bench ({'quick' if result['quick'] else 'full'}), batch {BATCH}:"]
    for s in result["servers"]:
        lines.append(f"  HTTP server: {s['server']}")
        for name, p in s["phases"].items():
            lat = p["latency_s"]
            lines.append(
                f"    {name:<11} {p['samples_per_s']:>9.0f} samples/s  "
                f"p50 {1e3 * (lat['p50'] or 0):6.1f} ms  p99 {1e3 * (lat['p99'] or 0):6.1f} ms  "
                f"versions {p['versions_served']}  trainer {p['trainer_steps_per_s']:.1f} steps/s"
            )
        f = s["freshness_s"]
        lines.append(
            f"    freshness over {f['n']} deltas: p50 {f['p50'] or 0:.3f} s  "
            f"p99 {f['p99'] or 0:.3f} s  max {f['max'] or 0:.3f} s (target p99 <= 2 s); "
            f"rows/delta p50 {f['rows_per_delta']['p50'] or 0:.0f}, "
            f"bytes/delta p50 {f['bytes_per_delta']['p50'] or 0:.0f}"
        )
    lines.append("  delta bytes: table rows, rows changed -> bytes")
    for d in result["delta_bytes"]:
        lines.append(
            f"    {d['table_rows']:>9} {d['rows_changed']:>8} -> {d['bytes']:>10} "
            f"({d['bytes_per_row']:.1f} B/row)"
        )
    for rows, slope in result["delta_bytes_per_row_marginal"].items():
        lines.append(f"    table of {rows} rows: {slope:.1f} bytes per extra row changed")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``freshet bench serve`` (``--quick`` and ``--out`` come from the caller)."""
    parser.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap servers (default: an embedded broker)"
    )
    parser.add_argument("--clients", type=int, default=2, help="concurrent HTTP clients")
    parser.add_argument("--phase-s", type=float, default=None, help="seconds per serving phase")
    parser.add_argument("--scratch", default=None, help="directory for stores and snapshots")
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="HTTP servers to measure, in this order (uvicorn: the replica's; stdlib: the "
        "threading server it replaced, as a baseline)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print a summary, save JSON to ``args.out``."""
    from dataclasses import replace

    from pipeline.broker.embedded import EmbeddedBroker

    sizes = QUICK if args.quick else FULL
    if args.phase_s is not None:
        sizes = replace(sizes, phase_s=args.phase_s)
    result: dict[str, Any] = run_header("serve", bool(args.quick))
    with tempfile.TemporaryDirectory(dir=args.scratch, prefix="freshet-serve-") as d:
        tmp = Path(d)
        result["delta_bytes"] = delta_bytes(sizes, tmp)
        result["delta_bytes_per_row_marginal"] = marginal(result["delta_bytes"])
        servers = [k for k in args.servers.split(",") if k]
        unknown = sorted(set(servers) - set(SERVERS))
        if unknown:
            print(f"serve bench: unknown --servers {unknown}; choose from {SERVERS}")
            return 2
        if args.bootstrap:
            result["servers"] = [
                serving_and_freshness(sizes, args.bootstrap, tmp / f"{i}-{k}", args.clients, k)
                for i, k in enumerate(servers)
            ]
        else:
            with EmbeddedBroker() as broker:
                result["servers"] = [
                    serving_and_freshness(
                        sizes, broker.bootstrap, tmp / f"{i}-{k}", args.clients, k
                    )
                    for i, k in enumerate(servers)
                ]
        result["serving"] = result["servers"][0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(format_result(result))
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.serve_bench [--quick] [--out FILE]``."""
    parser = argparse.ArgumentParser(prog="serve_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a minute")
    parser.add_argument("--out", default="bench-out/serve.json", help="result JSON path")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
