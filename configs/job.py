"""The whole training job in one validated YAML file (the edge: the core gets dataclasses).

::

    kind: transaction                 # a shipped schema (transaction | ctr), or:
    schema: {name: clicks, fields: {...}}   # declared fields (configs.schema), or a path
    source:   {bootstrap_servers: [...], topic: events, group_id: freshet, max_events: 1024}
    store:    {path: ./freshet-data/store, num_shards: 4}
    training: {prefetch_batches: 2}
    features: {...}                   # configs.features.FeaturesConfig
    model:    {...}                   # configs.features.ModelConfig
    baseline: {...}                   # optional, for the prequential benchmark

Every section forbids unknown keys and bounds every field. Environment variables override
the file: ``FRESHET_SOURCE__TOPIC=clicks`` sets ``source.topic`` (``__`` separates levels).

>>> cfg = JobConfig.model_validate({"kind": "ctr", "source": {"topic": "t"},
...     "features": {"sparse": [{"type": "categorical", "name": "c1", "table": "cat",
...     "field": "c1"}]}, "model": {"type": "logistic"}})
>>> cfg.source.topic, cfg.store.num_shards
('t', 4)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from configs.embedservice import RemoteSection
from configs.features import FeaturesConfig, ModelConfig, schema_problems
from configs.operators import OperatorsConfig
from configs.schema import SHIPPED_SCHEMAS, SchemaConfig, relative_to, resolve_schema
from configs.security import SecurityConfig
from configs.serving import PublishConfig, ServeConfig
from embedding_store.config import SstConfig
from pipeline.events.schema import EventSchema
from pipeline.training.spec import (
    DEFAULT_CHECKPOINT_DIR,
    CheckpointSpec,
    JobSpec,
    MetricsSpec,
    OperatorsSpec,
    PublishSpec,
    SourceSpec,
    StoreSpec,
    TrainingSpec,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSection(_Section):
    """Where events come from."""

    bootstrap_servers: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:9092"],
        min_length=1,
        max_length=64,
        description="Kafka bootstrap servers host:port",
    )
    topic: str = Field(min_length=1, max_length=249, description="events topic")
    group_id: str = Field(default="freshet", min_length=1, max_length=255, description="group")
    assignment: Literal["group", "manual"] = Field(
        default="group", description="consumer group or manual partition assignment"
    )
    max_events: int = Field(default=1024, ge=1, le=1_000_000, description="events per batch")
    max_wait_ms: int = Field(default=200, ge=1, le=600_000, description="close a batch after")
    queue_batches: int = Field(default=8, ge=1, le=1024, description="batches polled ahead")
    dead_letter_topic: str | None = Field(
        default=None, max_length=249, description="dead letters (default <topic>.dlq)"
    )
    session_timeout_ms: int = Field(default=10_000, ge=1000, le=300_000, description="group")
    broker_wait_s: float = Field(
        default=30.0,
        ge=0.0,
        le=3600.0,
        description="wait this long for a bootstrap server at start, then exit 4 with one line",
    )
    decode_in: Literal["thread", "process"] = Field(
        default="process",
        description=(
            "where messages are polled, parsed and validated: a source process of its own "
            "(the trainer's interpreter lock is left to features and training; "
            "pipeline.source.process) or a thread of the trainer process; ranks of "
            "freshet train --nproc N always use a thread"
        ),
    )
    record_reader: Literal["fast", "kafka-python"] = Field(
        default="fast",
        description=(
            "how fetched record batches become records: pipeline.source.records (the same "
            "records for about half the CPU) or kafka-python's own reader"
        ),
    )
    security: SecurityConfig = Field(default_factory=SecurityConfig, description="TLS / SASL")


class SstSection(_Section):
    """How RocksDB lays out and reads the cold tier's files (``embedding_store.SstConfig``)."""

    block_size: int = Field(default=4096, ge=256, le=1 << 20, description="data block bytes")
    compression: Literal["none", "snappy", "lz4", "zstd"] = Field(
        default="none", description="block compression (embeddings hardly compress)"
    )
    bloom_bits_per_key: int = Field(
        default=10, ge=0, le=64, description="Bloom filter bits per key on files and memtables"
    )
    hash_index: bool = Field(default=False, description="a hash index in each data block")
    verify_checksums: bool = Field(default=True, description="check every block read")
    fill_cache: bool = Field(
        default=False, description="keep blocks that cold reads load in the block cache"
    )

    def to_config(self) -> SstConfig:
        """The store's ``SstConfig``.

        >>> SstSection(block_size=2048).to_config().block_size
        2048
        """
        return SstConfig(**self.model_dump())


