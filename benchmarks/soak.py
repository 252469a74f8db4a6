"""``freshet bench soak``: a long run with every operator on a 2-5 s schedule (issue 8, item 3).

On the embedded broker, a producer thread replays the synthetic fraud stream at ``--rate``
events/s for ``--minutes``; ``freshet train`` (a real subprocess, the fraud job of
``configs/fraud.yaml`` with a small DRAM budget, expiry on, signed delta publishing) runs
tier migration every 2 s, incremental checkpoints every 3 s, full checkpoints every 5 s,
expiry every 4 s and the metrics report every 5 s; a ``freshet serve`` replica follows the
deltas. Every ``--sample-s`` seconds the harness records, from ``/proc`` and ``/metrics``:
each process's RSS, open file descriptors and threads, the checkpoint chains and snapshots on
disk, events trained and the versions published and served.

Targets after the warm-up (the first ``--warmup`` fraction of the run): trainer RSS growth
<= 5% (median RSS of the last 10% of samples against the first 10% after warm-up), no
file-descriptor growth (max after warm-up - max at the end of warm-up <= 4), chains on disk
never above the retention (+1 while a new chain's full checkpoint is being written), the
replica keeps up (served version within a few versions of the published one at the end).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RETENTION = 3
FEATURIZER_BUDGET_MB = 64
SCHEDULES = (
    ("tier_migration", 2.0),
    ("incremental_checkpoint", 3.0),
    ("full_checkpoint", 5.0),
    ("expiry", 4.0),
    ("metrics_report", 5.0),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options (``--quick``/``--out`` come from ``freshet bench``)."""
    parser.add_argument("--minutes", type=float, default=None, help="run length (default 20)")
    parser.add_argument("--rate", type=float, default=1500.0, help="events/s replayed")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=0.25, help="warm-up fraction of the run")
    parser.add_argument(
        "--job", choices=("fraud", "ctr"), default="fraud", help="configs/<job>.yaml to train"
    )
    parser.add_argument(
        "--new-ids",
        type=float,
        default=0.5,
        help="share of events with an id never seen before (customers; CTR: c1..c26 values)",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _fd_kinds(pid: int, store: Path | None = None) -> dict[str, int]:
    """Open descriptors of ``pid`` by kind; ``deleted`` (a file removed but held) is a leak.

    ``sst`` and ``rocksdb`` (WAL, MANIFEST, LOG, LOCK, directories under ``store``) are
    RocksDB's own, bounded by its design; ``socket`` and ``other`` are everything else.
    """
    kinds = {"sst": 0, "rocksdb": 0, "socket": 0, "deleted": 0, "other": 0}
    prefix = str(store) if store is not None else None
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.endswith(" (deleted)"):
            kinds["deleted"] += 1
        elif target.endswith(".sst"):
            kinds["sst"] += 1
        elif prefix is not None and target.startswith(prefix):
            kinds["rocksdb"] += 1
        elif target.startswith("socket:"):
            kinds["socket"] += 1
        else:
            kinds["other"] += 1
    return kinds


def _proc_stats(pid: int, store: Path | None = None) -> dict[str, Any] | None:
    """RSS bytes, open fds (and by kind) and threads of ``pid`` (``None`` once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        kinds = _fd_kinds(pid, store)
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_bytes": int(fields["VmRSS"].split()[0]) * 1024,
        "fds": fds,
        "fd_kinds": kinds,
        "threads": int(fields["Threads"]),
    }


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (the trainer's source process, ``decode_in: process``)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in task.read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return out


def _sst_files(store: Path) -> int:
    """Live RocksDB table files under the store (what SST descriptors may point at)."""
    return sum(1 for _ in store.glob("shard-*/*.sst"))


def _scrape(url: str) -> dict[str, float]:
    """Unlabelled and summed-over-labels sample values of a Prometheus text page."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def _with_new_ids(
    events: Iterator[dict[str, Any]], job: str, share: float, chunk: int
) -> Iterator[dict[str, Any]]:
    """Give ``share`` of the events an id no earlier event had (unique-id growth)."""
    rng = random.Random(chunk)
    for i, event in enumerate(events):
        if rng.random() < share:
            fresh = (chunk + 1) * 10_000_000 + i
            if job == "fraud":
                event["customer_id"] = fresh
            else:
                for k in range(1, 27, 3):  # 9 of the 26 categoricals
                    if event.get(f"c{k}") is not None:
                        event[f"c{k}"] = f"{fresh:x}{k}"
        yield event


