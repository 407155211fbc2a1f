"""The language-model server's OpenAPI 3.1 document (GET /openapi.json).

Built from the served model, so the capacities and caps in it are the model's own, and a limit
the model has nothing to apply to (adaptive.serving.lm_http_input.not_applicable) is left out of
the request schema, which allows no other field: what the document allows is what the server
takes, but for two things JSON Schema cannot say: an "integer" is a JSON integer (3.0 is refused),
and the prompt's limit is in UTF-8 bytes (413 past it). The hostile-input tests draw request
bodies from it.
"""

from __future__ import annotations

from adaptive.inference.token_step import STOP_REASONS
from adaptive.serving.openapi import BAD_REQUESTS, ERROR, _json

FLOAT64_MAX = 1.7976931348623157e308  # JSON numbers past it are refused (Python reads them as inf)

_LIMITS = {
    "threshold": {
        "type": "number",
        "minimum": 0,
        "maximum": FLOAT64_MAX,
        "description": "exit confidence (absent: the served default)",
    },
    "flops_budget": {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": FLOAT64_MAX,
        "description": "FLOPs for the tokens after the first",
    },
    "temperature": {"type": "number", "minimum": 0, "maximum": 1e4, "default": 0},
    "top_p": {"type": "number", "minimum": 1e-6, "maximum": 1, "default": 1},
    "mod_bias": {
        "type": "number",
        "minimum": -FLOAT64_MAX,
        "maximum": FLOAT64_MAX,
        "default": 0,
        "description": "raise it for MoD blocks to run on fewer tokens",
    },
    "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1, "default": 0},
    "priority": {"type": "integer", "minimum": 0, "maximum": 9, "default": 0},
    "stream": {"type": "boolean", "default": False, "description": "server-sent events, one per token"},
}
_SUMMARY = {
    "done": {"const": True},
    "model": {"enum": ["primary", "fallback"]},
    "stop": {"enum": [*STOP_REASONS[1:], None]},
    "count": {"type": "integer", "minimum": 0},
    "degraded_tokens": {"type": "integer", "minimum": 0},
    "ttft_ms": {"type": ["number", "null"]},
    "tpot_ms": {"type": ["number", "null"], "description": "null under two tokens"},
    "layers": {"type": "array", "items": {"type": "number"}},
    "experts": {"type": "array", "items": {"type": "number"}},
    "prefill_flops": {"type": "number"},
    "flops": {"type": "number", "description": "the tokens after the first, as flops_budget counts them"},
    "within_budget": {
        "type": ["boolean", "null"],
        "description": "flops kept flops_budget; null: none set, or it did not run to its stop",
    },
    "within_sla": {
        "type": ["boolean", "null"],
        "description": "ttft_ms and tpot_ms kept the server's SLAs; null: it did not run to its stop",
    },
    "text": {"type": "string", "description": "absent when streamed"},
    "tokens": {"type": "array", "items": {"type": "integer"}, "description": "absent when streamed"},
}


def _request_schema(prompt_bytes: int, new_tokens: int, layers: int, experts: int, not_applicable: dict) -> dict:
    properties = {
        "prompt": {"type": "string", "description": f"UTF-8 text of at most {prompt_bytes} bytes (more: 413)"},
        "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": new_tokens, "default": new_tokens},
        "layer_cap": {"type": "integer", "minimum": 1, "maximum": layers, "default": layers},
        "expert_cap": {"type": "integer", "minimum": 1, "maximum": experts, "default": experts},
        **_LIMITS,
    }
    return {
        "type": "object",
        "required": ["prompt"],
        "properties": {name: s for name, s in properties.items() if name not in not_applicable},
        "additionalProperties": False,  # a misspelt limit is a 400, not a default silently used
    }


def _summary(statuses: list[str], required=("done", "status"), **more) -> dict:
    """A request's last answer, with one of `statuses`."""
    properties = {**_SUMMARY, "status": {"enum": statuses}, **more}
    return {"type": "object", "required": list(required), "properties": properties}


def _generate(prompt_bytes: int, new_tokens: int, layers: int, experts: int, not_applicable: dict) -> dict:
    unavailable = {
        "oneOf": [
            {
                "type": "object",
                "required": ["status", "retry_after_ms"],  # and a Retry-After header, in whole seconds
                "properties": {"status": {"const": "deferred"}, "retry_after_ms": {"type": "number", "minimum": 1}},
            },
            _summary(["rejected"], ("done", "status", "reason"), reason={"type": "string"}),
            ERROR,  # past the connection limit, before any request is read
        ]
    }
    answered = _summary(["ok", "degraded", "fallback"], ("done", "status", "count"))
    ok = _json(answered, "answered: ok, degraded (looser rungs for some tokens), or by the fallback model")
    ok["content"]["text/event-stream"] = {
        "schema": {"type": "string"},
        "description": 'with "stream": `data: {"index", "token", "text", "layers", "experts"}` per token, '
        'then `data: {"done": true, ...}` with the summary (whose status may be "error")',
    }
    failed = _summary(["error"], ("done", "status", "error"), error={"type": "string"})
    return {
        "summary": "text generated from a prompt within its limits",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _request_schema(prompt_bytes, new_tokens, layers, experts, not_applicable)
                }
            },
        },
        "responses": {
            "200": ok,
            **{code: _json(ERROR, what) for code, what in BAD_REQUESTS.items()},
            # (a number past float32's range is no 400 here: a limit that large means no limit)
            "400": _json(
                ERROR, "not UTF-8 JSON, nested too deeply, a missing or wrong field, a limit outside its range"
            ),
            "413": _json(ERROR, "a body over the size limit, or a prompt over the model's prompt capacity"),
            "500": _json(failed, "the step this request ran in failed; the server goes on"),
            "503": _json(unavailable, "deferred (retry after), rejected (no rung is on time), or too many connections"),
        },
    }


def document(engine, not_applicable: dict, max_body: int) -> dict:
    """The OpenAPI document for a server whose primary is `engine` (an LMEngine)."""
    text = {"text/plain": {"schema": {"type": "string"}}}
    caps = (engine.fns.new_capacity, engine.fns.blocks, engine.fns.max_experts)
    generate = _generate(engine.prompt_capacity - 1, *caps, not_applicable)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "adaptive serve (language model)",
            "version": "1",
            "description": f"Generation under budgets. Request bodies are at most {max_body} bytes.",
        },
        "paths": {
            "/generate": {"post": generate},
            "/healthz": {
                "get": {
                    "summary": "what is loaded",
                    "responses": {"200": _json({"type": "object"}, "the server is up")},
                }
            },
            "/metrics": {
                "get": {"summary": "Prometheus text", "responses": {"200": {"description": "", "content": text}}}
            },
            "/openapi.json": {
                "get": {"summary": "this document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}
            },
        },
    }
