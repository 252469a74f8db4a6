"""The replica's HTTP API on a real server: readiness, malformed bodies, limits, metrics."""

from __future__ import annotations

import http.client
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.broker.embedded import EmbeddedBroker, ensure_topics
from pipeline.events.generators import generate
from pipeline.publishing.publisher import Publisher, PublisherSettings
from pipeline.serving.http import HttpSettings, ReplicaHttpServer
from pipeline.serving.model import Blueprint
from pipeline.serving.replica import Replica, ReplicaSettings
from pipeline.testing.replicas import (
    TrainingHarness,
    events_of,
    http_call,
    predict_body,
    transaction_specs,
    wait_for_version,
)

pytestmark = pytest.mark.integration

MAX_BODY = 8192
MAX_EVENTS = 8


@dataclass
class Served:
    harness: TrainingHarness
    publisher: Publisher
    replica: Replica
    server: ReplicaHttpServer
    events: list[object]

    @property
    def url(self) -> str:
        return self.server.url


def start(tmp: Path, bootstrap: str, topic: str) -> Served:
    fspec, mspec = transaction_specs()
    ensure_topics(bootstrap, {topic: 1})
    events = events_of("transaction", list(generate("transaction", 400, seed=2)))
    harness = TrainingHarness(fspec, mspec, tmp / "trainer").open()
    publisher = Publisher(
        bootstrap, topic, tmp / "snapshots", settings=PublisherSettings(topic=topic)
    ).start()
    replica = Replica(
        Blueprint(fspec, mspec, num_shards=1),
        ReplicaSettings(
            topic=topic,
            snapshot_dir=str(tmp / "snapshots"),
            data_dir=str(tmp / "replica"),
            resync_poll_s=0.05,
            maintain_every_s=0.05,
        ),
        bootstrap,
        name="http",
    ).start()
    server = ReplicaHttpServer(
        replica, "transaction", HttpSettings(max_body_bytes=MAX_BODY, max_events=MAX_EVENTS)
    ).start()
    return Served(harness, publisher, replica, server, events)


def stop(s: Served) -> None:
    s.server.close()
    s.replica.close()
    s.publisher.close()
    s.harness.close()


@pytest.fixture
def fresh(tmp_path: Path, bootstrap: str) -> Iterator[Served]:
    """A replica with nothing published yet."""
    s = start(tmp_path, bootstrap, f"http-fresh-{uuid.uuid4().hex[:8]}")
    yield s
    stop(s)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, kafka_broker: EmbeddedBroker
) -> Iterator[Served]:
    """A replica serving one published version (shared by the tests that only read)."""
    s = start(
        tmp_path_factory.mktemp("served"), kafka_broker.bootstrap, f"http-{uuid.uuid4().hex[:8]}"
    )
    version = publish_one(s)
    assert wait_for_version(s.url, version) == version
    yield s
    stop(s)


def publish_one(s: Served) -> int:
    s.harness.train(s.events[:200])
    report = s.harness.publish(s.publisher, s.events[200:204])
    assert report is not None
    return report.version


def test_not_ready_before_the_first_snapshot(fresh: Served) -> None:
    served = fresh
    assert http_call(served.url + "/healthz") == (200, {"status": "ok"})
    status, obj = http_call(served.url + "/readyz")
    assert status == 503 and obj["ready"] is False
    status, obj = http_call(served.url + "/predict", predict_body(served.events[:2]))
    assert status == 503 and "not ready" in obj["error"]
    assert http_call(served.url + "/version")[1]["version"] is None
    version = publish_one(served)
    assert wait_for_version(served.url, version) == version
    assert http_call(served.url + "/readyz") == (200, {"ready": True, "version": version})


def tx(**change: object) -> dict[str, object]:
    base: dict[str, object] = {
        "transaction_id": 1,
        "timestamp": "2018-04-01T00:00:31+00:00",
        "customer_id": 5,
        "terminal_id": 7,
        "amount": 12.5,
        "label": 0,
    }
    base.update(change)
    return {k: v for k, v in base.items() if v is not ...}


def body(*events: object) -> bytes:
    return json.dumps({"events": list(events)}).encode()


