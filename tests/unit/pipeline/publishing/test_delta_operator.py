"""The DeltaPublish plugin: publishes when due, on idle and at a clean stop; step time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.events.generators import generate
from pipeline.publishing.operator import CONSUMER, DeltaPublish
from pipeline.publishing.publisher import Publisher, PublisherSettings
from pipeline.testing.replicas import MemoryTopic, TrainingHarness, events_of, transaction_specs
from pipeline.training.world import World


class Marks:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def register(self, consumer: str) -> None:
        self.calls.append(("register", consumer))

    def advance(self, store: Any, consumer: str, version: int) -> None:
        self.calls.append((consumer, version))


class Job:
    """What a TrainJob shows its plugins, over a one-rank training harness."""

    def __init__(self, harness: TrainingHarness, plugins: list[Any], marks: Marks) -> None:
        self.harness = harness
        self.plugins = plugins
        self.world = World.solo()
        self.watermarks = marks
        for plugin in plugins:
            plugin.open(self)

    @property
    def store(self) -> Any:
        return self.harness.store

    @property
    def model(self) -> Any:
        return self.harness.model

    @property
    def featurizer(self) -> Any:
        return self.harness.featurizer

    @property
    def last_step_time(self) -> Any:
        return self.harness.last_step_time

    def train(self, events: list[Any]) -> None:
        self.harness.train(events)
        for plugin in self.plugins:
            plugin.at_step(self, idle=False)

    def idle(self) -> None:
        for plugin in self.plugins:
            plugin.at_step(self, idle=True)

    def close(self) -> None:
        for plugin in self.plugins:
            plugin.close(self, clean=True)


def test_operator_publishes_between_steps(tmp_path: Path) -> None:
    topic = MemoryTopic()
    clock = [0.0]
    publisher = Publisher(
        "unused:9092",
        "d",
        tmp_path / "snaps",
        settings=PublisherSettings(topic="d", interval_s=1.0, snapshot_interval_s=None),
        sink=topic,
        clock=lambda: clock[0],
    ).start()
    harness = TrainingHarness(*transaction_specs(), tmp_path / "t", num_shards=1).open()
    marks = Marks()
    op = DeltaPublish(publisher)
    job = Job(harness, [op], marks)
    events = events_of("transaction", list(generate("transaction", 400, seed=1)))
    try:
        versions = []
        for i in range(8):
            clock[0] = i * 0.5  # one publish per second of this clock: every other step
            job.train(events[i * 50 : (i + 1) * 50])
            versions.append(op.last_report.version if op.last_report else None)
        assert versions == [1, 1, 2, 2, 3, 3, 4, 4]
        assert op.published == 4 and op.seconds > 0
        report = op.last_report
        assert report is not None and report.store_version == harness.store.version - 1
        assert report.step_time <= harness.last_step_time  # the batch hook's time, not later
        assert marks.calls[0] == ("register", CONSUMER)
        assert [v for c, v in marks.calls[1:]] == [1, 3, 5, 7]
        assert np.all(np.diff([v for c, v in marks.calls[1:]]) > 0)
    finally:
        harness.close()


def test_last_trained_version_is_published_on_idle_and_at_a_clean_stop(tmp_path: Path) -> None:
    """Issue 17 (5): a replica must not stay behind when the stream idles or the job stops."""
    topic = MemoryTopic()
    clock = [0.0]
    publisher = Publisher(
        "unused:9092",
        "d",
        tmp_path / "snaps",
        settings=PublisherSettings(topic="d", interval_s=3600.0, snapshot_interval_s=None),
        sink=topic,
        clock=lambda: clock[0],
    ).start()
    harness = TrainingHarness(*transaction_specs(), tmp_path / "t", num_shards=1).open()
    op = DeltaPublish(publisher)
    job = Job(harness, [op], Marks())
    events = events_of("transaction", list(generate("transaction", 300, seed=2)))
    try:
        for i in range(3):  # the interval is an hour: only the first step publishes
            job.train(events[i * 50 : (i + 1) * 50])
        assert op.last_report is not None and op.last_report.store_version == 1
        job.idle()
        assert op.last_report.version == 2 and op.last_report.store_version == 3
        job.idle()  # nothing trained since: no new version
        assert op.published == 2
        job.train(events[150:200])
        assert op.published == 2  # not due
        job.close()
        assert op.published == 3 and op.last_report.store_version == harness.store.version == 4
    finally:
        harness.close()
