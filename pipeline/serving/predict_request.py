"""Turn a ``POST /predict`` body into validated events, or an error naming what is wrong.

The body is ``{"events": [...]}``, each event in the training schema of the replica's event
kind (:mod:`pipeline.events.kinds`), so serving sees exactly what training saw.

=========================================  ======  ==========================================
problem                                    status  message
=========================================  ======  ==========================================
not JSON / not UTF-8                       400     ``bad JSON: ...``
nested > 200 deep, integer > 4,300 digits  400     ``bad JSON: ...`` (as training's parser)
not an object, unknown key                 400     ``body must be a JSON object ...``
no ``events`` / not a list                 400     ``missing field 'events'`` / ``... list``
empty list                                 422     ``'events' is empty``
more events than the limit                 413     ``N events exceed the limit of M``
an event fails validation                  422     ``invalid event i: <kind>: <reason>``
=========================================  ======  ==========================================

>>> tx = {"transaction_id": 1, "timestamp": "2018-04-01T00:00:31Z", "customer_id": 5,
...       "terminal_id": 7, "amount": 12.5, "label": 0}
>>> parse_predict_body(json.dumps({"events": [tx]}).encode(), "transaction", 10)[0].amount
12.5
>>> parse_predict_body(json.dumps({"events": [tx, {**tx, "amount": -1}]}).encode(),
...                    "transaction", 10)
Traceback (most recent call last):
...
pipeline.publishing.errors.RequestError: invalid event 1: transaction: value out of range for 'amount': -1 (input should be greater than or equal to 0)
"""  # noqa: E501

from __future__ import annotations

import json
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import from_json

from pipeline.errors import DecodeError
from pipeline.events.kinds import Event, decode, event_model
from pipeline.publishing.errors import RequestError


@cache
def _adapter(kind: str) -> TypeAdapter[list[Any]]:
    model: Any = event_model(kind)
    return TypeAdapter(list[model])


def parse_predict_body(body: bytes, kind: str, max_events: int) -> list[Event]:
    """Validate a ``/predict`` body; raises :class:`RequestError` with the HTTP status."""
    obj = _parse_json(body)
    if not isinstance(obj, dict):
        got = type(obj).__name__
        raise RequestError(400, f"body must be a JSON object with an 'events' list, got {got}")
    unknown = sorted(set(obj) - {"events"})
    if unknown:
        raise RequestError(400, f"body must be a JSON object with only 'events'; got {unknown}")
    if "events" not in obj:
        raise RequestError(400, "missing field 'events'")
    events = obj["events"]
    if not isinstance(events, list):
        raise RequestError(400, f"'events' must be a list, got {type(events).__name__}")
    if not events:
        raise RequestError(422, "'events' is empty")
    if len(events) > max_events:
        raise RequestError(413, f"{len(events)} events exceed the limit of {max_events}")
    try:
        out: list[Event] = _adapter(kind).validate_json(json.dumps(events))
        return out
    except ValidationError as err:
        loc = err.errors(include_url=False)[0]["loc"]
        first = loc[0] if loc and isinstance(loc[0], int) else 0
    for index in range(first, len(events)):  # name the first event refused on its own
        try:
            decode(kind, json.dumps(events[index]).encode())
        except DecodeError as err:
            raise RequestError(422, f"invalid event {index}: {err}") from None
    raise RequestError(422, "invalid events")  # pragma: no cover - one of them fails alone


def _parse_json(body: bytes) -> Any:
    """Parse JSON as the event schema does (jiter), so a body reads as a message would.

    UTF-8 only, at most 200 levels deep, integers of at most 4,300 digits; ``json.loads``
    would guess UTF-16 or UTF-32, and raise ``RecursionError`` or a bare ``ValueError`` (a 500)
    past its own limits.
    """
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as err:
        byte = body[err.start : err.start + 1].hex()
        raise RequestError(
            400, f"bad JSON: the body is not UTF-8 ({err.reason}: 0x{byte} at byte {err.start})"
        ) from None
    try:
        return from_json(body)
    except ValueError as err:
        raise RequestError(400, f"bad JSON: {err}") from None
