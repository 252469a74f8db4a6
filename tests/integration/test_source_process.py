"""ProcessSource on the real broker: what only a child process can get wrong.

Delivery, dead letters and resume are the KafkaSource tests, parametrized over both sources
(test_source_exactly_once, test_source_dead_letters, test_source_resume). Here: a killed or
failing child is a clear error, close() stops it, secrets stay off its command line, and a
TrainJob trains to the same model with ``decode_in: process`` as with ``thread``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from configs.job import JobConfig
from pipeline.errors import SourceError, SourceStateError
from pipeline.events.formats import read_messages
from pipeline.events.generators import generate
from pipeline.events.replay import keyed_by_index, replay
from pipeline.source.kafka import Assignment, SourceConfig, SourceState
from pipeline.source.process import ProcessSource
from pipeline.training.job import TrainJob
from tests.integration.conftest import CRITEO_TRAIN

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def manual(bootstrap: str, topic: str, **changes: object) -> SourceConfig:
    base: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "topics": (topic,),
        "kind": "ctr",
        "group_id": f"{topic}-g",
        "assignment": Assignment.MANUAL,
        "max_events": 100,
        "max_wait_ms": 50,
    }
    return SourceConfig(**(base | changes))  # type: ignore[arg-type]


def first_batch(source: ProcessSource, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = source.next_batch(timeout_s=0.5)
        if batch is not None:
            source.mark_trained(batch)
            return
    pytest.fail("no batch arrived")


def test_a_killed_source_process_is_a_clear_error(
    bootstrap: str, new_topic: Callable[[int], str]
) -> None:
    topic = new_topic(1)
    replay(bootstrap, topic, keyed_by_index(read_messages(CRITEO_TRAIN)), progress=False)
    with ProcessSource(manual(bootstrap, topic, queue_batches=2)) as source:
        first_batch(source)
        pid = source.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(SourceError, match=rf"source process \(pid {pid}\).*killed by SIGKILL"):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # batches already here are still handed out
                batch = source.next_batch(timeout_s=0.5)
                if batch is not None:
                    source.mark_trained(batch)
        with pytest.raises(SourceError, match="not running"):
            source.commit(source.snapshot())
    assert source.state is SourceState.CLOSED


def test_a_failed_start_raises_the_childs_error(
    bootstrap: str, new_topic: Callable[[int], str]
) -> None:
    config = manual(bootstrap, "no-such-topic-here", create_dead_letter_topics=False)
    source = ProcessSource(config)
    with pytest.raises(SourceError, match="topic 'no-such-topic-here' does not exist"):
        source.start()
    assert source.state is SourceState.CLOSED
    with pytest.raises(SourceStateError):
        source.next_batch(timeout_s=0.1)


def test_close_stops_the_child_and_the_password_never_reaches_its_command_line(
    bootstrap: str, new_topic: Callable[[int], str]
) -> None:
    topic = new_topic(1)
    replay(bootstrap, topic, keyed_by_index(read_messages(CRITEO_TRAIN)), progress=False)
    secret = "s3cret-for-the-child-only"
    config = manual(bootstrap, topic, client_config={"sasl_plain_password": secret})
    source = ProcessSource(config).start()
    pid = source.pid
    assert pid is not None
    try:
        first_batch(source)
        for name in ("cmdline", "environ"):
            assert secret.encode() not in Path(f"/proc/{pid}/{name}").read_bytes()
        source.commit(source.snapshot())  # a command the child answers
        assert repr(source) == f"ProcessSource({topic}, running, pid {pid})"
    finally:
        source.close(timeout_s=10)
    assert source._proc is not None and source._proc.returncode == 0  # stopped, not killed
    with pytest.raises(SourceStateError):
        source.next_batch()


def job_config(
    bootstrap: str, topic: str, store: Path, decode_in: str, config: str = "fraud.yaml"
) -> JobConfig:
    raw = yaml.safe_load((REPO / "configs" / config).read_text())
    raw["source"].update(
        bootstrap_servers=[bootstrap],
        topic=topic,
        group_id=f"{topic}-{decode_in}",
        assignment="manual",
        max_events=200,
        max_wait_ms=600_000,  # batches close on size only: both runs see the same batches
        decode_in=decode_in,
    )
    raw["store"] = {"path": str(store), "num_shards": 2}
    return JobConfig.model_validate(raw)


def train(config: JobConfig, events: int) -> dict[str, np.ndarray]:
    job = TrainJob(config.to_spec())
    with job:
        summary = job.run(max_events=events, idle_timeout_s=60)
        assert summary.events == events
        assert job.source is not None and job.store is not None
        out = {f"dense:{n}": p.detach().numpy().copy() for n, p in job.model.named_parameters()}
        for table in job.store.tables:
            chunks = list(job.store.export_rows(table.name))
            ids = np.concatenate([c[0] for c in chunks])
            rows = np.concatenate([c[1] for c in chunks])
            order = np.argsort(ids)
            out[f"{table.name}:ids"] = ids[order]
            for field in rows.dtype.names or ():
                if field != "last_time":  # wall clock of the run, not training state
                    out[f"{table.name}:{field}"] = rows[field][order]
        out["offsets"] = np.array(sorted(job.source.snapshot().values()))
        out["auc"] = np.array([summary.auc])
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "config"),
    [
        # fraud events: timestamps, aggregates and calendar features cross as columns
        ("transaction", "fraud.yaml"),
        # CTR events: 26 string categories, hashed by the source process (hash_fields)
        ("ctr", "ctr.yaml"),
    ],
)
def test_train_job_with_a_source_process_trains_the_same_model(
    bootstrap: str, new_topic: Callable[[int], str], tmp_path: Path, kind: str, config: str
) -> None:
    events = 2000
    topic = new_topic(1)
    assert replay(bootstrap, topic, generate(kind, events, 7), progress=False) == events
    thread = train(job_config(bootstrap, topic, tmp_path / "thread", "thread", config), events)
    process_config = job_config(bootstrap, topic, tmp_path / "process", "process", config)
    hashed = TrainJob(process_config.to_spec())._source_config().hash_fields
    assert len(hashed) == (26 if kind == "ctr" else 0)
    process = train(process_config, events)
    assert thread.keys() == process.keys()
    for name, want in thread.items():
        got = process[name]
        assert got.shape == want.shape, name
        if np.issubdtype(want.dtype, np.floating):
            assert float(np.max(np.abs(got - want), initial=0.0)) <= 1e-6, name
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)
    assert thread["offsets"].tolist() == [events]
