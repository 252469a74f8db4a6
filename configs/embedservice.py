"""The ``embedding_service:`` and ``remote:`` sections, and ``freshet embed-serve``'s settings.

A replica serves some tables from the shared embedding service instead of a full local copy
(``serve.embedding_service``); a job reads another job's table from it, frozen, or owns a
table it trains and publishes there (``remote:``)::

    serve:
      embedding_service:
        endpoints: [embed-0:8815, embed-1:8815]   # shard order: ids are routed by hash
        tables: [users]                           # none: every model table
        cache_rows: 100000                        # LFU hot cache per table, deltas invalidate
    remote:                                       # a job file
      writer: fraud                               # this job, as a table owner
      service: {endpoints: [embed-0:8815, embed-1:8815]}
      tables:
        - {table: users, mode: read}              # another job's table, frozen
        - {table: merchants, mode: own}           # trained here, published to the service
      publish_interval_s: 30                      # own tables: a version this often

>>> cfg = RemoteSection.model_validate({"writer": "fraud",
...     "service": {"endpoints": ["127.0.0.1:8815"]}, "tables": [{"table": "users"}]})
>>> cfg.read_tables(), cfg.service.client_settings().retries
({'users': 'users'}, 8)
>>> EmbedServeConfig.model_validate({"shard": 2, "num_shards": 2})
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for EmbedServeConfig
...
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.embedservice.settings import ClientSettings, RemoteOwn, RemoteRead, RemoteSpec
from pipeline.embedservice.shard import ShardSettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddingServiceConfig(_Section):
    """Where the service's shards are and how patiently a client asks them."""

    endpoints: list[str] = Field(
        min_length=1, max_length=1024, description="host:port of every shard, in shard order"
    )
    tables: list[str] | None = Field(
        default=None, description="replica: tables served from the service (none: every one)"
    )
    cache_rows: int = Field(
        default=100_000, ge=0, le=1 << 31, description="replica: LFU hot-cache rows per table"
    )
    timeout_s: float = Field(default=2.0, gt=0, le=600, description="seconds one call may take")
    retries: int = Field(default=8, ge=0, le=1000, description="retries before giving up (503)")
    backoff_s: float = Field(default=0.05, ge=0, le=60, description="first retry's wait, doubled")
    max_backoff_s: float = Field(default=1.0, ge=0, le=600, description="longest retry wait")
    publish_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="seconds one update may take (owners)"
    )

    @model_validator(mode="after")
    def _endpoints(self) -> Self:
        for ep in self.endpoints:
            host, _, port = ep.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"endpoint {ep!r} is not host:port")
        return self

    def client_settings(self) -> ClientSettings:
        """The frozen settings of a :class:`~pipeline.embedservice.client.ServiceClient`."""
        return ClientSettings(
            self.timeout_s, self.retries, self.backoff_s, self.max_backoff_s, self.publish_timeout_s
        )


class RemoteTableConfig(_Section):
    """One model table kept in the service."""

    table: str = Field(min_length=1, max_length=255, description="the model's table name")
    service_table: str | None = Field(
        default=None, max_length=255, description="its name in the service (none: the same)"
    )
    mode: Literal["read", "own"] = Field(
        default="read",
        description="read: another job's table, frozen; own: trained here, published there",
    )
    version: int | None = Field(
        default=None, ge=0, description="read: pin this published version (none: the newest)"
    )


class RemoteSection(_Section):
    """A job's tables in the embedding service."""

    writer: str = Field(min_length=1, max_length=255, description="this job, as a table owner")
    service: EmbeddingServiceConfig = Field(description="the service")
    tables: list[RemoteTableConfig] = Field(min_length=1, description="the remote tables")
    publish_interval_s: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="own: seconds between publications (also when the stream idles and at "
        "stop); with publish: the job publishes each delta version instead",
    )

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = [t.table for t in self.tables]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"remote tables {twice} are listed more than once")
        for t in self.tables:
            if t.mode == "own" and t.version is not None:
                raise ValueError(f"remote table {t.table!r}: version pins a read table only")
        return self

    def read_tables(self) -> dict[str, str]:
        """Model table -> service table, for the tables read frozen."""
        return {t.table: t.service_table or t.table for t in self.tables if t.mode == "read"}

    def owned_tables(self) -> dict[str, str]:
        """Model table -> service table, for the tables this job owns."""
        return {t.table: t.service_table or t.table for t in self.tables if t.mode == "own"}

    def to_spec(self) -> RemoteSpec:
        """The frozen :class:`~pipeline.embedservice.settings.RemoteSpec` the job takes."""
        return RemoteSpec(
            self.writer,
            tuple(self.service.endpoints),
            self.service.client_settings(),
            tuple(
                RemoteRead(t.table, t.service_table or t.table, t.version)
                for t in self.tables
                if t.mode == "read"
            ),
            tuple(
                RemoteOwn(t.table, t.service_table or t.table)
                for t in self.tables
                if t.mode == "own"
            ),
            self.publish_interval_s,
        )


class EmbedServeConfig(_Section):
    """One shard of the service (``freshet embed-serve``)."""

    path: str = Field(
        default="./freshet-data/embed-0", min_length=1, max_length=4096, description="directory"
    )
    host: str = Field(default="127.0.0.1", max_length=255, description="address to listen on")
    port: int = Field(default=8815, ge=0, le=65535, description="Flight port (0: a free one)")
    shard: int = Field(default=0, ge=0, le=1023, description="this shard's index")
    num_shards: int = Field(default=1, ge=1, le=1024, description="shards of the service")
    keep_versions: int = Field(
        default=4, ge=0, le=1000, description="older versions a reader may still ask for"
    )
    checkpoint_every: int = Field(
        default=8, ge=1, le=1_000_000, description="updates between store flushes"
    )
    store_shards: int = Field(default=1, ge=1, le=64, description="the store's own shards")
    dram_budget_mb: float | None = Field(
        default=None, gt=0, description="DRAM tier of the shard's store (none: unbounded)"
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve /metrics on this port (none: off)"
    )
    metrics_addr: str = Field(default="127.0.0.1", max_length=255, description="/metrics address")

    @model_validator(mode="after")
    def _shard(self) -> Self:
        if self.shard >= self.num_shards:
            raise ValueError(f"shard {self.shard} is not below num_shards {self.num_shards}")
        return self

    def shard_settings(self) -> ShardSettings:
        """The frozen settings of the shard."""
        budget = None if self.dram_budget_mb is None else int(self.dram_budget_mb * (1 << 20))
        return ShardSettings(
            self.path,
            self.shard,
            self.num_shards,
            self.keep_versions,
            self.checkpoint_every,
            self.store_shards,
            budget,
        )
