"""Kafka client security options, shared by every Kafka client Freshet makes.

Sources, replay, the publisher and replicas pass the same ``security_protocol`` /
``sasl_*`` / ``ssl_*`` options through to kafka-python; tuning options are each client's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.errors import ConfigError


def security_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check that ``config`` only holds kafka-python security options and return a copy.

    Allowed: ``security_protocol`` and any ``sasl_*`` or ``ssl_*`` option; anything else raises
    :class:`~pipeline.errors.ConfigError` (tuning is the source's job, not the caller's).

    >>> security_options({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"})
    {'security_protocol': 'SASL_SSL', 'sasl_mechanism': 'PLAIN'}
    """
    bad = sorted(
        k for k in config if k != "security_protocol" and not k.startswith(("sasl_", "ssl_"))
    )
    if bad:
        raise ConfigError(
            "client_config", f"only security_protocol, sasl_* and ssl_* pass through; got {bad}"
        )
    return dict(config)
