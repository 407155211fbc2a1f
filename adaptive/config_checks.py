"""The value rules behind adaptive/config.py and its schema (adaptive/config_schema.py): finite
floats, bounded sizes, texts and lists, and the few rules that span fields.

A value that passes here cannot make the run fail later on its own account (an overflow, a
memory error, a NaN saved in config.json that then never equals itself): hostile values are
refused at load, before data is prepared or a workdir is made, with a one-line `ConfigError`
naming the key and what is allowed.
"""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A bad config key or value; the message is one line meant for the user."""

    __module__ = "adaptive.config"  # raised and caught as adaptive.config.ConfigError


# Upper bounds of int fields. Each refuses values that break a run, not values merely unusual.
MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits without x64: 2**32 would be seed 0 again
MAX_EXAMPLES = 10_000_000  # examples in a generated split (parity's data.num_train, data.num_eval)
MAX_STEPS = 1_000_000_000  # steps and step intervals: the step counter is an int32
MAX_BATCH = 1_000_000  # examples in a batch
# model.hidden: an h x h float32 matrix is 1 GiB at 16_384, so a shared MLP block with its Adam state (~17 GiB)
# still fits 24 GiB; twice as wide, no block does.
MAX_WIDTH = 16_384
MAX_EXPERT_WIDTH = 65_536  # moe.expert_hidden: 4 x MAX_WIDTH
MAX_EXPERTS = 1024  # moe.num_experts and moe.k; also the largest capacity factor that matters (num_experts / k)
MAX_DEVICES = 65_536  # mesh axes, processes and routing groups
MAX_WEIGHT = 1e6  # loss weights, step sizes and weight decay: float32 losses stay finite
# Generating a parity split holds a float64 and an int64 rank matrix (16 bytes per entry, and a
# little more); 2**29 entries is ~9 GB, which leaves the rest of a 24 GiB machine to the run.
MAX_PARITY_ENTRIES = 2**29
# addition draws twice a split's examples per round as int64 digits of both operands (32 bytes a
# digit), and converts each to a Python int: 2**26 digits a split is ~2 GB and minutes
MAX_ADDITION_DIGITS = 2**26
MAX_TEXT = 4096  # characters in a str value (Linux's PATH_MAX: data_dir and cost_model are paths)
MAX_ITEMS = 1024  # values in a list-valued key (budget.requests, budget.request_weights)
FLOAT32_MAX = 3.4028234663852886e38  # floats reach the model as float32: beyond this they are inf


def show(value: Any) -> str:
    """repr(value), shortened to fit a one-line message."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300-digit limit on int -> str
        return f"an int of {value.bit_length()} bits"
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def bounds(lo: Any, hi: Any) -> str:
    """`[1, 1_000_000]` or `>= 0.0` (ints with underscores so that large bounds read at a glance)."""
    fmt = lambda x: f"{x:_}" if isinstance(x, int) else repr(x)  # noqa: E731
    if lo is None or hi is None:
        return f">= {fmt(lo)}" if hi is None else f"<= {fmt(hi)}"
    return f"[{fmt(lo)}, {fmt(hi)}]"


def finite(key: str, value: int | float) -> float:
    """`value` as a finite float in float32's range (-0.0 becomes 0.0: config.json never shows -0.0)."""
    try:
        number = float(value) + 0.0
    except OverflowError:  # an int too large for a float
        number = math.inf if value > 0 else -math.inf
    if math.isnan(number) or (math.isinf(number) and isinstance(value, float)):
        raise ConfigError(f"config key {key!r} is {show(value)}; must be a finite number")
    if abs(number) > FLOAT32_MAX:
        raise ConfigError(f"config key {key!r} is {show(value)}; must be a finite float32 number, |x| <= 3.4e+38")
    return number


def in_range(key: str, value: Any, lo: Any, hi: Any, below: Any = None, above: Any = None) -> None:
    if below is not None and (value >= below or (lo is not None and value < lo)):
        raise ConfigError(f"config key {key!r} is {show(value)}; must be in [{show(lo)}, {show(below)})")
    if above is not None and (value <= above or (hi is not None and value > hi)):
        raise ConfigError(f"config key {key!r} is {show(value)}; must be in ({show(above)}, {show(hi)}]")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"config key {key!r} is {show(value)}; must be in {bounds(lo, hi)}")


def text(key: str, value: str) -> str:
    if len(value) > MAX_TEXT:
        raise ConfigError(f"config key {key!r} is {show(value)}; at most {MAX_TEXT} characters")
    if "\x00" in value:
        raise ConfigError(f"config key {key!r} is {show(value)}; must not hold a NUL character")
    return value


def items(key: str, values: Any) -> Any:
    if len(values) > MAX_ITEMS:
        raise ConfigError(f"config key {key!r} has {len(values)} values; at most {MAX_ITEMS}")
    return values


def name(key: Any, prefix: str) -> str:
    """A key of a config dict, refused unless it is a str."""
    if not isinstance(key, str):
        raise ConfigError(f"config key {show(key)} in {prefix.rstrip('.') or 'the config'} must be a name (a str)")
    return key


