"""Issue 4's crash test with 2 ranks: SIGKILL one rank again and again, restart the world.

Both runs launch 2 ranks (``pipeline.training.launch`` ->
``python -m pipeline.cli.rank``) over
a 2-partition topic; rank r reads partition r (manual assignment) and batches close on size
only, so step i of either run is rank 0's batch i plus rank 1's batch i. The clean run goes
through uninterrupted. The crashed run is started, one of its rank processes is SIGKILLed at
a random moment while it trains (the launcher then stops the other), and it is restarted
with ``--restore`` from the newest world checkpoint, again and again, then run to the end.
The final world checkpoints of both runs must hold every row exactly once across the ranks
with the same values (max abs diff <= 1e-6), the same dense parameters, the same offsets and
the same version (steps).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import yaml
from kafka import KafkaProducer

from embedding_store.distributed import owner_of
from operators.checkpoint.distributed import WorldCheckpoint, load_world
from operators.checkpoint.manager import CheckpointManager
from pipeline.events.kinds import CtrEvent

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
WORLD = 2
BATCH = 16  # events per rank per step
PER_PARTITION = 1024
TOTAL = WORLD * PER_PARTITION
STEPS = PER_PARTITION // BATCH
EVERY = 3  # steps between world checkpoints
KILLS = 4
TOL = 1e-6


def job_config(
    bootstrap: str, topic: str, store: Path, deltas: str | None = None
) -> dict[str, Any]:
    """A small DeepFM on Criteo fields: no aggregates, no standardisation (per-rank state).

    With ``deltas`` the job also migrates rows and publishes a version after every step.
    """
    sparse = [
        {"type": "categorical", "name": f"c{i}", "table": "cat", "field": f"c{i}"}
        for i in range(1, 9)
    ] + [
        {"type": "bucketize", "name": f"i{i}_b", "table": "num", "field": f"i{i}", "log_step": 0.5}
        for i in range(1, 4)
    ]
    raw: dict[str, Any] = {
        "kind": "ctr",
        "source": {
            "bootstrap_servers": [bootstrap],
            "topic": topic,
            "group_id": f"{topic}-{store.parent.name}",
            "assignment": "manual",
            "max_events": BATCH,
            "max_wait_ms": 600_000,  # batches close full only
        },
        "store": {"path": str(store), "num_shards": 2},
        "training": {"prefetch_batches": 1},
        "features": {
            "label": "label",
            "sparse": sparse,
            "dense": [{"name": f"i{i}", "field": f"i{i}", "log1p": True} for i in range(1, 4)],
        },
        "model": {
            "type": "deepfm",
            "embedding_dim": 4,
            "hidden": [16],
            "bottom": [8],
            "init_scale": 0.05,
            "sparse_optimizer": {"kind": "adagrad", "lr": 0.05},
            "linear_optimizer": {"kind": "ftrl", "lr": 0.1},
            "dense_optimizer": {"kind": "adam", "lr": 0.01},
        },
    }
    if deltas is not None:
        raw["store"]["hot_rows"] = 64
        raw["operators"] = {
            # no LFU aging: it runs on the wall clock, so the counts it halves (placement
            # bookkeeping, never a trained value) would differ between runs
            "migration": {"age": False},
            "schedules": [
                {"operator": "tier_migration", "trigger": {"type": "interval", "seconds": 0.3}}
            ],
        }
        raw["publish"] = {
            "bootstrap_servers": [bootstrap],
            "topic": deltas,
            "snapshot_dir": str(store.parent / "snapshots"),
            "interval_s": 0.0,
            "snapshot_every": 5,
        }
    return raw


def _produce(bootstrap: str, topic: str, lines: list[str]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    try:
        futures = []
        for p in range(WORLD):
            for i in range(PER_PARTITION):
                line = lines[(p * PER_PARTITION + i) % len(lines)]
                value = json.dumps(CtrEvent.from_criteo_line(line).model_dump(mode="json"))
                futures.append(producer.send(topic, value=value.encode(), partition=p))
        producer.flush(30)
        for f in futures:
            f.get(30)
    finally:
        producer.close()


def _trained(ckpt: Path) -> int:
    """Events (all partitions) in the newest committed world checkpoint."""
    world = load_world(str(ckpt))
    return sum(world[-1].offsets.values()) if world else 0


def _start(
    config: Path, ckpt: Path, restore: bool, failpoint: str = ""
) -> tuple[subprocess.Popen[bytes], Path]:
    """Launch the 2 ranks from a child process (so one rank can be killed under it).

    ``failpoint`` (``name[@rank]:nth``, :mod:`operators.failpoints`) SIGKILLs a rank there.
    """
    args = [
        *("--max-events", str(TOTAL), "--idle-timeout", "30"),  # over the lineage
        *("--checkpoint-dir", str(ckpt), "--checkpoint-every", str(EVERY)),
        *(["--restore"] if restore else []),
    ]
    code = (
        "import sys\nfrom pipeline.training.launch import launch\n"
        f"sys.exit(launch({str(config)!r}, {WORLD}, {args!r}))\n"
    )
    log = ckpt.parent / f"launch-{len(list(ckpt.parent.glob('launch-*.log')))}.log"
    with log.open("wb") as err:  # a file, not a pipe nobody reads while the ranks log
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "FRESHET_FAILPOINTS": failpoint},
        )
    return proc, log


def _ranks(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        children = psutil.Process(proc.pid).children()
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            if any("pipeline.cli.rank" in part for part in child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return out


def _finish(started: tuple[subprocess.Popen[bytes], Path], timeout: float = 300) -> None:
    proc, log = started
    assert proc.wait(timeout=timeout) == 0, log.read_text(errors="replace")[-4000:]


def _crash_once(config: Path, ckpt: Path, rank: int, rng: random.Random) -> bool:
    """Start (restoring), wait until it trains past its restored checkpoint, kill ``rank``."""
    before = _trained(ckpt)
    proc, log = _start(config, ckpt, restore=True)
    deadline = time.monotonic() + 120
    while _trained(ckpt) == before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.8))  # somewhere between checkpoints, or inside one
    ranks = _ranks(proc)
    if proc.poll() is not None or not ranks:
        _finish((proc, log))  # it ran to the end before the kill
        return False
    by_rank = {int(r.environ().get("RANK", "-1")): r for r in ranks}
    assert set(by_rank) == set(range(WORLD)), by_rank
    by_rank[rank].send_signal(signal.SIGKILL)
    # the launcher stops the other rank (it waits for both) and fails
    assert proc.wait(timeout=120) != 0, log.read_text(errors="replace")[-4000:]
    return True


def _rows(ckpt: Path, entry: WorldCheckpoint, table: str) -> tuple[np.ndarray, np.ndarray]:
    """Every row of ``table`` in the world checkpoint, by id; asserts no id is in two parts."""
    all_ids, blocks = [], []
    for part in entry.parts:
        ids, block = CheckpointManager(str(ckpt / part.root)).read_table(part.checkpoint, table)
        assert (owner_of(ids, entry.world_size) == part.rank).all(), f"{table}: misplaced row"
        all_ids.append(ids)
        blocks.append(block)
    ids = np.concatenate(all_ids)
    rows = np.concatenate(blocks)
    assert len(np.unique(ids)) == len(ids), f"{table}: a row in two parts"
    order = np.argsort(ids)
    return ids[order], rows[order]


def _dense(ckpt: Path, entry: WorldCheckpoint) -> dict[str, np.ndarray]:
    part0 = next(p for p in entry.parts if p.rank == 0)
    reader = CheckpointManager(str(ckpt / part0.root)).reader(part0.checkpoint)
    return {k: np.asarray(v.array) for k, v in reader.dense().items()}


def test_two_ranks_with_one_sigkilled_end_where_the_uninterrupted_ones_do(
    shared_data: Path, bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    lines = (shared_data / "criteo" / "train.txt").read_text().splitlines()
    topic = new_topic(WORLD)
    _produce(bootstrap, topic, lines)
    configs, ckpts = {}, {}
    for name in ("clean", "crash"):
        (tmp_path / name).mkdir()
        configs[name] = tmp_path / name / "job.yaml"
        configs[name].write_text(
            yaml.safe_dump(job_config(bootstrap, topic, tmp_path / name / "store"))
        )
        ckpts[name] = tmp_path / name / "ckpt"

    _finish(_start(configs["clean"], ckpts["clean"], restore=False))

    rng = random.Random(7)
    killed: list[int] = []
    progress: list[int] = []
    for _ in range(3 * KILLS):  # the first start finds nothing to restore: starts fresh
        rank = len(killed) % WORLD  # rank 0 (which commits the world) and rank 1 in turn
        done = _crash_once(configs["crash"], ckpts["crash"], rank, rng)
        progress.append(_trained(ckpts["crash"]))
        if not done:
            break
        killed.append(rank)
        if len(killed) >= KILLS:
            break
    if _trained(ckpts["crash"]) < TOTAL:
        _finish(_start(configs["crash"], ckpts["crash"], restore=True))
    print(f"killed ranks {killed}; events trained at each kill {progress}")
    assert len(killed) >= 3, (killed, progress)

    assert_same_final_state(ckpts["clean"], ckpts["crash"], topic)


def assert_same_final_state(clean_ckpt: Path, crash_ckpt: Path, topic: str) -> None:
    """Both final world checkpoints: every row once, the same values, dense, offsets, steps."""
    ckpts = {"clean": clean_ckpt, "crash": crash_ckpt}
    clean, crash = load_world(str(ckpts["clean"]))[-1], load_world(str(ckpts["crash"]))[-1]
    for entry in (clean, crash):
        assert entry.world_size == WORLD and [p.rank for p in entry.parts] == [0, 1]
        assert entry.offsets == {f"{topic}/{p}": PER_PARTITION for p in range(WORLD)}
        assert entry.version == STEPS  # every step had a full batch on both ranks
    worst: dict[str, float] = {}
    tables = sorted(
        {
            t.name
            for p in clean.parts
            for t in CheckpointManager(str(ckpts["clean"] / p.root))
            .reader(p.checkpoint)
            .manifest()
            .tables
        }
    )
    assert tables
    for table in tables:
        want_ids, want = _rows(ckpts["clean"], clean, table)
        got_ids, got = _rows(ckpts["crash"], crash, table)
        assert len(want_ids) > 0, table
        assert np.array_equal(want_ids, got_ids), f"{table}: rows lost or added"
        assert want.dtype == got.dtype, table
        for field in want.dtype.names or ():
            if field == "last_time":  # wall-clock time of the row's last update: differs
                continue
            a, b = want[field], got[field]
            if a.dtype.kind == "f":
                diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
                worst[f"{table}.{field}"] = float(diff.max(initial=0.0))
            else:
                assert np.array_equal(a, b), f"{table}.{field}"
    want_dense, got_dense = _dense(ckpts["clean"], clean), _dense(ckpts["crash"], crash)
    assert set(want_dense) == set(got_dense) and want_dense
    for name, a in want_dense.items():
        b = got_dense[name]
        assert a.shape == b.shape, name
        if a.dtype.kind == "f":
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            worst[f"dense.{name}"] = float(diff.max(initial=0.0))
        else:
            assert np.array_equal(a, b), name
    print(json.dumps(worst, indent=1))
    assert max(worst.values()) <= TOL, worst


# (failpoint, what it is): each start of the crashed run SIGKILLs one rank at the next one
POINTS = [
    ("step@1:4", "rank 1 right after a training step"),
    ("checkpoint_file@0:2", "rank 0 inside a checkpoint write, between two files"),
    ("publish_gathered@1:3", "rank 1 inside a publish, while rank 0 sends the version"),
    ("checkpoint@1:2", "rank 1 entering a coordinated checkpoint"),
    ("publish_sent:2", "rank 0 right after sending a version, before its watermark"),
    ("checkpoint_file@1:3", "rank 1 inside its part of a checkpoint"),
    ("restored@0:1", "rank 0 right after restoring, before the first step"),
]


def test_one_rank_sigkilled_at_named_points_with_publishing_ends_where_the_clean_run_does(
    shared_data: Path, bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    lines = (shared_data / "criteo" / "train.txt").read_text().splitlines()
    topic = new_topic(WORLD)
    _produce(bootstrap, topic, lines)
    configs, ckpts = {}, {}
    for name in ("clean", "crash"):
        (tmp_path / name).mkdir()
        configs[name] = tmp_path / name / "job.yaml"
        raw = job_config(bootstrap, topic, tmp_path / name / "store", new_topic(1))
        configs[name].write_text(yaml.safe_dump(raw))
        ckpts[name] = tmp_path / name / "ckpt"

    _finish(_start(configs["clean"], ckpts["clean"], restore=False))

    progress = []
    for point, what in POINTS:
        proc, log = _start(configs["crash"], ckpts["crash"], restore=True, failpoint=point)
        code = proc.wait(timeout=300)
        text = log.read_text(errors="replace")
        # the armed rank died (-9 seen by the launcher) and the launcher failed the run
        assert code != 0, f"{point} ({what}) was never reached:\n{text[-3000:]}"
        assert "exited with status -9" in text, text[-3000:]
        progress.append(_trained(ckpts["crash"]))
    print(f"events in the newest world checkpoint after each kill: {progress}")
    assert progress[-1] < TOTAL
    _finish(_start(configs["crash"], ckpts["crash"], restore=True))
    assert_same_final_state(ckpts["clean"], ckpts["crash"], topic)