class StoreSection(_Section):
    """Where and how the embedding store lives."""

    path: str = Field(default="./freshet-data/store", max_length=4096, description="directory")
    num_shards: int = Field(default=4, ge=1, le=1024, description="shards by id hash")
    hot_rows: int | None = Field(
        default=None, ge=0, description="DRAM budget per table in rows (none: all in DRAM)"
    )
    lfu_decay: float = Field(default=0.5, gt=0, le=1, description="LFU aging factor")
    write_buffer_mb: int = Field(default=16, ge=1, le=4096, description="RocksDB memtable")
    block_cache_mb: int = Field(
        default=32, ge=0, le=1 << 20, description="RocksDB block cache shared by all shards"
    )
    memtable_budget_mb: int | None = Field(
        default=64, ge=1, le=1 << 20, description="all RocksDB memtables together (none: no cap)"
    )

    sst: SstSection = Field(default_factory=SstSection, description="RocksDB file layout")
    slab_rows: int | None = Field(
        default=None,
        ge=1,
        le=1 << 40,
        description=(
            "slab (SSD) tier between DRAM and RocksDB, per table in rows (none: no slab); "
            "a cache rebuilt from RocksDB, its files discarded at every start"
        ),
    )
    slab_path: str | None = Field(
        default=None, max_length=4096, description="directory of slab files (none: <path>/slab)"
    )
    slab_resident_mb: int | None = Field(
        default=None,
        ge=1,
        le=1 << 20,
        description="slab pages mapped per shard-table before they are handed back (none: no cap)",
    )

    staleness: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description=(
            "bounded staleness S for trainers sharing the store: no read is more than S steps "
            "behind the slowest trainer (0: synchronous)"
        ),
    )

    def rocks_options(self) -> dict[str, Any]:
        """``StoreConfig`` keyword arguments beyond path, tables and shards.

        RocksDB's memory bounds and file layout, the slab's, and the staleness bound.

        >>> opts = StoreSection(staleness=2).rocks_options()
        >>> opts["memtable_budget_bytes"] >> 20, opts["staleness"]
        (64, 2)
        """
        budget = self.memtable_budget_mb
        resident = self.slab_resident_mb
        return {
            "slab_path": self.slab_path,
            "slab_resident_bytes": None if resident is None else resident << 20,
            "staleness": self.staleness,
            "write_buffer_bytes": self.write_buffer_mb << 20,
            "block_cache_bytes": self.block_cache_mb << 20,
            "memtable_budget_bytes": None if budget is None else budget << 20,
            "sst": self.sst.to_config(),
        }

    on_disk_error: Literal["stop", "pause"] = Field(
        default="stop",
        description=(
            "when RocksDB cannot write (disk full, read-only): stop (exit code 3, no checkpoint "
            "written) or pause (drop the state since the last checkpoint, retry every "
            "disk_retry_s, then resume from that checkpoint)"
        ),
    )
    disk_retry_s: float = Field(
        default=5.0, gt=0, le=3600, description="pause: seconds between writability probes"
    )
    admit_after: int = Field(
        default=1, ge=1, le=1_000_000, description="an id gets a row after this many sightings"
    )
    expire_after_steps: int | None = Field(
        default=None, ge=1, description="expiry drops rows unseen for this many steps"
    )
    expire_after_seconds: float | None = Field(
        default=None, gt=0, description="expiry drops rows unseen for this many seconds"
    )

    def table_overrides(self) -> dict[str, Any]:
        """Per-table settings this section applies to every model table (for ``replace``).

        >>> StoreSection(hot_rows=10, expire_after_steps=5).table_overrides()
        {'admit_after': 1, 'expire_after_steps': 5, 'hot_rows': 10}
        >>> StoreSection(hot_rows=10, slab_rows=90).table_overrides()["slab_rows"]
        90
        """
        out: dict[str, Any] = {"admit_after": self.admit_after}
        for key in ("expire_after_steps", "expire_after_seconds", "hot_rows", "slab_rows"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


class TrainingSection(_Section):
    """How the trainer consumes batches."""

    prefetch_batches: int = Field(default=2, ge=0, le=64, description="look-ahead batches")
    idle_timeout_s: float = Field(
        default=0.0, ge=0, le=86_400, description="stop after this long without events (0: never)"
    )
    max_events: int | None = Field(default=None, ge=1, description="stop after this many")
    auc_window: int = Field(default=10_000, ge=10, le=10_000_000, description="sliding AUC")
    torch_threads: int | None = Field(
        default=1,
        ge=1,
        le=1024,
        description="torch intra-op threads of the trainer (null: torch's default, one per "
        "core); 1 by default: at the batch sizes of online training a second thread made "
        "every batch 2-5x slower on a shared 2-core machine (freshet bench batches)",
    )


class JobConfig(BaseSettings):
    """A training job: source, store, training, features, model (and optional baseline)."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix="FRESHET_",
        env_nested_delimiter="__",
        populate_by_name=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_schema(cls, raw: Any) -> Any:
        """``kind: ctr`` alone means ``schema: ctr``; a schema given by name or path is read."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        given = raw.get("schema", raw.get("event_schema"))
        raw.pop("event_schema", None)
        kind = raw.get("kind")
        if given is None and isinstance(kind, str) and kind:
            if kind not in SHIPPED_SCHEMAS:
                raise ValueError(
                    f"kind {kind!r} is not a shipped schema {list(SHIPPED_SCHEMAS)}: declare "
                    "its fields in a schema: section"
                )
            given = kind
        if given is None:
            raise ValueError("give kind: (transaction | ctr) or a schema: section")
        raw["schema"] = resolve_schema(given)
        return raw

    @model_validator(mode="after")
    def _features_fit_the_schema(self) -> JobConfig:
        schema = self.schema_spec()
        problems = schema_problems(self.features, schema)
        if problems:
            at, message = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise PydanticCustomError(
                "schema_mismatch", "{message}", {"message": message + more, "at": at}
            )
        self.features.bind_schema(schema)
        return self

    @property
    def event_kind(self) -> str:
        """The event kind: ``kind``, or the schema's name."""
        return self.kind or self.schema_spec().name

    def schema_spec(self) -> EventSchema:
        """The declared (or shipped) schema of the stream, frozen."""
        assert self.event_schema is not None  # filled by _resolve_schema
        return self.event_schema.to_schema()

    kind: str = Field(
        default="",
        pattern=r"^([A-Za-z][A-Za-z0-9_.-]*)?$",
        max_length=64,
        description=(
            "event kind of the source topic: a shipped schema (transaction | ctr), a shorthand "
            "for schema: <kind>; with a schema: section, defaults to the schema's name"
        ),
    )
    event_schema: SchemaConfig | None = Field(
        default=None,
        alias="schema",
        description=(
            "declared event fields (inline, a shipped schema's name or a YAML path); the "
            "validator is generated from it (configs.schema)"
        ),
    )
    source: SourceSection = Field(description="Kafka source")
    store: StoreSection = Field(default_factory=StoreSection, description="embedding store")
    training: TrainingSection = Field(default_factory=TrainingSection, description="trainer")
    features: FeaturesConfig = Field(description="feature spec")
    model: ModelConfig = Field(description="the model trained online")
    baseline: ModelConfig | None = Field(default=None, description="comparison model")
    operators: OperatorsConfig | None = Field(
        default=None, description="scheduled operators: migration, checkpoints, expiry"
    )
    publish: PublishConfig | None = Field(
        default=None, description="delta publishing to replicas (none: off)"
    )
    serve: ServeConfig | None = Field(
        default=None, description="replica settings (read by freshet serve, not the trainer)"
    )
    remote: RemoteSection | None = Field(
        default=None, description="tables kept in the shared embedding service (none: local)"
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve the trainer's /metrics on this port (0: a free one; none: off)",
    )
    metrics_addr: str = Field(
        default="127.0.0.1",
        min_length=1,
        max_length=255,
        description="address /metrics listens on (0.0.0.0 in containers)",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order the sources: environment first, then the YAML file."""
        # the environment overrides the file (which arrives as init arguments)
        return env_settings, init_settings

    def config_hash(self) -> str:
        """A hash of what must match for a checkpoint to be resumed (features and model)."""
        body = {
            "features": self.features.model_dump(mode="json"),
            "model": self.model.model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def to_spec(self) -> JobSpec:
        """The frozen :class:`~pipeline.training.spec.JobSpec` the job core takes.

        Reads the secrets the file names now (Kafka password, signing key).

        >>> cfg = JobConfig.model_validate({"kind": "ctr", "source": {"topic": "t"},
        ...     "features": {"sparse": [{"type": "categorical", "name": "c1", "table": "cat",
        ...     "field": "c1"}]}, "model": {"type": "logistic"}, "metrics_port": 9400})
        >>> spec = cfg.to_spec()
        >>> spec.source.topic, spec.metrics.port_of(1), spec.checkpoint, len(spec.config_hash)
        ('t', 9401, None, 16)
        """
        src, st, tr = self.source, self.store, self.training
        client_config = src.security.client_config()
        ops = self.operators
        checkpoint = None
        operators = OperatorsSpec()
        if ops is not None:
            operators = OperatorsSpec(
                schedules=ops.to_schedules(),
                migration_age=ops.migration.age,
                migration_scan_limit=ops.migration.scan_limit,
                count_cold_rows=ops.count_cold_rows,
            )
            if ops.checkpoint is not None:
                ck = ops.checkpoint
                checkpoint = CheckpointSpec(
                    ck.dir if ck.dir is not None else os.path.join(st.path, DEFAULT_CHECKPOINT_DIR),
                    retention=ck.retention,
                    max_chain_length=ck.max_chain_length,
                    rows_per_file=ck.rows_per_file,
                    background=ck.background,
                    full_mode=ck.full_mode,
                )
        publish = None
        if self.publish is not None:
            pub = self.publish
            publish = PublishSpec(
                bootstrap=pub.bootstrap,
                snapshot_dir=pub.snapshot_dir,
                settings=pub.to_settings(),
                signer=pub.signing.signer(),
                client_config=client_config,
            )
        return JobSpec(
            kind=self.event_kind,
            schema=self.schema_spec(),
            source=SourceSpec(
                bootstrap_servers=tuple(src.bootstrap_servers),
                topic=src.topic,
                group_id=src.group_id,
                assignment=src.assignment,
                max_events=src.max_events,
                max_wait_ms=src.max_wait_ms,
                queue_batches=src.queue_batches,
                dead_letter_topic=src.dead_letter_topic,
                session_timeout_ms=src.session_timeout_ms,
                decode_in=src.decode_in,
                record_reader=src.record_reader,
                broker_wait_s=src.broker_wait_s,
                client_config=client_config,
            ),
            features=self.features.to_spec(),
            feature_state=self.features.state_budget(),
            model=self.model.to_spec(),
            store=StoreSpec(
                path=st.path,
                num_shards=st.num_shards,
                lfu_decay=st.lfu_decay,
                rocks_options=st.rocks_options(),
                table_overrides=st.table_overrides(),
                on_disk_error=st.on_disk_error,
                disk_retry_s=st.disk_retry_s,
            ),
            training=TrainingSpec(
                prefetch_batches=tr.prefetch_batches,
                idle_timeout_s=tr.idle_timeout_s,
                max_events=tr.max_events,
                auc_window=tr.auc_window,
                torch_threads=tr.torch_threads,
            ),
            checkpoint=checkpoint,
            operators=operators,
            publish=publish,
            metrics=(
                None
                if self.metrics_port is None
                else MetricsSpec(self.metrics_port, self.metrics_addr)
            ),
            config_hash=self.config_hash(),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> JobConfig:
        """Load and validate ``path``; environment variables override its values."""
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the top level must be a mapping of sections")
        return cls(**relative_to(raw, path))