def _config(
    tmp: Path, bootstrap: str, topic: str, deltas: str, metrics_port: int, job: str = "fraud"
) -> Path:
    raw: dict[str, Any] = yaml.safe_load((REPO / "configs" / f"{job}.yaml").read_text())
    raw["source"].update(
        bootstrap_servers=[bootstrap], topic=topic, group_id="soak", max_events=1024
    )
    if raw["features"].get("aggregates"):
        # window aggregates keep every customer without a budget (issue 21 #4, issue 17 #10)
        raw["features"]["state"] = {"budget_mb": FEATURIZER_BUDGET_MB}
    raw["store"] = {
        "path": str(tmp / "store"),
        "num_shards": 4,
        "hot_rows": 2000,
        "expire_after_steps": 300,
    }
    raw["operators"] = {
        "checkpoint": {
            "dir": str(tmp / "ckpt"),
            "retention": RETENTION,
            "max_chain_length": 6,
        },
        "schedules": [
            {"operator": op, "trigger": {"type": "interval", "seconds": every}}
            for op, every in SCHEDULES
        ],
    }
    signing = {"key_env": "FRESHET_DELTA_KEY"}
    raw["publish"] = {
        "bootstrap_servers": [bootstrap],
        "topic": deltas,
        "snapshot_dir": str(tmp / "snapshots"),
        "interval_s": 2.0,
        "snapshot_every": 10,
        "retain_snapshots": 3,
        "signing": signing,
    }
    raw["serve"] = {
        "bootstrap_servers": [bootstrap],
        "topic": deltas,
        "snapshot_dir": str(tmp / "snapshots"),
        "data_dir": str(tmp / "replica"),
        "port": 0,
        "signing": signing,
    }
    raw["metrics_port"] = metrics_port
    path = tmp / "soak.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _count_dirs(path: Path) -> int:
    try:
        return sum(1 for p in path.iterdir() if p.is_dir())
    except FileNotFoundError:
        return 0


def _chains(ckpt: Path) -> int:
    """Chain directories on disk (``chain-NNNNNN``, complete or being written)."""
    try:
        return sum(1 for p in ckpt.iterdir() if p.is_dir() and p.name.startswith("chain-"))
    except FileNotFoundError:
        return 0


