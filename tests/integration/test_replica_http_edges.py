"""The replica's HTTP edges (issue 21 item 7, issue 19 item 4), on real sockets on loopback.

Slow headers and stalled bodies are cut off, idle connections cost no thread and are bounded,
other methods get 405 in JSON, conflicting lengths get 400, every answer is counted, and the
API describes itself in OpenAPI. Every loop here is bounded; nothing asserts on wall time.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.events.generators import generate
from pipeline.events.kinds import event_model
from pipeline.publishing.publisher import Publisher, PublisherSettings
from pipeline.serving.http import HttpSettings, ReplicaHttpServer
from pipeline.serving.model import Blueprint
from pipeline.serving.replica import Replica, ReplicaSettings
from pipeline.testing.replicas import (
    MemoryTopic,
    TrainingHarness,
    events_of,
    http_call,
    predict_body,
    transaction_specs,
)

pytestmark = pytest.mark.integration

EVENTS = events_of("transaction", list(generate("transaction", 600, seed=5)))
BODY = predict_body(EVENTS[:3])


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    tmp = tmp_path_factory.mktemp("edges")
    harness = TrainingHarness(*transaction_specs(), tmp / "t", num_shards=1).open()
    harness.train(EVENTS[:500])
    topic = MemoryTopic()
    pub = Publisher(
        "unused:9092", "d", tmp / "snaps", settings=PublisherSettings(topic="d"), sink=topic
    ).start()
    harness.publish(pub, EVENTS[:4], snapshot=True)
    rep = Replica(
        Blueprint(*transaction_specs()),
        ReplicaSettings(topic="d", snapshot_dir=str(tmp / "snaps"), data_dir=str(tmp / "r")),
        "unused:9092",
        name="edges",
        source=topic.source,
    ).start()
    assert rep.wait_ready(30)
    yield rep
    rep.close()
    harness.close()


def serve(replica: Replica, **settings: float) -> ReplicaHttpServer:
    return ReplicaHttpServer(replica, "transaction", HttpSettings(**settings)).start()  # type: ignore[arg-type]


def connect(server: ReplicaHttpServer, timeout_s: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s)


def read_answer(
    sock: socket.socket, check_close: bool = False
) -> tuple[int, dict[str, str], dict[str, object], bool]:
    """Status, headers, JSON body, and (if asked) whether the server closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    closed = False
    if check_close:
        try:
            sock.settimeout(5)
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
    return status, headers, json.loads(rest[:length]), closed


def requests_by_code(server: ReplicaHttpServer) -> Counter[str]:
    status, text = http_call(server.url + "/metrics")
    assert status == 200
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("freshet_replica_requests_total{"):
            code = line.split('code="', 1)[1].split('"', 1)[0]
            out[code] = int(float(line.rsplit(" ", 1)[1]))
    return out


def test_slow_headers_are_cut_off(replica: Replica) -> None:
    """One header byte every 0.5 s: answered 408 and closed long before the request ends."""
    server = serve(replica, header_timeout_s=1.5)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    try:
        before = requests_by_code(server)
        sock = connect(server)
        sent = 0
        answered = False
        for byte in request:  # bounded: at most len(request) sends of 0.5 s each
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break  # already closed by the server
            sent += 1
            readable, _, _ = select.select([sock], [], [], 0.5)
            if readable:
                answered = True
                break
        assert answered and sent < len(request), sent
        status, headers, obj, closed = read_answer(sock, check_close=True)
        assert status == 408 and "headers did not arrive within 1.5 s" in str(obj["error"])
        assert headers["content-type"] == "application/json" and closed
        sock.close()
        assert requests_by_code(server) - before == Counter({"408": 1})
    finally:
        server.close()


def test_a_partial_body_then_silence_is_cut_off(replica: Replica) -> None:
    server = serve(replica, body_timeout_s=1.0)
    try:
        before = requests_by_code(server)
        sock = connect(server)
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + BODY[:10]
        )
        status, _, obj, closed = read_answer(sock, check_close=True)  # the timeout bounds it
        assert status == 408 and closed
        assert obj["error"] == "the body did not arrive within 1 s (10 of 100 bytes)"
        sock.close()
        # the replica still serves, and counted both answers
        assert http_call(server.url + "/predict", BODY)[0] == 200
        assert requests_by_code(server) - before == Counter({"408": 1, "200": 1})
    finally:
        server.close()


def test_idle_connections_cost_no_thread_and_do_not_stall_the_replica(replica: Replica) -> None:
    """1,500 idle connections: no thread each; requests keep being answered, also after."""
    server = serve(replica, max_connections=2000, header_timeout_s=120.0, workers=2)
    threads_before = threading.active_count()  # the event loop's thread is running
    idle: list[socket.socket] = []
    try:
        for _ in range(1500):
            idle.append(connect(server))
        status, obj = http_call(server.url + "/predict", BODY)  # 10 s client timeout
        assert status == 200 and len(obj["scores"]) == 3
        # the server's threads: the event loop plus its 2 workers, whatever the connections
        assert threading.active_count() <= threads_before + 2, threading.enumerate()
        assert http_call(server.url + "/healthz")[0] == 200
        for sock in idle:
            sock.close()
        idle.clear()
        for _ in range(20):
            assert http_call(server.url + "/predict", BODY)[0] == 200
        assert threading.active_count() <= threads_before + 2
    finally:
        for sock in idle:
            sock.close()
        server.close()


