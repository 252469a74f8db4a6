"""Acceptance (issue 8): 10,000 malformed ``POST /predict`` requests to a real replica server.

Each is answered with the 4xx its construction calls for (never a 5xx, never a dropped
connection), the JSON error names the problem, valid requests keep being served in between,
and the replica's ``requests_total`` counters account for every answer.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pipeline.broker.embedded import EmbeddedBroker
from pipeline.testing.replicas import http_call, wait_for_version
from tests.integration.fuzz_bodies import Request, malformed_requests
from tests.integration.fuzz_payloads import draw_many
from tests.integration.test_replica_http import (
    MAX_BODY,
    MAX_EVENTS,
    Served,
    body,
    publish_one,
    start,
    stop,
    tx,
)

pytestmark = pytest.mark.integration

MALFORMED = 10_000
PROBE_EVERY = 500  # a valid request after every 500 malformed ones


@pytest.fixture(scope="module")
def fuzz_requests() -> list[Request]:
    """The malformed requests, drawn before the replica's threads start (hypothesis takes a
    change of the global ``random`` state by another thread for a strategy using it)."""
    return draw_many(
        malformed_requests(MAX_BODY, MAX_EVENTS), MALFORMED, unique_by=lambda r: r.body
    )


@pytest.fixture(scope="module")
def served(
    fuzz_requests: list[Request],
    tmp_path_factory: pytest.TempPathFactory,
    kafka_broker: EmbeddedBroker,
) -> Iterator[Served]:
    s = start(
        tmp_path_factory.mktemp("fuzz"), kafka_broker.bootstrap, f"http-fuzz-{uuid.uuid4().hex[:8]}"
    )
    version = publish_one(s)
    assert wait_for_version(s.url, version) == version
    yield s
    stop(s)


@dataclass(frozen=True)
class Answer:
    status: int
    error: str
    closed: bool


class Client:
    """One keep-alive connection, opened again only after the server closes it."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.conn: http.client.HTTPConnection | None = None
        self.connections = 0

    def post(self, req: Request) -> Answer:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            self.connections += 1
        conn = self.conn
        conn.putrequest("POST", "/predict", skip_accept_encoding=True)
        for name, value in req.headers:
            conn.putheader(name, value)
        if req.length:
            conn.putheader("Content-Length", str(len(req.body)))
        conn.endheaders()
        if req.body:
            conn.send(req.body)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.getheader("Content-Type") == "application/json", (req.case, data[:200])
        if resp.will_close:
            conn.close()
            self.conn = None
        return Answer(resp.status, json.loads(data).get("error", ""), resp.will_close)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def requests_by_code(url: str) -> Counter[str]:
    status, text = http_call(url + "/metrics")
    assert status == 200
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("freshet_replica_requests_total{"):
            code = line.split('code="', 1)[1].split('"', 1)[0]
            out[code] = int(float(line.rsplit(" ", 1)[1]))
    return out


def test_malformed_predict_bodies_get_4xx_and_are_counted(
    fuzz_requests: list[Request], served: Served
) -> None:
    requests = fuzz_requests
    cases = Counter(r.case for r in requests)
    assert len(cases) >= 15, cases  # every case drawn, most of them often
    valid = Request("valid", body(tx(), tx(amount=0.0), tx(label=1)), expect=((200, ""),))
    before = requests_by_code(served.url)

    client = Client(served.url)
    answers: list[Answer] = []
    probes = 0
    started = time.monotonic()
    try:
        for i, req in enumerate(requests):
            try:
                answers.append(client.post(req))
            except (OSError, http.client.HTTPException) as err:  # a dropped connection
                pytest.fail(f"request {i} ({req.case}, {req.body[:80]!r}): {err!r}")
            if i % PROBE_EVERY == PROBE_EVERY - 1:
                ok = client.post(valid)
                assert ok.status == 200, (i, ok)
                probes += 1
    finally:
        client.close()
    elapsed = time.monotonic() - started

    wrong = [
        (r.case, r.body[:100], r.headers, a)
        for r, a in zip(requests, answers, strict=True)
        if not any(a.status == s and re.search(pattern, a.error) for s, pattern in r.expect)
    ]
    kinds = Counter((case, a.status, a.error[:50]) for case, _, _, a in wrong)
    assert not wrong, f"{len(wrong)} unexpected answers: {kinds.most_common(12)}, e.g. {wrong[:3]}"
    statuses = Counter(a.status for a in answers)
    assert all(400 <= s < 500 for s in statuses), statuses
    assert sum(statuses.values()) == MALFORMED

    # the server still serves, and its counters account for every answer, no more, no less
    status, obj = http_call(served.url + "/predict", body(tx(), tx(customer_id=9)))
    assert status == 200 and len(obj["scores"]) == 2
    after = requests_by_code(served.url)
    counted = after - before
    assert counted == Counter({str(s): n for s, n in statuses.items()}) + Counter(
        {"200": probes + 1}
    )
    assert not any(code.startswith("5") for code in after), after
    print(
        f"{MALFORMED} malformed + {probes + 1} valid requests in {elapsed:.1f} s over "
        f"{client.connections} connections: {dict(sorted(statuses.items()))}; cases {dict(cases)}"
    )
