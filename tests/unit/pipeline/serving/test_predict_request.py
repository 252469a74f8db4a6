"""Regressions found by fuzzing /predict (tests/integration/test_fuzz_replica_http.py).

Each of these bodies was answered 500 (``RecursionError``, or the ``ValueError`` of an integer
past 4,300 digits), 200 (a UTF-16 or UTF-32 body), or 422 naming the wrong event with no reason
(nesting deeper than the schema's parser allows, but not deeper than ``json.loads`` does).
"""

from __future__ import annotations

import codecs
import json

import pytest

from pipeline.publishing.errors import RequestError
from pipeline.serving.predict_request import parse_predict_body

TX = {
    "transaction_id": 1,
    "timestamp": "2018-04-01T00:00:31Z",
    "customer_id": 5,
    "terminal_id": 7,
    "amount": 12.5,
    "label": 0,
}
GOOD = json.dumps({"events": [TX, TX]})


def events_with(index: int, field: str, raw: str) -> bytes:
    events = [json.dumps(TX)] * 3
    events[index] = json.dumps({**TX, field: "@"}).replace('"@"', raw)
    return ('{"events": [' + ", ".join(events) + "]}").encode()


CASES = [
    ("deep list", b"[" * 5_000 + b"]" * 5_000, "bad JSON: recursion limit exceeded"),
    ("deep object", b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "bad JSON: recursion limit exceeded"),
    ("deep in event 2", events_with(2, "amount", "[" * 500 + "]" * 500), "bad JSON: recursion"),
    ("5,000 digits", events_with(1, "customer_id", "9" * 5_000), "bad JSON: number out of range"),
    ("utf-16", GOOD.encode("utf-16"), "bad JSON: the body is not UTF-8 (invalid start byte: 0xff"),
    ("utf-32", GOOD.encode("utf-32"), "bad JSON: the body is not UTF-8"),
    ("utf-16 without BOM", GOOD.encode("utf-16-le"), "bad JSON: key must be a string"),
    ("utf-8 BOM", codecs.BOM_UTF8 + GOOD.encode(), "bad JSON"),
    ("lone surrogate", events_with(0, "timestamp", '"\\ud800"'), "bad JSON"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "error"), CASES, ids=[c[0] for c in CASES])
def test_bodies_past_the_parsers_limits_are_400(case: str, body: bytes, error: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_predict_body(body, "transaction", 8)
    assert (caught.value.status, case) == (400, case)
    assert caught.value.detail.startswith(error), caught.value.detail


def test_the_first_refused_event_is_named_with_its_reason() -> None:
    body = events_with(2, "amount", "[" * 150 + "]" * 150)  # deep, but within the limit
    with pytest.raises(RequestError, match=r"invalid event 2: transaction: wrong type for 'amount"):
        parse_predict_body(body, "transaction", 8)
    body = events_with(1, "customer_id", "9" * 4_000)  # long, but within the limit
    with pytest.raises(RequestError, match=r"invalid event 1: .* out of range for 'customer_id'"):
        parse_predict_body(body, "transaction", 8)
    assert [e.amount for e in parse_predict_body(GOOD.encode(), "transaction", 8)] == [12.5, 12.5]
