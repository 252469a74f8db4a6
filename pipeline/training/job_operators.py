"""The scheduled operators of a job as a plugin: migration, expiry, checkpoints, reports.

::

    open(job):     APScheduler starts (it only decides *when*; operators run on the
                   training thread)
    at_step(job):  scheduler.run_pending(job.operator_context())   this rank's local store
                   N ranks (or world checkpoints): a checkpoint firing on rank 0 is a request;
                   world.from_root([full, incremental]) ─► every rank job.checkpoint(full)
    close(job):    the scheduler stops (the job writes the final checkpoint itself)

Migration and expiry run on each rank's own store, when each rank's schedule fires.
Checkpoints of N ranks must be taken at the same step by every rank, so only rank 0's
schedule fires them and every rank follows its decision. With one rank the checkpoint
operators write with the job's checkpoint manager (in the background if configured).

>>> from operators.scheduler import OperatorSchedule, TriggerKind
>>> spec = OperatorsSpec((OperatorSchedule("expiry", TriggerKind.INTERVAL, 60.0),))
>>> sorted(build_operators(spec, None, None))
['expiry']
"""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import Protocol

from operators.base import Operator, OperatorContext, OperatorReport, OperatorResult, Outcome
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.ops import (
    CHECKPOINT_OPERATORS,
    FullCheckpoint,
    FullMode,
    IncrementalCheckpoint,
)
from operators.expiry import Expiry
from operators.metrics import MetricsRegistry
from operators.metrics_report import MetricsReport
from operators.migration import TierMigration
from operators.scheduler import OperatorScheduler
from pipeline.training.plugin import JobView
from pipeline.training.spec import CheckpointSpec, OperatorsSpec

log = logging.getLogger(__name__)
REPORTS_KEPT = 256


class _Requests(Protocol):
    def request(self, full: bool) -> None: ...


class CheckpointRequest(Operator):
    """Stands for a checkpoint operator when N ranks must agree: records that it fired."""

    def __init__(self, name: str, requests: _Requests) -> None:
        self.name = name  # type: ignore[misc]
        self.requests = requests

    def execute(self, context: OperatorContext) -> OperatorResult:
        """Record the request; the plugin writes the checkpoint on every rank."""
        self.requests.request(self.name == "full_checkpoint")
        return OperatorResult(Outcome.SKIPPED, message="requested: every rank writes it next")


def build_operators(
    spec: OperatorsSpec,
    manager: CheckpointManager | None,
    checkpoint: CheckpointSpec | None,
    requests: _Requests | None = None,
) -> dict[str, Operator]:
    """One operator per scheduled name; checkpoint ones on ``manager`` (or as requests)."""
    out: dict[str, Operator] = {}
    for s in spec.schedules:
        if s.name == "tier_migration":
            out[s.name] = TierMigration(spec.migration_age, spec.migration_scan_limit)
        elif s.name == "expiry":
            out[s.name] = Expiry()
        elif s.name == "metrics_report":
            out[s.name] = MetricsReport(spec.count_cold_rows)
        elif requests is not None:
            out[s.name] = CheckpointRequest(s.name, requests)
        else:
            assert manager is not None and checkpoint is not None, s.name
            if s.name == "incremental_checkpoint":
                out[s.name] = IncrementalCheckpoint(
                    manager, checkpoint.background, checkpoint.max_chain_length
                )
            else:
                out[s.name] = FullCheckpoint(
                    manager, FullMode(checkpoint.full_mode), checkpoint.background
                )
    return out


class ScheduledOperators:
    """The job's ``operators:`` schedules as a plugin (see the module docstring).

    ``reports`` keeps the latest operator reports (bounded: a job runs for months);
    ``report_count`` counts all of them.
    """

    name = "operators"

    def __init__(self, spec: OperatorsSpec) -> None:
        self.spec = spec
        self.scheduler: OperatorScheduler | None = None
        self.metrics = MetricsRegistry()
        self.reports: deque[OperatorReport] = deque(maxlen=REPORTS_KEPT)
        self.report_count = 0
        self._coordinated = False
        self._checkpoints_scheduled = False
        self._want = [0, 0]  # [full, incremental] requested on this rank

    def request(self, full: bool) -> None:
        """A checkpoint operator fired on this rank (N ranks: only rank 0's count)."""
        self._want[0 if full else 1] = 1

    def open(self, job: JobView) -> None:
        """Build the operators on this rank and start the schedule."""
        manager = job.checkpoint_manager
        self._coordinated = manager is None
        names = {s.name for s in self.spec.schedules}
        self._checkpoints_scheduled = bool(names & set(CHECKPOINT_OPERATORS))
        schedules = self.spec.schedules
        if self._coordinated and job.world.rank != 0:  # rank 0 decides when to checkpoint
            schedules = tuple(s for s in schedules if s.name not in CHECKPOINT_OPERATORS)
        if not schedules:
            return
        operators = build_operators(
            self.spec,
            manager,
            job.spec.checkpoints(),
            self if self._coordinated else None,
        )
        self.scheduler = OperatorScheduler(
            schedules, {s.name: operators[s.name] for s in schedules}
        ).start()

    def at_step(self, job: JobView, idle: bool) -> None:
        """Run what is pending on this rank; N ranks: checkpoint together if rank 0 asks."""
        if self.scheduler is not None:
            reports = self.scheduler.run_pending(job.operator_context(self.metrics))
            self.reports.extend(reports)
            self.report_count += len(reports)
        if self._coordinated and self._checkpoints_scheduled:
            full, incremental = job.world.from_root(self._want)
            self._want = [0, 0]
            if full or incremental:
                started, t0 = datetime.now(UTC), time.perf_counter()
                version = job.checkpoint(full=bool(full))
                report = OperatorReport(
                    operator="full_checkpoint" if full else "incremental_checkpoint",
                    outcome=Outcome.DONE,
                    started_at=started,
                    seconds=time.perf_counter() - t0,
                    details={"version": version, "ranks": job.world.size},
                )
                self.reports.append(report)
                self.report_count += 1

    def close(self, job: JobView, clean: bool) -> None:
        """Stop the schedule (pending operators are dropped)."""
        if self.scheduler is not None:
            self.scheduler.shutdown()
            self.scheduler = None
