"""Configuration: `get_config(arg)` files -> one frozen, validated `Config`.

The dataclasses below are the schema *and* the defaults. Config files start from
`default_config()` (a ConfigDict mirroring them) and change what their experiment needs;
command-line overrides (`--config.train.steps=300`) come on top. `from_dict` then turns the
result into frozen dataclasses once, at the entry point, so the library never sees a ConfigDict.
Every mistake is a `ConfigError` whose message is one line naming the key and what is allowed;
floats must be finite and sizes, seeds, texts and lists are bounded (adaptive/config_checks.py).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_collections

from adaptive import config_checks as checks
from adaptive.config_checks import ConfigError


def _f(default: Any, *, choices: tuple | None = None, lo: float | None = None, hi: float | None = None) -> Any:
    """A dataclass field carrying its validation rule (allowed values or an inclusive range)."""
    return field(default=default, metadata={"choices": choices, "lo": lo, "hi": hi})


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how it is generated, and where prepared TFDS files are cached."""

    name: str = "parity"  # parity | digits | mnist1d | any TFDS dataset prepared in data_dir
    parity_n: int = _f(16, lo=2, hi=4096)
    num_train: int = _f(100_000, lo=1, hi=checks.MAX_EXAMPLES)
    num_eval: int = _f(10_000, lo=1, hi=checks.MAX_EXAMPLES)
    # Inclusive ranges of parity's difficulty (non-zero entries); None means 1..parity_n.
    train_difficulty: tuple[int, int] | None = None
    eval_difficulty: tuple[int, int] | None = None
    data_dir: str = ""  # "" -> $ADAPTIVE_DATA_DIR or ~/.cache/adaptive/tfds
    seed: int = _f(0, lo=0, hi=checks.MAX_SEED)
    eval_split: str = _f("test", choices=("validation", "test"))
    image_key: str = "image"
    label_key: str = "label"


@dataclass(frozen=True)
class ModelConfig:
    """The network: which block is applied step after step, and how wide it is.

    `rnn` is Graves' parity cell (the input shown at every step); `mlp` a residual MLP block on
    an encoded vector; `transformer` a pre-LN attention block over the input read as a sequence
    of scalar tokens (Universal-Transformer style, halting per position under ACT).
    """

    kind: str = _f("rnn", choices=("mlp", "rnn", "transformer"))
    hidden: int = _f(128, lo=1, hi=checks.MAX_WIDTH)
    depth: int = _f(1, lo=1, hi=1024)  # steps of a static model (halting.policy = none)
    share_weights: bool = True  # one block reused at every step, or a distinct block per step
    num_heads: int = _f(4, lo=1, hi=1024)  # transformer only


@dataclass(frozen=True)
class HaltingConfig:
    """Adaptive depth: the policy, its hard cap and its hyper-parameters.

    bias_init = -1 starts the halting unit at p = 0.27 a step, so elements ponder ~3-4 steps
    at first. Graves' +1 (p = 0.73) makes them halt after ~2 steps and, with a ponder cost,
    tends to keep them there (92% on parity n=16 where -1 reaches 99.5%); n = 32 needs -3.
    """

    policy: str = _f("none", choices=("none", "act", "pondernet", "early_exit"))
    max_steps: int = _f(20, lo=1, hi=1024)  # the hard cap, compiled into train and inference
    eps: float = _f(0.01, lo=0.0, hi=0.5)  # ACT halts once the halting mass reaches 1 - eps
    bias_init: float = _f(-1.0, lo=-50.0, hi=50.0)  # sigmoid(50) is 1 in float32
    tau: float = _f(1e-3, lo=0.0, hi=checks.MAX_WEIGHT)  # ACT's ponder-cost weight
    lambda_p: float = _f(0.2, lo=1e-6, hi=1.0)  # PonderNet's geometric prior
    beta: float = _f(0.01, lo=0.0, hi=checks.MAX_WEIGHT)  # PonderNet's KL weight
    pondernet_inference: str = _f("threshold", choices=("threshold", "sample"))
    pondernet_threshold: float = _f(0.5, lo=0.0, hi=1.0)  # halt when cumulative p reaches it
    confidence: str = _f("max_prob", choices=("max_prob", "margin", "neg_entropy"))
    exit_threshold: float = _f(0.9)  # early exit when confidence reaches it


