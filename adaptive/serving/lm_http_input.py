"""What a POST /generate request may carry, checked before it waits for a slot.

    {"prompt": "def f(x):", "max_new_tokens": 32, "threshold": 0.8, "layer_cap": 4,
     "expert_cap": 1, "flops_budget": 2e6, "temperature": 0.7, "top_p": 0.9, "seed": 1,
     "priority": 0, "stream": true}

Only `prompt` is required. The prompt is UTF-8 text, encoded as the model's bytes after BOS;
one longer than the model's prompt capacity is refused (413) rather than cut, since a cut
prompt would generate from other text than the client sent. Every limit goes through the
model's own checks (adaptive.inference.token_step.checked_limits): a value out of range is a
400 naming it. An unknown field is a 400 too: a misspelt limit must not be silently ignored; so is
a limit the served model has nothing to apply to (a threshold without exits, an expert cap without
experts, a MoD bias without MoD blocks), as `adaptive generate` refuses --threshold and --experts.
Those are the primary's: a request the controller moves to a fallback without them runs there
without them (a fallback's answer is a degraded one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from adaptive.data import byte_vocab
from adaptive.serving.http_input import BadRequest, _short, json_kind, priority_of, whole_number

INTEGERS = ("max_new_tokens", "layer_cap", "expert_cap", "seed")
NUMBERS = ("threshold", "flops_budget", "temperature", "top_p", "mod_bias")
FIELDS = ("prompt", "priority", "stream", *INTEGERS, *NUMBERS)


@dataclass
class GenerateInput:
    prompt: np.ndarray  # int32: BOS, then the text's bytes
    limits: dict  # the keyword arguments of checked_limits that the request set
    checked: object  # GenerationLimits for one sequence
    priority: int
    stream: bool


def not_applicable(config: dict, layers: int) -> dict[str, str]:
    """The limits a model with this config (its artifact's meta.json "config") and this many
    blocks has nothing to apply to, each with the reason a refusal gives."""
    lm, moe = config.get("lm", {}), config.get("moe", {})
    every = int(lm.get("mod_every", 1))
    exits = "it has no exits (lm.exits=false)" if not lm.get("exits") else None
    mod = "it has no MoD blocks (lm.mod_capacity=0)" if not lm.get("mod_capacity") else None
    if layers < 2 and exits is None:
        exits = "it has no exits (one block: no exit before the last)"
    if every > layers and mod is None:
        mod = f"it has no MoD blocks (lm.mod_every={every} is past its {layers} blocks)"
    reasons = {
        "threshold": exits,
        "expert_cap": None if moe.get("enabled") else "it has no experts (moe.enabled=false)",
        "mod_bias": mod,
    }
    return {name: why for name, why in reasons.items() if why is not None}


def parse_generate(body, engine, default_threshold: float | None, refused: dict | None = None) -> GenerateInput:
    """A /generate body checked against the engine's capacities and caps; a request that names
    no threshold exits at `default_threshold` (the artifact's certified or configured one).
    `refused`: the fields the model cannot apply, with why (`not_applicable`)."""
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
        raise BadRequest(400, 'the body must be a JSON object with "prompt" (a string)')
    refused = refused or {}
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        fields = ", ".join(f for f in FIELDS if f not in refused)
        raise BadRequest(400, f"unknown field {_short(unknown[0])}; the fields are {fields}")
    for name, why in refused.items():
        if name in body:
            raise BadRequest(400, f'"{name}" does not apply to this model: {why}')
    try:
        text = body["prompt"].encode("utf-8")
    except UnicodeEncodeError as e:  # JSON may escape a lone surrogate ("\ud800"), which no UTF-8 holds
        raise BadRequest(400, f'"prompt" is not valid Unicode: a lone surrogate at character {e.start}') from None
    prompt = np.asarray(byte_vocab.encode(text, eos=False), np.int32)
    if len(prompt) > engine.prompt_capacity:
        raise BadRequest(
            413, f"the prompt is {len(prompt) - 1} bytes; this model takes up to {engine.prompt_capacity - 1}"
        )
    limits = {}
    for name in INTEGERS:
        if name in body:
            value = whole_number(body[name])
            if value is None:
                raise BadRequest(400, f'"{name}" must be an integer; got {json_kind(body[name])}')
            limits[name] = value
    for name in NUMBERS:
        if name in body:
            value = body[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
                raise BadRequest(400, f'"{name}" must be a finite number; got {json_kind(value)}')
            if name == "flops_budget" and not value > 0:
                raise BadRequest(400, f'"flops_budget" must be > 0; got {value!r}')
            limits[name] = float(value)
    if "threshold" not in limits and default_threshold is not None:
        limits["threshold"] = default_threshold
    try:
        checked = engine.limits(**limits)
    except (ValueError, OverflowError) as e:
        raise BadRequest(400, str(e)) from None
    priority = priority_of(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(400, f'"stream" must be true or false; got {_short(stream)}')
    return GenerateInput(prompt, limits, checked, priority, stream)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False
