"""The replica's state machine on an in-memory delta topic: follow, reject, resync, verify."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.events.generators import generate
from pipeline.publishing.chunks import Signer
from pipeline.publishing.errors import ReplicaStateError
from pipeline.publishing.publisher import Publisher, PublisherSettings
from pipeline.serving.model import Blueprint
from pipeline.serving.replica import Replica, ReplicaSettings, ReplicaState
from pipeline.testing.replicas import (
    FaultPlan,
    FaultySink,
    MemoryTopic,
    TrainingHarness,
    events_of,
    transaction_specs,
)

BATCH = 64
EVENTS = events_of("transaction", list(generate("transaction", 30 * BATCH, seed=7)))
PROBE = EVENTS[:8] + EVENTS[-8:]


@dataclass
class World:
    tmp: Path
    harness: TrainingHarness
    topic: MemoryTopic
    batches: Iterator[list[object]]
    replicas: list[Replica]

    def publisher(self, sink: object | None = None, signer: Signer | None = None) -> Publisher:
        settings = PublisherSettings(topic="d", snapshot_every=1000, snapshot_interval_s=None)
        return Publisher(
            "unused:9092",
            "d",
            self.tmp / "snaps",
            settings=settings,
            sink=sink or self.topic,  # type: ignore[arg-type]
            signer=signer,
        ).start()

    def replica(self, name: str = "r", signer: Signer | None = None) -> Replica:
        fspec, mspec = transaction_specs()
        replica = Replica(
            Blueprint(fspec, mspec, num_shards=1),
            ReplicaSettings(
                topic="d",
                snapshot_dir=str(self.tmp / "snaps"),
                data_dir=str(self.tmp / name),
                poll_timeout_ms=5,
                resync_poll_s=0.02,
            ),
            "unused:9092",
            name=name,
            signer=signer,
            source=self.topic.source,
        ).start()
        self.replicas.append(replica)
        return replica

    def step(self, publisher: Publisher, snapshot: bool = False) -> int:
        self.harness.train(next(self.batches))
        report = self.harness.publish(publisher, PROBE, snapshot=snapshot)
        assert report is not None
        return report.version


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    harness = TrainingHarness(*transaction_specs(), tmp_path / "trainer", num_shards=1).open()
    batches = iter([EVENTS[i : i + BATCH] for i in range(0, len(EVENTS), BATCH)])
    w = World(tmp_path, harness, MemoryTopic(), batches, [])
    yield w
    for r in w.replicas:
        r.close()
    harness.close()


def until(cond: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return False


def served(replica: Replica, harness: TrainingHarness, version: int) -> None:
    assert until(lambda: replica.version == version), (replica.version, version)
    prediction = replica.predict(PROBE)
    assert prediction.version == version
    assert np.max(np.abs(prediction.scores - harness.recorded[version])) <= 1e-6


def test_bootstrap_then_follow(world: World) -> None:
    replica = world.replica()
    with pytest.raises(ReplicaStateError, match="bootstrapping"):
        replica.predict(PROBE)
    assert not replica.ready
    pub = world.publisher()
    for _ in range(4):
        v = world.step(pub)
        served(replica, world.harness, v)
    assert replica.metrics.applied._value.get() == 3  # the first came from the snapshot
    assert replica.state is ReplicaState.SERVING and replica.resyncs == 1
    assert len(replica.freshness) == 4 and (replica.freshness_seconds() >= 0).all()


def test_duplicates_are_dropped(world: World) -> None:
    pub = world.publisher()
    world.step(pub)
    replica = world.replica()
    v = world.step(pub)
    served(replica, world.harness, v)
    world.topic.send(list(world.topic.messages))  # everything again
    assert until(lambda: replica.metrics.rejected("duplicate") >= 1)
    served(replica, world.harness, v)
    assert replica.state is ReplicaState.SERVING


def test_gap_keeps_serving_then_resyncs_from_the_next_snapshot(world: World) -> None:
    sink = FaultySink(world.topic, FaultPlan(drop=1.0))
    sink.enabled = False
    pub = world.publisher(sink)
    replica = world.replica()
    v = world.step(pub)
    served(replica, world.harness, v)
    sink.enabled = True
    lost = world.step(pub)
    sink.enabled = False
    after = world.step(pub)
    assert until(lambda: replica.state is ReplicaState.BEHIND)
    assert replica.metrics.rejected("gap") == 1
    served(replica, world.harness, lost - 1)  # the old version, whole
    assert replica.ready  # behind, not unready
    snap = world.step(pub, snapshot=True)
    served(replica, world.harness, snap)
    assert replica.state is ReplicaState.SERVING and after < snap
    nxt = world.step(pub)
    served(replica, world.harness, nxt)


def test_corrupted_delta_is_rejected_and_healed(world: World) -> None:
    sink = FaultySink(world.topic, FaultPlan(corrupt=1.0, seed=3))
    sink.enabled = False
    pub = world.publisher(sink)
    replica = world.replica()
    served(replica, world.harness, world.step(pub))
    sink.enabled = True
    bad = world.step(pub)
    sink.enabled = False
    assert until(lambda: replica.state is ReplicaState.BEHIND)
    assert replica.metrics.rejected("checksum") + replica.metrics.rejected("format") == 1
    served(replica, world.harness, bad - 1)
    served(replica, world.harness, world.step(pub, snapshot=True))


def test_publisher_restart_sends_a_reset_and_replicas_follow(world: World) -> None:
    pub = world.publisher()
    replica = world.replica()
    world.step(pub)
    served(replica, world.harness, world.step(pub))
    restarted = world.publisher()  # a new run: snapshot + reset marker
    v = world.step(restarted)
    served(replica, world.harness, v)
    assert replica.metrics.rejected("gap") == 1 and replica.resyncs == 2
    served(replica, world.harness, world.step(restarted))


def test_signed_deltas_only(world: World) -> None:
    key = Signer(b"k")
    unsigned_replica = world.replica("u")
    signed = world.replica("s", signer=key)
    pub = world.publisher(signer=key)
    v = world.step(pub)
    served(signed, world.harness, v)
    served(unsigned_replica, world.harness, v)  # no key configured: signatures not required
    forged = world.publisher(signer=Signer(b"wrong"))
    world.step(forged)
    assert until(lambda: signed.metrics.rejected("signature") >= 1)
    assert signed.version == v  # the forged snapshot's manifest does not verify either
    assert until(lambda: unsigned_replica.version == v + 1)  # no key: it trusts anyone


def test_unsigned_snapshots_never_bootstrap_a_signed_replica(world: World) -> None:
    signed = world.replica("s", signer=Signer(b"k"))
    world.step(world.publisher())
    time.sleep(0.3)
    assert not signed.ready and signed.version is None


def test_a_corrupt_newest_snapshot_falls_back_to_the_newest_that_loads(world: World) -> None:
    """Issue 17 item 6: the replica becomes ready from an older snapshot, then catches up."""
    pub = world.publisher()
    first = world.step(pub)  # v1: snapshot
    world.step(pub)
    newest = world.step(pub, snapshot=True)
    last = world.step(pub)
    snaps = sorted((world.tmp / "snaps").glob("v*"))
    assert [int(p.name[1:]) for p in snaps] == [first, newest]
    rows_file = sorted(snaps[-1].glob("rows-*"))[0]
    data = bytearray(rows_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: its sha256 no longer matches the manifest
    rows_file.write_bytes(bytes(data))

    replica = world.replica()
    assert replica.wait_ready(10)
    served(replica, world.harness, last)  # from v1's snapshot, then every delta after it
    assert replica.resyncs == 1
    assert list(replica._unloadable) == [snaps[-1].name]
    assert "differs from the manifest" in replica._unloadable[snaps[-1].name]


def test_no_loadable_snapshot_names_every_one_that_failed(world: World) -> None:
    pub = world.publisher()
    world.step(pub)
    for rows_file in (world.tmp / "snaps").glob("v*/rows-*"):
        rows_file.write_bytes(b"garbage")
    replica = world.replica()
    assert until(lambda: replica.bootstrap_retries >= 3)
    assert not replica.ready
    reason = replica.waiting_for
    assert reason is not None and "no loadable snapshot" in reason and "v0000" in reason, reason
