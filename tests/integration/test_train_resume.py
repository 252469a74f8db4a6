"""``freshet train`` as a subprocess over the embedded broker: stop, restart, idle (issue 17).

- (3) A job with no checkpoint schedule resumes where it stopped: the clean stop wrote a final
  checkpoint (into ``<store.path>/checkpoints``) and committed the offsets, so a restart
  trains only the new events, with the restored dense weights.
- (8) ``--idle-timeout`` counts from the first poll after the source has its partitions, not
  from start-up: a timeout shorter than the consumer-group join still trains every event;
  the summary's ``seconds`` end with the last batch, not with the idle tail.
"""

from __future__ import annotations

import json
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
        dense_after_one = {
            k: v.array.copy() for k, v in manager.reader(latest.id).dense().items()
        }
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
