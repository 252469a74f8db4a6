"""The ``operators:`` section of a job's YAML: checkpoints, migration and their schedules.

The core receives frozen dataclasses and plain objects: :meth:`OperatorsConfig.to_schedules`
gives :class:`operators.scheduler.OperatorSchedule` tuples, :meth:`OperatorsConfig.to_scheduler`
an :class:`operators.scheduler.OperatorScheduler` wired to its operators.

::

    operators:
      checkpoint:
        dir: ./freshet-data/checkpoints  # default: <store.path>/checkpoints
        retention: 3                 # chains kept
        max_chain_length: 24         # then a new full checkpoint
        background: true             # write files off the training thread
      migration: {age: true}
      schedules:
        - {operator: tier_migration, trigger: {type: interval, seconds: 30}, jitter_seconds: 2}
        - {operator: incremental_checkpoint, trigger: {type: interval, seconds: 60}}
        - {operator: full_checkpoint, trigger: {type: cron, expr: "0 3 * * *"}}
        - {operator: expiry, trigger: {type: interval, seconds: 600}}
        - {operator: metrics_report, trigger: {type: interval, seconds: 15}}

>>> cfg = OperatorsConfig.model_validate({"schedules": [
...     {"operator": "expiry", "trigger": {"type": "interval", "seconds": 60}}]})
>>> cfg.to_schedules()[0].every
60.0
>>> OperatorsConfig.model_validate({"schedules": [{"operator": "expiry",
...     "trigger": {"type": "interval", "seconds": 60}, "colour": "red"}]})
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for OperatorsConfig
...
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from operators.base import Operator
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.ops import (
    CHECKPOINT_OPERATORS,
    FullCheckpoint,
    FullMode,
    IncrementalCheckpoint,
)
from operators.errors import ScheduleError
from operators.expiry import Expiry
from operators.metrics_report import MetricsReport
from operators.migration import TierMigration
from operators.scheduler import OperatorSchedule, OperatorScheduler, TriggerKind

OperatorName = Literal[
    "tier_migration", "incremental_checkpoint", "full_checkpoint", "expiry", "metrics_report"
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntervalTriggerConfig(_Section):
    """Fire every ``seconds``."""

    type: Literal["interval"] = Field(description="trigger kind")
    seconds: float = Field(gt=0, le=7 * 86400, description="seconds between two firings")


class CronTriggerConfig(_Section):
    """Fire on a five-field crontab expression, in UTC."""

    type: Literal["cron"] = Field(description="trigger kind")
    expr: str = Field(
        min_length=9, max_length=200, description="crontab: minute hour day month day-of-week"
    )

    @field_validator("expr")
    @classmethod
    def _valid_crontab(cls, expr: str) -> str:
        try:
            OperatorSchedule("cron", TriggerKind.CRON, expr)
        except ScheduleError as err:
            raise ValueError(str(err)) from err
        return expr


class ScheduleConfig(_Section):
    """When one operator runs (at the first training step boundary after its trigger)."""

    operator: OperatorName = Field(description="the operator to run")
    trigger: Annotated[
        IntervalTriggerConfig | CronTriggerConfig,
        Field(discriminator="type", description="interval or cron"),
    ]
    jitter_seconds: float | None = Field(
        default=None, ge=0, le=3600, description="delay each firing by up to this many seconds"
    )
    misfire_grace_seconds: float = Field(
        default=60.0, ge=1, le=86400, description="drop a firing later than this"
    )

    def to_schedule(self) -> OperatorSchedule:
        """The core's frozen dataclass."""
        if isinstance(self.trigger, IntervalTriggerConfig):
            kind, every = TriggerKind.INTERVAL, self.trigger.seconds
        else:
            kind, every = TriggerKind.CRON, self.trigger.expr  # type: ignore[assignment]
        return OperatorSchedule(
            self.operator, kind, every, self.jitter_seconds, self.misfire_grace_seconds
        )


