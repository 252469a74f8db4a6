"""``freshet train`` as a subprocess over the embedded broker: stop, restart, idle (issue 17).

- (3) A job with no checkpoint schedule resumes where it stopped: the clean stop wrote a final
  checkpoint (into ``<store.path>/checkpoints``) and committed the offsets, so a restart
  trains only the new events, with the restored dense weights.
- (5) The last trained version is published when the stream idles and when the job stops,
  not only when the publish interval comes round.
- (8) ``--idle-timeout`` counts from the first poll after the source has its partitions, not
  from start-up: a timeout shorter than the consumer-group join still trains every event;
  the summary's ``seconds`` end with the last batch, not with the idle tail.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition

from operators.checkpoint.manager import CheckpointManager
from pipeline.events.kinds import CtrEvent
from pipeline.events.replay import replay
from pipeline.publishing.chunks import ChunkAssembler
from pipeline.publishing.delta import ModelDelta

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "pipeline.cli.main", "train")


def job_config(bootstrap: str, topic: str, store: Path, group: str) -> dict[str, Any]:
    """A small DeepFM, group assignment, no ``operators:`` section at all."""
    return {
        "kind": "ctr",
        "source": {
            "bootstrap_servers": [bootstrap],
            "topic": topic,
            "group_id": group,
            "max_events": 64,
            "max_wait_ms": 100,
            "session_timeout_ms": 6000,
        },
        "store": {"path": str(store), "num_shards": 2},
        "features": {
            "label": "label",
            "sparse": [
                {"type": "categorical", "name": f"c{i}", "table": "cat", "field": f"c{i}"}
                for i in range(1, 7)
            ],
            "dense": [{"name": "i1", "field": "i1", "log1p": True}],
        },
        "model": {"type": "deepfm", "embedding_dim": 4, "hidden": [8], "bottom": [4]},
    }


def train(config: Path, *args: str) -> tuple[dict[str, Any], float]:
    """Run ``freshet train`` to its end; its JSON summary and its wall time."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [*CLI, "--config", str(config), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), wall


def committed(bootstrap: str, group: str, topic: str) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close()


def test_a_job_without_checkpoint_schedules_resumes_where_it_stopped(
    criteo_lines: list[str], bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    first, second = 640, 320
    events = [CtrEvent.from_criteo_line(line).model_dump(mode="json") for line in criteo_lines]
    topic = new_topic(1)
    assert replay(bootstrap, topic, events[:first], progress=False) == first
    config = tmp_path / "job.yaml"
    store = tmp_path / "store"
    config.write_text(yaml.safe_dump(job_config(bootstrap, topic, store, f"{topic}-g")))

    one, _ = train(config, "--idle-timeout", "8")  # longer than the group join
    assert one["events"] == first
    manager = CheckpointManager(str(store / "checkpoints"))  # the default place
    try:
        latest = manager.latest_complete()
        assert latest is not None and latest.version == one["version"] == first // 64
        dense_after_one = {k: v.array.copy() for k, v in manager.reader(latest.id).dense().items()}
    finally:
        manager.close()
    assert committed(bootstrap, f"{topic}-g", topic) == first  # a copy for lag tools

    assert replay(bootstrap, topic, events[first : first + second], progress=False) == second
    two, _ = train(config, "--idle-timeout", "8")
    assert two["events"] == second  # only the new events: nothing trained twice
    assert two["version"] == (first + second) // 64  # the step count went on from the first
    manager = CheckpointManager(str(store / "checkpoints"))
    try:
        latest = manager.latest_complete()
        assert latest is not None and latest.version == two["version"]
        reader = manager.reader(latest.id)
        assert reader.manifest().offsets == {f"{topic}/0": first + second}
        dense_after_two = {k: v.array for k, v in reader.dense().items()}
    finally:
        manager.close()
    # the second run trained on from the first run's dense weights (restored, then moved on)
    moved = [k for k in dense_after_one if (dense_after_one[k] != dense_after_two[k]).any()]
    assert moved


def test_idle_timeout_counts_from_the_assignment_and_seconds_exclude_the_idle_tail(
    criteo_lines: list[str], bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    n = 512
    events = [CtrEvent.from_criteo_line(line).model_dump(mode="json") for line in criteo_lines[:n]]
    topic = new_topic(1)
    assert replay(bootstrap, topic, events, progress=False) == n
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(job_config(bootstrap, topic, tmp_path / "store", f"{topic}-g"))
    )
    # the group join alone takes about half the 6 s session timeout on tansu
    summary, wall = train(config, "--idle-timeout", "1.5")
    assert summary["events"] == n
    assert 0 < summary["seconds"] <= wall - 1.5  # no idle tail in the training time


def published(bootstrap: str, topic: str) -> list[tuple[int, int]]:
    """``(version, store version)`` of every version on the delta topic, in order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    try:
        if 0 not in (consumer.partitions_for_topic(topic) or set()):
            return []
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        assembler, out = ChunkAssembler(), []
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    got = assembler.add(record.value)
                    if got is not None:
                        delta = ModelDelta.from_bytes(got.payload)
                        out.append((delta.version, delta.store_version))
        return out
    finally:
        consumer.close()


def test_the_last_trained_version_is_published_on_idle_and_at_stop(
    criteo_lines: list[str], bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    n, steps = 640, 10  # 64 events a batch
    events = [CtrEvent.from_criteo_line(line).model_dump(mode="json") for line in criteo_lines[:n]]
    topic = new_topic(1)
    assert replay(bootstrap, topic, events, progress=False) == n
    configs = {}
    for name in ("idle", "stop"):
        raw = job_config(bootstrap, topic, tmp_path / name / "store", f"{topic}-{name}")
        raw["publish"] = {
            "bootstrap_servers": [bootstrap],
            "topic": new_topic(1),
            "snapshot_dir": str(tmp_path / name / "snapshots"),
            "interval_s": 3600.0,  # only the first step's version is due by the interval
        }
        configs[name] = (tmp_path / f"{name}.yaml", raw["publish"]["topic"])
        configs[name][0].write_text(yaml.safe_dump(raw))

    # idle: the stream goes quiet after the last event; the version comes while the job waits
    config, deltas = configs["idle"]
    proc = subprocess.Popen(
        [*CLI, "--config", str(config), "--idle-timeout", "120"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        seen: list[tuple[int, int]] = []
        while time.monotonic() < deadline and (not seen or seen[-1][1] < steps):
            time.sleep(0.5)
            seen = published(bootstrap, deltas)
        assert proc.poll() is None  # still running: idle, not stopped
        assert seen and seen[-1][1] == steps, seen  # the last trained step, published
        assert seen[0][1] == 1  # the first step's version (the interval's only one)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out)["version"] == steps
    assert published(bootstrap, deltas) == seen  # nothing new to publish at the stop

    # stop: --max-events ends the run right after the last step; its version goes out then
    config, deltas = configs["stop"]
    summary, _ = train(config, "--max-events", str(n))
    assert summary["version"] == steps
    assert [s for _, s in published(bootstrap, deltas)] == [1, steps]
