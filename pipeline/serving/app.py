"""The replica's HTTP API as a Starlette (ASGI) application.

=======================  ===================================================================
``POST /predict``        ``{"events": [...]}`` -> ``{"version": v, "scores": [...]}``; 4xx with
                         ``{"error": "..."}`` naming the problem, 503 before the first snapshot
``GET /healthz``         200 while the process serves HTTP
``GET /readyz``          200 once a model version is loaded, 503 before (with the reason,
                         e.g. a missing snapshot directory, and the retries so far)
``GET /version``         version served, its trainer step time, lag, state
``GET /metrics``         Prometheus text (the replica's own registry)
``GET /openapi.json``    the API as OpenAPI 3.1 (:mod:`pipeline.serving.openapi`)
anything else            404 (no such path) or 405 (other method, with ``Allow``), in JSON
=======================  ===================================================================

A body larger than ``max_body_bytes`` is refused with 413 from its ``Content-Length`` before
any of it is read; a body without a length (or a chunked one) gets 411; a body that does not
arrive whole within ``body_timeout_s`` gets 408. These answers close the connection, since
the rest of the body stays unread. Parsing, scoring and encoding run on a bounded pool of
``workers`` threads, so the event loop stays free for other connections while a delta holds
the write lock.

Every answer is counted in ``freshet_replica_requests_total{code}`` except the probes (``GET``
or ``HEAD`` of ``/healthz``, ``/readyz``, ``/version``, ``/metrics``, ``/openapi.json``); the
connection guard (:mod:`pipeline.serving.guard`) counts the answers it writes itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from pipeline.errors import PipelineError
from pipeline.publishing.errors import ReplicaStateError, RequestError
from pipeline.serving.openapi import openapi_document
from pipeline.serving.predict_request import parse_predict_body
from pipeline.serving.replica import Replica

log = logging.getLogger(__name__)

PROBES = frozenset({"/healthz", "/readyz", "/version", "/metrics", "/openapi.json"})
_CLOSE = {"connection": "close"}


@dataclass(frozen=True)
class AppLimits:
    """What one request may be: body size, event count, how long its body may take."""

    max_body_bytes: int = 1 << 20
    max_events: int = 4096
    body_timeout_s: float = 30.0


def _json(status: int, obj: object, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(obj), status, headers, media_type="application/json")


class ReplicaApp:
    """The ASGI application of one replica (build it with :meth:`build`, call it per request)."""

    def __init__(
        self, replica: Replica, event_kind: str, limits: AppLimits, executor: Executor
    ) -> None:
        self.replica = replica
        self.event_kind = event_kind
        self.limits = limits
        self.executor = executor
        self._openapi = json.dumps(openapi_document(event_kind, limits.max_events)).encode()
        self._app: Starlette | None = None

    def build(self) -> ReplicaApp:
        """Route the endpoints; errors of the router answer in JSON."""

        async def error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            if exc.status_code == 405:
                listed = (exc.headers or {}).get("Allow", "")
                allowed = ", ".join(sorted(m.strip() for m in listed.split(",") if m.strip()))
                what = f"{request.method} {request.url.path} is not supported; use {allowed}"
                return _json(405, {"error": what}, {"Allow": allowed})
            if exc.status_code == 404:
                return _json(404, {"error": f"no such endpoint {request.url.path!r}"})
            return _json(exc.status_code, {"error": exc.detail})

        get = ["GET"]
        self._app = Starlette(
            routes=[
                Route("/predict", self._predict, methods=["POST"]),
                Route("/healthz", self._healthz, methods=get),
                Route("/readyz", self._readyz, methods=get),
                Route("/version", self._version, methods=get),
                Route("/metrics", self._metrics, methods=get),
                Route("/openapi.json", self._openapi_json, methods=get),
            ],
            exception_handlers={HTTPException: error},
        )
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request and count its answer (probes aside)."""
        assert self._app is not None, "call build() first"
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, counted)
        finally:
            probe = scope["method"] in ("GET", "HEAD") and scope["path"] in PROBES
            if not probe:
                self.replica.metrics.request(status)

    # -- probes --------------------------------------------------------------
    async def _healthz(self, request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        replica = self.replica
        if replica.ready:
            return _json(200, {"ready": True, "version": replica.version})
        return _json(
            503,
            {
                "ready": False,
                "state": replica.state.value,
                "reason": replica.waiting_for,
                "retries": replica.bootstrap_retries,
            },
        )

    async def _version(self, request: Request) -> Response:
        return _json(200, self.replica.status())

    async def _metrics(self, request: Request) -> Response:
        return Response(self.replica.metrics.render(), 200, media_type=CONTENT_TYPE_LATEST)

    async def _openapi_json(self, request: Request) -> Response:
        return Response(self._openapi, 200, media_type="application/json")

    # -- /predict ------------------------------------------------------------
    async def _predict(self, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            body = await self._body(request)
        except RequestError as err:
            return _json(err.status, {"error": err.detail}, _CLOSE)
        loop = asyncio.get_running_loop()
        status, data = await loop.run_in_executor(self.executor, self._score, body)
        self.replica.metrics.latency.observe(time.perf_counter() - t0)
        return Response(data, status, media_type="application/json")

    async def _body(self, request: Request) -> bytes:
        """The whole body within the limits, or a :class:`RequestError` (the body unread)."""
        limit = self.limits.max_body_bytes
        if request.headers.get("transfer-encoding", "").lower() not in ("", "identity"):
            raise RequestError(411, "chunked bodies are not accepted; send a Content-Length")
        text = request.headers.get("content-length")
        if text is None:
            raise RequestError(411, "a Content-Length header is required")
        length = int(text)  # h11 has checked it is a number (and that copies agree)
        if length > limit:
            raise RequestError(413, f"body of {length} bytes exceeds the limit of {limit} bytes")
        chunks: list[bytes] = []
        received = 0
        timeout = self.limits.body_timeout_s
        try:
            async with asyncio.timeout(timeout):  # no task per request, unlike wait_for
                async for chunk in request.stream():
                    chunks.append(chunk)
                    received += len(chunk)
        except TimeoutError:
            raise RequestError(
                408, f"the body did not arrive within {timeout:g} s ({received} of {length} bytes)"
            ) from None
        return b"".join(chunks)

    def _score(self, body: bytes) -> tuple[int, bytes]:
        """Parse, score, encode (on a worker thread): ``(status, JSON bytes)``."""
        status, obj = self._predict_obj(body)
        return status, json.dumps(obj).encode()

    def _predict_obj(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            events = parse_predict_body(body, self.event_kind, self.limits.max_events)
            prediction = self.replica.predict(events)
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