def _summary(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    after = [s for s in samples if s["t"] >= warmup_s and s["trainer"] is not None]
    if len(after) < 4:
        return {"error": "too few samples after the warm-up"}
    k = max(1, len(after) // 10)
    rss_start = statistics.median(s["trainer"]["rss_bytes"] for s in after[:k])
    rss_end = statistics.median(s["trainer"]["rss_bytes"] for s in after[-k:])
    fds_warm = max(s["trainer"]["fds"] for s in samples if s["t"] < warmup_s and s["trainer"])
    fds_after = [s["trainer"]["fds"] for s in after]

    def non_table(s: dict[str, Any]) -> int:  # sockets, pipes, our files: must not grow
        k = s["trainer"]["fd_kinds"]
        return int(k["socket"] + k["other"])

    warm = [s for s in samples if s["t"] < warmup_s and s["trainer"]]
    non_table_warm = max(non_table(s) for s in warm)
    non_table_after = max(non_table(s) for s in after)
    deleted_max = max(s["trainer"]["fd_kinds"]["deleted"] for s in after)
    sst_excess = max(s["trainer"]["fd_kinds"]["sst"] - s["sst_files"] for s in after)
    rep = [s for s in after if s["replica"] is not None]
    rep_rss_start = statistics.median(s["replica"]["rss_bytes"] for s in rep[:k]) if rep else 0
    rep_rss_end = statistics.median(s["replica"]["rss_bytes"] for s in rep[-k:]) if rep else 0
    chains_max = max(s["chains"] for s in after)
    src = [s for s in after if s.get("source") is not None]
    src_growth = (
        statistics.median(s["source"]["rss_bytes"] for s in src[-k:])
        / statistics.median(s["source"]["rss_bytes"] for s in src[:k])
        - 1.0
        if len(src) >= 2 * k
        else None
    )
    growth = rss_end / rss_start - 1.0
    rep_growth = rep_rss_end / rep_rss_start - 1.0 if rep_rss_start else None
    return {
        "trainer_rss_start_bytes": rss_start,
        "trainer_rss_end_bytes": rss_end,
        "trainer_rss_growth": growth,
        "trainer_fds_end_of_warmup": fds_warm,
        "trainer_fds_max_after_warmup": max(fds_after),
        "trainer_fds_last": fds_after[-1],
        "trainer_non_table_fds_end_of_warmup": non_table_warm,
        "trainer_non_table_fds_max_after_warmup": non_table_after,
        "trainer_deleted_files_held_max": deleted_max,
        "trainer_sst_fds_minus_live_sst_files_max": sst_excess,
        "source_process_rss_growth": src_growth,
        "source_process_fds_max_after_warmup": (
            max(s["source"]["fds"] for s in src) if src else None
        ),
        "replica_rss_growth": rep_growth,
        "replica_fds_max_after_warmup": max(s["replica"]["fds"] for s in rep) if rep else None,
        "chains_on_disk_max": chains_max,
        "snapshots_on_disk_max": max(s["snapshots"] for s in after),
        "targets": {
            "rss_growth_le_5pct": growth <= 0.05,
            # RocksDB keeps a descriptor per live table file (bounded by max_open_files): a
            # leak is a descriptor on a deleted file, or sockets/pipes/logs that keep growing
            # (a background checkpoint holds up to a few files open while it writes)
            "no_fd_leak": non_table_after - non_table_warm <= 4 and deleted_max <= 1,
            "chains_bounded_by_retention": chains_max <= RETENTION + 1,
        },
    }


def run(args: argparse.Namespace) -> int:
    """Run the soak; write JSON (every sample) and a PNG of RSS, fds and chains over time."""
    from benchmarks.machine import run_header
    from pipeline.broker.embedded import EmbeddedBroker, ensure_topics
    from pipeline.events.generators import generate
    from pipeline.events.replay import replay

    logging.getLogger("kafka").setLevel(logging.WARNING)
    minutes = args.minutes if args.minutes is not None else (2.0 if args.quick else 20.0)
    duration = minutes * 60.0
    out: dict[str, Any] = {
        **run_header("soak", args.quick),
        "minutes": minutes,
        "job": args.job,
        "new_ids": args.new_ids,
        "rate": args.rate,
        "warmup": args.warmup,
        "schedules_s": dict(SCHEDULES),
        "retention": RETENTION,
    }
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="freshet-soak-") as tmp_str:
        tmp = Path(tmp_str)
        with EmbeddedBroker(log_path=tmp / "tansu.log") as broker:
            bootstrap = broker.bootstrap
            ensure_topics(bootstrap, {"soak-events": 1, "soak-deltas": 1})
            metrics_port = _free_port()
            cfg = _config(tmp, bootstrap, "soak-events", "soak-deltas", metrics_port, args.job)
            env = {**os.environ, "FRESHET_DELTA_KEY": "soak-signing-key"}
            stop = threading.Event()
            sent = [0]

            def produce() -> None:
                chunk = int(args.rate * 30)
                seed = 0
                while not stop.is_set():
                    kind = "transaction" if args.job == "fraud" else "ctr"
                    stream = generate(kind, chunk, 1000 + seed)
                    sent[0] += replay(
                        bootstrap,
                        "soak-events",
                        _with_new_ids(stream, args.job, args.new_ids, seed),
                        rate=args.rate,
                        progress=False,
                    )
                    seed += 1

            producer = threading.Thread(target=produce, name="soak-producer", daemon=True)
            producer.start()
            trainer = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli.main", "train", "--config", str(cfg)],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / "trainer.log", "w"),
            )
            replica = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli.main", "serve", "--config", str(cfg)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=open(tmp / "replica.log", "w"),
                text=True,
            )
            assert replica.stdout is not None
            replica_url = replica.stdout.readline().strip()
            t0 = time.monotonic()
            try:
                while (now := time.monotonic() - t0) < duration:
                    if trainer.poll() is not None:
                        raise RuntimeError(f"trainer exited early with {trainer.returncode}")
                    tm = _scrape(f"http://127.0.0.1:{metrics_port}/metrics")
                    rm = _scrape(f"{replica_url}/metrics") if replica_url else {}
                    sample = {
                        "t": now,
                        "trainer": _proc_stats(trainer.pid, tmp / "store"),
                        "replica": _proc_stats(replica.pid),
                        "source": next(
                            (st for c in _children(trainer.pid) if (st := _proc_stats(c))), None
                        ),
                        "chains": _chains(tmp / "ckpt"),
                        "checkpoints": sum(_count_dirs(p) for p in (tmp / "ckpt").glob("chain-*")),
                        "snapshots": _count_dirs(tmp / "snapshots"),
                        "sst_files": _sst_files(tmp / "store"),
                        "events_sent": sent[0],
                        "events_trained": tm.get("freshet_events_trained_total"),
                        "published_version": tm.get("freshet_published_version"),
                        "served_version": rm.get("freshet_replica_model_version"),
                    }
                    samples.append(sample)
                    print(
                        f"soak {now:7.0f}s rss={sample['trainer']['rss_bytes'] / 2**20:7.1f}MiB "
                        f"fds={sample['trainer']['fds']} chains={sample['chains']} "
                        f"trained={sample['events_trained']} "
                        f"published={sample['published_version']} "
                        f"served={sample['served_version']}",
                        flush=True,
                    )
                    time.sleep(args.sample_s)
            finally:
                stop.set()
                trainer.send_signal(signal.SIGTERM)
                out["trainer_exit"] = trainer.wait(timeout=120)
                replica.send_signal(signal.SIGTERM)
                out["replica_exit"] = replica.wait(timeout=60)
                producer.join(timeout=60)
                out["trainer_log_tail"] = (tmp / "trainer.log").read_text()[-2000:]
    out["samples"] = samples
    out["summary"] = _summary(samples, duration * args.warmup)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    _plot(out, path.with_suffix(".png"))
    print(json.dumps(out["summary"], indent=1))
    return 0


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [s for s in result["samples"] if s["trainer"] is not None]
    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(t, [s["trainer"]["rss_bytes"] / 2**20 for s in samples], label="trainer")
    axes[0].plot(
        t,
        [(s["replica"] or {"rss_bytes": 0})["rss_bytes"] / 2**20 for s in samples],
        label="replica",
    )
    axes[0].set_ylabel("RSS (MiB)")
    axes[1].plot(t, [s["trainer"]["fds"] for s in samples], label="trainer fds")
    axes[1].plot(t, [(s["replica"] or {"fds": 0})["fds"] for s in samples], label="replica fds")
    axes[1].set_ylabel("open file descriptors")
    axes[2].plot(t, [s["chains"] for s in samples], label="chains")
    axes[2].plot(t, [s["snapshots"] for s in samples], label="snapshots")
    axes[2].axhline(result["retention"], color="grey", ls=":", label="retention")
    axes[2].set_ylabel("on disk")
    warm = result["minutes"] * result.get("warmup", 0.25)
    for ax in axes:
        ax.axvline(warm, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("minutes")
        ax.legend(fontsize=8)
    fig.suptitle(f"freshet bench soak, {result['minutes']:.0f} min, {result['rate']:.0f} events/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
