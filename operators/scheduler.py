"""When operators run: APScheduler decides *when*, the trainer thread decides *where*.

Operators must act at a step boundary (design decision 3), and only the trainer knows where
one is. So an APScheduler job does not run its operator: it puts the operator's name on a
thread-safe queue of pending runs, and the trainer drains that queue between two steps::

    APScheduler thread                         trainer thread
    ─ interval / cron trigger fires ─┐         ─ step k ─┤ run_pending(context) ├─ step k+1 ─
      (jitter, coalesce,             │                     ▲  runs each pending operator,
       misfire_grace_time,           └── enqueue(name) ────┘  in order, at the boundary
       max_instances=1)                  (deduplicated: a name is pending at most once)

``max_instances=1`` and ``coalesce`` keep APScheduler from piling up missed runs; the queue
does the same on our side: while the trainer is busy with a long step, a job that fires
again is already pending, so it runs once. ``trigger(name)`` enqueues by hand (tests, CLI).
An operator that raises is logged and reported as FAILED; the trainer goes on. The exception is
the store's disk failing (:class:`~embedding_store.errors.StorageError`): it propagates, so the
job stops or pauses as configured instead of checkpointing a store that cannot write.

>>> from operators.base import Operator, OperatorContext, OperatorResult
>>> class Count(Operator):
...     name = "count"
...     runs = 0
...     def execute(self, context):
...         Count.runs += 1
...         return OperatorResult()
>>> scheduler = OperatorScheduler([OperatorSchedule("count", TriggerKind.INTERVAL, 3600)],
...                               {"count": Count()})
>>> scheduler.trigger("count"); scheduler.trigger("count")
>>> scheduler.pending()
('count',)
>>> [r.operator for r in scheduler.run_pending(context=None)], Count.runs
(['count'], 1)
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from types import TracebackType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from embedding_store.errors import StorageError
from operators.base import Operator, OperatorContext, OperatorReport, Outcome
from operators.errors import ScheduleError

log = logging.getLogger(__name__)


class TriggerKind(Enum):
    """Fire every ``seconds``, or on a crontab expression."""

    INTERVAL = "interval"
    CRON = "cron"


@dataclass(frozen=True)
class OperatorSchedule:
    """When to run the operator called ``name``.

    ``every`` is seconds for an interval trigger or a five-field crontab expression
    (``"*/15 * * * *"``, UTC) for a cron trigger; ``jitter`` delays each firing by up to that
    many seconds; a firing later than ``misfire_grace_seconds`` is dropped.
    """

    name: str
    trigger: TriggerKind
    every: float | str
    jitter: float | None = None
    misfire_grace_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.trigger is TriggerKind.INTERVAL:
            if isinstance(self.every, str) or not self.every > 0:
                raise ScheduleError(self.name, f"an interval needs seconds > 0, got {self.every!r}")
        elif not isinstance(self.every, str):
            raise ScheduleError(
                self.name, f"a cron trigger needs an expression, got {self.every!r}"
            )
        else:
            try:
                CronTrigger.from_crontab(self.every, timezone=UTC)
            except ValueError as err:
                raise ScheduleError(self.name, f"bad crontab {self.every!r}: {err}") from err
        if self.jitter is not None and self.jitter < 0:
            raise ScheduleError(self.name, f"jitter must be >= 0, got {self.jitter}")
        if not self.misfire_grace_seconds > 0:
            raise ScheduleError(self.name, "misfire_grace_seconds must be > 0")

    def apscheduler_trigger(self) -> IntervalTrigger | CronTrigger:
        """The APScheduler 3 trigger for this schedule."""
        jitter = self.jitter if self.jitter else None
        if self.trigger is TriggerKind.INTERVAL:
            assert not isinstance(self.every, str)
            return IntervalTrigger(seconds=self.every, jitter=jitter, timezone=UTC)
        assert isinstance(self.every, str)
        return CronTrigger(**_cron_fields(self.every), jitter=jitter, timezone=UTC)


def _cron_fields(expr: str) -> dict[str, str]:
    minute, hour, day, month, day_of_week = expr.split()
    return {
        "minute": minute,
        "hour": hour,
        "day": day,
        "month": month,
        "day_of_week": day_of_week,
    }


class OperatorScheduler:
    """APScheduler jobs that enqueue operators; the trainer runs them with ``run_pending``.

    Constructing checks the schedules and starts nothing; ``start()`` starts the
    APScheduler thread, ``shutdown()`` stops it (also as a context manager).
    """

    def __init__(
        self, schedules: Sequence[OperatorSchedule], operators: Mapping[str, Operator]
    ) -> None:
        for s in schedules:
            if s.name not in operators:
                raise ScheduleError(s.name, f"no such operator; known: {sorted(operators)}")
        names = [s.name for s in schedules]
        if len(set(names)) != len(names):
            raise ScheduleError(",".join(names), "each operator may be scheduled once")
        self.schedules = tuple(schedules)
        self.operators = dict(operators)
        self._queue: deque[str] = deque()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._fired: dict[str, int] = dict.fromkeys(self.operators, 0)
        self._scheduler: Any = None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> OperatorScheduler:
        """Start the APScheduler thread with one job per schedule."""
        if self._scheduler is not None:
            return self
        scheduler = BackgroundScheduler(timezone=UTC)
        for s in self.schedules:
            scheduler.add_job(
                self.trigger,
                s.apscheduler_trigger(),
                args=(s.name,),
                id=s.name,
                name=f"enqueue {s.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, round(s.misfire_grace_seconds)),
            )
        scheduler.start()
        self._scheduler = scheduler
        log.info("operator scheduler started: %s", ", ".join(self._describe()) or "no jobs")
        return self

    def _describe(self) -> list[str]:
        return [f"{s.name} ({s.trigger.value} {s.every})" for s in self.schedules]

    def shutdown(self) -> None:
        """Stop the APScheduler thread (pending operators stay queued)."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None

    def __enter__(self) -> OperatorScheduler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def next_run_times(self) -> dict[str, datetime | None]:
        """When each job fires next (None before ``start()`` or once finished)."""
        if self._scheduler is None:
            return dict.fromkeys((s.name for s in self.schedules), None)
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs()}

    # -- queue ---------------------------------------------------------------
    def trigger(self, name: str) -> None:
        """Mark operator ``name`` pending (a no-op if it already is). Thread-safe."""
        if name not in self.operators:
            raise ScheduleError(name, f"no such operator; known: {sorted(self.operators)}")
        with self._lock:
            self._fired[name] += 1
            if name in self._pending:
                return
            self._pending.add(name)
            self._queue.append(name)

    def pending(self) -> tuple[str, ...]:
        """Operators waiting for the next step boundary, in firing order."""
        with self._lock:
            return tuple(self._queue)

    def fired(self) -> dict[str, int]:
        """How many times each operator's trigger fired (coalesced ones included)."""
        with self._lock:
            return dict(self._fired)

    def run_pending(
        self, context: OperatorContext, limit: int | None = None
    ) -> list[OperatorReport]:
        """Run the pending operators on this thread (call between two training steps).

        Only what was queued when the call began runs: an operator that fires again while
        these run (a short interval, a long operator) waits for the next boundary instead
        of running twice in one. ``limit`` bounds how many run now; the rest wait too.
        """
        reports: list[OperatorReport] = []
        with self._lock:
            queued = len(self._queue)  # fires append behind these
        for _ in range(queued if limit is None else min(queued, limit)):
            with self._lock:
                if not self._queue:
                    break
                name = self._queue.popleft()
                self._pending.discard(name)
            operator = self.operators[name]
            started = datetime.now(UTC)
            try:
                reports.append(operator.run(context))
            except StorageError:
                raise  # the store's disk failed: the job decides (stop or pause), not the schedule
            except Exception as err:  # the trainer goes on; run() logged and counted it
                reports.append(
                    OperatorReport(
                        operator=name,
                        outcome=Outcome.FAILED,
                        started_at=started,
                        seconds=(datetime.now(UTC) - started).total_seconds(),
                        message=f"{type(err).__name__}: {err}",
                    )
                )
        return reports
