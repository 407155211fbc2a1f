"""Configuration: `get_config(arg)` files -> one frozen, validated `Config`.

The dataclasses of adaptive/config_schema.py are the schema *and* the defaults; every name there
is importable from here. Config files start from `default_config()` (a ConfigDict mirroring
them) and change what their experiment needs; command-line overrides (`--config.train.steps=300`)
come on top. `from_dict` then turns the result into frozen dataclasses once, at the entry point,
so the library never sees a ConfigDict. Every mistake is a `ConfigError` whose message is one
line naming the key and what is allowed; floats must be finite and sizes, seeds, texts and lists
are bounded (adaptive/config_checks.py).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import sys
import traceback
import types
import typing
from pathlib import Path
from typing import Any

import ml_collections

from adaptive import config_checks as checks
from adaptive.config_checks import ConfigError
from adaptive.config_schema import (
    BUDGET_UNITS,
    BudgetConfig,
    Config,
    DataConfig,
    HaltingConfig,
    LoggingConfig,
    MeshConfig,
    ModelConfig,
    MoEConfig,
    MoELayers,
    OptimConfig,
    TrainConfig,
    data_dir,
    default_config,
    moe_layers,
    step_cap,
    to_dict,
)

__all__ = [
    "BUDGET_UNITS",
    "BudgetConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "HaltingConfig",
    "LoggingConfig",
    "MeshConfig",
    "MoEConfig",
    "MoELayers",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "data_dir",
    "default_config",
    "from_dict",
    "load",
    "load_file",
    "load_module",
    "moe_layers",
    "step_cap",
    "to_dict",
]


def load(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """`configs/x.py[:arg]` plus `--config.a.b=v` strings -> a validated Config."""
    raw = load_file(spec)
    for item in overrides:
        path, value = _split_override(item)
        _set_path(raw, path, value)
    return absolute_paths(from_dict(raw))


def absolute_paths(cfg: Config) -> Config:
    """`cfg` with its paths made absolute, as a run starts: config.json then names the same files
    wherever a resume, an eval or an export runs from (a config saved with relative ones compares
    equal from the folder it ran in)."""
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, data_dir=data_dir(cfg.data), text_dir=_absolute(cfg.data.text_dir)),
        budget=dataclasses.replace(cfg.budget, cost_model=_absolute(cfg.budget.cost_model)),
    )


def _absolute(path: str) -> str:
    """`path` resolved against the current folder ("" stays "": the default)."""
    return str(Path(path).expanduser().resolve()) if path else ""


def load_module(spec: str) -> tuple[Any, str | None]:
    """(the imported config file, its arg) for `configs/x.py[:arg]`."""
    file, _, arg = spec.partition(":")
    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"config file {file!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_adaptive_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module.__adaptive_path__ = path  # where `call` finds its helpers and its lines
    run_config_code(f"config file {file!r}", path, module_spec.loader.exec_module, module)
    return module, arg or None


def call(module, name: str, spec: str, arg):
    """`module.<name>(arg)` (get_config, get_sweep): what its code raises becomes one line naming
    where in the file."""
    return run_config_code(spec, module.__adaptive_path__, getattr(module, name), arg)


def run_config_code(where: str, path: Path, fn, *args):
    """`fn(*args)` with the config's folder importable (a config may import helpers beside it,
    at its top or inside get_config), those helpers forgotten afterwards (another config's
    `common.py` is its own); an exception becomes a ConfigError of one line naming the line of
    the config file (or of the helper) where it arose."""
    folder = path.resolve().parent
    before = set(sys.modules)
    sys.path.insert(0, str(folder))
    try:
        return fn(*args)
    except ConfigError:
        raise
    except SyntaxError as e:
        file = "" if e.filename is None or Path(e.filename).resolve() == path.resolve() else f" ({e.filename})"
        raise ConfigError(f"{where}{file} line {e.lineno}: {e.msg}") from None
    except Exception as e:  # an import it lacks, a name it misspells: one line, not a traceback
        raise ConfigError(f"{where}{_line_in(e, path)}: {_one_line(e)}") from None
    finally:
        sys.path.remove(str(folder))
        helpers = [n for n in set(sys.modules) - before if n.partition(".")[0] not in before and _beside(n, folder)]
        for name in helpers:  # found first: a package's submodules are found by their package
            del sys.modules[name]


def _beside(name: str, folder: Path) -> bool:
    """Whether module `name` is a helper of the config in `folder`, or a submodule of one: its
    top-level module is a file or a package directly in it. Not one below it, such as a virtual
    environment's packages (nor, checked by the caller, a submodule of a package imported
    before: adaptive's own, where a config sits at the repository's root)."""
    origin = getattr(sys.modules.get(name.partition(".")[0]), "__file__", None)
    if not origin:
        return False
    path = Path(origin).resolve()
    return (path.parent.parent if path.name == "__init__.py" else path.parent) == folder


def _one_line(e: Exception) -> str:
    """`e` as one line, its type named where the message alone would not say what happened; a
    KeyError's message read from its argument (its str() adds quotes, and a message holding one
    such, escapes)."""
    text = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else str(e)
    if "\\n" in text and len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # a str() of a KeyError
        try:
            text = str(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            pass
    text = " ".join(text.split())
    if isinstance(e, KeyError) and " " not in text:  # a bare key: say that it was a missing key
        return f"KeyError: {text}"
    return text if isinstance(e, (ValueError, KeyError, TypeError, AttributeError)) else f"{type(e).__name__}: {text}"


def _line_in(e: BaseException, path: Path) -> str:
    """ " line N" of the innermost frame of the config file `path` in `e`'s traceback, or ""."""
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return f" line {lines[-1]}" if lines else ""


def load_file(spec: str) -> dict:
    """Imports a config file and calls its `get_config(arg)`; returns a plain dict."""
    module, arg = load_module(spec)
    file = spec.partition(":")[0]
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {file!r} defines no get_config(arg)")
    cfg = call(module, "get_config", spec, arg)
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
    choices, lo, hi, below = rule.get("choices"), rule.get("lo"), rule.get("hi"), rule.get("below")
    if choices and value not in choices:
        allowed = ", ".join(map(repr, choices))
        raise ConfigError(f"config key {key!r} is {checks.show(value)}; allowed values: {allowed}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        checks.in_range(key, value, lo, hi, below, rule.get("above"))
    return value


def override_key(item: str) -> tuple[str, str]:
    """`--config.train.steps=300` -> ("train.steps", "300"), as given (not yet checked)."""
    key, _, value = item.removeprefix("--").removeprefix("config.").partition("=")
    return key, value


def _split_override(item: str) -> tuple[list[str], Any]:
    """`--config.train.steps=300` -> (['train', 'steps'], 300)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like --config.section.key=value")
    path, text = override_key(item)
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