@dataclass(frozen=True)
class MoEConfig:
    """Sparse experts in place of the block's feed-forward layer (mlp and transformer kinds).

    Defaults follow Switch / ST-MoE: capacity factor 1.25 in training and 2.0 in evaluation,
    load-balancing loss 1e-2, router z-loss 1e-3. `expert_hidden` 0 sizes each expert so that k
    of them cost what the dense block's feed-forward costs (2 * hidden / k units each).
    """

    enabled: bool = False
    num_experts: int = _f(8, lo=1, hi=checks.MAX_EXPERTS)
    k: int = _f(2, lo=1, hi=checks.MAX_EXPERTS)  # experts per token; the cap at inference (a request may ask for fewer)
    router: str = _f("top_k", choices=("top_k", "top_p", "expert_choice"))
    # top_p: a token takes experts by probability until their mass reaches top_p (at most k), so
    # its expert count is trainable by a FLOPs budget; set renormalize False with it, or a token
    # with one expert gets gate 1 and the router no gradient from the task.
    top_p: float = _f(0.5, lo=0.0, hi=1.0)
    capacity_factor: float = _f(1.25, lo=0.0, hi=float(checks.MAX_EXPERTS))
    eval_capacity_factor: float = _f(2.0, lo=0.0, hi=float(checks.MAX_EXPERTS))
    renormalize: bool = True  # top-k gates rescaled to sum to 1 over the chosen experts
    jitter: float = _f(0.0, lo=0.0, hi=1.0)  # multiplicative router-input noise in training
    balance_weight: float = _f(1e-2, lo=0.0, hi=checks.MAX_WEIGHT)
    z_weight: float = _f(1e-3, lo=0.0, hi=checks.MAX_WEIGHT)
    dropless: bool = False  # lax.ragged_dot grouped matmuls, no capacity (for accelerators)
    expert_hidden: int = _f(0, lo=0, hi=checks.MAX_EXPERT_WIDTH)
    # Independent routing groups, each with its own capacity; with experts sharded (mesh.expert > 1)
    # a multiple of the mesh's devices, so that each device routes whole groups.
    num_groups: int = _f(1, lo=1, hi=checks.MAX_DEVICES)


