"""Issue 8: a replica whose snapshot location is missing reports not-ready and keeps retrying.

A replica (real HTTP, real broker) starts with ``snapshot_dir`` pointing at a directory that
does not exist, as when a volume is not mounted yet. It must stay alive (``/healthz`` 200),
answer ``/readyz`` and ``/predict`` with 503 naming the missing directory, and keep looking
(``freshet_replica_bootstrap_retries_total`` grows). Once a publisher creates the directory
and writes a snapshot there, the replica loads it and serves exactly the trainer's scores of
that version.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.events.generators import generate
from pipeline.publishing.publisher import Publisher, PublisherSettings
from pipeline.serving.http import HttpSettings, ReplicaHttpServer
from pipeline.serving.model import Blueprint
from pipeline.serving.replica import Replica, ReplicaSettings, ReplicaState
from pipeline.testing.replicas import (
    TrainingHarness,
    events_of,
    http_call,
    predict_body,
    transaction_specs,
)

pytestmark = pytest.mark.integration

BATCH = 64
POLL_S = 0.05


def retries_metric(url: str) -> int:
    """``freshet_replica_bootstrap_retries_total`` as ``/metrics`` shows it."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.search(r"^freshet_replica_bootstrap_retries_total\{[^}]*\} (\S+)$", text, re.M)
    assert found is not None, text
    return int(float(found.group(1)))


def wait_until(check: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_replica_without_its_snapshot_directory_is_not_ready_and_keeps_retrying(
    tmp_path: Path, bootstrap: str, new_topic: Callable[[int], str]
) -> None:
    fspec, mspec = transaction_specs()
    topic = new_topic(1)
    snapshots = tmp_path / "volume" / "snapshots"  # neither directory exists yet
    events = events_of("transaction", list(generate("transaction", 4 * BATCH, seed=3)))
    probe = events[:16]
    replica = Replica(
        Blueprint(fspec, mspec, num_shards=2),
        ReplicaSettings(
            topic=topic,
            snapshot_dir=str(snapshots),
            data_dir=str(tmp_path / "replica"),
            resync_poll_s=POLL_S,
        ),
        bootstrap,
        name="r0",
    ).start()
    server = ReplicaHttpServer(replica, "transaction", HttpSettings()).start()
    harness: TrainingHarness | None = None
    publisher: Publisher | None = None
    try:
        assert wait_until(lambda: replica.bootstrap_retries >= 5)
        assert http_call(server.url + "/healthz") == (200, {"status": "ok"})
        status, body = http_call(server.url + "/readyz")
        assert status == 503
        assert body["ready"] is False and body["state"] == ReplicaState.BOOTSTRAPPING.value
        assert body["reason"] == f"snapshot directory {str(snapshots)!r} does not exist"
        assert body["retries"] >= 5
        status, answer = http_call(server.url + "/predict", predict_body(probe))
        assert status == 503, answer
        first = retries_metric(server.url)
        assert first >= 5
        # it keeps retrying: the counter grows (value-based, not a sleep of a fixed length)
        assert wait_until(lambda: retries_metric(server.url) >= first + 10)
        status, version = http_call(server.url + "/version")
        assert status == 200 and version["version"] is None
        assert version["waiting_for"] == body["reason"]
        assert not snapshots.exists() and replica.ready is False
        assert replica._thread is not None and replica._thread.is_alive()

        # the directory appears, with a valid snapshot: the replica becomes ready
        harness = TrainingHarness(fspec, mspec, tmp_path / "trainer").open()
        publisher = Publisher(
            bootstrap,
            topic,
            snapshots,
            settings=PublisherSettings(topic=topic, snapshot_every=1, snapshot_interval_s=None),
        ).start()
        for i in range(3):
            harness.train(events[i * BATCH : (i + 1) * BATCH])
        report = harness.publish(publisher, probe, snapshot=True)
        assert report is not None and snapshots.is_dir()
        assert replica.wait_ready(30)
        assert wait_until(lambda: http_call(server.url + "/readyz")[0] == 200)
        status, body = http_call(server.url + "/readyz")
        assert (status, body) == (200, {"ready": True, "version": report.version})
        status, answer = http_call(server.url + "/predict", predict_body(probe))
        assert status == 200, answer
        assert answer["version"] == report.version
        want = harness.recorded[report.version]
        assert np.max(np.abs(np.asarray(answer["scores"]) - want)) <= 1e-6
        assert http_call(server.url + "/version")[1]["waiting_for"] is None
        retries_when_ready = replica.bootstrap_retries
        assert replica.resyncs == 1
    finally:
        server.close()
        replica.close()
        if publisher is not None:
            publisher.close()
        if harness is not None:
            harness.close()
    print(f"ready after {retries_when_ready} retries every {POLL_S} s")
    assert replica._error is None  # no failure in the delta thread along the way
