"""TrainerMetrics against a fake job: throttling, counters that survive restarts, rates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.training.exporter import QUALITY_COST_FACTOR, TrainerMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeMetrics:
    clock: Clock
    cost_s: float
    calls: int = 0

    def auc(self) -> float:
        self.calls += 1
        self.clock.now += self.cost_s  # the sort takes this long
        return 0.75

    def window_auc(self) -> float:
        return 0.8

    def log_loss(self) -> float:
        return 0.3


@dataclass
class FakeTrainer:
    metrics: FakeMetrics


@dataclass
class FakeSource:
    dead_letters: int = 0

    def snapshot(self) -> dict[tuple[str, int], int]:
        return {}


@dataclass
class FakeJob:
    trainer: FakeTrainer
    source: FakeSource = field(default_factory=FakeSource)
    store: Any = None
    config: Any = None


@dataclass
class Batch:
    events: list[int]


def value(m: TrainerMetrics, name: str) -> float:
    got = m.registry.get_sample_value(name)
    assert got is not None, name
    return got


def make(cost_s: float = 0.0) -> tuple[TrainerMetrics, FakeJob, Clock]:
    clock = Clock()
    job = FakeJob(FakeTrainer(FakeMetrics(clock, cost_s)))
    return TrainerMetrics(job, quality_every_s=5.0, clock=clock), job, clock  # type: ignore[arg-type]


def test_prequential_refresh_waits_for_the_interval() -> None:
    m, job, clock = make()
    for t in (0.0, 1.0, 4.9, 5.0, 9.0, 10.1):
        clock.now = t
        m.update()
    assert job.trainer.metrics.calls == 3  # at 0, 5 and 10.1
    assert value(m, "freshet_prequential_auc") == 0.75
    assert value(m, "freshet_prequential_window_auc") == 0.8


def test_expensive_refresh_backs_off_to_one_percent() -> None:
    m, job, clock = make(cost_s=1.0)
    m.update()  # costs 1 s: the next refresh is due QUALITY_COST_FACTOR s later
    clock.now = QUALITY_COST_FACTOR - 0.5
    m.update()
    assert job.trainer.metrics.calls == 1
    clock.now = QUALITY_COST_FACTOR
    m.update()
    assert job.trainer.metrics.calls == 2
    m.update(force=True)
    assert job.trainer.metrics.calls == 3


def test_dead_letters_counter_survives_a_new_source() -> None:
    m, job, _ = make()
    job.source.dead_letters = 3
    m.update()
    job.source = FakeSource(dead_letters=2)  # a new run counts from zero again
    m.update()
    assert value(m, "freshet_dead_letters_total") == 5


def test_events_and_rate_over_the_window() -> None:
    m, _, clock = make()
    for t in range(21):
        clock.now = float(t)
        m.on_batch(Batch(list(range(100))))  # type: ignore[arg-type]
        m.update()
    assert value(m, "freshet_events_trained_total") == 2100
    assert value(m, "freshet_events_per_second") == 100.0


def test_lag_is_nan_until_measured_and_durations_are_histograms() -> None:
    m, _, _ = make()
    assert value(m, "freshet_consumer_lag") != value(m, "freshet_consumer_lag")  # NaN
    m.observe_publish(0.2, version=7)
    m.observe_checkpoint(3.0)
    assert value(m, "freshet_published_version") == 7
    assert value(m, "freshet_publish_seconds_count") == 1
    assert value(m, "freshet_checkpoint_seconds_sum") == 3.0


def test_operator_reports_feed_checkpoint_and_publish_metrics() -> None:
    """The operators' and the publisher's reports are read between steps."""
    from collections import deque
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from operators.base import OperatorReport, Outcome

    def report(op: str, seconds: float, outcome: Outcome = Outcome.DONE) -> OperatorReport:
        return OperatorReport(op, outcome, datetime.now(UTC), seconds)

    m, _, _ = make()
    ops = SimpleNamespace(reports=deque(maxlen=2), report_count=0)
    publish = SimpleNamespace(published=0, last_report=None)
    m.operators, m.publisher = ops, publish  # type: ignore[assignment]
    for r in (
        report("incremental_checkpoint", 0.5, Outcome.SUBMITTED),
        report("tier_migration", 9.0),
        report("full_checkpoint", 0.25),
    ):
        ops.reports.append(r)
        ops.report_count += 1
    # three reports since the last update, but the deque keeps two: the oldest is lost
    m.update()
    assert value(m, "freshet_checkpoint_seconds_count") == 1
    assert value(m, "freshet_checkpoint_seconds_sum") == 0.25
    ops.reports.append(report("incremental_checkpoint", 0.5))
    ops.report_count += 1
    publish.published = 3
    publish.last_report = SimpleNamespace(seconds=0.1, version=17)
    m.update()
    m.update()  # nothing new: nothing counted twice
    assert value(m, "freshet_checkpoint_seconds_count") == 2
    assert value(m, "freshet_checkpoint_seconds_sum") == 0.75
    assert value(m, "freshet_published_version") == 17
    assert value(m, "freshet_publish_seconds_count") == 1
