"""The uvicorn internals :mod:`pipeline.serving.guard` hooks are still there and still called.

A uvicorn release that renames a hook or stops calling ``send_400_response`` from inside the
``except`` of an h11 protocol error would silently drop a header deadline or a JSON error;
this fails first. Run by driving the protocol with a fake transport (no sockets).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from pipeline.serving.guard import HttpLimits, guarded_protocol

HOOKS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_response_complete",
    "send_400_response",
)


def test_the_hooked_methods_exist_with_their_signatures() -> None:
    for name in HOOKS:
        assert callable(getattr(H11Protocol, name, None)), name
    params = list(inspect.signature(H11Protocol.__init__).parameters)
    assert params[:4] == ["self", "config", "server_state", "app_state"], params
    assert list(inspect.signature(H11Protocol.send_400_response).parameters) == ["self", "msg"]


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def test_a_protocol_error_is_answered_in_json_and_counted() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # never reached
        raise AssertionError("no request should reach the app")

    counted: list[int] = []

    async def run() -> FakeTransport:
        config = Config(app, lifespan="off", log_config=None)
        config.load()
        cls = guarded_protocol(HttpLimits(header_timeout_s=60), counted.append)
        proto = cls(config=config, server_state=ServerState(), app_state={})
        transport = FakeTransport()
        proto.connection_made(transport)
        proto.data_received(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        )
        proto.connection_lost(None)
        return transport

    transport = asyncio.run(run())
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"content-type: application/json" in head
    assert json.loads(body) == {
        "error": "malformed HTTP request: bad Content-Length (conflicting Content-Length headers)"
    }
    assert counted == [400]
    assert transport.eof  # a lingering close: FIN first
