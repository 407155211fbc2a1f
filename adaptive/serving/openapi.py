"""The server's OpenAPI 3.1 document (GET /openapi.json): what each endpoint takes and answers.

Built from the loaded model, so `x`'s shape and the budget units are the served model's own; the
hostile-input tests draw request bodies from it, and every answer the server gives must match one
of the answers listed here.
"""

from __future__ import annotations

import numpy as np

from adaptive.serving.decisions import MODES

FLOAT32_MAX = float(np.finfo(np.float32).max)  # x is read as float32: past this it would be inf
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "one line naming what is wrong"}},
}
BAD_REQUESTS = {
    "400": "not UTF-8 JSON, nested too deeply, a number past float32's range, a missing or wrong field",
    "408": "the body did not arrive within the read timeout (the connection is closed)",
    "413": "a body over the size limit",
    "415": "a Content-Type other than application/json (none is read as JSON), or a charset other than utf-8",
}


def _x_schema(shape: tuple[int, ...]) -> dict:
    schema: dict = {
        "type": "number",
        "minimum": -FLOAT32_MAX,
        "maximum": FLOAT32_MAX,
        "description": "a JSON number (not a string, not a boolean), within float32's range",
    }
    for n in reversed(shape):
        schema = {"type": "array", "items": schema, "minItems": n, "maxItems": n}
    return schema


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


UNAVAILABLE = {
    "oneOf": [
        {
            "type": "object",
            "required": ["status", "retry_after_ms"],
            # also in the Retry-After header, in whole seconds (at least 1)
            "properties": {"status": {"const": "deferred"}, "retry_after_ms": {"type": "number", "minimum": 1}},
        },
        {
            "type": "object",
            "required": ["status", "latency_ms", "reason"],
            "properties": {
                "status": {"const": "rejected"},
                "latency_ms": {"type": "number"},
                "reason": {"type": "string", "description": "why no point is on time, in one line"},
            },
        },
        ERROR,  # past the connection limit, before any request is read
    ]
}
FAILED = {
    "type": "object",
    "required": ["status", "error"],
    "properties": {"status": {"const": "error"}, "error": {"type": "string"}},
}
NOT_FINITE = {
    "type": "object",
    "required": ["status", "error"],
    "properties": {"status": {"const": "not_finite"}, "error": {"type": "string"}},
}
HEALTH = {
    "type": "object",
    "properties": {
        "status": {"const": "ok"},
        "primary": {"type": "string"},
        "fallback": {"type": ["string", "null"]},
        "fallbacks": {"type": "object", "additionalProperties": {"type": "string"}},
        "input_shape": {"type": "array", "items": {"type": "integer"}},
        "cap": {"type": "integer"},
        "mode": {"enum": list(MODES)},
        "sla_ms": {"type": "number"},
        "queue": {"type": "integer"},
    },
}


def _request_schema(input_shape: tuple[int, ...], units: tuple[str, ...]) -> dict:
    """A POST /predict body."""
    return {
        "type": "object",
        "required": ["x"],
        "properties": {
            "x": _x_schema(input_shape),
            "budget": {
                "type": ["number", "null"],
                "description": "a finite budget in `unit`, at least one step's worth (absent or null: the default)",
            },
            "unit": {"type": "string", "enum": list(units), "default": "steps"},
            "priority": {"type": "integer", "minimum": 0, "maximum": 9, "default": 0},
        },
        "additionalProperties": False,  # a misspelt field is a 400, not a default silently used
    }


def _answer_schema(cap: int) -> dict:
    """A 200 answer of POST /predict."""
    return {
        "type": "object",
        "required": [
            "prediction",
            "confidence",
            "steps",
            "experts",
            "budget_steps",
            "budget_experts",
            "latency_ms",
            "run_ms",
            "within_budget",
            "status",
            "model",
        ],
        "properties": {
            "prediction": {"type": "integer"},
            "confidence": {"type": "number"},
            "steps": {"type": "integer", "minimum": 1, "maximum": cap},
            "experts": {"type": "integer"},
            "budget_steps": {"type": "integer", "minimum": 1, "maximum": cap},
            "budget_experts": {"type": ["integer", "null"]},
            "latency_ms": {"type": "number", "description": "from arrival to answer, queueing included"},
            "run_ms": {"type": "number", "description": "the model run that answered it (what latency_ms budgets)"},
            "within_budget": {"type": "boolean", "description": "the run kept the budget asked for, in its unit"},
            "status": {"enum": ["ok", "degraded", "fallback"]},
            "model": {"type": "string"},  # "primary", "fallback", or a ladder's "fallback:int8,0.5"
        },
    }


def _predict(input_shape: tuple[int, ...], units: tuple[str, ...], cap: int) -> dict:
    """POST /predict: its body and every answer it may give."""
    request = _request_schema(input_shape, units)
    return {
        "summary": "one example's prediction within its budget",
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {
            "200": _json(_answer_schema(cap), "answered: ok, degraded (a cheaper point), or by the fallback model"),
            **{code: _json(ERROR, what) for code, what in BAD_REQUESTS.items()},
            "422": _json(NOT_FINITE, "the model's output for this input is not finite (finite inputs may overflow it)"),
            "500": _json(FAILED, "the batch this request ran in failed; the server goes on"),
            "503": _json(
                UNAVAILABLE,
                "deferred (retry after), rejected (no point is on time, or a latency budget is under the "
                "server's runs now), or too many connections",
            ),
        },
    }


def document(input_shape: tuple[int, ...], units: tuple[str, ...], cap: int, max_body: int) -> dict:
    """The OpenAPI document for a server whose primary model takes `input_shape` and runs at
    most `cap` steps, pricing budgets in `units`."""
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "adaptive serve",
            "version": "1",
            "description": f"A budgeted model server. Request bodies are at most {max_body} bytes.",
        },
        "paths": {
            "/predict": {"post": _predict(input_shape, units, cap)},
            "/healthz": {"get": {"summary": "what is loaded", "responses": {"200": _json(HEALTH, "the server is up")}}},
            "/metrics": {
                "get": {"summary": "Prometheus text", "responses": {"200": {"description": "", "content": text}}}
            },
            "/openapi.json": {
                "get": {"summary": "this document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}
            },
        },
    }
