"""Settings of service clients, apart from the client so configs load without pyarrow.

>>> ClientSettings().retries
8
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientSettings:
    """How long one call may take, and how often and how patiently a request is retried."""

    timeout_s: float = 2.0
    retries: int = 8
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    publish_timeout_s: float = 60.0  # an update may wait for a shard's checkpoint
