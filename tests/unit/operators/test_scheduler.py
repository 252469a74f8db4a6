"""The scheduler: APScheduler fires, the trainer thread runs the operators between steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from embedding_store import EmbeddingStore, StoreConfig, TableConfig
from operators.base import Operator, OperatorContext, OperatorResult, Outcome
from operators.errors import ScheduleError
from operators.metrics import MetricsRegistry
from operators.scheduler import OperatorSchedule, OperatorScheduler, TriggerKind


class Recorder(Operator):
    """Counts its runs and the threads they ran on."""

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name  # type: ignore[misc]
        self.fail = fail
        self.threads: list[int] = []

    def execute(self, context: OperatorContext) -> OperatorResult:
        self.threads.append(threading.get_ident())
        if self.fail:
            raise RuntimeError("disk on fire")
        return OperatorResult(rows=1)


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[OperatorContext]:
    with EmbeddingStore(StoreConfig(str(tmp_path / "s"), (TableConfig("t", 2),), 1)) as store:
        yield OperatorContext(store, MetricsRegistry())


def test_interval_jobs_run_on_the_trainer_thread(ctx: OperatorContext) -> None:
    fast, slow = Recorder("fast"), Recorder("slow")
    schedules = [
        OperatorSchedule("fast", TriggerKind.INTERVAL, 0.1),
        OperatorSchedule("slow", TriggerKind.INTERVAL, 0.3, jitter=0.05),
    ]
    reports = []
    with OperatorScheduler(schedules, {"fast": fast, "slow": slow}) as scheduler:
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:  # the training loop
            time.sleep(0.02)  # one step
            reports.extend(scheduler.run_pending(ctx))
        fired = scheduler.fired()
    me = threading.get_ident()
    assert 5 <= len(fast.threads) <= 13, len(fast.threads)
    assert 2 <= len(slow.threads) <= 5, len(slow.threads)
    assert set(fast.threads) == set(slow.threads) == {me}
    assert len(reports) == len(fast.threads) + len(slow.threads)
    assert all(r.outcome is Outcome.DONE for r in reports)
    assert fired["fast"] >= len(fast.threads)
    assert ctx.metrics.get("operator_runs_total", operator="fast", outcome="done") == len(
        fast.threads
    )


def test_a_busy_trainer_runs_a_coalesced_operator_once(ctx: OperatorContext) -> None:
    op = Recorder("op")
    with OperatorScheduler([OperatorSchedule("op", TriggerKind.INTERVAL, 0.05)], {"op": op}) as s:
        time.sleep(0.5)  # a long step: the job fires several times meanwhile
        assert s.pending() == ("op",)
        assert len(s.run_pending(ctx)) == 1
        assert s.fired()["op"] >= 3
    assert len(op.threads) == 1


def test_an_operator_fired_while_the_boundary_runs_waits_for_the_next(
    ctx: OperatorContext,
) -> None:
    class Refires(Recorder):
        """Fires its own trigger while it runs, as an interval shorter than the run does."""

        def execute(self, context: OperatorContext) -> OperatorResult:
            if len(self.threads) < 5:  # bounded, so a scheduler that loops fails, not hangs
                scheduler.trigger(self.name)
            return super().execute(context)

    a, b = Refires("a"), Recorder("b")
    scheduler = OperatorScheduler([], {"a": a, "b": b})
    scheduler.trigger("a")
    scheduler.trigger("b")
    assert [r.operator for r in scheduler.run_pending(ctx)] == ["a", "b"]
    assert scheduler.pending() == ("a",)  # once per boundary, not in a loop
    assert [r.operator for r in scheduler.run_pending(ctx)] == ["a"]
    assert (len(a.threads), len(b.threads)) == (2, 1)


def test_a_failing_operator_is_reported_and_the_rest_still_run(ctx: OperatorContext) -> None:
    bad, good = Recorder("bad", fail=True), Recorder("good")
    scheduler = OperatorScheduler([], {"bad": bad, "good": good})
    scheduler.trigger("bad")
    scheduler.trigger("good")
    reports = scheduler.run_pending(ctx)
    assert [(r.operator, r.outcome) for r in reports] == [
        ("bad", Outcome.FAILED),
        ("good", Outcome.DONE),
    ]
    assert "disk on fire" in reports[0].message
    assert ctx.metrics.get("operator_runs_total", operator="bad", outcome="failed") == 1


def test_run_pending_limit_leaves_the_rest_for_the_next_boundary(ctx: OperatorContext) -> None:
    ops = {n: Recorder(n) for n in ("a", "b", "c")}
    scheduler = OperatorScheduler([], ops)
    for n in ("c", "a", "b"):
        scheduler.trigger(n)
    assert [r.operator for r in scheduler.run_pending(ctx, limit=2)] == ["c", "a"]
    assert scheduler.pending() == ("b",)


def test_schedules_are_validated() -> None:
    with pytest.raises(ScheduleError, match="seconds > 0"):
        OperatorSchedule("x", TriggerKind.INTERVAL, 0)
    with pytest.raises(ScheduleError, match="bad crontab"):
        OperatorSchedule("x", TriggerKind.CRON, "* * *")
    with pytest.raises(ScheduleError, match="needs an expression"):
        OperatorSchedule("x", TriggerKind.CRON, 5.0)
    with pytest.raises(ScheduleError, match="no such operator"):
        OperatorScheduler([OperatorSchedule("x", TriggerKind.INTERVAL, 1)], {})
    with pytest.raises(ScheduleError, match="scheduled once"):
        OperatorScheduler(
            [OperatorSchedule("x", TriggerKind.INTERVAL, 1)] * 2, {"x": Recorder("x")}
        )
    cron = OperatorSchedule("x", TriggerKind.CRON, "*/15 2 * * mon", jitter=30)
    trigger = cron.apscheduler_trigger()
    assert isinstance(trigger, CronTrigger) and trigger.jitter == 30
    assert "minute='*/15'" in str(trigger) and "day_of_week='mon'" in str(trigger)
    assert isinstance(
        OperatorSchedule("y", TriggerKind.INTERVAL, 2.5).apscheduler_trigger(), IntervalTrigger
    )


def test_next_run_times_are_timezone_aware() -> None:
    op = Recorder("op")
    with OperatorScheduler([OperatorSchedule("op", TriggerKind.INTERVAL, 60)], {"op": op}) as s:
        when = s.next_run_times()["op"]
    assert when is not None and when.utcoffset() is not None
