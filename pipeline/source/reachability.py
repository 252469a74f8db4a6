"""Fail fast, in one line, when no Kafka bootstrap server can be reached.

kafka-python retries an unreachable bootstrap server with growing backoff and each client
(admin, producer, consumer) gives up only after its own timeout: an unreachable broker cost
about a minute of log noise and then a traceback. :func:`wait_for_broker` opens a plain TCP
connection to each bootstrap server in turn until one accepts, for at most ``wait_s`` (a
broker that is still starting gets that long), and otherwise raises
:class:`~pipeline.errors.BrokerUnreachableError` naming the servers and the last cause.

>>> import socket
>>> with socket.socket() as s:
...     s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]   # bound, not listening: refused
>>> try:
...     wait_for_broker(f"127.0.0.1:{port}", 0.2, "source.bootstrap_servers")
... except BrokerUnreachableError as err:
...     print(str(err).replace(str(port), "PORT"))
cannot reach the Kafka broker at 127.0.0.1:PORT within 0.2 s (Connection refused); check \
source.bootstrap_servers and that the broker runs
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from pipeline.errors import BrokerUnreachableError, ConfigError

__all__ = ["split_server", "wait_for_broker"]

_RETRY_S = 0.25


def split_server(server: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as ``(host, port)``.

    >>> split_server("kafka:9092"), split_server("[::1]:9093")
    (('kafka', 9092), ('::1', 9093))
    """
    host, sep, port = server.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError("bootstrap_servers", f"expected host:port, got {server!r}")
    return host.strip("[]"), int(port)


def wait_for_broker(
    servers: str | Sequence[str], wait_s: float, setting: str = "bootstrap_servers"
) -> str:
    """The first of ``servers`` that accepts a TCP connection within ``wait_s``.

    ``wait_s <= 0`` skips the check. Raises :class:`~pipeline.errors.BrokerUnreachableError`.
    """
    names = [s for s in (servers.split(",") if isinstance(servers, str) else servers) if s]
    if wait_s <= 0:
        return names[0] if names else ""
    addresses = [split_server(s) for s in names]
    deadline = time.monotonic() + wait_s
    cause = "no server given"
    while True:
        for name, (host, port) in zip(names, addresses, strict=True):
            left = deadline - time.monotonic()
            try:
                with socket.create_connection((host, port), timeout=max(0.05, min(2.0, left))):
                    return name
            except OSError as err:
                cause = err.strerror or type(err).__name__
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerUnreachableError.after_wait(",".join(names), wait_s, cause, setting)
        time.sleep(min(_RETRY_S, left))
