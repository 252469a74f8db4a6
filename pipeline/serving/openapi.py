"""The replica API described as OpenAPI 3.1 (served at ``GET /openapi.json``).

The request schema is the training event schema of the replica's event kind (pydantic's JSON
schema of :func:`pipeline.events.kinds.event_model`), so the description cannot drift from
what ``/predict`` accepts.

>>> doc = openapi_document("transaction", max_events=16)
>>> doc["openapi"], sorted(doc["paths"])
('3.1.0', ['/healthz', '/metrics', '/openapi.json', '/predict', '/readyz', '/version'])
>>> body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
>>> body["schema"]["properties"]["events"]["maxItems"]
16
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from pipeline.events.kinds import event_model

_ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "what is wrong, in one line"}},
    "required": ["error"],
}
_ERRORS: dict[str, str] = {
    "400": "malformed HTTP or body (bad JSON, conflicting Content-Length, ...)",
    "404": "no such endpoint",
    "405": "method not allowed (the Allow header lists the allowed ones)",
    "408": "headers or body did not arrive within the server's timeouts",
    "411": "no Content-Length, or a Transfer-Encoding body",
    "413": "body or event count over the limit",
    "422": "an event fails the event schema (the error names it)",
    "503": "no model loaded yet, or too many connections",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _get(summary: str, schema: dict[str, Any], extra: dict[str, Any] | None = None) -> Any:
    responses = {"200": _json(schema, summary), **(extra or {})}
    return {"get": {"summary": summary, "responses": responses}}


def openapi_document(kind: str, max_events: int, version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of a replica serving events of ``kind``."""
    model: Any = event_model(kind)
    event_schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
    defs = event_schema.pop("$defs", {})
    name = model.__name__
    request = {
        "type": "object",
        "properties": {
            "events": {
                "type": "array",
                "items": {"$ref": f"#/components/schemas/{name}"},
                "minItems": 1,
                "maxItems": max_events,
            }
        },
        "required": ["events"],
        "additionalProperties": False,
    }
    prediction = {
        "type": "object",
        "properties": {
            "version": {"type": "integer", "description": "the one model version that scored"},
            "scores": {"type": "array", "items": {"type": "number"}},
        },
        "required": ["version", "scores"],
    }
    error = {"$ref": "#/components/schemas/Error"}
    errors = {code: _json(error, why) for code, why in _ERRORS.items()}
    anything: dict[str, Any] = {"type": "object"}
    predict = {
        "post": {
            "summary": "score events with the version served now",
            "description": "Each event is scored alone: a score depends on the model version "
            "and the event only, never on the other events of the request.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
            "responses": {"200": _json(prediction, "one score per event, in order"), **errors},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"Freshet replica ({kind})", "version": version},
        "paths": {
            "/predict": predict,
            "/healthz": _get("the process serves HTTP", anything),
            "/readyz": _get(
                "a model version is loaded",
                anything,
                {"503": _json(anything, "not ready yet, with the reason")},
            ),
            "/version": _get("version served, its step time, lag, state", anything),
            "/metrics": {
                "get": {
                    "summary": "Prometheus text exposition",
                    "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}},
                }
            },
            "/openapi.json": _get("this document", anything),
        },
        "components": {"schemas": {**defs, name: event_schema, "Error": _ERROR}},
    }
