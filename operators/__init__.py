"""Scheduled maintenance operators (tier migration, checkpoints, expiry, publishing).

::

    operators/
      base.py             Operator, OperatorContext, OperatorReport, Outcome
      scheduler.py        OperatorSchedule, OperatorScheduler (APScheduler decides when,
                          the trainer runs pending operators at a step boundary)
      migration.py        TierMigration        expiry.py           Expiry
      checkpoint_ops.py   IncrementalCheckpoint, FullCheckpoint
      metrics_report.py   MetricsReport        metrics.py          MetricsRegistry
      checkpoint.py       CheckpointManager (chains of full + incremental checkpoints)
      chain.py, checkpoint_format.py, checkpoint_writer.py, checkpoint_reader.py,
      snapshot.py, restore.py, chain_merge.py, dense_state.py, store_schema.py,
      write_log.py, durable_io.py, errors.py
"""

from operators.base import Operator, OperatorContext, OperatorReport, OperatorResult, Outcome
from operators.chain import CheckpointInfo
from operators.checkpoint import CheckpointHandle, CheckpointManager
from operators.checkpoint_format import CheckpointKind
from operators.checkpoint_ops import FullCheckpoint, FullMode, IncrementalCheckpoint
from operators.checkpoint_reader import VerificationProblem
from operators.errors import OperatorError
from operators.expiry import Expiry
from operators.metrics import MetricsRegistry
from operators.metrics_report import MetricsReport
from operators.migration import TierMigration
from operators.restore import RestoredState
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
