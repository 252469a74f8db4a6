"""What runs beside the step loop: scheduled operators, the publisher, the metrics exporter.

One small protocol, called on the training thread (so the store, the dense parameters and
the featurizer state a plugin reads all belong to one step)::

    TrainJob.open()  ── restore ──► plugin.open(job)          in the order given
    TrainJob.run()   ── step i ───► plugin.at_step(job, idle=False)
                     ── no data on any rank for QUIET_S (each poll) ─► at_step(job, idle=True)
    TrainJob.close() ── final checkpoint ─► plugin.close(job, clean)   in reverse order

With N ranks every rank calls the same hooks at the same step, so a plugin may take part in
collectives there (``job.world``). A plugin reads the job through :class:`JobView` and never
assigns to it; the job never imports a plugin (the CLI wires them, see
:mod:`pipeline.cli.train`).

>>> class Count:
...     steps = 0
...     def open(self, job): pass
...     def at_step(self, job, idle): self.steps += not idle
...     def close(self, job, clean): pass
>>> isinstance(Count(), JobPlugin)
True
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from embedding_store import EmbeddingStore
from operators.base import OperatorContext
from operators.checkpoint.manager import CheckpointManager
from operators.checkpoint.write_log import WriteLogWatermarks
from operators.metrics import MetricsRegistry
from pipeline.features.featurizer import Featurizer
from pipeline.training.spec import JobSpec
from pipeline.training.trainer import OnlineTrainer
from pipeline.training.world import World


class SourcePositions(Protocol):
    """The part of a source plugins read."""

    @property
    def dead_letters(self) -> int:
        """Malformed events sent to the dead-letter topic so far."""
        ...

    def snapshot(self) -> Mapping[tuple[str, int], int]:
        """Next offset per partition after the last trained batch."""
        ...


class JobView(Protocol):
    """What a plugin may read of the job (one rank's view)."""

    @property
    def spec(self) -> JobSpec:
        """The job's spec."""
        ...

    @property
    def world(self) -> World:
        """The rank of this process among the job's ranks."""
        ...

    @property
    def store(self) -> EmbeddingStore | None:
        """The store of this rank (its own rows; the whole table with one rank)."""
        ...

    @property
    def model(self) -> Any:
        """The model (``state_dict()``: dense parameters, identical on every rank)."""
        ...

    @property
    def featurizer(self) -> Featurizer | None:
        """The featurizer of this rank."""
        ...

    @property
    def trainer(self) -> OnlineTrainer | None:
        """The trainer (its prequential metrics are this rank's)."""
        ...

    @property
    def source(self) -> SourcePositions | None:
        """The source of this rank (``None`` before ``run``)."""
        ...

    @property
    def watermarks(self) -> WriteLogWatermarks:
        """Write-log consumers of this rank's store (checkpoints, publisher)."""
        ...

    @property
    def events_trained(self) -> int:
        """Events trained in the model's lineage, all ranks (restored checkpoints included)."""
        ...

    @property
    def rank_events(self) -> int:
        """Events this rank trained in this process."""
        ...

    @property
    def last_step_time(self) -> datetime | None:
        """When the latest training step ended (timezone-aware)."""
        ...

    @property
    def checkpoint_manager(self) -> CheckpointManager | None:
        """The one-rank checkpoint writer (``None``: coordinated N-rank checkpoints)."""
        ...

    def operator_context(self, metrics: MetricsRegistry | None = None) -> OperatorContext:
        """What scheduled operators see now (this rank's store)."""
        ...

    def checkpoint(self, full: bool = False) -> int:
        """Write a checkpoint now (collective with N ranks); its store version."""
        ...


@runtime_checkable
class JobPlugin(Protocol):
    """Something the job runs at its open, at step boundaries and at its close."""

    def open(self, job: JobView) -> None:
        """The job is open (store, model, trainer; restored if a checkpoint existed)."""
        ...

    def at_step(self, job: JobView, idle: bool) -> None:
        """A step boundary; ``idle``: no rank has had data for a while (nothing trained)."""
        ...

    def close(self, job: JobView, clean: bool) -> None:
        """The job is closing (``clean``: a normal stop; the final checkpoint is written)."""
        ...
