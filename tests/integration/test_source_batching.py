"""KafkaSource on a real broker: batch closing, look-ahead, back-pressure, life cycle, errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from pipeline.errors import ConfigError, SourceError, SourceStateError
from pipeline.events.formats import read_messages
from pipeline.events.kinds import Event, decode
from pipeline.events.replay import keyed_by_index, replay
from pipeline.source.kafka import Assignment, KafkaSource, SourceBatch, SourceConfig, SourceState
from tests.integration.conftest import CRITEO_TRAIN

pytestmark = pytest.mark.integration


def manual(bootstrap: str, topic: str, **overrides: object) -> SourceConfig:
    settings: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "topics": (topic,),
        "kind": "ctr",
        "group_id": None,
        "assignment": Assignment.MANUAL,
        "max_events": 50,
        "max_wait_ms": 50,
    }
    settings.update(overrides)
    return SourceConfig(**settings)  # type: ignore[arg-type]


def fill(bootstrap: str, topic: str, n: int) -> int:
    messages = (m for _, m in zip(range(n), read_messages(CRITEO_TRAIN), strict=False))
    return replay(bootstrap, topic, keyed_by_index(messages), progress=False)


def test_batches_close_on_size_and_on_wait(bootstrap: str, new_topic: Callable[[int], str]) -> None:
    topic = new_topic(1)
    fill(bootstrap, topic, 105)
    with KafkaSource(manual(bootstrap, topic, max_events=50, max_wait_ms=300)) as source:
        sizes = []
        while sum(sizes) < 105:
            batch = source.next_batch(timeout_s=5.0)
            assert batch is not None
            sizes.append(len(batch))
            source.mark_trained(batch)
        assert sizes == [50, 50, 5]  # two full batches, then the remainder after max_wait
        assert source.next_batch(timeout_s=0.2) is None  # a timeout, not a block
        assert source.events_read == 105


def test_look_ahead_and_back_pressure(bootstrap: str, new_topic: Callable[[int], str]) -> None:
    topic = new_topic(2)
    total = fill(bootstrap, topic, 400)
    ready: list[int] = []
    config = manual(bootstrap, topic, max_events=20, queue_batches=3)
    source = KafkaSource(config)
    source.on_batch_ready(lambda b: ready.append(b.seq))
    with source:
        deadline = time.monotonic() + 10
        while source.buffered() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert source.buffered() == 3  # bounded: the thread waits, reading nothing more
        ahead = source.peek_ahead(5)
        assert [b.seq for b in ahead] == [0, 1, 2]
        assert ready[:3] == [0, 1, 2]
        first = source.next_batch(timeout_s=1.0)
        assert first is ahead[0]  # peeking does not take

        seen = [first]
        source.mark_trained(first)
        while sum(map(len, seen)) < total:
            batch = source.next_batch(timeout_s=5.0)
            assert batch is not None
            source.mark_trained(batch)
            seen.append(batch)
    keys = sorted(int(k) for b in seen for k in b.keys if k is not None)
    assert keys == list(range(total))  # pausing and resuming lost and doubled nothing
    assert ready == [b.seq for b in seen]


def test_life_cycle_and_misuse(bootstrap: str, new_topic: Callable[[int], str]) -> None:
    topic = new_topic(1)
    fill(bootstrap, topic, 60)
    source = KafkaSource(manual(bootstrap, topic, max_events=20))
    assert source.state is SourceState.NEW
    with pytest.raises(SourceStateError, match="while the source is new"):
        source.next_batch(timeout_s=0.1)
    source.start()
    assert source.state is SourceState.RUNNING
    with pytest.raises(SourceStateError):
        source.seek({(topic, 0): 0})  # only before start()
    with pytest.raises(SourceStateError):
        source.start()
    first = source.next_batch(timeout_s=5.0)
    second = source.next_batch(timeout_s=5.0)
    assert first is not None and second is not None
    with pytest.raises(SourceError, match="order"):
        source.mark_trained(second)  # out of order
    source.mark_trained(first)
    with pytest.raises(SourceError, match="order"):
        source.mark_trained(first)  # twice
    with pytest.raises(SourceError, match="group_id"):
        source.commit(source.snapshot())
    source.close()
    source.close()  # idempotent
    assert source.state is SourceState.CLOSED
    with pytest.raises(SourceStateError, match="closed"):
        source.next_batch(timeout_s=0.1)


def test_a_failing_decoder_surfaces_in_next_batch(
    bootstrap: str, new_topic: Callable[[int], str]
) -> None:
    topic = new_topic(1)
    fill(bootstrap, topic, 30)
    calls = 0

    def flaky(payload: bytes) -> Event:
        nonlocal calls
        calls += 1
        if calls > 10:
            raise RuntimeError("decoder bug")
        return decode("ctr", payload)

    with KafkaSource(manual(bootstrap, topic, max_events=5), decoder=flaky) as source:
        got: list[SourceBatch] = []
        with pytest.raises(SourceError, match="decoder bug"):
            for _ in range(20):
                batch = source.next_batch(timeout_s=2.0)
                if batch is not None:
                    got.append(batch)
        assert sum(map(len, got)) == 10  # batches closed before the failure are still handed out


def test_seek_in_manual_mode_starts_there(bootstrap: str, new_topic: Callable[[int], str]) -> None:
    topic = new_topic(1)
    fill(bootstrap, topic, 100)
    source = KafkaSource(manual(bootstrap, topic, max_events=100, max_wait_ms=200))
    source.seek({(topic, 0): 90})
    with source:
        batch = source.next_batch(timeout_s=5.0)
        assert batch is not None
        assert [k for k in batch.keys] == [str(i).encode() for i in range(90, 100)]


def test_snapshot_is_safe_to_read_while_training(
    bootstrap: str, new_topic: Callable[[int], str]
) -> None:
    topic = new_topic(1)
    total = fill(bootstrap, topic, 300)
    stop = threading.Event()
    snapshots: list[int] = []
    with KafkaSource(manual(bootstrap, topic, max_events=10)) as source:

        def watch() -> None:
            while not stop.is_set():
                snapshots.append(source.snapshot().get((topic, 0), 0))
                time.sleep(0.0005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        trained = 0
        while trained < total:
            batch = source.next_batch(timeout_s=5.0)
            assert batch is not None
            source.mark_trained(batch)
            trained += len(batch)
        stop.set()
        watcher.join()
        snapshots.append(source.snapshot()[(topic, 0)])
    assert snapshots == sorted(snapshots)  # offsets only grow
    assert snapshots[-1] == total


def test_config_is_checked_up_front() -> None:
    with pytest.raises(ConfigError, match="security_protocol"):
        SourceConfig(bootstrap_servers="x:1", topics=("t",), client_config={"linger_ms": 5})
    with pytest.raises(ConfigError, match="kind"):
        SourceConfig(bootstrap_servers="x:1", topics=("t",), kind="clicks")
    with pytest.raises(ConfigError, match="manual"):
        SourceConfig(bootstrap_servers="x:1", topics=("t",), partitions=(("t", 0),))
    with pytest.raises(ConfigError, match="group_id"):
        SourceConfig(bootstrap_servers="x:1", topics=("t",), group_id=None)
    with pytest.raises(ConfigError, match="fetch_max_wait_ms"):
        SourceConfig(bootstrap_servers="x:1", topics=("t",), fetch_max_wait_ms=0)
    ok = SourceConfig(
        bootstrap_servers="x:1",
        topics=("t",),
        client_config={"security_protocol": "SSL", "ssl_cafile": "/ca.pem"},
    )
    assert ok.client_config["ssl_cafile"] == "/ca.pem"
