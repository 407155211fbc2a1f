"""Request bodies drawn from a server's own OpenAPI document, hostile ones included, and a check
of a value against the subset of JSON schema those documents use: the servers' fuzz tests send
the one and hold every answer to the other."""

import json
import math

from hypothesis import strategies as st

# Leaves a JSON client can send, the hostile ones included: integers far past float range, numeric
# strings, booleans, NaN and Infinity (Python's json writes and reads them; JSON has none).
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(10**400), 10**400)
    | st.floats()
    | st.text(max_size=8)
    | st.from_regex(r"-?[0-9]{1,4}(\.[0-9]{1,3})?", fullmatch=True)
)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
CONTENT_TYPES = ["application/json"] * 8 + [
    None,
    "application/json; charset=UTF-8",
    'application/json; charset="utf-8"',
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/json; charset=latin-1",
    "application/json; charset=bogus",
]


def from_schema(schema: dict, leaves: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """Values the JSON schema (the subset the server's document uses for its request) allows;
    `leaves`, if given, may stand in for any number in it."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    options = []
    for kind in kinds:
        if kind == "array":
            item = from_schema(schema["items"], leaves)
            options.append(st.lists(item, min_size=schema["minItems"], max_size=schema["maxItems"]))
        elif kind == "object":
            properties = {k: from_schema(v) for k, v in schema["properties"].items()}
            required = {k: properties.pop(k) for k in schema.get("required", [])}
            options.append(st.fixed_dictionaries(required, optional=properties))
        elif kind == "integer":
            options.append(st.integers(schema.get("minimum"), schema.get("maximum")))
        elif kind == "number":
            low, high = schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum")
            floats = st.floats(
                low, high, allow_nan=False, allow_infinity=False, exclude_min="exclusiveMinimum" in schema
            )
            number = st.integers(-10, 10).filter(lambda n, s=schema: _in_range(n, s)) | floats
            options.append(number if leaves is None else number | leaves)
        else:
            options.append({"string": st.text(max_size=8), "null": st.none(), "boolean": st.booleans()}[kind])
    return st.one_of(options)


def matches(value, schema: dict) -> bool:
    """Whether `value` is one the JSON schema (the subset the server's document uses) allows."""
    if "oneOf" in schema:
        return any(matches(value, s) for s in schema["oneOf"])
    if ("const" in schema and value != schema["const"]) or ("enum" in schema and value not in schema["enum"]):
        return False
    python = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "null": type(None)}
    kinds = schema.get("type", [])
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if isinstance(value, bool):  # a bool is an int to Python, not a number to JSON
        return not kinds or "boolean" in kinds
    whole = isinstance(value, float) and value.is_integer() and "integer" in kinds  # JSON Schema: 3.0 is an integer
    if kinds and not whole and not isinstance(value, tuple(python[k] for k in kinds if k != "boolean")):
        return False
    if isinstance(value, float) and not math.isfinite(value):  # JSON numbers are finite
        return False
    if isinstance(value, (int, float)) and not _in_range(value, schema):
        return False
    if isinstance(value, list):
        sizes = schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf)
        return sizes and all(matches(v, schema["items"]) for v in value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is False and set(value) - set(properties):
            return False
        return set(schema.get("required", [])) <= set(value) and all(
            matches(v, properties[k]) for k, v in value.items() if k in properties
        )
    return True


def _in_range(number, schema: dict) -> bool:
    above = number > schema["exclusiveMinimum"] if "exclusiveMinimum" in schema else True
    return above and schema.get("minimum", -math.inf) <= number <= schema.get("maximum", math.inf)


def _dumps(value) -> bytes:
    try:
        return json.dumps(value).encode()
    except ValueError:  # an integer over Python's 4300-digit str() limit: write it by hand
        return b"1" * 5000


def requests(request_schema: dict, hostile: tuple[str, ...] = (), unknown=("extra",)) -> st.SearchStrategy:
    """(body bytes, Content-Type): bodies the request schema allows (about half the draws, under
    the JSON Content-Type); objects whose fields are each drawn from the schema or any JSON value
    (or left out), with hostile leaves for the numbers of the fields named `hostile`, and which
    may carry the `unknown` fields (a number or any JSON value); valid bodies plus one unknown
    field; any JSON value, deep nesting, raw bytes; these mostly under the JSON Content-Type."""
    fields = {name: from_schema(s) | JSON_VALUES for name, s in request_schema["properties"].items()}
    for name in hostile:
        fields[name] = from_schema(request_schema["properties"][name], LEAVES) | JSON_VALUES
    extra = {name: st.floats(-5, 5) | JSON_VALUES for name in unknown}
    objects = st.fixed_dictionaries({}, optional={**fields, **extra})
    valid = from_schema(request_schema)
    # a valid body but for one unknown field: the server must refuse it, not ignore the field
    plus_one = st.builds(
        lambda body, name, value: {**body, name: value}, valid, st.sampled_from(unknown), st.floats(-5, 5)
    )
    texts = st.one_of(objects, objects, plus_one, JSON_VALUES).map(_dumps)
    first = request_schema["required"][0].encode()
    deep = st.integers(1, 200_000).map(lambda n: b'{"' + first + b'": ' + b"[" * n + b"]" * n + b"}")
    bodies = st.one_of(texts, texts, texts, deep, st.binary(max_size=40))
    # about half the draws a valid body under the JSON Content-Type: the answers' side is fuzzed too
    valid_json = st.tuples(valid.map(_dumps), st.just("application/json"))
    return st.one_of(valid_json, st.tuples(bodies, st.sampled_from(CONTENT_TYPES)))


def acceptable(body: bytes, content_type: str | None, request_schema: dict) -> bool:
    """What the document says a 200 needs (the server may still refuse a budget below one step)."""
    mime, _, charset = (content_type or "application/json").lower().partition("; charset=")
    if mime != "application/json" or charset.strip('"') not in ("", "utf-8"):
        return False
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=float)
    except (ValueError, RecursionError):
        return False
    return matches(value, request_schema)
