"""Turn a ``POST /predict`` body into validated events, or an error naming what is wrong.

The body is ``{"events": [...]}``, each event in the training schema of the replica's event
kind (:mod:`pipeline.events`), so serving sees exactly what training saw.

=========================================  ======  ==========================================
problem                                    status  message
=========================================  ======  ==========================================
not JSON / not UTF-8                       400     ``bad JSON: ...``
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
pipeline.serving_errors.RequestError: invalid event 1: transaction: value out of range for 'amount': -1 (input should be greater than or equal to 0)
"""  # noqa: E501

from __future__ import annotations

import json
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from pipeline.errors import DecodeError
from pipeline.events import Event, decode, event_model
from pipeline.serving_errors import RequestError


@cache
def _adapter(kind: str) -> TypeAdapter[list[Any]]:
    model: Any = event_model(kind)
    return TypeAdapter(list[model])


def parse_predict_body(body: bytes, kind: str, max_events: int) -> list[Event]:
    """Validate a ``/predict`` body; raises :class:`RequestError` with the HTTP status."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"bad JSON: {err}") from None
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
        first = err.errors(include_url=False)[0]["loc"]
        index = first[0] if first and isinstance(first[0], int) else 0
    try:
        decode(kind, json.dumps(events[index]).encode())
    except DecodeError as err:
        raise RequestError(422, f"invalid event {index}: {err}") from None
    raise RequestError(422, f"invalid event {index}")  # pragma: no cover - decode agrees
