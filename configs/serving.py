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

from configs.embedservice import EmbeddingServiceConfig
from configs.features import FeaturesConfig, ModelConfig
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
        )


class ServeFile(_Section):
    """A file ``freshet serve`` reads: the model's definition and the ``serve`` section.

    The training job's other sections may sit in the same file; they are accepted as they are
    and not read here.
    """

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
    def from_yaml(cls, path: str | Path) -> ServeFile:
        """Read and validate ``path``."""
        try:
            with open(path, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh)
        except OSError as err:
            raise ServingError(f"cannot read {path}: {err.strerror}") from err
        return cls.model_validate(raw)
