"""Crash safety: SIGKILL during a checkpoint write leaves the last good checkpoint restorable.

A child process trains a store deterministically and writes checkpoints back to back (full
every fourth, increments between; each file written slowly). The parent kills it with
SIGKILL, once deterministically in the middle of a checkpoint's files and then at random
times, all into the same checkpoint directory. After each kill, ``latest_complete()`` must
be at least the last checkpoint the child reported committed, and restoring it must give
exactly the state a replay of the same training reaches at that version.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.checkpoint.manager import CheckpointManager
from tests.unit.operators.conftest import assert_same_contents, store_contents

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import os, sys, time
import numpy as np
from embedding_store import EmbeddingStore, OptimizerConfig, StoreConfig, TableConfig
from operators.checkpoint.manager import CheckpointManager

store_dir, ckpt_dir, seed, stall_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tables = (TableConfig("t", 8, OptimizerConfig("adam", lr=0.01), hot_rows=64),)
state = {"checkpoints": 0, "files": 0}

def hook(path):
    state["files"] += 1
    if state["checkpoints"] == stall_at and state["files"] == 3:
        print("mid-write", flush=True)
        time.sleep(60)
    time.sleep(0.003)

manager = CheckpointManager(ckpt_dir, retention=2, rows_per_file=100, file_hook=hook)
store = EmbeddingStore(StoreConfig(store_dir, tables, num_shards=2), clock=lambda: 1000.0).open()
rng = np.random.default_rng(seed)
version = 0
while True:
    ids = rng.integers(0, 500, 64).astype(np.int64)
    emb = store.lookup("t", ids)
    store.apply_gradients("t", ids, (emb * 0.3 + 0.01).numpy())
    store.end_step()
    version += 1
    if version % 5 == 0:
        store.age()
    state["files"] = 0
    dense, offsets = {"w": np.full(4, version, np.float32)}, {"events/0": version}
    if state["checkpoints"] % 4 == 0:
        info = manager.write_full(store, dense, offsets, "cfg")
    else:
        info = manager.write_incremental(store, dense, offsets, "cfg")
    state["checkpoints"] += 1
    print("committed", info.id, info.version, flush=True)
"""

TABLES = (TableConfig("t", 8, OptimizerConfig("adam", lr=0.01), hot_rows=64),)


def replay(path: Path, seed: int, steps: int) -> EmbeddingStore:
    """The child's training, in this process, up to ``steps`` steps (store left open)."""
    store = EmbeddingStore(StoreConfig(str(path), TABLES, num_shards=2), clock=lambda: 1000.0)
    store.open()
    rng = np.random.default_rng(seed)
    for version in range(1, steps + 1):
        ids = rng.integers(0, 500, 64).astype(np.int64)
        emb = store.lookup("t", ids)
        store.apply_gradients("t", ids, (emb * 0.3 + 0.01).numpy())
        store.end_step()
        if version % 5 == 0:
            store.age()
    return store


def run_and_kill(tmp_path: Path, trial: int, stall_at: int, min_commits: int) -> tuple[str, int]:
    """Start the child, kill it; returns the last (id, version) it reported committed."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(tmp_path / f"store-{trial}"),
            str(tmp_path / "ckpt"),
            str(trial),
            str(stall_at),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    last = ("", 0)
    rng = np.random.default_rng(100 + trial)
    try:
        commits = 0
        while True:
            line = proc.stdout.readline()
            assert line, f"child exited early with {proc.poll()}"
            if line.startswith("mid-write"):
                break
            _, ident, version = line.split()
            last, commits = (ident, int(version)), commits + 1
            if stall_at < 0 and commits >= min_commits:
                time.sleep(float(rng.uniform(0.0, 0.15)))
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # lines the child printed between our last read and the kill are commits too
    for line in proc.stdout.read().splitlines():
        if line.startswith("committed"):
            _, ident, version = line.split()
            last = (ident, int(version))
    return last


@pytest.mark.parametrize(
    ("trial", "stall_at", "min_commits"),
    [(0, 5, 0), (1, -1, 6), (2, -1, 3), (3, -1, 9)],
    ids=["mid-write", "random-1", "random-2", "random-3"],
)
def test_sigkill_during_checkpoint_leaves_the_last_good_one(
    tmp_path_factory: pytest.TempPathFactory, trial: int, stall_at: int, min_commits: int
) -> None:
    tmp_path = tmp_path_factory.getbasetemp() / "crash"  # shared by the trials, in order
    tmp_path.mkdir(exist_ok=True)
    last_id, last_version = run_and_kill(tmp_path, trial, stall_at, min_commits)
    assert last_version > 0
    if stall_at >= 0:  # killed with a half-written checkpoint on disk
        assert any(n.startswith(".tmp-") for n in os.listdir(tmp_path / "ckpt"))
    manager = CheckpointManager(str(tmp_path / "ckpt"), retention=2)
    latest = manager.latest_complete()
    assert latest is not None
    # the kill may land after a commit the child had no time to report
    assert latest.id >= last_id
    assert latest.version in (last_version, last_version + 1)
    with EmbeddingStore(StoreConfig(str(tmp_path / f"restored-{trial}"), TABLES, 2)) as fresh:
        state = manager.restore(fresh)
        got = store_contents(fresh)
        got_state = fresh.state()
    reference = replay(tmp_path / f"replay-{trial}", trial, latest.version)
    try:
        assert_same_contents(got, store_contents(reference))
        assert got_state == reference.state()
    finally:
        reference.close()
    assert state.offsets == {"events/0": latest.version}
    assert state.dense["w"].tolist() == [float(latest.version)] * 4
