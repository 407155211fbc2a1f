"""What a POST /predict request may carry, read and checked before it reaches the queue.

Every way a body can be wrong ends here as a `BadRequest`: an HTTP status (400, 408, 413, 415)
and one line naming what is wrong, never an exception that escapes to aiohttp (which would
answer 500 and log a traceback). The body is read and parsed here rather than by aiohttp's
`request.json()` so that each hostile shape has its own bounded answer: a body that does not
arrive in time (408), one over the size limit (413), a Content-Type or charset other than JSON
in UTF-8 (415), bytes that are not UTF-8, JSON nested past the parser's recursion limit, an
integer literal past float range (Python builds it; `float()` of it overflows), and fields of
the wrong kind: `x` takes JSON numbers only (not numeric strings, not booleans), `budget` a
finite number; and fields it does not know (a misspelt "budget" would otherwise be served at the
default budget). JSON is parsed by the standard library's C decoder without per-number hooks: a
hook is a Python call per number (an image's worth of calls on the event loop per request),
and Python itself refuses integer literals over 4300 digits.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import reprlib
from dataclasses import dataclass

import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from adaptive.serving.engine import UNITS, BudgetError, Engine

MAX_ERROR_CHARS = 300


class BadRequest(Exception):
    """A request the server refuses: `status` and a one-line message; `close`: the connection is
    closed after the answer (what is left of its body cannot be read, or is not worth waiting for)."""

    def __init__(self, status: int, message: str, close: bool = False):
        line = (message.splitlines() or [""])[0]
        super().__init__(line[:MAX_ERROR_CHARS])
        self.status, self.close = status, close or status == 408


@dataclass
class PredictInput:
    x: np.ndarray  # float32, the model's input shape
    steps: int  # the step cap the budget buys on the primary (0: under its least run)
    priority: int
    budget_value: float | None  # the finite budget as given (None: none given)
    unit: str
    below_primary: str = ""  # steps 0: why (a fallback may keep the budget; the server decides)
    # a MoE primary: the steps the budget buys at each smaller expert budget (Engine.expert_steps_within)
    expert_steps: tuple[int, ...] | None = None


def _short(value) -> str:
    """A bounded repr for messages: deep or long values are elided, never printed whole."""
    return reprlib.repr(value)


def json_kind(value) -> str:
    """What a JSON value is, said as JSON says it (null, not None)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, dict):
        return "an object"
    return _short(value)


def whole_number(value) -> int | None:
    """`value` as an int where JSON Schema counts it an integer (3, and 3.0: a number with no
    fraction), else None (a bool, a string, 2.5, inf)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def priority_of(body: dict) -> int:
    priority = whole_number(body.get("priority", 0))
    if priority is None or not 0 <= priority <= 9:
        raise BadRequest(400, f'"priority" must be an integer in [0, 9]; got {_short(body.get("priority"))}')
    return priority


def check_no_query(request: web.Request) -> None:
    """A 400 for a query string: the request's fields are read from its JSON body only, and a
    budget put in the URL must not be served at the default budget without a word."""
    if request.query_string:
        names = ", ".join(dict.fromkeys(request.query)) or request.query_string
        raise BadRequest(
            400, f"{request.path} reads no query parameters (got {_short(names)}); put them in the JSON body"
        )


def check_content_type(header: str | None) -> None:
    """No Content-Type is read as JSON; any other than application/json, or a charset other than
    UTF-8, is a 415."""
    if header is None:
        return
    mime, *params = header.split(";")
    if mime.strip().lower() != "application/json":
        raise BadRequest(415, f"Content-Type must be application/json; got {_short(mime.strip())}")
    for param in params:
        key, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if key.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise BadRequest(415, f"the charset must be utf-8; got {_short(value.strip())}")


async def read_body(request: web.Request, limit: int, timeout_s: float, stopping: asyncio.Event) -> bytes:
    """The body's bytes: 413 past `limit`, 408 if it has not all arrived within `timeout_s`, 503
    once `stopping` is set while it is still arriving (a shutdown does not wait on a slow client).
    A client that drops the connection meanwhile raises ConnectionError (nobody to answer)."""
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(413, f"request body over {limit} bytes")
    try:
        if request.content.is_eof():  # the usual case: the body came with the headers
            return await request.read()
        async with asyncio.timeout(timeout_s):
            return await _read_unless(request, stopping)
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(413, f"request body over {limit} bytes") from None
    except TimeoutError:
        raise BadRequest(408, f"the request body did not arrive within {timeout_s:g} s") from None
    except HttpProcessingError as e:  # a malformed chunked body, a short Content-Length
        raise BadRequest(400, f"the request body is malformed: {e.message}") from None
    except web.RequestPayloadError as e:  # bytes its Content-Encoding does not decode (gzip that is not)
        cause = e.__cause__ or e
        why = getattr(cause, "message", None) or str(cause) or type(cause).__name__
        # the parser cannot go on with this connection: closed after the answer, never read again
        raise BadRequest(400, f"the request body is malformed: {why}", close=True) from None


async def _read_unless(request: web.Request, stopping: asyncio.Event) -> bytes:
    reading, stopped = asyncio.ensure_future(request.read()), asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((reading, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:  # on the timeout too: neither is left pending
        for task in (reading, stopped):
            task.cancel()
    if reading.done() and not reading.cancelled():
        return reading.result()
    raise BadRequest(503, "the server is shutting down; send the request again", close=True)


def parse_json(raw: bytes):
    """The body's JSON value; 400 on bytes that are not UTF-8 JSON within the limits."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(400, f"the body is not UTF-8: {e.reason} at byte {e.start}") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise BadRequest(400, "the body's JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and an integer literal over Python's 4300 digits
        raise BadRequest(400, f"the body is not JSON: {e}") from None


