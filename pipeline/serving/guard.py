"""The replica's connection guard: uvicorn's h11 protocol with the limits a public edge needs.

uvicorn reads requests with h11 (strict HTTP/1.1: a ``Content-Length`` that is not a number
or two that disagree, a missing ``Host``, an unknown transfer coding are refused) and closes
idle keep-alive connections, but it has no deadline for a request's *headers* and answers
protocol errors in plain text. This subclass adds, per connection::

    connection made ──► more than max_connections open?  ─► 503 JSON, close
          │             (every close is a lingering close: FIN, drain, then close, so a
          │              client still sending a body it was refused reads its answer)
          │
          ▼ (and again after each response)
    header deadline ── header_timeout_s ──► nothing received: close quietly (an idle client)
          │                                 part of a request:   408 JSON, close
          ▼ headers complete (uvicorn starts the ASGI app; the app has its own body deadline)
    protocol error (h11) ──► 400/411/431 JSON naming it (``bad Content-Length``, ...), close

Every answer written here is counted with ``answer(status)`` (the request metric), as the app
counts its own. The hooks are uvicorn's ``H11Protocol`` methods ``connection_made``,
``connection_lost``, ``data_received``, ``on_response_complete`` and ``send_400_response``;
``tests/contracts/test_uvicorn_guard.py`` fails if a uvicorn release changes them.

>>> cls = guarded_protocol(HttpLimits(header_timeout_s=2.0), lambda status: None)
>>> cls.limits.header_timeout_s, issubclass(cls, H11Protocol)
(2.0, True)
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, cast

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpLimits:
    """Per-connection limits: header deadline, open connections, lingering close."""

    header_timeout_s: float = 10.0
    max_connections: int = 1024
    linger_s: float = 2.0
    linger_bytes: int = 64 << 20


class LingeringTransport:
    """A transport whose ``close()`` is a lingering close, as web servers do it.

    Closing a socket with unread input resets the connection, and the client may lose the
    answer it was about to read (a 413 sent before a large body was read). So ``close()``
    sends what is buffered, then a FIN, and keeps reading (and dropping) input until the
    client closes, ``linger_s`` passes or ``linger_bytes`` arrive; only then it closes.
    """

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop, limits: Any):
        self._inner = inner
        self._loop = loop
        self._limits = limits
        self._closing = False
        self._dropped = 0
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def is_closing(self) -> bool:
        """True once :meth:`close` was called (or the connection is gone)."""
        return self._closing or self._inner.is_closing()

    def close(self) -> None:
        """Flush, send FIN, drain the input a while, then close."""
        if self._closing:
            return
        self._closing = True
        inner = self._inner
        if inner.is_closing():
            return
        if not inner.can_write_eof():
            inner.close()
            return
        inner.resume_reading()
        inner.write_eof()
        self._timer = self._loop.call_later(self._limits.linger_s, inner.close)

    def drop(self, data: bytes) -> None:
        """Input that arrives while lingering: dropped (closed at once past the byte cap)."""
        self._dropped += len(data)
        if self._dropped > self._limits.linger_bytes:
            self.abort()

    def abort(self) -> None:
        """Close now."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        self._inner.close()


def raw_response(status: int, error: str) -> bytes:
    r"""A complete ``Connection: close`` HTTP/1.1 response with a JSON ``{"error": ...}`` body.

    >>> raw_response(408, "slow").split(b"\r\n")[0]
    b'HTTP/1.1 408 Request Timeout'
    """
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_CLIENT_FAULTS: tuple[str, ...] = (
    "Invalid HTTP request received.",
    "Unsupported upgrade request.",
    "No supported WebSocket library detected.",
)
"""uvicorn's warnings about what a client sent (each is answered and counted already)."""


class ClientFaultsAtDebug(logging.LoggerAdapter):  # type: ignore[type-arg]
    """uvicorn's connection logger, with its warnings about bad client input at DEBUG.

    A malformed request is the client's fault, answered with a 4xx and counted in the
    request metric; a WARNING line for each would let any client flood the replica's log.

    >>> quiet = ClientFaultsAtDebug(logging.getLogger("uvicorn.error"), {})
    >>> quiet.level == logging.getLogger("uvicorn.error").level
    True
    """

    @property
    def level(self) -> int:
        """The wrapped logger's level (uvicorn reads it for its trace switch)."""
        return int(self.logger.level)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log at DEBUG when ``msg`` is about client input, else at WARNING."""
        if isinstance(msg, str) and msg.startswith(_CLIENT_FAULTS):
            self.debug(msg, *args, **kwargs)
        else:
            super().warning(msg, *args, **kwargs)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, a connection cap and JSON errors."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = cast(logging.Logger, ClientFaultsAtDebug(self.logger, {}))
        self._deadline: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request received since the deadline was armed

    # -- header deadline -----------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self._partial = False
        self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._partial:
            limit = self.limits.header_timeout_s
            self._refuse(408, f"the request headers did not arrive within {limit:g} s")
        else:
            self.transport.close()  # an idle connection: nothing to answer

    def _refuse(self, status: int, error: str) -> None:
        self.transport.write(raw_response(status, error))
        self.transport.close()
        self.count(status)

    def count(self, status: int) -> None:
        """Count one answer written here (bound by :func:`guarded_protocol`)."""

    # -- uvicorn hooks -------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Count the connection; refuse it past the cap; arm the header deadline."""
        self._lingering = LingeringTransport(transport, self.loop, self.limits)
        super().connection_made(cast(asyncio.Transport, self._lingering))
        if len(self.connections) > self.limits.max_connections:
            limit = self.limits.max_connections
            self._refuse(503, f"too many open connections (limit {limit}); retry later")
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._disarm()
        self._lingering.abort()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed h11; once a request's headers are complete its deadline is off."""
        if self._lingering.is_closing():
            self._lingering.drop(data)  # the answer is sent; the rest is not read
            return
        self._partial = self._partial or bool(data)
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:
            self._disarm()

    def on_response_complete(self) -> None:
        """Arm the deadline for the next request (unless one was already pipelined)."""
        cycle = self.cycle
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.cycle is cycle:
            self._arm()

    def send_400_response(self, msg: str) -> None:
        """Answer an HTTP protocol error with JSON naming it (called while h11's is handled)."""
        err = sys.exception()
        detail = str(err) if err is not None and str(err) else msg
        status = int(getattr(err, "error_status_hint", 400))
        if status == 501:  # a transfer coding h11 does not read: ask for a plain length
            status, detail = 411, f"{detail}; send a Content-Length"
        elif "Content-Length" in detail and not detail.startswith("bad Content-Length"):
            detail = f"bad Content-Length ({detail})"  # e.g. two that disagree: smuggling
        self._disarm()
        self._refuse(status, f"malformed HTTP request: {detail}")


def guarded_protocol(limits: HttpLimits, answer: Callable[[int], None]) -> type[H11Protocol]:
    """A :class:`GuardedH11Protocol` class bound to ``limits`` and the ``answer`` counter."""
    return type(
        "ReplicaH11Protocol",
        (GuardedH11Protocol,),
        {"limits": limits, "count": lambda self, status: answer(status)},
    )
