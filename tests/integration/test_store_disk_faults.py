"""Issue 8: the RocksDB directory runs out of space under a running ``freshet train``.

The mechanism is a real full disk: the store lives on a 16 MiB tmpfs mounted for the test
(we run as root, where permission bits do not stop writes; a tmpfs has a hard size). Once the
trainer has trained and checkpointed the first events, the test fills the tmpfs with a filler
file, so RocksDB's next WAL append fails with ENOSPC. Checkpoints live on the ordinary disk.

- ``on_disk_error: stop``: the process exits with code 3 and a message naming the store path,
  the OS error and the last good checkpoint; that checkpoint verifies (``freshet checkpoint
  verify``); once the filler is gone a restart resumes from it and ends with every event
  trained once (the lineage's count and the source offset both equal EVENTS).
- ``on_disk_error: pause``: the process stays up, probes the disk, and once the filler is gone
  resumes from the last good checkpoint by itself, ending with the same counts.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from operators.checkpoint.manager import CheckpointManager
from pipeline.events.generators import generate
from pipeline.events.replay import replay
from pipeline.training.job import TrainJob

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EVENTS, FIRST, BATCH = 4000, 2000, 200
DISK_MIB = 16
CLI = (sys.executable, "-m", "pipeline.cli.main")
TRAIN_ARGS = ("--max-events", str(EVENTS), "--idle-timeout", "60")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted at ``tmp_path/disk`` (needs root with mount rights)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs for the full-disk test: {done.stderr.strip()}"
        print(reason)
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the file system is full, to the last byte; returns its path.

    Unbuffered writes: a buffered file would raise ENOSPC again when closed.
    """
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        chunk = b"\0" * (1 << 16)
        while chunk:
            try:
                os.write(fd, chunk)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]  # then fill what is left in smaller pieces
    finally:
        os.close(fd)
    return filler


