"""The ``publish:`` and ``serve:`` sections: delta publishing and inference replicas.

The core receives frozen dataclasses: :meth:`PublishConfig.to_settings` gives a
:class:`pipeline.publishing.publisher.PublisherSettings`, :class:`ServeConfig` gives
:class:`pipeline.serving.replica.ReplicaSettings` and :class:`pipeline.serving.http.HttpSettings`.
``freshet serve --config FILE`` reads ``kind``, ``features``, ``model`` and ``serve`` from
FILE (a job file may hold other sections; they are not read here)::

    kind: transaction
    features: {...}                       # as the training job's
    model: {...}                          # as the training job's
    publish:                              # the trainer side
      bootstrap_servers: [127.0.0.1:9092]
      topic: freshet-deltas
      snapshot_dir: ./freshet-data/snapshots
      interval_s: 1.0                     # one version per second
      snapshot_every: 30                  # a full snapshot every 30 versions ...
      snapshot_interval_s: 300            # ... or 5 minutes
      signing: {key_env: FRESHET_DELTA_KEY}
    serve:                                # one replica
      bootstrap_servers: [127.0.0.1:9092]
      topic: freshet-deltas
      snapshot_dir: ./freshet-data/snapshots
      data_dir: ./freshet-data/replica-0
      port: 8080
      dram_budget_mb: 256
      signing: {key_env: FRESHET_DELTA_KEY}
      security: {security_protocol: SASL_SSL, ...}   # as source.security (configs.security)

Environment variables override the file as for the job file: ``FRESHET_SERVE__PORT=8081``
sets ``serve.port``, ``FRESHET_SERVE__SECURITY__SASL_PASSWORD_ENV=KAFKA_PASSWORD`` the
replica's password source (``__`` separates levels; lists are JSON). Command-line flags of
``freshet serve`` override both.

>>> cfg = ServeConfig.model_validate({"topic": "d", "port": 0})
>>> cfg.http_settings().max_body_bytes, cfg.replica_settings().topic
(1048576, 'd')
>>> ServeConfig.model_validate({"port": 70000})
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for ServeConfig
...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from configs.embedservice import EmbeddingServiceConfig
from configs.features import FeaturesConfig, ModelConfig
from configs.security import SecurityConfig
from pipeline.publishing.chunks import Signer
from pipeline.publishing.errors import ServingError
from pipeline.publishing.publisher import PublisherSettings
from pipeline.serving.http import HttpSettings
from pipeline.serving.replica import ReplicaSettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Servers = list[str]


class SigningConfig(_Section):
    """Where the HMAC key of deltas and snapshot manifests comes from (never the YAML itself)."""

    key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        max_length=128,
        description="environment variable holding the key",
    )
    key_file: str | None = Field(
        default=None, min_length=1, max_length=4096, description="file holding the key"
    )

    @model_validator(mode="after")
    def _one_source(self) -> SigningConfig:
        if self.key_env is not None and self.key_file is not None:
            raise ValueError("give key_env or key_file, not both")
        return self

    def signer(self) -> Signer | None:
        """Read the key now; ``None`` when no source is configured (deltas unsigned)."""
        return Signer.load(self.key_env, self.key_file)


class _DeltaTopic(_Section):
    bootstrap_servers: Servers = Field(
        default_factory=lambda: ["127.0.0.1:9092"],
        min_length=1,
        max_length=64,
        description="Kafka bootstrap servers host:port",
    )
    topic: str = Field(
        default="freshet-deltas", min_length=1, max_length=249, description="delta topic"
    )
    partition: int = Field(default=0, ge=0, le=100_000, description="partition deltas go to")
    snapshot_dir: str = Field(
        default="./freshet-data/snapshots", min_length=1, max_length=4096, description="snapshots"
    )
    signing: SigningConfig = Field(
        default_factory=SigningConfig, description="HMAC key source (none: unsigned)"
    )

    @property
    def bootstrap(self) -> str:
        """Comma-separated servers, as kafka-python takes them."""
        return ",".join(self.bootstrap_servers)


class PublishConfig(_DeltaTopic):
    """How the trainer publishes versions."""

    interval_s: float = Field(default=1.0, ge=0, le=3600, description="seconds between versions")
    snapshot_every: int = Field(
        default=30, ge=1, le=1_000_000, description="a full snapshot every this many versions"
    )
    snapshot_interval_s: float | None = Field(
        default=300.0, gt=0, le=7 * 86400, description="and at least this often (none: off)"
    )
    retain_snapshots: int = Field(default=3, ge=1, le=1000, description="snapshots kept")
    max_message_bytes: int = Field(
        default=900_000,
        ge=4096,
        le=64 << 20,
        description="largest Kafka message; bigger deltas are chunked (keep under the broker's "
        "message.max.bytes)",
    )

    def to_settings(self) -> PublisherSettings:
        """The frozen settings the publisher takes."""
        return PublisherSettings(
            topic=self.topic,
            partition=self.partition,
            interval_s=self.interval_s,
            snapshot_every=self.snapshot_every,
            snapshot_interval_s=self.snapshot_interval_s,
            retain_snapshots=self.retain_snapshots,
            max_message_bytes=self.max_message_bytes,
        )


class ServeConfig(_DeltaTopic):
    """One inference replica."""

    name: str = Field(
        default="replica-0",
        pattern=r"^[A-Za-z0-9_.-]+$",
        max_length=64,
        description="metrics label and log name",
    )
    data_dir: str = Field(
        default="./freshet-data/replica-0",
        min_length=1,
        max_length=4096,
        description="the replica's own store (emptied at start)",
    )
    host: str = Field(default="127.0.0.1", max_length=255, description="address to listen on")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port (0: a free one)")
    dram_budget_mb: float | None = Field(
        default=None, gt=0, le=1 << 20, description="DRAM for rows (none: all rows in DRAM)"
    )
    num_shards: int = Field(default=1, ge=1, le=1024, description="store shards")
    embedding_service: EmbeddingServiceConfig | None = Field(
        default=None, description="serve tables from the shared embedding service (none: copy)"
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, le=1 << 30, description="largest /predict body"
    )
    max_events: int = Field(default=4096, ge=1, le=1_000_000, description="events per request")
    poll_timeout_ms: int = Field(default=50, ge=1, le=10_000, description="delta poll wait")
    resync_poll_s: float = Field(
        default=0.5, gt=0, le=600, description="how often to look for a snapshot while behind"
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="a request's headers must arrive within this (else 408, closed); an idle "
        "connection is closed after it too",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="a request's body must arrive within this (408)"
    )
    keep_alive_s: float = Field(
        default=30.0, gt=0, le=3600, description="close a keep-alive connection idle this long"
    )
    max_connections: int = Field(
        default=1024, ge=1, le=1_000_000, description="open connections; more get 503"
    )
    workers: int = Field(
        default=4, ge=1, le=256, description="threads that parse and score requests"
    )
    gil_switch_interval_ms: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="the replica process's interpreter switch interval (Python's default: 5): "
        "the event loop waits at most this long for the lock a delta being applied holds",
    )
    torch_threads: int | None = Field(
        default=1,
        ge=1,
        le=256,
        description="torch intra-op threads of the replica process (null: torch's default, a "
        "thread per core); the scoring workers already run requests in parallel",
    )
    security: SecurityConfig = Field(
        default_factory=SecurityConfig,
        description="TLS / SASL of the delta consumer (the same keys as source.security)",
    )

    @property
    def dram_budget_bytes(self) -> int | None:
        """The DRAM budget in bytes."""
        return None if self.dram_budget_mb is None else int(self.dram_budget_mb * (1 << 20))

    def replica_settings(self) -> ReplicaSettings:
        """The frozen settings the replica takes."""
        return ReplicaSettings(
            topic=self.topic,
            snapshot_dir=self.snapshot_dir,
            data_dir=self.data_dir,
            partition=self.partition,
            poll_timeout_ms=self.poll_timeout_ms,
            resync_poll_s=self.resync_poll_s,
        )

    def http_settings(self) -> HttpSettings:
        """The frozen settings of the HTTP layer."""
        return HttpSettings(
            host=self.host,
            port=self.port,
            max_body_bytes=self.max_body_bytes,
            max_events=self.max_events,
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            keep_alive_s=self.keep_alive_s,
            max_connections=self.max_connections,
            workers=self.workers,
        )

    def client_config(self) -> dict[str, Any]:
        """kafka-python keyword arguments of the delta consumer (reads the password now)."""
        return self.security.client_config()


class ServeFile(BaseSettings):
    """A file ``freshet serve`` reads: the model's definition and the ``serve`` section.

    The training job's other sections may sit in the same file; they are accepted as they are
    and not read here. ``FRESHET_*`` environment variables override the file's values.
    """

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix="FRESHET_", env_nested_delimiter="__"
    )

    kind: Literal["transaction", "ctr"] = Field(description="event kind /predict accepts")
    features: FeaturesConfig = Field(description="feature spec (as the trainer's)")
    model: ModelConfig = Field(description="model (as the trainer's)")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="this replica")
    publish: PublishConfig | None = Field(default=None, description="the trainer's publisher")
    source: dict[str, Any] | None = Field(default=None, description="job section, not read")
    store: dict[str, Any] | None = Field(default=None, description="job section, not read")
    training: dict[str, Any] | None = Field(default=None, description="job section, not read")
    baseline: dict[str, Any] | None = Field(default=None, description="job section, not read")
    operators: dict[str, Any] | None = Field(default=None, description="job section, not read")
    remote: dict[str, Any] | None = Field(default=None, description="job section, not read")
    metrics_port: int | None = Field(default=None, description="job setting, not read")
    metrics_addr: str | None = Field(default=None, description="job setting, not read")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order the sources: environment first, then the YAML file (the init arguments)."""
        return env_settings, init_settings

    @classmethod
    def from_yaml(cls, path: str | Path) -> ServeFile:
        """Read and validate ``path``; ``FRESHET_*`` environment variables override it."""
        try:
            with open(path, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh)
        except OSError as err:
            raise ServingError(f"cannot read {path}: {err.strerror}") from err
        except yaml.YAMLError as err:
            raise ServingError(f"{path} is not valid YAML: {err}".replace("\n", " ")) from err
        if not isinstance(raw, dict):
            raise ServingError(f"{path}: the top level must be a mapping of sections")
        return cls(**raw)
