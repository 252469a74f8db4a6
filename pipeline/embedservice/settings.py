"""Settings of service clients and of a job's ``remote:`` tables (configs load without pyarrow).

>>> ClientSettings().retries
8
>>> spec = RemoteSpec("fraud", ("127.0.0.1:8815",), read=(RemoteRead("users", "ctr_users", 3),))
>>> spec.read_tables(), spec.owned_tables()
({'users': 'ctr_users'}, {})
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClientSettings:
    """How long one call may take, and how often and how patiently a request is retried."""

    timeout_s: float = 2.0
    retries: int = 8
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    publish_timeout_s: float = 60.0  # an update may wait for a shard's checkpoint


@dataclass(frozen=True)
class RemoteRead:
    """A model table read frozen from the service: its service name, the version pinned.

    ``version`` ``None``: the newest version every shard has when the job opens (then pinned).
    """

    table: str
    service_table: str
    version: int | None = None


@dataclass(frozen=True)
class RemoteOwn:
    """A model table the job trains and publishes to the service under ``service_table``."""

    table: str
    service_table: str


@dataclass(frozen=True)
class RemoteSpec:
    """A job's tables in the embedding service (the ``remote:`` section, frozen)."""

    writer: str
    endpoints: tuple[str, ...]
    client: ClientSettings = field(default_factory=ClientSettings)
    read: tuple[RemoteRead, ...] = ()
    own: tuple[RemoteOwn, ...] = ()
    publish_interval_s: float = 30.0

    def read_tables(self) -> dict[str, str]:
        """Model table -> service table, for the tables read frozen."""
        return {r.table: r.service_table for r in self.read}

    def owned_tables(self) -> dict[str, str]:
        """Model table -> service table, for the tables this job owns."""
        return {o.table: o.service_table for o in self.own}