def write_config(tmp_path: Path, disk: Path, bootstrap: str, topic: str, on_error: str) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "fraud.yaml").read_text())
    raw["source"].update(
        bootstrap_servers=[bootstrap],
        topic=topic,
        group_id=f"disk-{on_error}",
        assignment="manual",
        max_events=BATCH,
        max_wait_ms=600_000,
    )
    raw["store"] = {
        "path": str(disk / "store"),
        "num_shards": 2,
        "hot_rows": 300,  # rows go to RocksDB on most steps
        "write_buffer_mb": 1,
        "on_disk_error": on_error,
        "disk_retry_s": 0.2,
    }
    raw["operators"] = {
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "retention": 2, "max_chain_length": 4},
        "schedules": [
            {"operator": "incremental_checkpoint", "trigger": {"type": "interval", "seconds": 0.3}},
        ],
    }
    path = tmp_path / f"{on_error}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class Trainer:
    """``freshet train`` as a subprocess, its stderr collected line by line."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "train", "--config", str(config), *TRAIN_ARGS],
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float = 180) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        assert self.proc.stdout is not None
        return code, self.proc.stdout.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_until(check: Callable[[], bool], timeout_s: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def latest(ckpt: Path) -> Any:
    manager = CheckpointManager(str(ckpt))
    try:
        return manager.latest_complete()
    finally:
        manager.close()


def resume_point(config_path: Path, store_path: Path) -> tuple[int, dict[tuple[str, int], int]]:
    """Events trained and source offsets that a job restarted from the checkpoints gets."""
    from configs.job import JobConfig

    config = JobConfig.from_yaml(config_path)
    probe = config.model_copy(
        update={"store": config.store.model_copy(update={"path": str(store_path)})}
    )
    job = TrainJob(probe.to_spec()).open()
    try:
        return job.events_trained, dict(job.start_offsets)
    finally:
        job.close(clean=False)


def start_and_fill(
    tmp_path: Path, disk: Path, bootstrap: str, topic: str, config: Path
) -> tuple[Trainer, Path, Any]:
    """Train events[:FIRST] and checkpoint them, fill the disk, produce the rest."""
    events = list(generate("transaction", EVENTS, seed=9))
    assert replay(bootstrap, topic, events[:FIRST], progress=False) == FIRST
    trainer = Trainer(config)
    # checkpoints run at step boundaries: wait for one while events still come
    assert wait_until(lambda: latest(tmp_path / "ckpt") is not None), trainer.stderr()
    good = latest(tmp_path / "ckpt")
    filler = fill(disk)
    assert replay(bootstrap, topic, events[FIRST:], progress=False) == EVENTS - FIRST
    return trainer, filler, good


def test_full_disk_stops_the_trainer_and_a_restart_resumes_from_the_last_good_checkpoint(
    tmp_path: Path, small_disk: Path, bootstrap: str, new_topic: Callable[[int], str]
) -> None:
    topic = new_topic(1)
    config = write_config(tmp_path, small_disk, bootstrap, topic, "stop")
    trainer, filler, _ = start_and_fill(tmp_path, small_disk, bootstrap, topic, config)
    try:
        code, _ = trainer.wait()
    finally:
        trainer.kill()
    message = [line for line in trainer.lines if line.startswith("freshet train: ")]
    assert code == 3, trainer.stderr()
    assert len(message) == 1, trainer.stderr()
    good = latest(tmp_path / "ckpt")
    assert good is not None and good.version >= 1
    text = message[0]
    assert f"under {str(small_disk / 'store')!r}" in text
    assert "No space left on device" in text
    assert f"the last good checkpoint is {good.id} (version {good.version}" in text
    assert good.version < EVENTS // BATCH  # it stopped before the end
    verify = subprocess.run(
        [*CLI, "checkpoint", "verify", "--dir", str(tmp_path / "ckpt"), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["problems"] in ({}, [])

    filler.unlink()  # the fault clears; a restart resumes from that checkpoint
    restarted = Trainer(config)
    try:
        code, out = restarted.wait()
    finally:
        restarted.kill()
    assert code == 0, restarted.stderr()
    assert f"restored checkpoint {good.id} (version {good.version}" in restarted.stderr()
    summary = json.loads(out)
    assert summary["events"] == EVENTS - good.version * BATCH  # the rest, once
    assert summary["disk_pauses"] == 0
    assert resume_point(config, tmp_path / "probe") == (EVENTS, {(topic, 0): EVENTS})
    print(f"stopped with the last good checkpoint at {good.version * BATCH} events")


def test_full_disk_pauses_the_trainer_until_space_returns(
    tmp_path: Path, small_disk: Path, bootstrap: str, new_topic: Callable[[int], str]
) -> None:
    topic = new_topic(1)
    config = write_config(tmp_path, small_disk, bootstrap, topic, "pause")
    trainer, filler, _ = start_and_fill(tmp_path, small_disk, bootstrap, topic, config)
    try:
        paused = wait_until(lambda: any("pausing: probing" in line for line in trainer.lines))
        assert paused, trainer.stderr()
        line = next(line for line in trainer.lines if "pausing: probing" in line)
        assert "No space left on device" in line and str(small_disk / "store") in line
        good = latest(tmp_path / "ckpt")
        assert good is not None and f"the last good checkpoint is {good.id}" in line
        checkpoints_while_paused = len(CheckpointManager(str(tmp_path / "ckpt")).list())
        # still paused: alive, and no checkpoint written while the disk is full
        assert trainer.proc.poll() is None
        assert latest(tmp_path / "ckpt").id == good.id
        filler.unlink()  # space returns: it resumes by itself
        code, out = trainer.wait()
    finally:
        trainer.kill()
    assert code == 0, trainer.stderr()
    assert any("takes writes again: resumed at" in line for line in trainer.lines)
    summary = json.loads(out)
    assert summary["disk_pauses"] == 1
    assert summary["events"] >= EVENTS  # the steps after the last good checkpoint ran twice
    assert resume_point(config, tmp_path / "probe") == (EVENTS, {(topic, 0): EVENTS})
    assert len(CheckpointManager(str(tmp_path / "ckpt")).list()) >= checkpoints_while_paused
    print(f"paused with the last good checkpoint at {good.version * BATCH} events")
