"""Scrape /metrics of a real TrainJob (real broker, RocksDB, HTTP) and find every series."""

from __future__ import annotations

import math
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from configs.job import JobConfig
from pipeline.events import CtrEvent
from pipeline.replay import replay
from pipeline.train_job import TrainJob
from pipeline.trainer_metrics import attach_metrics

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
EVENTS = 600
BAD = [b"{not json", b'{"label": "yes"}', b'{"label": 1, "colour": "red"}']

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def scrape(port: int) -> dict[str, float]:
    """``{"name{labels}": value}`` of every sample on /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def test_trainer_metrics_scraped_from_a_running_job(
    criteo_lines: list[str], bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    topic = new_topic(1)
    messages: list[object] = []
    for i, line in enumerate(criteo_lines[:EVENTS]):
        messages.append(CtrEvent.from_criteo_line(line).model_dump(mode="json"))
        if i % 200 == 100:
            messages.append(BAD[(i // 200) % len(BAD)])
    assert replay(bootstrap, topic, messages, progress=False) == len(messages)

    base = JobConfig.from_yaml(REPO / "configs" / "ctr.yaml")
    config = base.model_copy(
        update={
            "source": base.source.model_copy(
                update={
                    "bootstrap_servers": [bootstrap],
                    "topic": topic,
                    "assignment": "manual",
                    "max_events": 128,
                }
            ),
            # a DRAM budget far below the rows seen: rows go cold, some lookups miss
            "store": base.store.model_copy(
                update={"path": str(tmp_path / "store"), "num_shards": 2, "hot_rows": 64}
            ),
        }
    )
    job = TrainJob(config)
    metrics = attach_metrics(job, 0, quality_every_s=0.0, rows_every_s=0.0, lag_every_s=0.2)
    try:
        assert metrics.port is not None and metrics.port > 0
        with job:
            summary = job.run(max_events=EVENTS, idle_timeout_s=30)
            metrics.observe_checkpoint(0.4)
            metrics.observe_publish(0.02)
            deadline = time.monotonic() + 15
            found = scrape(metrics.port)
            while math.isnan(found["freshet_consumer_lag"]) and time.monotonic() < deadline:
                time.sleep(0.2)
                found = scrape(metrics.port)
            version = job.store.version if job.store else -1
    finally:
        metrics.close()

    assert summary.events == EVENTS
    assert found["freshet_events_trained_total"] == EVENTS
    assert found["freshet_events_per_second"] > 0
    assert 0.5 < found["freshet_prequential_auc"] <= 1.0
    assert found["freshet_prequential_auc"] == pytest.approx(summary.auc)
    assert 0.0 <= found["freshet_prequential_window_auc"] <= 1.0
    assert found["freshet_prequential_log_loss"] == pytest.approx(summary.log_loss)
    assert 0.0 <= found["freshet_hot_tier_hit_ratio"] <= 1.0
    hot = sum(v for k, v in found.items() if k.startswith("freshet_store_rows{") and "hot" in k)
    cold = sum(v for k, v in found.items() if k.startswith("freshet_store_rows{") and "cold" in k)
    assert 0 < hot and 0 < cold  # budget 64 rows per table: most rows live in RocksDB
    lookups = sum(v for k, v in found.items() if k.startswith("freshet_store_lookups_total"))
    assert lookups > 0
    assert found["freshet_store_version"] == version >= 1
    assert found["freshet_dead_letters_total"] == summary.dead_letters == len(BAD)
    assert 0 <= found["freshet_consumer_lag"] <= 1  # all trained (tansu's ends are approximate)
    assert found["freshet_checkpoint_seconds_count"] == 1
    assert found["freshet_checkpoint_seconds_sum"] == pytest.approx(0.4)
    assert found["freshet_publish_seconds_count"] == 1
