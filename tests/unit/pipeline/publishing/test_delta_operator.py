"""The DeltaPublish operator as a job's hooks: publishes when due, step time, watermarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.events.generators import generate
from pipeline.publishing.operator import CONSUMER, DeltaPublish
from pipeline.publishing.publisher import Publisher, PublisherSettings
from pipeline.testing.replicas import MemoryTopic, TrainingHarness, events_of, transaction_specs


class Marks:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def register(self, consumer: str) -> None:
        self.calls.append(("register", consumer))

    def advance(self, store: Any, consumer: str, version: int) -> None:
        self.calls.append((consumer, version))


class Job:
    """The hook lists and the attributes a TrainJob exposes."""

    def __init__(self, harness: TrainingHarness) -> None:
        self.harness = harness
        self.step_hooks: list[Any] = []
        self.batch_hooks: list[Any] = []

    @property
    def store(self) -> Any:
        return self.harness.store

    @property
    def model(self) -> Any:
        return self.harness.model

    @property
    def featurizer(self) -> Any:
        return self.harness.featurizer

    def train(self, events: list[Any]) -> None:
        result = self.harness.train(events)
        for hook in self.batch_hooks:
            hook(events, result)
        for hook in self.step_hooks:
            hook(self)


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
    job = Job(harness)
    op = DeltaPublish(publisher, watermarks=marks).attach(job)
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