class CheckpointConfig(_Section):
    """Where checkpoints go and how many are kept."""

    dir: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="checkpoint root directory (default: <store.path>/checkpoints)",
    )
    retention: int = Field(default=3, ge=1, le=1000, description="chains kept on disk")
    max_chain_length: int | None = Field(
        default=24, ge=1, le=10000, description="checkpoints per chain before a new full one"
    )
    rows_per_file: int = Field(
        default=1 << 20, ge=1024, le=1 << 26, description="rows in one .npy part"
    )
    background: bool = Field(default=True, description="write files off the training thread")
    full_mode: Literal["store", "compact"] = Field(
        default="store",
        description="full_checkpoint reads every row from the store, or compacts the chain",
    )

    def to_manager(self) -> CheckpointManager:
        """A :class:`CheckpointManager` (constructing it does no I/O; needs ``dir``)."""
        if self.dir is None:
            raise ValueError("checkpoint.dir is not set (a job puts it under its store path)")
        return CheckpointManager(self.dir, self.retention, self.rows_per_file)


class MigrationConfig(_Section):
    """How tier migration runs."""

    age: bool = Field(default=True, description="age LFU counts before each migration")
    scan_limit: int | None = Field(
        default=None, ge=1, le=1 << 40, description="cold rows scanned per shard per run"
    )


class OperatorsConfig(_Section):
    """The ``operators`` section."""

    checkpoint: CheckpointConfig | None = Field(
        default=None, description="needed when a checkpoint operator is scheduled"
    )
    migration: MigrationConfig = Field(
        default_factory=MigrationConfig, description="tier migration settings"
    )
    count_cold_rows: bool = Field(
        default=False, description="metrics_report counts RocksDB rows (iterates every key)"
    )
    schedules: list[ScheduleConfig] = Field(
        default_factory=list, max_length=16, description="one entry per scheduled operator"
    )

    @model_validator(mode="after")
    def _consistent(self) -> OperatorsConfig:
        names = [s.operator for s in self.schedules]
        if len(set(names)) != len(names):
            raise ValueError(f"each operator may be scheduled once, got {names}")
        if self.checkpoint is None and set(names) & set(CHECKPOINT_OPERATORS):
            raise ValueError("checkpoint operators are scheduled without a checkpoint section")
        return self

    def to_schedules(self) -> tuple[OperatorSchedule, ...]:
        """The schedules as frozen dataclasses."""
        return tuple(s.to_schedule() for s in self.schedules)

    def to_operators(self, manager: CheckpointManager | None) -> dict[str, Operator]:
        """One operator per scheduled name (checkpoint ones on ``manager``)."""
        out: dict[str, Operator] = {}
        for s in self.schedules:
            if s.operator == "tier_migration":
                out[s.operator] = TierMigration(self.migration.age, self.migration.scan_limit)
            elif s.operator == "expiry":
                out[s.operator] = Expiry()
            elif s.operator == "metrics_report":
                out[s.operator] = MetricsReport(self.count_cold_rows)
            else:
                assert manager is not None and self.checkpoint is not None
                ck = self.checkpoint
                if s.operator == "incremental_checkpoint":
                    out[s.operator] = IncrementalCheckpoint(
                        manager, ck.background, ck.max_chain_length
                    )
                else:
                    out[s.operator] = FullCheckpoint(manager, FullMode(ck.full_mode), ck.background)
        return out

    def to_scheduler(self, manager: CheckpointManager | None = None) -> OperatorScheduler:
        """An (unstarted) scheduler with every scheduled operator."""
        if manager is None and self.checkpoint is not None:
            manager = self.checkpoint.to_manager()
        return OperatorScheduler(self.to_schedules(), self.to_operators(manager))


def load_operators_config(path: str | Path) -> OperatorsConfig:
    """The ``operators:`` section of a YAML file (absent: no operators)."""
    with open(path, encoding="utf-8") as fh:
        data: Any = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return OperatorsConfig.model_validate(data.get("operators") or {})
