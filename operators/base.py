"""The operator interface: one job, run at a trainer step boundary, reported as a metric + log.

::

    trainer thread, between two steps:
        report = operator.run(context)     context: store, metrics, dense/offsets callables
          ├── execute(context) ─► OperatorResult (what the subclass did)
          ├── metrics: operator_runs_total, operator_rows_total, operator_bytes_total,
          │            operator_seconds, operator_last_run_timestamp_seconds  {operator=...}
          └── one INFO log line: "operator <name> <outcome>: rows=.. bytes=.. in .. s; details"

The trainer provides the context; nothing here is global.

>>> import tempfile
>>> from embedding_store import EmbeddingStore, StoreConfig, TableConfig
>>> class Noop(Operator):
...     name = "noop"
...     def execute(self, context):
...         return OperatorResult(rows=3, details={"version": context.store.version})
>>> with tempfile.TemporaryDirectory() as d:
...     with EmbeddingStore(StoreConfig(d, (TableConfig("t", 2),), 1)) as store:
...         ctx = OperatorContext(store, MetricsRegistry())
...         report = Noop().run(ctx)
>>> report.outcome.value, report.rows, ctx.metrics.get("operator_rows_total", operator="noop")
('done', 3, 3.0)
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, ClassVar

from embedding_store import EmbeddingStore
from operators.checkpoint.dense_state import DenseValue
from operators.metrics import MetricsRegistry

log = logging.getLogger(__name__)

Detail = float | int | str


def _empty() -> Mapping[str, Any]:
    return {}


class Outcome(Enum):
    """How one operator run ended."""

    DONE = "done"
    SUBMITTED = "submitted"  # handed to a background thread (a checkpoint being written)
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class OperatorContext:
    """What an operator may touch at a step boundary; the trainer builds it.

    ``dense_state()`` returns the dense parameters and optimizer state as named arrays or
    tensors (see :func:`operators.checkpoint.dense_state.flatten_tree`), ``source_offsets()`` the
    offsets of the next unread event per partition, ``extra()`` free JSON for checkpoints.
    """

    store: EmbeddingStore
    metrics: MetricsRegistry
    dense_state: Callable[[], Mapping[str, DenseValue]] = _empty
    source_offsets: Callable[[], Mapping[str, Any]] = _empty
    config_hash: str = ""
    extra: Callable[[], Mapping[str, Any]] = _empty


@dataclass(frozen=True)
class OperatorResult:
    """What an operator's ``execute`` did."""

    outcome: Outcome = Outcome.DONE
    rows: int = 0
    bytes: int = 0
    details: Mapping[str, Detail] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class OperatorReport:
    """One run of one operator: when, how long, what it moved, how it ended."""

    operator: str
    outcome: Outcome
    started_at: datetime
    seconds: float
    rows: int = 0
    bytes: int = 0
    details: Mapping[str, Detail] = field(default_factory=dict)
    message: str = ""

    def summary(self) -> str:
        """The report as one log line."""
        details = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(self.details.items())
        )
        text = (
            f"operator {self.operator} {self.outcome.value}: rows={self.rows} "
            f"bytes={self.bytes} in {self.seconds:.3f} s"
        )
        if details:
            text += f"; {details}"
        if self.message:
            text += f" ({self.message})"
        return text


class Operator(ABC):
    """One maintenance job, run on the trainer thread at a step boundary."""

    name: ClassVar[str]

    @abstractmethod
    def execute(self, context: OperatorContext) -> OperatorResult:
        """Do the job once."""

    def run(self, context: OperatorContext) -> OperatorReport:
        """``execute`` timed, recorded as metrics and logged; errors are recorded and raised."""
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        try:
            result = self.execute(context)
        except Exception:
            seconds = time.perf_counter() - t0
            context.metrics.inc("operator_runs_total", operator=self.name, outcome="failed")
            context.metrics.set("operator_seconds", seconds, operator=self.name)
            log.exception("operator %s failed after %.3f s", self.name, seconds)
            raise
        report = OperatorReport(
            operator=self.name,
            outcome=result.outcome,
            started_at=started,
            seconds=time.perf_counter() - t0,
            rows=result.rows,
            bytes=result.bytes,
            details=dict(result.details),
            message=result.message,
        )
        record(report, context.metrics)
        log.info("%s", report.summary())
        return report


def record(report: OperatorReport, metrics: MetricsRegistry) -> None:
    """Record one report's generic metrics."""
    op = report.operator
    metrics.inc("operator_runs_total", operator=op, outcome=report.outcome.value)
    metrics.inc("operator_rows_total", report.rows, operator=op)
    metrics.inc("operator_bytes_total", report.bytes, operator=op)
    metrics.set("operator_seconds", report.seconds, operator=op)
    metrics.set("operator_last_run_timestamp_seconds", report.started_at.timestamp(), operator=op)
