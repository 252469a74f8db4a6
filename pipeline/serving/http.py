"""The replica's HTTP server: the Starlette app (:mod:`pipeline.serving.app`) on uvicorn.

::

    socket (bound in start(), so a taken port fails there)
      └─ uvicorn event loop, one thread ──► guard (pipeline.serving.guard): connection cap,
             │                               header deadline, JSON protocol errors
             ▼
         ReplicaApp (ASGI): routes, body deadline, the request metric
             │ parse + score + encode
             ▼
         pool of ``workers`` threads ──► Replica.predict (read lock)

Idle connections cost a socket and a little memory on the event loop, not a thread each:
``max_connections`` bounds them, ``keep_alive_s`` closes an idle keep-alive connection, and
``header_timeout_s`` closes a connection whose next request's headers do not arrive in time
(a slow-header client gets 408). ``body_timeout_s`` bounds the time to receive a body.

>>> s = HttpSettings()
>>> s.host, s.max_body_bytes, s.header_timeout_s, s.max_connections
('127.0.0.1', 1048576, 10.0, 1024)
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import uvicorn

from pipeline.publishing.errors import ReplicaStateError
from pipeline.serving.app import AppLimits, ReplicaApp
from pipeline.serving.guard import HttpLimits, guarded_protocol
from pipeline.serving.replica import Replica

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpSettings:
    """Where the API listens, what it accepts and how long it waits."""

    host: str = "127.0.0.1"
    port: int = 0
    max_body_bytes: int = 1 << 20
    max_events: int = 4096
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 30.0
    max_connections: int = 1024
    workers: int = 4
    backlog: int = 2048

    def __post_init__(self) -> None:
        if min(self.header_timeout_s, self.body_timeout_s, self.keep_alive_s) <= 0:
            raise ValueError("header_timeout_s, body_timeout_s and keep_alive_s must be > 0")
        if self.max_connections < 1 or self.workers < 1:
            raise ValueError("max_connections and workers must be >= 1")


class ReplicaHttpServer:
    """Serves a :class:`Replica` over HTTP; ``port=0`` picks a free port at :meth:`start`."""

    def __init__(self, replica: Replica, event_kind: str, settings: HttpSettings | None = None):
        self.replica = replica
        self.event_kind = event_kind
        self.settings = settings if settings is not None else HttpSettings()
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None

    def start(self, timeout_s: float = 30.0) -> ReplicaHttpServer:
        """Bind (raises ``OSError`` if the port is taken), then serve on a background thread."""
        s = self.settings
        family = socket.getaddrinfo(s.host, s.port, type=socket.SOCK_STREAM)[0][0]
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
        # without it a response's header and body writes wait ~40 ms for the delayed ACK
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((s.host, s.port))
            sock.listen(s.backlog)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._executor = ThreadPoolExecutor(s.workers, thread_name_prefix="replica-predict")
        app = ReplicaApp(
            self.replica,
            self.event_kind,
            AppLimits(s.max_body_bytes, s.max_events, s.body_timeout_s),
            self._executor,
        ).build()
        protocol = guarded_protocol(
            HttpLimits(s.header_timeout_s, s.max_connections), self.replica.metrics.request
        )
        config = uvicorn.Config(
            app,
            http=protocol,
            loop="auto",  # uvloop where it is installed (the "standard" extra), else asyncio
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=s.keep_alive_s,  # type: ignore[arg-type]
            timeout_graceful_shutdown=5,
            backlog=s.backlog,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="replica-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise OSError(f"the HTTP server on {s.host}:{s.port} did not start")
            time.sleep(0.005)
        log.info("replica %s listening on %s", self.replica.name, self.url)
        return self

    @property
    def port(self) -> int:
        """The bound port."""
        if self._socket is None:
            raise ReplicaStateError("port", "not listening")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        """``http://host:port``."""
        host = self.settings.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive() and server is not None:
                server.force_exit = True
                self._thread.join(timeout=5)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
