"""What one training job needs, as typed frozen dataclasses (``JobConfig.to_spec()`` makes it).

The job core never sees the YAML or pydantic: ``configs/`` validates the file, reads the
secrets it names (Kafka password, signing key) and converts it; the CLI passes the result on::

    job.yaml ─► configs.job.JobConfig ─► .to_spec() ─► JobSpec ─► TrainJob(spec, world, plugins)
                 (pydantic, the edge)                   ├ source      SourceSpec (+ client config)
                                                        ├ features    FeatureSpec
                                                        ├ model       ModelSpec
                                                        ├ store       StoreSpec
                                                        ├ training    TrainingSpec
                                                        ├ checkpoint  CheckpointSpec | None
                                                        ├ operators   OperatorsSpec (schedules)
                                                        ├ publish     PublishSpec | None
                                                        ├ metrics     MetricsSpec | None
                                                        └ config_hash what a checkpoint must match

A job without ``checkpoint`` still checkpoints when it stops cleanly, into
``<store.path>/checkpoints`` (:meth:`JobSpec.checkpoints`), so a restart resumes where it
stopped.

>>> from pipeline.features.spec import CategoricalSpec, FeatureSpec
>>> from pipeline.training.models import ModelSpec
>>> spec = JobSpec(
...     kind="ctr",
...     source=SourceSpec(("127.0.0.1:9092",), "clicks"),
...     features=FeatureSpec(sparse=(CategoricalSpec("c1", "cat", "c1"),)),
...     model=ModelSpec(kind="logistic"),
...     store=StoreSpec("/data/store"),
... )
>>> spec.checkpoints().dir, spec.checkpoints().default
('/data/store/checkpoints', True)
>>> spec.with_checkpoints("/ckpt", every_steps=5).checkpoints().every_steps
5
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from operators.scheduler import OperatorSchedule
from pipeline.events.schema import EventSchema
from pipeline.features.spec import FeatureSpec
from pipeline.features.state_budget import StateBudget
from pipeline.publishing.chunks import Signer
from pipeline.publishing.publisher import PublisherSettings
from pipeline.training.models import ModelSpec

DEFAULT_CHECKPOINT_DIR = "checkpoints"
"""Where a job without ``operators.checkpoint`` checkpoints: under its store path."""


def _no_options() -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True)
class SourceSpec:
    """The Kafka source: where events come from and how they are batched."""

    bootstrap_servers: tuple[str, ...]
    topic: str
    group_id: str = "freshet"
    assignment: Literal["group", "manual"] = "group"
    max_events: int = 1024
    max_wait_ms: int = 200
    queue_batches: int = 8
    dead_letter_topic: str | None = None
    session_timeout_ms: int = 10_000
    decode_in: Literal["thread", "process"] = "process"
    record_reader: Literal["fast", "kafka-python"] = "fast"
    broker_wait_s: float = 30.0
    client_config: Mapping[str, Any] = field(default_factory=_no_options)
    """kafka-python security keyword arguments (the password already read)."""


@dataclass(frozen=True)
class StoreSpec:
    """The embedding store: where, how sharded, RocksDB options, per-table overrides."""

    path: str
    num_shards: int = 4
    lfu_decay: float = 0.5
    rocks_options: Mapping[str, Any] = field(default_factory=_no_options)
    table_overrides: Mapping[str, Any] = field(default_factory=_no_options)
    on_disk_error: Literal["stop", "pause"] = "stop"
    disk_retry_s: float = 5.0


@dataclass(frozen=True)
class TrainingSpec:
    """How the loop consumes batches and when it stops."""

    prefetch_batches: int = 2
    idle_timeout_s: float = 0.0
    max_events: int | None = None
    auc_window: int = 10_000
    torch_threads: int | None = 1
    """torch intra-op threads (``torch.set_num_threads`` when the job opens); None: torch's."""


@dataclass(frozen=True)
class CheckpointSpec:
    """Where checkpoints go and how; ``every_steps`` > 0 also writes one every that many steps.

    ``default`` marks the directory chosen for a job that configured none.
    """

    dir: str
    retention: int = 3
    max_chain_length: int | None = 24
    rows_per_file: int = 1 << 20
    background: bool = True
    full_mode: Literal["store", "compact"] = "store"
    every_steps: int = 0
    default: bool = False


@dataclass(frozen=True)
class OperatorsSpec:
    """The scheduled operators (migration, checkpoints, expiry, metrics report)."""

    schedules: tuple[OperatorSchedule, ...] = ()
    migration_age: bool = True
    migration_scan_limit: int | None = None
    count_cold_rows: bool = False


@dataclass(frozen=True)
class PublishSpec:
    """Delta publishing: the topic (in ``settings``), the snapshot directory, the signer."""

    bootstrap: str
    snapshot_dir: str
    settings: PublisherSettings
    signer: Signer | None = None
    client_config: Mapping[str, Any] = field(default_factory=_no_options)


@dataclass(frozen=True)
class MetricsSpec:
    """The trainer's ``/metrics``: rank r listens on ``port + r`` (``port`` 0: free ports)."""

    port: int
    addr: str = "127.0.0.1"

    def port_of(self, rank: int) -> int:
        """The port rank ``rank`` listens on.

        >>> MetricsSpec(9400).port_of(1), MetricsSpec(0).port_of(3)
        (9401, 0)
        """
        return self.port + rank if self.port else 0


@dataclass(frozen=True)
class JobSpec:
    """Everything one training job needs (see the module docstring)."""

    kind: str
    source: SourceSpec
    features: FeatureSpec
    model: ModelSpec
    store: StoreSpec
    schema: EventSchema | None = None
    """The stream's declared (or shipped) event schema; ``None``: the built-in ``kind``."""
    training: TrainingSpec = field(default_factory=TrainingSpec)
    feature_state: StateBudget = field(default_factory=StateBudget)
    """The featurizer state's budget and expiry (unbounded by default)."""
    checkpoint: CheckpointSpec | None = None
    operators: OperatorsSpec = field(default_factory=OperatorsSpec)
    publish: PublishSpec | None = None
    metrics: MetricsSpec | None = None
    config_hash: str = ""

    def checkpoints(self) -> CheckpointSpec:
        """The configured checkpoints, else ``<store.path>/checkpoints`` (written at stop)."""
        if self.checkpoint is not None:
            return self.checkpoint
        return CheckpointSpec(
            os.path.join(self.store.path, DEFAULT_CHECKPOINT_DIR), retention=2, default=True
        )

    def with_checkpoints(self, dir: str | None = None, every_steps: int = 0) -> JobSpec:
        """A copy with checkpoints under ``dir`` (default: as configured) every N steps."""
        base = self.checkpoints()
        if dir is not None:
            base = replace(base, dir=dir, default=False)
        if every_steps:
            base = replace(base, every_steps=every_steps)
        return replace(self, checkpoint=base)

    def with_store_path(self, path: str) -> JobSpec:
        """A copy with the store (and a default checkpoint directory) moved to ``path``."""
        return replace(self, store=replace(self.store, path=path))