@dataclass(frozen=True)
class BudgetConfig:
    """A compute budget stated before training: the mean compute per example to land on, and
    per-request hard caps.

    `unit`: steps (blocks applied), flops or macs per example (see adaptive/flops.py), or
    latency (ms), cost (money per 1k requests) or energy (J per request) on the machine a cost
    model was calibrated on. The
    penalty adds `weight` * relu(E[c] - target) / target (hinge: only over budget), or, with
    g = (E[c] - target) / target, lambda * g + weight / 2 * g^2 where lambda moves by dual ascent
    on realized compute each step (lagrangian, augmented: two-sided, it lands on the target).
    E[c] is differentiable through the halting distribution.
    """

    unit: str = _f("steps", choices=("steps", "flops", "macs", "latency_ms", "cost_per_1k", "energy_j"))
    target: float | None = None  # None: no budget
    penalty: str = _f("lagrangian", choices=("hinge", "lagrangian"))
    # Measured on parity (configs/budget.py): 0.01 / 1 let compute drift 30-60% over the target
    # while the task was being learned; 0.1 / 10 held it within a few percent.
    # The hinge's weight; the augmented Lagrangian's quadratic weight.
    weight: float = _f(10.0, lo=0.0, hi=checks.MAX_WEIGHT)
    dual_lr: float = _f(0.1, lo=0.0, hi=checks.MAX_WEIGHT)  # the Lagrange multiplier's step size
    # latency_ms, cost_per_1k and energy_j go through a calibrated cost model of this network
    # (`adaptive calibrate`), for requests served in batches of `serving_batch`.
    cost_model: str = ""
    serving_batch: int = _f(1, lo=1, hi=checks.MAX_BATCH)
    # Per-request hard budgets in `unit`, enforced at inference as a step cap per request: one
    # value for every request, or several drawn with `request_weights` (a distribution over
    # requests; default equal weights). Training halts each example at a budget drawn from the
    # same distribution, so the model learns to answer well at every budget it will be given.
    # Works with or without a target; needs an adaptive halting policy.
    requests: tuple[float, ...] = ()
    request_weights: tuple[float, ...] = ()


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then a cosine or constant schedule, and global-norm clipping."""

    learning_rate: float = _f(1e-3, lo=0.0, hi=10.0)
    warmup_steps: int = _f(100, lo=0, hi=checks.MAX_STEPS)
    schedule: str = _f("cosine", choices=("cosine", "constant"))
    end_lr_fraction: float = _f(0.0, lo=0.0, hi=1.0)
    weight_decay: float = _f(0.0, lo=0.0, hi=checks.MAX_WEIGHT)
    b1: float = _f(0.9, lo=0.0, hi=1.0)
    b2: float = _f(0.999, lo=0.0, hi=1.0)
    grad_clip_norm: float = _f(1.0, lo=0.0)  # 0 disables clipping


@dataclass(frozen=True)
class TrainConfig:
    """Loop lengths and intervals, in steps."""

    steps: int = _f(3000, lo=1, hi=checks.MAX_STEPS)
    batch_size: int = _f(128, lo=1, hi=checks.MAX_BATCH)
    eval_every: int = _f(500, lo=1, hi=checks.MAX_STEPS)
    eval_batch_size: int = _f(1000, lo=1, hi=checks.MAX_BATCH)
    log_every: int = _f(50, lo=1, hi=checks.MAX_STEPS)
    checkpoint_every: int = _f(500, lo=1, hi=checks.MAX_STEPS)
    keep_checkpoints: int = _f(3, lo=1, hi=checks.MAX_STEPS)
    max_nonfinite_in_a_row: int = _f(20, lo=1, hi=checks.MAX_STEPS)


@dataclass(frozen=True)
class LoggingConfig:
    """Where metrics go besides DIR/metrics.jsonl (always written)."""

    wandb: str = _f("offline", choices=("offline", "online", "disabled"))
    wandb_project: str = "adaptive"
    progress: bool = True


@dataclass(frozen=True)
class MeshConfig:
    """Devices and hosts: a mesh of `data` x `expert` devices (0 for data: every device left).

    Parameters are replicated except the experts', sharded on `expert`; batches are split over
    both axes. With `expert` > 1 the MoE layers exchange tokens by all-to-all, each device routing
    its own `moe.num_groups` / devices groups (adaptive/parallel.py). Multi-host: with
    `num_processes` > 1, `jax.distributed.initialize(coordinator_address, num_processes,
    process_id)`; with `auto`, JAX reads the cluster from the environment (SLURM, ...). One
    device is a mesh of one.
    """

    data: int = _f(1, lo=0, hi=checks.MAX_DEVICES)
    expert: int = _f(1, lo=1, hi=checks.MAX_DEVICES)
    distributed: str = _f("off", choices=("off", "auto", "explicit"))
    coordinator_address: str = ""  # host:port of process 0 (explicit)
    num_processes: int = _f(1, lo=1, hi=checks.MAX_DEVICES)
    process_id: int = _f(0, lo=0, hi=checks.MAX_DEVICES - 1)


@dataclass(frozen=True)
class Config:
    """A whole run. `seed` is the only source of randomness (init, dropout, data order)."""

    name: str = "run"
    seed: int = _f(0, lo=0, hi=checks.MAX_SEED)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    halting: HaltingConfig = field(default_factory=HaltingConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)


def default_config() -> ml_collections.ConfigDict:
    """The defaults as a ConfigDict, for config files to start from."""
    return ml_collections.ConfigDict(to_dict(Config()))


def to_dict(cfg: Any) -> dict:
    """A plain, JSON-ready dict of a Config (tuples become lists in JSON, restored on load)."""
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------
# Loading: file + overrides -> Config


def load(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """`configs/x.py[:arg]` plus `--config.a.b=v` strings -> a validated Config."""
    raw = load_file(spec)
    for item in overrides:
        path, value = _split_override(item)
        _set_path(raw, path, value)
    cfg = from_dict(raw)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=data_dir(cfg.data)))


def load_module(spec: str) -> tuple[Any, str | None]:
    """(the imported config file, its arg) for `configs/x.py[:arg]`."""
    file, _, arg = spec.partition(":")
    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"config file {file!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_adaptive_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module, arg or None


def load_file(spec: str) -> dict:
    """Imports a config file and calls its `get_config(arg)`; returns a plain dict."""
    module, arg = load_module(spec)
    file = spec.partition(":")[0]
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {file!r} defines no get_config(arg)")
    try:
        cfg = module.get_config(arg)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
        raise ConfigError(f"{spec}: {' '.join(str(e).split())}") from None
    if isinstance(cfg, ml_collections.ConfigDict):
        return cfg.to_dict()
    if not isinstance(cfg, dict):
        raise ConfigError(f"{spec}: get_config must return a ConfigDict or a dict; got {checks.show(cfg)}")
    return dict(cfg)


def from_dict(raw: dict, cls: type = Config, prefix: str = "") -> Any:
    """Builds the dataclass `cls` from nested dicts, rejecting unknown keys and bad values."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if checks.name(key, prefix) not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.5)
            hint = (
                f"did you mean {_or(prefix, close)}?"
                if close
                else (f"valid keys: {', '.join(prefix + k for k in fields)}")
            )
            raise ConfigError(f"unknown config key {checks.show(prefix + key)} ({hint})")
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key, value, kind = prefix + name, raw[name], hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key!r} is a section; set its fields, e.g. {key}.x=...")
            kwargs[name] = from_dict(value, kind, key + ".")
        else:
            kwargs[name] = _check(key, _coerce(key, value, kind), f.metadata)
    return checks.across_fields(cls(**kwargs)) if cls is Config else cls(**kwargs)


