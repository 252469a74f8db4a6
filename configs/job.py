"""The whole training job in one validated YAML file (the edge: the core gets dataclasses).

::

    kind: transaction                 # event kind: transaction | ctr
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

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from configs.embedservice import RemoteSection
from configs.features import FeaturesConfig, ModelConfig
from configs.operators import OperatorsConfig
from configs.serving import PublishConfig, ServeConfig
from embedding_store.config import SstConfig
from pipeline.runtime.secrets import read_secret


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecurityConfig(_Section):
    """Kafka client security settings, passed through to kafka-python unchanged.

    Secrets come from the environment or a file, never from the YAML itself.
    """

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="kafka-python security_protocol"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = (
        Field(default=None, description="SASL mechanism")
    )
    sasl_plain_username: str | None = Field(default=None, max_length=256, description="user")
    sasl_password_env: str | None = Field(
        default=None, max_length=128, description="environment variable holding the password"
    )
    sasl_password_file: str | None = Field(
        default=None, max_length=4096, description="file holding the password (a mounted secret)"
    )
    ssl_cafile: str | None = Field(default=None, max_length=4096, description="CA bundle path")
    ssl_certfile: str | None = Field(default=None, max_length=4096, description="client cert")
    ssl_keyfile: str | None = Field(default=None, max_length=4096, description="client key")

    def client_config(self) -> dict[str, Any]:
        """The kafka-python keyword arguments (password read from the environment now)."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        for key in (
            "sasl_mechanism",
            "sasl_plain_username",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
        ):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.sasl_password_env is not None or self.sasl_password_file is not None:
            out["sasl_plain_password"] = read_secret(
                "Kafka SASL password", env=self.sasl_password_env, path=self.sasl_password_file
            )
        return out

    @model_validator(mode="after")
    def _one_password_source(self) -> SecurityConfig:
        if self.sasl_password_env is not None and self.sasl_password_file is not None:
            raise ValueError("give sasl_password_env or sasl_password_file, not both")
        return self


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

    def rocks_options(self) -> dict[str, Any]:
        """``StoreConfig`` keyword arguments for the tiers below DRAM: RocksDB's and the slab's.

        >>> StoreSection().rocks_options()["memtable_budget_bytes"] >> 20
        64
        """
        budget = self.memtable_budget_mb
        resident = self.slab_resident_mb
        return {
            "slab_path": self.slab_path,
            "slab_resident_bytes": None if resident is None else resident << 20,
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


class JobConfig(BaseSettings):
    """A training job: source, store, training, features, model (and optional baseline)."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix="FRESHET_", env_nested_delimiter="__"
    )

    kind: Literal["transaction", "ctr"] = Field(description="event kind of the source topic")
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

    @classmethod
    def from_yaml(cls, path: str | Path) -> JobConfig:
        """Load and validate ``path``; environment variables override its values."""
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the top level must be a mapping of sections")
        return cls(**raw)
