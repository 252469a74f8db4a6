"""Scheduled maintenance operators (tier migration, checkpoints, expiry, publishing).

::

    operators/
      base.py             Operator, OperatorContext, OperatorReport, Outcome
      scheduler.py        OperatorSchedule, OperatorScheduler (APScheduler decides when,
                          the trainer runs pending operators at a step boundary)
      migration.py        TierMigration        expiry.py           Expiry
      metrics_report.py   MetricsReport        metrics.py          MetricsRegistry
      failpoints.py       named crash points for tests
      errors.py           OperatorError and its subclasses
      checkpoint/         CheckpointManager (chains of full + incremental checkpoints),
                          IncrementalCheckpoint, FullCheckpoint (ops.py), chain.py, format.py,
                          writer.py, reader.py, snapshot.py, restore.py, chain_merge.py,
                          dense_state.py, store_schema.py, write_log.py, durable_io.py,
                          distributed.py (N ranks)
"""

from operators.base import Operator, OperatorContext, OperatorReport, OperatorResult, Outcome
from operators.checkpoint.chain import CheckpointInfo
from operators.checkpoint.format import CheckpointKind
from operators.checkpoint.manager import CheckpointHandle, CheckpointManager
from operators.checkpoint.ops import FullCheckpoint, FullMode, IncrementalCheckpoint
from operators.checkpoint.reader import VerificationProblem
from operators.checkpoint.restore import RestoredState
from operators.errors import OperatorError
from operators.expiry import Expiry
from operators.metrics import MetricsRegistry
from operators.metrics_report import MetricsReport
from operators.migration import TierMigration
from operators.scheduler import OperatorSchedule, OperatorScheduler, TriggerKind

__all__ = [
    "CheckpointHandle",
    "CheckpointInfo",
    "CheckpointKind",
    "CheckpointManager",
    "Expiry",
    "FullCheckpoint",
    "FullMode",
    "IncrementalCheckpoint",
    "MetricsRegistry",
    "MetricsReport",
    "Operator",
    "OperatorContext",
    "OperatorError",
    "OperatorReport",
    "OperatorResult",
    "OperatorSchedule",
    "OperatorScheduler",
    "Outcome",
    "RestoredState",
    "TierMigration",
    "TriggerKind",
    "VerificationProblem",
]
