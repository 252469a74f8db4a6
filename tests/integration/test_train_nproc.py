"""``freshet train --nproc 2 --config configs/fraud.yaml`` with operators, publishing, metrics.

The shipped fraud job, its ``operators:``, ``publish:`` and ``metrics_port`` turned on from
the environment (as deploy/ does), trains a small ``--max-events`` on 2 ranks over the
embedded broker: both ranks serve ``/metrics`` (port and port + 1) while they train, the run
writes coordinated checkpoints and publishes versions that cover both ranks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from operators.checkpoint.distributed import load_world
from pipeline.events.generators import generate
from pipeline.events.replay import replay
from pipeline.publishing.publisher import last_published_version
from pipeline.publishing.snapshot import SnapshotStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
EVENTS = 3000
MAX_EVENTS = 2048


def _two_free_ports() -> int:
    """A port p with p + 1 free as well (rank r listens on p + r)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two adjacent free ports")


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_train_nproc_2_fraud_checkpoints_publishes_and_serves_metrics_on_two_ports(
    bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    topic, deltas = new_topic(2), new_topic(1)
    assert replay(bootstrap, topic, list(generate("transaction", EVENTS, seed=3)), progress=False)
    port = _two_free_ports()
    env = {
        **os.environ,
        "FRESHET_SOURCE__BOOTSTRAP_SERVERS": json.dumps([bootstrap]),
        "FRESHET_SOURCE__TOPIC": topic,
        "FRESHET_SOURCE__ASSIGNMENT": "manual",
        "FRESHET_STORE__PATH": str(tmp_path / "store"),
        "FRESHET_OPERATORS": json.dumps(
            {
                "checkpoint": {"dir": str(tmp_path / "ckpt")},
                "schedules": [
                    {"operator": "tier_migration", "trigger": {"type": "interval", "seconds": 1}},
                    {
                        "operator": "incremental_checkpoint",
                        "trigger": {"type": "interval", "seconds": 1},
                    },
                ],
            }
        ),
        "FRESHET_PUBLISH": json.dumps(
            {
                "bootstrap_servers": [bootstrap],
                "topic": deltas,
                "snapshot_dir": str(tmp_path / "snapshots"),
                "interval_s": 0.5,
            }
        ),
        "FRESHET_METRICS_PORT": str(port),
    }
    cmd = [sys.executable, "-m", "pipeline.cli.main", "train", "--nproc", "2"]
    cmd += ["--config", "configs/fraud.yaml", "--max-events", str(MAX_EVENTS)]
    cmd += ["--idle-timeout", "20"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen: dict[int, dict[str, float]] = {}

    def watch() -> None:
        while proc.poll() is None:
            for p in (port, port + 1):
                try:
                    got = _scrape(p)
                except OSError:
                    continue
                if got.get("freshet_store_version", 0) >= 1:
                    seen[p] = got
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate(timeout=600)
    watcher.join(timeout=5)
    assert proc.returncode == 0, err[-4000:]
    summary = json.loads(out)
    assert summary["world_size"] == 2 and summary["events"] >= MAX_EVENTS
    assert sum(r["events"] for r in summary["ranks"]) == summary["events"]

    # metrics on two ports, one per rank, each counting its own rank's events
    assert set(seen) == {port, port + 1}, err[-3000:]
    for got in seen.values():
        assert got["freshet_events_trained_total"] > 0

    # coordinated checkpoints: both ranks' parts, the last one at the end of the run
    world = load_world(str(tmp_path / "ckpt"))
    assert world and world[-1].world_size == 2
    assert world[-1].version == summary["version"] == summary["steps"]
    assert sum(world[-1].offsets.values()) == summary["events"]

    # versions were published, the last one at the end of the run
    snapshots = SnapshotStore(tmp_path / "snapshots").available()
    assert snapshots, "no snapshot was written"
    last = last_published_version(bootstrap, deltas).version
    assert last is not None and last >= 1