def test_idle_connections_are_closed_after_the_header_timeout(replica: Replica) -> None:
    server = serve(replica, header_timeout_s=0.5)
    try:
        socks = [connect(server) for _ in range(20)]
        for sock in socks:
            assert sock.recv(1) == b""  # closed by the server (the socket timeout bounds it)
            sock.close()
    finally:
        server.close()


def test_connections_past_the_cap_are_refused_with_503(replica: Replica) -> None:
    server = serve(replica, max_connections=8, header_timeout_s=60.0)
    held: list[socket.socket] = []
    try:
        before = requests_by_code(server)
        held = [connect(server) for _ in range(8)]
        extra = connect(server)
        status, _, obj, closed = read_answer(extra, check_close=True)
        extra.close()
        assert status == 503 and closed
        assert "too many open connections (limit 8)" in str(obj["error"])
        for sock in held:
            sock.close()
        held = []
        assert requests_by_code(server) - before == Counter({"503": 1})
    finally:
        for sock in held:
            sock.close()
        server.close()


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])
def test_other_methods_get_405_in_json_and_are_counted(replica: Replica, method: str) -> None:
    server = serve(replica)
    try:
        before = requests_by_code(server)
        for path, allowed in (("/predict", "POST"), ("/healthz", "GET, HEAD")):
            sock = connect(server)
            request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            sock.sendall(request.encode())
            status, headers, obj, _ = read_answer(sock)
            sock.close()
            assert status == 405 and headers["content-type"] == "application/json"
            assert headers["allow"] == allowed
            assert obj["error"] == f"{method} {path} is not supported; use {allowed}"
        assert requests_by_code(server) - before == Counter({"405": 2})
    finally:
        server.close()


def test_conflicting_content_lengths_are_refused(
    replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(replica)
    cases = [
        (b"Content-Length: 5\r\nContent-Length: 6\r\n", 400, "conflicting Content-Length"),
        (b"Content-Length: 5, 6\r\n", 400, "conflicting Content-Length"),
        (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 411, "chunked"),
        (b"Transfer-Encoding: gzip\r\n", 411, "send a Content-Length"),
    ]
    try:
        before = requests_by_code(server)
        for framing, want, words in cases:
            sock = connect(server)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\nhello")
            status, headers, obj, closed = read_answer(sock, check_close=True)
            sock.close()
            assert (status, closed) == (want, True), (framing, obj)
            assert words in str(obj["error"]) and headers["content-type"] == "application/json"
        assert requests_by_code(server) - before == Counter({"400": 2, "411": 2})
        # a client's bad framing is its fault: answered and counted, not a WARNING per request
        noisy = [r for r in caplog.records if r.name.startswith("uvicorn")]
        assert [r.levelno for r in noisy if r.levelno >= logging.WARNING] == []
    finally:
        server.close()


def test_every_answer_is_counted(replica: Replica) -> None:
    server = serve(replica)
    try:
        before = requests_by_code(server)
        assert http_call(server.url + "/predict", BODY)[0] == 200
        assert http_call(server.url + "/predict", b"[1]")[0] == 400
        assert http_call(server.url + "/nope")[0] == 404
        assert http_call(server.url + "/nope", b"{}")[0] == 404
        assert http_call(server.url + "/predict")[0] == 405  # GET
        assert http_call(server.url + "/healthz", b"{}")[0] == 405  # POST
        assert http_call(server.url + "/version", method="DELETE")[0] == 405
        sock = connect(server)
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert read_answer(sock)[0] == 400
        sock.close()
        for probe in ("/healthz", "/readyz", "/version", "/openapi.json"):  # not counted
            assert http_call(server.url + probe)[0] == 200
        counted = requests_by_code(server) - before
        assert counted == Counter({"200": 1, "400": 2, "404": 2, "405": 3})
    finally:
        server.close()


def test_openapi_describes_the_api(replica: Replica) -> None:
    server = serve(replica, max_events=77)
    try:
        status, doc = http_call(server.url + "/openapi.json")
        assert status == 200 and doc["openapi"] == "3.1.0"
        predict = doc["paths"]["/predict"]["post"]
        schema = predict["requestBody"]["content"]["application/json"]["schema"]
        assert schema["required"] == ["events"] and schema["properties"]["events"]["maxItems"] == 77
        ref = schema["properties"]["events"]["items"]["$ref"].rsplit("/", 1)[1]
        event = doc["components"]["schemas"][ref]
        model = event_model("transaction")
        assert set(event["properties"]) == set(model.model_fields)
        required = {n for n, f in model.model_fields.items() if f.is_required()}
        assert set(event["required"]) == required
        assert {"200", "400", "405", "408", "413", "422", "503"} <= set(predict["responses"])
    finally:
        server.close()


def test_a_taken_port_fails_at_start(replica: Replica, tmp_path: Path) -> None:
    first = serve(replica)
    try:
        with pytest.raises(OSError):
            serve(replica, port=first.port)
    finally:
        first.close()
