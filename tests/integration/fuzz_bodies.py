"""Hypothesis strategies for malformed ``POST /predict`` requests, with the answer each must get.

A request is a body plus the headers that frame it. Each is built to break exactly one rule of
the API (see :mod:`pipeline.serving.predict_request` and :mod:`pipeline.serving.http`), so
the status
and the words of the error are known by construction:

=================  =====================================================  ======  ============
case               how                                                    status  error says
=================  =====================================================  ======  ============
bad_json           a valid body cut short, junk after it, bare garbage    400     bad JSON
not_utf8           a valid body with bytes UTF-8 forbids, or UTF-16/32    400     bad JSON
deep               lists or objects nested past any sane depth            400     bad JSON
not_object         a JSON array, string, number, null                     400     JSON object
unknown_key        keys besides ``events``                                400     only 'events'
no_events          ``{}``                                                 400     'events'
events_not_list    ``{"events": 7}``                                      400     must be a list
empty              ``{"events": []}``                                     422     is empty
too_many           more events than ``max_events``                        413     exceed the limit
bad_event          valid events, then one the event schema refuses        422     invalid event i
too_large          a body past ``max_body_bytes``                         413     exceeds the limit
no_length, ...     no/negative/garbled Content-Length, chunked            411/400 Content-Length
=================  =====================================================  ======  ============

Any body past ``max_body_bytes`` is refused for its size first, whatever else is wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from hypothesis import strategies as st

from pipeline.errors import DecodeFailure
from tests.integration.fuzz_payloads import (
    BAD_UTF8,
    BLOBS,
    JSON_SPACE,
    JUNK,
    Draw,
    Items,
    base_records,
    json_leaves,
    json_values,
    raw,
    record_level,
    render,
    valid_items,
)

KIND: Final = "transaction"
WORDS: Final = {
    DecodeFailure.MISSING_FIELD: "missing field",
    DecodeFailure.UNKNOWN_FIELD: "unknown field",
    DecodeFailure.WRONG_TYPE: "wrong type",
    DecodeFailure.OUT_OF_RANGE: "out of range",
    DecodeFailure.INVALID_VALUE: "invalid value",
    DecodeFailure.BAD_JSON: "bad JSON",
}
"""What a 422's error says for each reason an event is refused."""

Expect = tuple[int, str]
"""An acceptable answer: status and a regular expression the JSON error must contain."""


@dataclass(frozen=True)
class Request:
    """A ``POST /predict``: body, extra headers, and the answers it may get."""

    case: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    length: bool = True  # send a true Content-Length
    expect: tuple[Expect, ...] = ()


def body_of(events: list[str], compact: bool = True) -> str:
    sep = "," if compact else ", "
    return '{"events": [' + sep.join(events) + "]}"


def too_large(limit: int) -> tuple[Expect, ...]:
    return ((413, f"exceeds the limit of {limit} bytes"),)


def finish(case: str, body: bytes, expect: tuple[Expect, ...], limit: int) -> Request:
    """The size check comes first: a body past the limit gets 413 whatever else it breaks."""
    return Request(case, body, expect=too_large(limit) if len(body) > limit else expect)


BODY_CASES: Final = st.sampled_from(
    [
        "bad_json",
        "not_utf8",
        "deep",
        "not_object",
        "unknown_key",
        "no_events",
        "events_not_list",
        "empty",
        "too_many",
        *["bad_event"] * 6,
        "too_large",
    ]
)
HEADER_CASES: Final = st.sampled_from(
    ["no_length", "chunked", "bad_length", "negative_length", "huge_length"]
)
CONTENT_TYPES: Final = st.sampled_from(
    [
        None,
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=utf-16",
        "",
    ]
)
ENCODINGS: Final = st.sampled_from(["utf-16", "utf-16-be", "utf-32", "utf-8-sig"])
NOT_INT: Final = st.text("0123456789abcxyzABC+-_. ,;/", min_size=1, max_size=12).filter(
    lambda s: s == s.strip() and not _is_int(s)
)
SMALL_ITEMS: Final = st.sampled_from(["0", "{}", "null", "[]", '""'])
SIZES: Final = st.integers(0, 7)
NON_LISTS: Final = json_leaves | st.dictionaries(st.text(max_size=5), json_leaves, max_size=3)
NOT_EVENTS_KEY: Final = st.text(max_size=12).filter(lambda k: k != "events")
DEPTHS: Final = st.integers(300, 4_000)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def events(draw: Draw, n: int) -> list[str]:
    return [render(valid_items(draw, KIND)) for _ in range(n)]


@st.composite
def malformed_requests(draw: Draw, max_body: int, max_events: int) -> Request:
    """A request the replica must refuse with a 4xx naming the problem."""
    if draw(st.integers(0, 9)) == 0:  # one in ten breaks the framing, not the body
        return header_case(draw, max_body)
    request = body_case(draw, max_body, max_events)
    content_type = draw(CONTENT_TYPES)  # the server reads JSON whatever the type says
    if content_type is None:
        return request
    return Request(
        request.case, request.body, (("Content-Type", content_type),), expect=request.expect
    )


