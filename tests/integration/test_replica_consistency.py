"""A replica predicts exactly what the trainer did at the same version (real broker, real HTTP).

Covers: deltas at several versions, tombstones of expired rows, a replica restart, and a
resync from a snapshot after a delta lost on its way (an injected gap).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.events.generators import generate
from pipeline.publishing.publisher import KafkaDeltaSink, Publisher, PublisherSettings
from pipeline.serving.http import HttpSettings, ReplicaHttpServer
from pipeline.serving.model import Blueprint
from pipeline.serving.replica import Replica, ReplicaSettings
from pipeline.testing.replicas import (
    TrainingHarness,
    events_of,
    http_call,
    predict_body,
    transaction_specs,
    wait_for_version,
)

pytestmark = pytest.mark.integration

BATCH = 128


class DroppingSink:
    """Passes messages to Kafka, except those of the publishes told to drop."""

    def __init__(self, inner: KafkaDeltaSink) -> None:
        self.inner = inner
        self.drop_next = False

    def send(self, messages: Sequence[bytes]) -> int | None:
        if self.drop_next:
            self.drop_next = False
            return None
        return self.inner.send(messages)

    def last_version(self) -> int | None:
        return self.inner.last_version()

    def close(self) -> None:
        self.inner.close()


@dataclass
class Rig:
    harness: TrainingHarness
    publisher: Publisher
    sink: DroppingSink
    stream: Iterator[list[object]]
    probe: list[object]
    make_replica: Callable[[str], tuple[Replica, ReplicaHttpServer]]
    tombstones: int = 0


@pytest.fixture
def rig(tmp_path: Path, bootstrap: str, new_topic: Callable[[int], str]) -> Iterator[Rig]:
    fspec, mspec = transaction_specs()
    topic = new_topic(1)
    records = list(generate("transaction", 40 * BATCH, seed=3))
    events = events_of("transaction", records)
    # probe: early customers (their rows expire later) and late ones, plus unseen ids
    probe = events[:24] + events[-24:]
    stream = iter([events[i : i + BATCH] for i in range(0, len(events) - BATCH, BATCH)])
    harness = TrainingHarness(
        fspec, mspec, tmp_path / "trainer", table_overrides={"expire_after_steps": 4}
    ).open()
    sink = DroppingSink(KafkaDeltaSink(bootstrap, topic).start())
    settings = PublisherSettings(topic=topic, snapshot_every=1000, snapshot_interval_s=None)
    publisher = Publisher(
        bootstrap, topic, tmp_path / "snapshots", settings=settings, sink=sink
    ).start()
    replicas: list[tuple[Replica, ReplicaHttpServer]] = []

    def make_replica(name: str) -> tuple[Replica, ReplicaHttpServer]:
        replica = Replica(
            Blueprint(fspec, mspec, num_shards=2, dram_budget_bytes=4096),
            ReplicaSettings(
                topic=topic,
                snapshot_dir=str(tmp_path / "snapshots"),
                data_dir=str(tmp_path / name),
                resync_poll_s=0.1,
                maintain_every_s=0.05,
            ),
            bootstrap,
            name=name,
        ).start()
        server = ReplicaHttpServer(replica, "transaction", HttpSettings()).start()
        replicas.append((replica, server))
        return replica, server

    yield Rig(harness, publisher, sink, stream, probe, make_replica)
    for replica, server in replicas:
        server.close()
        replica.close()
    publisher.close()
    sink.close()
    harness.close()


def step(rig: Rig, steps: int = 2) -> None:
    for _ in range(steps):
        rig.harness.train(next(rig.stream))
        rig.harness.store.expire()


def publish(rig: Rig, snapshot: bool = False) -> int:
    report = rig.harness.publish(rig.publisher, rig.probe, snapshot=snapshot)
    assert report is not None
    rig.tombstones += report.tombstones
    return report.version


def check(rig: Rig, url: str, version: int) -> np.ndarray:
    assert wait_for_version(url, version) == version
    status, obj = http_call(url + "/predict", predict_body(rig.probe))
    assert status == 200, obj
    assert obj["version"] == version
    scores = np.asarray(obj["scores"], np.float64)
    want = rig.harness.recorded[version]
    assert scores.shape == want.shape
    assert np.max(np.abs(scores - want)) <= 1e-6, (version, np.max(np.abs(scores - want)))
    return scores


def test_replica_matches_trainer_across_versions_tombstones_restart_and_gap(rig: Rig) -> None:
    step(rig)
    v1 = publish(rig)  # first publish: snapshot + reset marker
    replica, server = rig.make_replica("r1")
    assert replica.wait_ready(30)
    first = check(rig, server.url, v1)

    versions = [v1]
    for _ in range(5):
        step(rig)
        versions.append(publish(rig))
        check(rig, server.url, versions[-1])
    last = check(rig, server.url, versions[-1])
    assert np.max(np.abs(last - first)) > 1e-3  # the model changed between versions
    # rows of probe customers expired on the trainer and were deleted on the replica too
    h = rig.harness
    probe_ids = h.model.store_ids(h.featurizer.sparse_ids(rig.probe))  # type: ignore[operator]
    expired = h.store.tombstones_since("tx", 0)
    assert rig.tombstones > 0 and np.isin(probe_ids["tx"], expired).any()
    assert replica.metrics.rejected("gap") == 0 and replica.resyncs == 1

    # restart: a new replica on the same directory bootstraps from the newest snapshot (v1,
    # the only one) and applies every delta since from the offset its manifest names
    server.close()
    replica.close()
    step(rig)
    v_restart = publish(rig)
    replica2, server2 = rig.make_replica("r1")
    check(rig, server2.url, v_restart)
    assert replica2.metrics.rejected("duplicate") == 0  # it started right after v1's marker

    # gap: a delta lost on its way; the replica keeps serving, then resyncs from a snapshot
    step(rig)
    rig.sink.drop_next = True
    lost = publish(rig)
    step(rig)
    after_gap = publish(rig)
    assert wait_for_version(server2.url, lost, timeout_s=1.0) == lost - 1  # still the old one
    check(rig, server2.url, lost - 1)
    step(rig)
    healed = publish(rig, snapshot=True)
    check(rig, server2.url, healed)
    assert replica2.metrics.rejected("gap") >= 1
    assert after_gap < healed and replica2.resyncs >= 2