CASES = [
    ("not json", b"{events: [", 400, "bad JSON"),
    ("not utf-8", b'{"events": ["\xff"]}', 400, "bad JSON"),
    ("not an object", b"[1, 2]", 400, "body must be a JSON object"),
    ("no events", b"{}", 400, "missing field 'events'"),
    ("extra key", json.dumps({"events": [], "x": 1}).encode(), 400, "only 'events'"),
    ("events not a list", b'{"events": {"a": 1}}', 400, "'events' must be a list, got dict"),
    ("empty", body(), 422, "'events' is empty"),
    ("too many", body(*[tx()] * (MAX_EVENTS + 1)), 413, f"exceed the limit of {MAX_EVENTS}"),
    ("missing field", body(tx(), tx(amount=...)), 422, "invalid event 1: transaction: missing "
     "field 'amount'"),
    ("wrong type", body(tx(amount="lots")), 422, "invalid event 0: transaction: wrong type for "
     "'amount'"),
    ("out of range", body(tx(label=3)), 422, "value out of range for 'label'"),
    ("unknown field", body(tx(colour="red")), 422, "unknown field 'colour'"),
    ("naive time", body(tx(timestamp="2018-04-01T00:00:31")), 422, "'timestamp'"),
    ("event not object", body(tx(), 7), 422, "invalid event 1: transaction: bad JSON"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "data", "status", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_malformed_bodies(
    served: Served, case: str, data: bytes, status: int, fragment: str
) -> None:
    got, obj = http_call(served.url + "/predict", data)
    assert (got, case) == (status, case)
    assert fragment in obj["error"], obj
    # the replica keeps serving
    assert http_call(served.url + "/healthz")[0] == 200
    ok, answer = http_call(served.url + "/predict", body(tx()))
    assert ok == 200 and len(answer["scores"]) == 1


def raw_request(url: str, headers: dict[str, str], data: bytes = b"") -> tuple[int, dict[str, str]]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("POST", "/predict", skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        if data:
            conn.send(data)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_oversized_and_unsized_bodies_are_refused_unread(served: Served) -> None:
    # 100 MB announced, nothing sent: the answer comes from the header alone
    status, obj = raw_request(served.url, {"Content-Length": str(100 << 20)})
    assert status == 413 and f"exceeds the limit of {MAX_BODY} bytes" in obj["error"]
    status, obj = raw_request(served.url, {}, b"")
    assert status == 411 and "Content-Length" in obj["error"]
    status, obj = raw_request(served.url, {"Transfer-Encoding": "chunked"}, b"0\r\n\r\n")
    assert status == 411
    status, obj = raw_request(served.url, {"Content-Length": "ten"})
    assert status == 400 and "bad Content-Length" in obj["error"]
    big = body(*[tx(transaction_id=i) for i in range(MAX_EVENTS)]) + b" " * MAX_BODY
    status, obj = http_call(served.url + "/predict", big)
    assert status == 413
    assert http_call(served.url + "/healthz")[0] == 200
    assert http_call(served.url + "/predict", body(tx()))[0] == 200


def test_routes_and_methods(served: Served) -> None:
    assert http_call(served.url + "/nope")[0] == 404
    assert http_call(served.url + "/predict")[0] == 405
    assert http_call(served.url + "/nope", b"{}")[0] == 404


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")


def test_metrics_and_version(fresh: Served) -> None:
    served = fresh
    v1 = publish_one(served)
    served.harness.train(served.events[204:300])
    report = served.harness.publish(served.publisher)
    assert report is not None
    v2 = report.version
    assert wait_for_version(served.url, v2) == v2
    for _ in range(3):
        assert http_call(served.url + "/predict", body(tx()))[0] == 200
    assert http_call(served.url + "/predict", b"nope")[0] == 400
    status, text = http_call(served.url + "/metrics")
    assert status == 200 and isinstance(text, str)
    assert metric(text, "freshet_replica_model_version") == v2
    assert metric(text, "freshet_replica_deltas_applied_total") == v2 - v1
    assert metric(text, "freshet_replica_resyncs_total") == 1
    assert metric(text, "freshet_replica_request_seconds_count") == 4
    assert metric(text, "freshet_replica_requests_total", code="200") == 3
    assert metric(text, "freshet_replica_requests_total", code="400") == 1
    assert metric(text, "freshet_replica_freshness_seconds_count") == 2
    lag = metric(text, "freshet_replica_freshness_lag_seconds")
    assert 0 <= lag < 60
    assert re.search(r'freshet_replica_rows\{replica="http",table="tx",tier="hot"\} \d', text)
    status, info = http_call(served.url + "/version")
    assert status == 200 and info["version"] == v2 and info["state"] == "serving"
    assert info["step_time"].endswith("+00:00")
