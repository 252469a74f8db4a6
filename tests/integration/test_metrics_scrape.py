"""Scrape /metrics of a running trainer and of a running replica and find every named series.

A real TrainJob (real broker, RocksDB, HTTP) publishes deltas with the DeltaPublish plugin and
serves its metrics with the MetricsExporter plugin, as ``freshet train`` wires them; a replica
follows the delta topic and serves /predict and /metrics.
"""

from __future__ import annotations

import math
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from configs.job import JobConfig
from pipeline.events.kinds import CtrEvent
from pipeline.events.replay import replay
from pipeline.publishing.operator import DeltaPublish
from pipeline.publishing.publisher import Publisher, PublisherSettings
from pipeline.serving.http import ReplicaHttpServer
from pipeline.serving.model import Blueprint
from pipeline.serving.replica import Replica, ReplicaSettings
from pipeline.testing.replicas import http_call, predict_body, wait_for_version
from pipeline.training.exporter import MetricsExporter
from pipeline.training.job import TrainJob
from pipeline.training.spec import MetricsSpec

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
EVENTS = 600
BAD = [b"{not json", b'{"label": "yes"}', b'{"label": 1, "colour": "red"}']

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def scrape(url: str) -> dict[str, float]:
    """``{"name{labels}": value}`` of every sample on ``url``/metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def series(found: dict[str, float], name: str) -> dict[str, float]:
    """The samples of ``name`` (any labels)."""
    return {k: v for k, v in found.items() if k == name or k.startswith(name + "{")}


def test_trainer_and_replica_metrics_scraped_while_running(
    criteo_lines: list[str], bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path
) -> None:
    topic, deltas = new_topic(1), new_topic(1)
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
    publisher = Publisher(
        bootstrap,
        deltas,
        tmp_path / "snapshots",
        settings=PublisherSettings(topic=deltas, interval_s=0.0),
    )
    publish = DeltaPublish(publisher)
    exporter = MetricsExporter(
        MetricsSpec(0),
        publisher=publish,
        quality_every_s=0.0,
        rows_every_s=0.0,
        lag_every_s=0.2,
    )
    job = TrainJob(config.to_spec(), plugins=[publish, exporter])
    replica = Replica(
        Blueprint(config.features.to_spec(), config.model.to_spec(), num_shards=1),
        ReplicaSettings(
            topic=deltas,
            snapshot_dir=str(tmp_path / "snapshots"),
            data_dir=str(tmp_path / "replica"),
            resync_poll_s=0.05,
            maintain_every_s=0.05,
            cold_count_every_s=0.05,
        ),
        bootstrap,
        name="r0",
    )
    server = ReplicaHttpServer(replica, "ctr")
    try:
        with job, publisher, replica:
            metrics = exporter.metrics
            assert metrics is not None and metrics.port is not None and metrics.port > 0
            trainer_url = f"http://127.0.0.1:{metrics.port}"
            server.start()
            summary = job.run(max_events=EVENTS, idle_timeout_s=30)
            metrics.update(job, force=True)  # refreshes throttled by their cost are due now
            metrics.observe_checkpoint(0.4)
            deadline = time.monotonic() + 15
            trainer = scrape(trainer_url)
            while math.isnan(trainer["freshet_consumer_lag"]) and time.monotonic() < deadline:
                time.sleep(0.2)
                trainer = scrape(trainer_url)
            version = job.store.version if job.store else -1
            published = publisher.version
            assert published is not None
            assert wait_for_version(server.url, published) == published
            probe = [CtrEvent.from_criteo_line(line) for line in criteo_lines[-3:]]
            status, answer = http_call(server.url + "/predict", predict_body(probe))
            assert status == 200 and answer["version"] == published
            time.sleep(0.2)  # one maintenance pass: rows per tier
            served = scrape(server.url)
    finally:
        server.close()

    assert summary.events == EVENTS
    assert trainer["freshet_events_trained_total"] == EVENTS
    assert trainer["freshet_events_per_second"] > 0
    assert 0.5 < trainer["freshet_prequential_auc"] <= 1.0
    assert trainer["freshet_prequential_auc"] == pytest.approx(summary.auc)
    assert 0.0 <= trainer["freshet_prequential_window_auc"] <= 1.0
    assert trainer["freshet_prequential_log_loss"] == pytest.approx(summary.log_loss)
    assert 0.0 <= trainer["freshet_hot_tier_hit_ratio"] <= 1.0
    rows = series(trainer, "freshet_store_rows")
    hot = sum(v for k, v in rows.items() if 'tier="hot"' in k)
    cold = sum(v for k, v in rows.items() if 'tier="cold"' in k)
    assert 0 < hot and 0 < cold  # budget 64 rows per table: most rows live in RocksDB
    assert sum(series(trainer, "freshet_store_lookups_total").values()) > 0
    assert trainer["freshet_store_version"] == version >= 1
    assert trainer["freshet_dead_letters_total"] == summary.dead_letters == len(BAD)
    assert 0 <= trainer["freshet_consumer_lag"] <= 1  # all trained (tansu's ends: approximate)
    assert trainer["freshet_checkpoint_seconds_count"] == 1
    assert trainer["freshet_checkpoint_seconds_sum"] == pytest.approx(0.4)
    assert trainer["freshet_publish_seconds_count"] >= published
    assert trainer["freshet_published_version"] == published
    assert trainer["freshet_store_disk_failed"] == 0
    # the standard process collectors: a DRAM-budgeted store is sized against this RSS
    for scraped in (trainer, served):
        assert scraped["process_resident_memory_bytes"] > 50e6  # torch alone is more
        assert scraped["process_open_fds"] > 0
        assert scraped['python_gc_collections_total{generation="0"}'] >= 0

    assert served['freshet_replica_model_version{replica="r0"}'] == published
    assert served['freshet_replica_deltas_applied_total{replica="r0"}'] >= 1
    assert served['freshet_replica_freshness_seconds_count{replica="r0"}'] >= 1
    assert served['freshet_replica_freshness_lag_seconds{replica="r0"}'] >= 0
    assert served['freshet_replica_request_seconds_count{replica="r0"}'] == 1
    assert served['freshet_replica_requests_total{code="200",replica="r0"}'] == 1
    assert served['freshet_replica_resyncs_total{replica="r0"}'] >= 1
    assert sum(series(served, "freshet_replica_rows").values()) > 0