def _x(value, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(value, list):  # null, a number, a string, an object: not an array at all
        raise BadRequest(400, f'"x" must be an array of numbers of shape {list(shape)}; got {json_kind(value)}')
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # too large for float32: inf, refused below
            x = np.asarray(value, dtype=np.float32)
    except OverflowError:  # an integer past float64's range
        raise BadRequest(400, '"x" contains a number too large for float32') from None
    except (ValueError, TypeError):
        raise BadRequest(400, '"x" must be an array of numbers') from None
    if x.shape != shape:
        raise BadRequest(400, f'"x" must have shape {list(shape)}; got {list(x.shape)}')
    leaves = value
    for _ in range(len(shape) - 1):  # the shape matched: every level above the leaves is a list
        leaves = itertools.chain.from_iterable(leaves)
    kinds = set(map(type, leaves)) - {int, float}
    if kinds:  # numpy reads "1.5" and true as numbers; JSON clients must send numbers
        raise BadRequest(400, f'"x" must be an array of numbers; got {", ".join(sorted(k.__name__ for k in kinds))}')
    if not np.isfinite(x).all():
        if np.isfinite(np.asarray(value, dtype=np.float64)).all():  # finite, but not as float32
            raise BadRequest(400, '"x" contains a number too large for float32')
        raise BadRequest(400, '"x" contains NaN or Inf (or a number past float64\'s range, which JSON reads so)')
    return x


PREDICT_FIELDS = ("x", "budget", "unit", "priority")


def parse_predict(body, engine: Engine, default_steps: int) -> PredictInput:
    """A /predict body checked against the engine's input shape and budget table."""
    if not isinstance(body, dict) or "x" not in body:
        raise BadRequest(400, 'the body must be a JSON object with "x" (one example)')
    unknown = sorted(set(body) - set(PREDICT_FIELDS))
    if unknown:  # a misspelt "budget" must not be served at the default budget without a word
        raise BadRequest(400, f"unknown field {_short(unknown[0])}; the fields are {', '.join(PREDICT_FIELDS)}")
    x = _x(body["x"], engine.input_shape)
    unit = body.get("unit", "steps")
    if not isinstance(unit, str):
        raise BadRequest(400, f'"unit" must be a string; got {_short(unit)}')
    if unit not in UNITS:
        raise BadRequest(400, f"budget unit {_short(unit)} is not one of {', '.join(UNITS)}")
    budget = body.get("budget")
    if budget is None:
        steps, value, below = default_steps, None, ""
    elif isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise BadRequest(400, f'"budget" must be a number; got {_short(budget)}')
    else:
        try:
            value = float(budget)
        except OverflowError:
            raise BadRequest(
                400, f'"budget" must be a finite number; got an integer of {len(str(budget))} digits'
            ) from None
        if not math.isfinite(value):
            raise BadRequest(400, f'"budget" must be a finite number; got {budget!r}')
        try:
            steps, below = engine.steps_for(value, unit), ""
        except BudgetError as e:
            if not e.below:
                raise BadRequest(400, str(e)) from None
            steps, below = 0, str(e)
    priority = priority_of(body)
    return PredictInput(x, steps, priority, value, unit, below, engine.expert_steps_within(value, unit))
