"""Deltas dropped, duplicated, reordered and corrupted in flight: two replicas under load never
serve a mixed or wrong version, and both catch up once the faults stop (real broker, real HTTP).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.events.generators import generate
from pipeline.publishing.publisher import KafkaDeltaSink, Publisher, PublisherSettings
from pipeline.serving.http import HttpSettings, ReplicaHttpServer
from pipeline.serving.model import Blueprint
from pipeline.serving.replica import Replica, ReplicaSettings
from pipeline.testing.replicas import (
    FaultPlan,
    FaultySink,
    TrainingHarness,
    events_of,
    http_call,
    predict_body,
    transaction_specs,
    wait_for_version,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH = 64


class Client(threading.Thread):
    """Posts the probe in a loop and keeps every answer."""

    def __init__(self, url: str, body: bytes) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.answers: list[tuple[int, list[float]]] = []
        self.errors: list[tuple[int, object]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            status, obj = http_call(self.url + "/predict", self.body)
            if status == 200:
                self.answers.append((obj["version"], obj["scores"]))
            elif status != 503:
                self.errors.append((status, obj))
            self.stop.wait(0.005)


def test_faulty_delivery_never_serves_a_wrong_version(
    tmp_path: Path, bootstrap: str, new_topic: Callable[[int], str]
) -> None:
    fspec, mspec = transaction_specs()
    topic = new_topic(1)
    events = events_of("transaction", list(generate("transaction", 70 * BATCH, seed=11)))
    probe = events[:16] + events[-16:]
    batches = iter([events[i : i + BATCH] for i in range(0, len(events) - BATCH, BATCH)])
    harness = TrainingHarness(fspec, mspec, tmp_path / "trainer").open()
    plan = FaultPlan(drop=0.04, duplicate=0.08, delay=0.06, corrupt=0.04, seed=5)
    sink = FaultySink(KafkaDeltaSink(bootstrap, topic).start(), plan)
    publisher = Publisher(
        bootstrap,
        topic,
        tmp_path / "snapshots",
        # small messages: most deltas span several chunks, so chunks get lost, swapped, doubled
        settings=PublisherSettings(
            topic=topic, snapshot_every=6, snapshot_interval_s=None, max_message_bytes=6000
        ),
        sink=sink,
    ).start()
    replicas = []
    for name in ("a", "b"):
        replica = Replica(
            Blueprint(fspec, mspec, num_shards=2),
            ReplicaSettings(
                topic=topic,
                snapshot_dir=str(tmp_path / "snapshots"),
                data_dir=str(tmp_path / name),
                resync_poll_s=0.05,
            ),
            bootstrap,
            name=name,
        ).start()
        replicas.append(
            (replica, ReplicaHttpServer(replica, "transaction", HttpSettings()).start())
        )
    body = predict_body(probe)
    clients = [Client(server.url, body) for _, server in replicas]
    try:
        harness.train(next(batches))
        harness.publish(publisher, probe)
        for replica, _ in replicas:
            assert replica.wait_ready(30)
        for c in clients:
            c.start()
        for _ in range(30):
            harness.train(next(batches))
            harness.train(next(batches))
            harness.publish(publisher, probe)
        sink.enabled = False  # the faults stop: both replicas must reach the newest version
        caught_up = False
        for _ in range(12):
            harness.train(next(batches))
            latest = harness.publish(publisher, probe)
            assert latest is not None
            seen = [wait_for_version(s.url, latest.version, timeout_s=3.0) for _, s in replicas]
            if all(v == latest.version for v in seen):
                caught_up = True
                break
        assert caught_up, f"replicas at {seen}, newest {latest.version}"
    finally:
        for c in clients:
            c.stop.set()
            c.join(timeout=10)
        for replica, server in replicas:
            server.close()
            replica.close()
        publisher.close()
        harness.close()

    assert all(plan.counts.get(k, 0) > 0 for k in ("drop", "duplicate", "delay", "corrupt"))
    for c, (replica, _) in zip(clients, replicas, strict=True):
        assert not c.errors, c.errors[:3]
        assert len(c.answers) > 50
        versions = {v for v, _ in c.answers}
        assert len(versions) > 5
        for version, scores in c.answers:
            want = harness.recorded[version]
            assert np.max(np.abs(np.asarray(scores) - want)) <= 1e-6, version
        rejected = {r: replica.metrics.rejected(r) for r in ("gap", "checksum", "duplicate")}
        assert sum(rejected.values()) > 0, rejected
        assert replica.resyncs >= 2  # bootstrap, then at least one resync after a fault