def across_fields(cfg: Any) -> Any:
    """Rules between fields of a whole Config that would otherwise fail as a traceback later
    (building the data or the model), before the workdir exists."""
    d, m = cfg.data, cfg.model
    if d.name == "parity":
        for key in ("train_difficulty", "eval_difficulty"):
            value = getattr(d, key)
            if value is not None and not 1 <= value[0] <= value[1] <= d.parity_n:
                raise ConfigError(
                    f"config key 'data.{key}' is {show(value)}; must be lo,hi with 1 <= lo <= hi <= "
                    f"data.parity_n ({d.parity_n})"
                )
        _examples_within(d, "parity_n", MAX_PARITY_ENTRIES, "2**29 entries, ~9 GB to generate")
    if d.name == "addition":
        _examples_within(d, "addition_digits", MAX_ADDITION_DIGITS, "2**26 digits a split, ~2 GB to generate")
    mesh = cfg.mesh
    if mesh.process_id >= mesh.num_processes:
        raise ConfigError(
            f"config key 'mesh.process_id' is {mesh.process_id}; "
            f"must be in [0, mesh.num_processes={mesh.num_processes})"
        )
    _sequence_rules(cfg)
    if m.kind in ("transformer", "lm") and m.hidden % m.num_heads:
        raise ConfigError(f"config key 'model.num_heads' is {m.num_heads}; must divide model.hidden ({m.hidden})")
    if cfg.moe.enabled and m.kind == "rnn":
        raise ConfigError(
            "config key 'moe.enabled' is True; needs model.kind 'mlp' or 'transformer' (rnn has no feed-forward)"
        )
    if cfg.moe.enabled and cfg.moe.k > cfg.moe.num_experts:
        raise ConfigError(f"config key 'moe.k' is {cfg.moe.k}; must be in [1, moe.num_experts={cfg.moe.num_experts}]")
    if cfg.moe.enabled:
        _router_gets_a_gradient(cfg.moe)
    return cfg


def _examples_within(d: Any, size_key: str, most_total: int, why: str) -> None:
    """Each split's examples x `data.<size_key>` at most `most_total`: what generating it holds."""
    size = getattr(d, size_key)
    for key in ("num_train", "num_eval"):
        if getattr(d, key) * size > most_total:
            raise ConfigError(
                f"config key 'data.{key}' is {getattr(d, key):_}; with data.{size_key}={size} at most "
                f"{most_total // size:_} examples ({why})"
            )


SEQUENCE_TASKS = ("pystdlib", "addition")  # the built-in datasets of tokens (adaptive.data)


def _sequence_rules(cfg: Any) -> None:
    """A language model reads a sequence task, and only a language model does."""
    lm, sequence = cfg.model.kind == "lm", cfg.data.name in SEQUENCE_TASKS
    if sequence and not lm:
        raise ConfigError(
            f"config key 'data.name' is {cfg.data.name!r}, a sequence task; it needs model.kind='lm' "
            f"(model.kind is {cfg.model.kind!r})"
        )
    if not lm:
        return
    if not sequence:  # a TFDS dataset of one's own holds images or vectors, not tokens
        tasks = ", ".join(SEQUENCE_TASKS)
        raise ConfigError(
            f"config key 'model.kind' is 'lm'; data.name={cfg.data.name!r} is not a sequence task ({tasks})"
        )
    if cfg.halting.policy not in ("none", "act"):
        raise ConfigError(
            f"config key 'halting.policy' is {cfg.halting.policy!r}; a language model halts per position with "
            "'act' (one shared block), or exits early with lm.exits"
        )
    if cfg.moe.enabled and cfg.moe.router == "expert_choice":  # experts pick among the whole window
        raise ConfigError(
            "config key 'moe.router' is 'expert_choice'; a language model must not see later tokens, and an "
            "expert choosing among a window's tokens does: use 'top_k' or 'top_p'"
        )
    if cfg.halting.policy == "act" and (cfg.lm.exits or cfg.lm.mod_capacity > 0):
        raise ConfigError(
            "config key 'halting.policy' is 'act' (one shared block, halting per position); it does not combine "
            "with lm.exits or lm.mod_capacity"
        )


def _router_gets_a_gradient(moe: Any) -> None:
    """Renormalised gates of a single expert are p / p = 1: the task loss then sends the router no
    gradient (it still picks experts, but nothing tells it which pick helped). With top-k that is
    every token when k = 1. With top-p it is every token whose first choice holds `top_p` of its
    probability, which are the tokens a compute budget pushes the router to make, so the router's
    task signal fades as it meets the budget: refused for any k."""
    if not moe.renormalize:
        return
    if moe.router == "top_k" and moe.k == 1:
        raise ConfigError(
            "config key 'moe.renormalize' is True; with moe.k=1 the gate is p/p = 1 and the router gets no "
            "gradient from the task: set moe.renormalize=False"
        )
    if moe.router == "top_p":
        raise ConfigError(
            "config key 'moe.renormalize' is True; with moe.router='top_p' a token that takes one expert gets "
            "gate 1 and the router no gradient from the task: set moe.renormalize=False"
        )
