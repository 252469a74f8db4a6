"""The replica's HTTP API as it was before issue 19: the standard library's threading server.

Kept only as the serve benchmark's baseline (``python -m benchmarks.serve_bench --servers
uvicorn,stdlib`` measures both in one run); the replica serves with
:mod:`pipeline.serving.http`. It has no header or body deadline, a thread per connection and
HTML errors for unknown methods: do not serve with it.

=====================  ===================================================================
``POST /predict``      ``{"events": [...]}`` -> ``{"version": v, "scores": [...]}``; 4xx with
                       ``{"error": "..."}`` naming the problem, 503 before the first snapshot
``GET /healthz``       200 while the process serves HTTP
``GET /readyz``        200 once a model version is loaded, 503 before (with the reason,
                       e.g. a missing snapshot directory, and the retries so far)
``GET /version``       version served, its trainer step time, lag, state
``GET /metrics``       Prometheus text (the replica's own registry)
=====================  ===================================================================

A body larger than ``max_body_bytes`` is refused with 413 from its ``Content-Length`` before
any of it is read (the connection is then closed); a body without a length gets 411.

>>> StdlibHttpSettings().host, StdlibHttpSettings().max_body_bytes
('127.0.0.1', 1048576)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from pipeline.errors import PipelineError
from pipeline.publishing.errors import ReplicaStateError, RequestError
from pipeline.serving.predict_request import parse_predict_body
from pipeline.serving.replica import Replica

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StdlibHttpSettings:
    """Where the API listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = 0
    max_body_bytes: int = 1 << 20
    max_events: int = 4096


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    replica: Replica
    event_kind: str
    settings: StdlibHttpSettings


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # headers and body are two writes: without TCP_NODELAY, Nagle and the client's delayed
    # ACK hold the body back ~40 ms on a keep-alive connection
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: object) -> None:
        self._send(status, json.dumps(obj).encode())

    def do_GET(self) -> None:
        replica = self.server.replica
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/readyz":
            if replica.ready:
                self._json(200, {"ready": True, "version": replica.version})
            else:
                self._json(
                    503,
                    {
                        "ready": False,
                        "state": replica.state.value,
                        "reason": replica.waiting_for,
                        "retries": replica.bootstrap_retries,
                    },
                )
        elif path == "/version":
            self._json(200, replica.status())
        elif path == "/metrics":
            self._send(200, replica.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/predict":
            self._json(405, {"error": "use POST for /predict"})
        else:
            self._json(404, {"error": f"no such endpoint {path!r}"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/predict":
            self.close_connection = True
            self._json(
                404 if path not in ("/healthz", "/readyz", "/version", "/metrics") else 405,
                {"error": f"POST {path} is not supported"},
            )
            return
        t0 = time.perf_counter()
        status, obj = self._predict()
        self._json(status, obj)
        metrics = self.server.replica.metrics
        metrics.latency.observe(time.perf_counter() - t0)
        metrics.request(status)

    def _body(self) -> bytes:
        limit = self.server.settings.max_body_bytes
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            raise RequestError(411, "chunked bodies are not accepted; send a Content-Length")
        text = self.headers.get("Content-Length")
        if text is None:
            self.close_connection = True
            raise RequestError(411, "a Content-Length header is required")
        try:
            length = int(text)
        except ValueError:
            self.close_connection = True
            raise RequestError(400, f"bad Content-Length {text[:40]!r}") from None
        if length < 0:
            self.close_connection = True
            raise RequestError(400, f"bad Content-Length {length}")
        if length > limit:
            self.close_connection = True  # the body stays unread
            raise RequestError(413, f"body of {length} bytes exceeds the limit of {limit} bytes")
        return self.rfile.read(length)

    def _predict(self) -> tuple[int, dict[str, Any]]:
        server = self.server
        try:
            body = self._body()
            events = parse_predict_body(body, server.event_kind, server.settings.max_events)
            prediction = server.replica.predict(events)
        except RequestError as err:
            return err.status, {"error": err.detail}
        except ReplicaStateError as err:
            return 503, {"error": f"not ready: {err}"}
        except PipelineError as err:
            return 422, {"error": str(err)}
        except Exception:
            log.exception("/predict failed")
            return 500, {"error": "internal error (see the replica's log)"}
        return 200, {"version": prediction.version, "scores": prediction.scores.tolist()}


class StdlibReplicaHttpServer:
    """Serves a :class:`Replica` over HTTP; ``port=0`` picks a free port at :meth:`start`."""

    def __init__(
        self, replica: Replica, event_kind: str, settings: StdlibHttpSettings | None = None
    ):
        self.replica = replica
        self.event_kind = event_kind
        self.settings = settings if settings is not None else StdlibHttpSettings()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StdlibReplicaHttpServer:
        """Bind and serve in a background thread."""
        server = _Server((self.settings.host, self.settings.port), _Handler)
        server.replica = self.replica
        server.event_kind = self.event_kind
        server.settings = self.settings
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="replica-http",
            daemon=True,
        )
        self._thread.start()
        log.info("replica %s listening on %s", self.replica.name, self.url)
        return self

    @property
    def port(self) -> int:
        """The bound port."""
        if self._server is None:
            raise ReplicaStateError("port", "not listening")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.settings.host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