def _or(prefix: str, names: list[str]) -> str:
    return " or ".join(repr(prefix + n) for n in names)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Checks `value` against the annotation `kind` (int, float, str, bool, tuples, optionals)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if isinstance(value, _Raw):  # command-line text: a str field takes it as it is ("none" too)
        value = str(value) if kind is str else _parse_value(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is tuple and args[-1] is Ellipsis:  # any length; a single value is a 1-tuple
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, str) and "," in value:  # command-line text that is not all numbers
            values = [_Raw(part) for part in value.split(",")]
        return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(checks.items(key, values)))
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config key {key!r} must be {len(args)} values like 1,8; got {checks.show(value)}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args, strict=True))
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return checks.finite(key, value)  # NaN and inf are refused wherever a float enters
    if kind is str and isinstance(value, str):
        return checks.text(key, value)
    raise ConfigError(f"config key {key!r} must be {getattr(kind, '__name__', kind)}; got {checks.show(value)}")


def _check(key: str, value: Any, rule: typing.Mapping) -> Any:
    choices, lo, hi = rule.get("choices"), rule.get("lo"), rule.get("hi")
    if choices and value not in choices:
        allowed = ", ".join(map(repr, choices))
        raise ConfigError(f"config key {key!r} is {checks.show(value)}; allowed values: {allowed}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        checks.in_range(key, value, lo, hi)
    return value


def _split_override(item: str) -> tuple[list[str], Any]:
    """`--config.train.steps=300` -> (['train', 'steps'], 300)."""
    body = item.removeprefix("--").removeprefix("config.")
    if "=" not in body:
        raise ConfigError(f"override {item!r} must look like --config.section.key=value")
    path, _, text = body.partition("=")
    return path.split("."), _Raw(text)


class _Raw(str):
    """An override's text, parsed only once the field's type is known."""


def _parse_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if lowered.lstrip("+-") in ("nan", "inf", "infinity"):
        return float(lowered)  # a number, so that a float key refuses it as one
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # MemoryError: deep nesting
        return text  # a bare word such as `offline` is a string


def _set_path(raw: dict, path: list[str], value: Any) -> None:
    """Sets raw[a][b]... = value; unknown sections fail later in `from_dict` with suggestions."""
    node = raw
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            if part not in node:
                node[part] = {}  # let from_dict name the unknown key with its suggestions
                child = node[part]
            else:
                raise ConfigError(f"config key {'.'.join(path[: i + 1])!r} is not a section")
        node = child
    node[path[-1]] = value


def step_cap(cfg: Config) -> int:
    """The most steps the model of `cfg` can apply: its depth, or its halting cap."""
    return cfg.model.depth if cfg.halting.policy == "none" else cfg.halting.max_steps


def data_dir(cfg: DataConfig) -> str:
    """The folder where TFDS datasets are prepared once and reused."""
    chosen = cfg.data_dir or os.environ.get("ADAPTIVE_DATA_DIR") or "~/.cache/adaptive/tfds"
    return str(Path(chosen).expanduser().resolve())