def header_case(draw: Draw, max_body: int) -> Request:
    case = draw(HEADER_CASES)
    bad_length = (400, "bad Content-Length")
    if case == "no_length":
        return Request(case, b"", length=False, expect=((411, "Content-Length"),))
    if case == "chunked":
        body = b"5\r\n{} []\r\n0\r\n\r\n"
        headers = (("Transfer-Encoding", "chunked"),)
        return Request(case, body, headers, length=False, expect=((411, "chunked"),))
    if case == "bad_length":
        headers = (("Content-Length", draw(NOT_INT)),)
        return Request(case, b"", headers, length=False, expect=(bad_length,))
    if case == "negative_length":
        headers = (("Content-Length", str(-draw(st.integers(1, 2**70)))),)
        return Request(case, b"", headers, length=False, expect=(bad_length,))
    length = draw(st.integers(max_body + 1, 2**62))  # announced, never sent
    headers = (("Content-Length", str(length)),)
    return Request(case, b"", headers, length=False, expect=too_large(max_body))


def body_case(draw: Draw, max_body: int, max_events: int) -> Request:
    case = draw(BODY_CASES)
    bad_json = ((400, "bad JSON"),)
    good = body_of(events(draw, draw(st.integers(1, 3))))
    if case == "bad_json":
        how = draw(st.sampled_from(["cut", "junk", "garbage"]))
        if how == "cut":  # every strict prefix of an object is unfinished
            body = good[: draw(st.integers(0, len(good) - 1))]
        elif how == "junk":
            body = good + draw(JUNK)
        else:
            body = draw(st.text(min_size=1, max_size=30).map(lambda s: "{" + s + "]"))
        return finish(case, body.encode(), bad_json, max_body)
    if case == "not_utf8":
        if draw(st.booleans()):
            return finish(case, good.encode(draw(ENCODINGS)), bad_json, max_body)
        data = good.encode() if draw(st.booleans()) else draw(BLOBS)
        at = draw(st.integers(0, len(data)))
        return finish(case, data[:at] + draw(BAD_UTF8) + data[at:], bad_json, max_body)
    if case == "deep":  # refused for its depth, or else for the value it is
        depth = draw(DEPTHS)
        if draw(st.booleans()):
            nest, shape = "[" * depth + "]" * depth, "must be a JSON object"
        else:
            nest, shape = '{"a":' * depth + "1" + "}" * depth, "only 'events'"
        if draw(st.booleans()):
            return finish(case, nest.encode(), ((400, "bad JSON"), (400, shape)), max_body)
        inner = (422, f"invalid event 0: {KIND}: .*(bad JSON|missing field)")
        return finish(case, body_of([nest]).encode(), ((400, "bad JSON"), inner), max_body)
    if case == "not_object":
        value = draw(st.lists(json_values, max_size=4) | json_leaves)
        body = raw(value) if draw(st.booleans()) else "[" + good + "]"
        return finish(case, body.encode(), ((400, "must be a JSON object"),), max_body)
    if case == "unknown_key":
        extra: Items = [(draw(NOT_EVENTS_KEY), raw(draw(json_values)))]
        items = (
            [*extra, ("events", good[len('{"events": ') : -1])] if draw(st.booleans()) else extra
        )
        return finish(case, render(items).encode(), ((400, "only 'events'"),), max_body)
    if case == "no_events":
        body = "{" + draw(st.text(JSON_SPACE, max_size=3)) + "}"
        return finish(case, body.encode(), ((400, "missing field 'events'"),), max_body)
    if case == "events_not_list":
        body = '{"events": ' + raw(draw(NON_LISTS)) + "}"
        return finish(case, body.encode(), ((400, "'events' must be a list"),), max_body)
    if case == "empty":
        body = '{"events": [' + draw(st.text(JSON_SPACE, max_size=3)) + "]}"
        return finish(case, body.encode(), ((422, "'events' is empty"),), max_body)
    if case == "too_many":  # counted before any is validated, so they may be anything
        n = draw(st.integers(max_events + 1, max_body // 4))
        body = body_of([draw(SMALL_ITEMS)] * n)
        return finish(case, body.encode(), ((413, f"exceed the limit of {max_events}"),), max_body)
    if case == "bad_event":
        return bad_event(draw, max_body, max_events)
    padding = " " * draw(st.integers(max(0, max_body + 1 - len(good)), 4 * max_body))
    return finish(case, (good + padding).encode(), too_large(max_body), max_body)


def bad_event(draw: Draw, max_body: int, max_events: int) -> Request:
    """``i`` valid events, one the schema refuses, then anything: 422 naming event ``i``."""
    before = draw(st.integers(0, max_events - 1))
    after = draw(st.integers(0, max_events - 1 - before))
    if draw(st.integers(0, 4)) == 0:  # an event that is no object
        spoilt = draw(st.sampled_from(["7", "null", '"x"', "[]", "true", "[[[[1]]]]"]))
        codes = frozenset({DecodeFailure.BAD_JSON})
    else:
        items, codes, _ = record_level(draw, KIND, draw(base_records(KIND)))
        spoilt = render(items)
    listed = [*events(draw, before), spoilt, *events(draw, after)]
    body = body_of(listed, compact=draw(st.booleans())).encode()
    expect = tuple((422, f"invalid event {before}: {KIND}: .*{WORDS[c]}") for c in codes)
    if DecodeFailure.BAD_JSON in codes:  # too deep, or a number past 4,300 digits, for the
        expect += ((400, "bad JSON"),)  # parser of the whole body
    return finish("bad_event", body, expect, max_body)
