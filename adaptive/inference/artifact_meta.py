"""An artifact's meta.json: its schema, its own checksum, and reading it back checked.

meta.json is what a server trusts about a blob: the caps it clips budgets to, the input shape it
compiles executables for, the compute and accuracy tables it plans with, and the files it opens.
So it is validated by hand against the schema below before anything uses it (a bad value is one
line naming its key path, never a traceback at start-up or a server that rejects everything),
and from "adaptive-export/2" on it carries `meta_sha256`, the SHA-256 of its own canonical JSON:
an edit to it -- a cap, a table, or a swapped blob with its checksum updated -- is refused.
An "adaptive-export/1" meta.json has no such checksum: it loads after the same validation, with
a warning to re-export it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from pathlib import Path

FORMAT = "adaptive-export/2"
FORMAT_1 = "adaptive-export/1"  # no meta_sha256: still loaded, with a warning
LM_FORMAT = "adaptive-lm-export/1"  # a language model's artifact (adaptive.inference.lm_export)
META = "meta.json"
BLOB = "model.jaxexport"
CHECKSUM_KEY = "meta_sha256"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DTYPE_NAME = re.compile(r"[a-z][a-z0-9_]*")


class ArtifactError(ValueError):
    """An artifact that is missing, corrupted, truncated or not what it claims; one line."""


def variant_file(k: int) -> str:
    """The file name of the function for `k` experts per token (the only name meta.json may give it)."""
    return f"model-k{k}.jaxexport"


def point_file(precision: str, prune: float) -> str:
    """The file name of an operating point's function (adaptive.evaluation.operating_points): the
    model at `precision` with a share `prune` of its units removed; the only name meta.json may
    give it."""
    return f"point-{precision}-p{round(prune * 100)}.jaxexport"


def check_blob(blob: bytes, entry: dict, where: str) -> None:
    """A function file's bytes against its meta.json entry: its length first where the entry
    records one (exports before that did not), so a cut copy is said to be cut, then its sha256."""
    want = entry.get("bytes")
    if isinstance(want, int) and not isinstance(want, bool) and len(blob) != want:
        raise ArtifactError(f"{where} is truncated or padded: {len(blob)} bytes, meta.json says {want}")
    if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
        raise ArtifactError(f"{where} does not match meta.json's checksum (corrupted or from another export)")


def point_entry(meta: dict, point, path) -> dict | None:
    """meta.json's entry for operating point `point` = (precision, prune), with its file (None for
    (fp32, 0), which is model.jaxexport); an ArtifactError naming the points there are when the
    artifact has no such point."""
    if point is None or tuple(point) == ("fp32", 0):
        return None
    points = {(p["precision"], p["prune"]): p for p in meta.get("operating_points", []) if "file" in p}
    if tuple(point) not in points:
        have = ", ".join(f"{p} prune {f:g}" for p, f in points) or "none but fp32 prune 0"
        raise ArtifactError(f"{path} has no operating point {point[0]} prune {point[1]:g}; it has {have}")
    return points[tuple(point)]


def validate_lm_files(meta: dict, where: str) -> None:
    """A language model's meta.json: the fields its loaders and servers read (capacities, caps,
    thresholds and their calibration, the slot state), and the files it names, each a plain file
    of its one allowed name: the generation, the slot functions (`slots.prefill`, `slots.step`),
    and the operating points checked as a classifier's are (see `_Schema.points`), each with
    slot functions of its own name. The seal does not replace these checks: anyone can recompute
    it."""
    schema = _Schema(where)
    if meta.get("file", BLOB) != BLOB:
        raise schema.fail("file", repr(BLOB), meta["file"])
    schema.checksum(schema.get(meta, "sha256"), "sha256")
    for key in ("prompt_capacity", "new_capacity"):
        schema.integer(schema.get(meta, key), key, 1)
    caps = schema.obj(schema.get(meta, "caps"), "caps")
    for key in ("layers", "experts_per_token"):
        schema.integer(schema.get(caps, key, "caps."), f"caps.{key}", 1)
    _lm_thresholds(schema, schema.obj(schema.get(meta, "exit_threshold"), "exit_threshold"))
    if "slots" in meta:
        slots = schema.obj(meta["slots"], "slots")
        schema.integer(schema.get(slots, "count", "slots."), "slots.count", 1)
        state = schema.get(slots, "state", "slots.")
        if not (isinstance(state, list) and state and all(_is_array_spec(entry) for entry in state)):
            raise schema.fail("slots.state", "a list of [shape, dtype] pairs", state)
    points = meta.get("operating_points", [])
    schema.points(points)
    named = [("slots", meta["slots"], "")] if "slots" in meta else []
    for i, entry in enumerate(points):
        if "file" in entry:
            path = f"operating_points[{i}].slots"
            prefix = entry["file"].removesuffix(".jaxexport") + "-"
            named.append((path, schema.get(entry, "slots", f"operating_points[{i}]."), prefix))
    for path, slots, prefix in named:
        slots = schema.obj(slots, path)
        for name in ("prefill", "step"):
            fn, want = (
                schema.obj(schema.get(slots, name, path + "."), f"{path}.{name}"),
                f"{prefix}slot-{name}.jaxexport",
            )
            if fn.get("file") != want:  # never a path: nothing outside the artifact is opened
                raise schema.fail(f"{path}.{name}.file", repr(want), fn.get("file"))
            schema.checksum(fn.get("sha256"), f"{path}.{name}.sha256")


def _lm_thresholds(schema: _Schema, threshold: dict) -> None:
    """exit_threshold: a default >= 0 (2: never exits), and a calibration's tested thresholds,
    each with the disagreement and blocks a server's ladder reads."""
    default = schema.get(threshold, "default", "exit_threshold.")
    if not (_is_number(default) and default >= 0):
        raise schema.fail("exit_threshold.default", "a number >= 0", default)
    calibrated = threshold.get("calibrated")
    if calibrated is None:
        return
    tested = schema.obj(calibrated, "exit_threshold.calibrated").get("tested", [])
    keys = ("threshold", "disagreement", "blocks")
    if not isinstance(tested, list) or not all(
        isinstance(e, dict) and all(_is_number(e.get(key)) and e[key] >= 0 for key in keys) for e in tested
    ):
        raise schema.fail(
            "exit_threshold.calibrated.tested", "a list of {threshold, disagreement, blocks} >= 0", tested
        )


def _is_array_spec(entry) -> bool:
    """[shape, dtype]: a list of sizes >= 0 and a dtype's name (numpy's, or ml_dtypes' such as
    bfloat16: which names exist is known where JAX is loaded, adaptive.inference.slot_export)."""
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list) and isinstance(entry[1], str)):
        return False
    return bool(_DTYPE_NAME.fullmatch(entry[1])) and all(_is_int(d) and d >= 0 for d in entry[0])


def batch_file(batch: int) -> str:
    """The file name of the function compiled for exactly `batch` rows, whose halting loop shrinks
    to the rows still running (adaptive.nn.compaction); the only name meta.json may give it."""
    return f"model-b{batch}.jaxexport"


def meta_checksum(meta: dict) -> str:
    """SHA-256 of meta.json's canonical JSON, without its own checksum key."""
    body = {key: value for key, value in meta.items() if key != CHECKSUM_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(meta: dict) -> dict:
    """`meta` as it reads back from JSON, with its checksum added (computed on the read-back form,
    so that what load computes from the file is the same)."""
    plain = json.loads(json.dumps(meta))
    return {**plain, CHECKSUM_KEY: meta_checksum(plain)}


def read_meta(path: str | Path) -> dict:
    """ART/meta.json parsed and validated against the schema (its checksum is checked apart, by
    `check_sealed`, once the blobs it describes have been checked)."""
    path = Path(path)
    meta = parse_meta(path)
    validate(meta, f"{path}/{META}")
    return meta


def parse_meta(path: Path):
    """ART/meta.json parsed, not validated (classifier and language-model artifacts share this)."""
    try:
        return json.loads((path / META).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} is not an artifact (no {META}); make one with `adaptive export`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}/{META} is corrupted ({e.__class__.__name__})") from None
    except OSError as e:
        raise ArtifactError(f"{path}/{META} cannot be read ({e.strerror})") from None


def check_sealed(meta: dict, path: str | Path) -> None:
    """Refuses a meta.json edited after export; warns about a format-1 one (no checksum to check)."""
    if meta["format"] == FORMAT_1 and CHECKSUM_KEY not in meta:
        logging.warning(
            "%s/%s (%s) is not covered by a checksum: re-export it with `adaptive export --force`", path, META, FORMAT_1
        )
        return
    if CHECKSUM_KEY not in meta:
        raise ArtifactError(f"{path}/{META} has no {CHECKSUM_KEY} (not a complete export)")
    if meta_checksum(meta) != meta[CHECKSUM_KEY]:
        raise ArtifactError(f"{path}/{META} was modified after export (checksum mismatch)")


# -- schema ------------------------------------------------------------------------------------


def validate(meta, where: str) -> None:
    """Every key a loader or server reads, checked for type and range; `where` prefixes errors."""
    if not isinstance(meta, dict):
        raise ArtifactError(f"{where} must hold a JSON object; got {type(meta).__name__}")
    _Schema(where).check(meta)


class _Schema:
    """The checks, each raising one line: `WHERE: KEY.PATH must be WHAT; got VALUE`."""

    def __init__(self, where: str):
        self.where = where

    def check(self, meta: dict) -> None:
        fmt = self.get(meta, "format")
        if fmt not in (FORMAT_1, FORMAT):
            raise self.fail("format", f"{FORMAT!r} or {FORMAT_1!r}", fmt)
        if fmt == FORMAT or CHECKSUM_KEY in meta:
            self.checksum(self.get(meta, CHECKSUM_KEY), CHECKSUM_KEY)
        self.checksum(self.get(meta, "sha256"), "sha256")
        self.integer(self.get(meta, "bytes"), "bytes", 0)

        caps = self.obj(self.get(meta, "caps"), "caps")
        cap = self.integer(self.get(caps, "steps", "caps."), "caps.steps", 1)
        k_max = self.get(caps, "experts_per_token", "caps.")
        if k_max is not None:
            self.integer(k_max, "caps.experts_per_token", 1)

        spec = self.obj(self.get(meta, "input"), "input")
        shape = self.get(spec, "shape", "input.")
        dims = shape[1:] if isinstance(shape, list) else []
        if not (
            isinstance(shape, list) and shape[:1] == ["batch"] and dims and all(_is_int(d) and d >= 1 for d in dims)
        ):
            raise self.fail("input.shape", '["batch", positive integers...]', shape)
        if spec.get("dtype", "float32") != "float32":
            raise self.fail("input.dtype", '"float32"', spec["dtype"])
        self.integer(self.get(meta, "num_classes"), "num_classes", 2)
        outputs = meta.get("outputs", [])
        if not (isinstance(outputs, list) and all(isinstance(o, str) for o in outputs)):
            raise self.fail("outputs", "a list of names", outputs)

        self.variants(self.obj(meta.get("expert_variants", {}), "expert_variants"), k_max)
        self.batch_variants(self.obj(meta.get("batch_variants", {}), "batch_variants"))
        self.points(meta.get("operating_points", []), cap)
        if meta.get("memory") is not None:
            memory = self.obj(meta["memory"], "memory")
            if not (_is_number(memory.get("total_mb")) and memory["total_mb"] >= 0 and _is_int(memory.get("batch"))):
                raise self.fail("memory", "{batch: an integer, total_mb: a number >= 0, ...}", memory)
        ceiling = meta.get("memory_budget_mb")
        if ceiling is not None and not (_is_number(ceiling) and ceiling > 0):
            raise self.fail("memory_budget_mb", "null or a number > 0", ceiling)
        self.compute(self.obj(self.get(meta, "compute_at_steps"), "compute_at_steps"), cap)
        by_experts = self.obj(meta.get("flops_at_expert_budgets") or {}, "flops_at_expert_budgets")
        for key, values in by_experts.items():
            if _budget_key(key) not in range(1, k_max or 1):
                raise self.fail("flops_at_expert_budgets", f"keyed by integers in [1, {k_max or 1})", key)
            self.row(values, f"flops_at_expert_budgets.{key}", cap)
        if meta.get("accuracy_at_budgets") is not None:
            self.accuracy(self.obj(meta["accuracy_at_budgets"], "accuracy_at_budgets"), cap, k_max)
        for key in ("config", "packages", "source"):
            self.obj(meta.get(key, {}), key)
        for key in ("budget", "cost_model"):
            if meta.get(key) is not None:
                self.obj(meta[key], key)

    def variants(self, variants: dict, k_max: int | None) -> None:
        """One function per expert budget below the trained one, each a plain file of the artifact."""
        for key, entry in variants.items():
            k, path = _budget_key(key), f"expert_variants.{key}"
            if k not in range(1, k_max or 1):
                raise self.fail("expert_variants", f"keyed by integers in [1, caps.experts_per_token = {k_max})", key)
            self.blob(entry, path, variant_file(k))

    def batch_variants(self, variants: dict) -> None:
        """Functions for one concrete batch size each (compacting halting loops), plain files."""
        for key, entry in variants.items():
            batch = _budget_key(key)
            if batch is None or batch < 2:
                raise self.fail("batch_variants", "keyed by batch sizes >= 2", key)
            self.blob(entry, f"batch_variants.{key}", batch_file(batch))

    def points(self, points, cap: int | None = None) -> None:
        """Operating points (precision, prune): numbers in range, a FLOPs column per step budget
        where one is given, and a plain file of the artifact for each but (fp32, 0), which is
        model.jaxexport."""
        if not isinstance(points, list):
            raise self.fail("operating_points", "a list", points)
        seen = set()
        for i, entry in enumerate(points):
            path = f"operating_points[{i}]"
            entry = self.obj(entry, path)
            precision, prune = self.get(entry, "precision", path + "."), self.get(entry, "prune", path + ".")
            if precision not in ("fp32", "bf16", "int8", "int4"):
                raise self.fail(path + ".precision", "fp32, bf16, int8 or int4", precision)
            if not (isinstance(prune, (int, float)) and 0 <= prune < 1):
                raise self.fail(path + ".prune", "a number in [0, 1)", prune)
            if (precision, prune) in seen:
                raise self.fail(path, "a (precision, prune) pair listed once", [precision, prune])
            seen.add((precision, prune))
            memory = self.obj(self.get(entry, "memory", path + "."), path + ".memory")
            latency = self.obj(self.get(entry, "latency_ms", path + "."), path + ".latency_ms")
            numbers = {key: entry.get(key) for key in ("accuracy", "flops", "weight_bytes")}
            numbers |= {"memory.total_mb": memory.get("total_mb"), "latency_ms.median": latency.get("median")}
            for key, value in numbers.items():
                if not (_is_number(value) and value >= 0):
                    raise self.fail(f"{path}.{key}", "a number >= 0", value)
            if cap is not None and "flops_at_steps" in entry:  # a classifier's (None: a language model's)
                self.row(entry["flops_at_steps"], path + ".flops_at_steps", cap)
            if (precision, prune) != ("fp32", 0):
                self.blob(entry, path, point_file(precision, prune))
            elif "file" in entry:  # (fp32, 0) is model.jaxexport itself
                raise self.fail(path + ".file", "absent for (fp32, 0)", entry["file"])

    def blob(self, entry, path: str, name: str) -> None:
        entry = self.obj(entry, path)
        got = self.get(entry, "file", path + ".")
        if got != name:  # never a path: nothing outside the artifact is opened
            raise self.fail(path + ".file", repr(name), got)
        self.checksum(self.get(entry, "sha256", path + "."), path + ".sha256")
        self.integer(self.get(entry, "bytes", path + "."), path + ".bytes", 0)

    def compute(self, compute: dict, cap: int) -> None:
        for column in ("steps", "flops"):
            self.get(compute, column, "compute_at_steps.")
        for column, values in compute.items():
            self.row(values, f"compute_at_steps.{column}", cap)
        if compute["steps"] != list(range(1, cap + 1)):  # the engine indexes every column by steps - 1
            raise self.fail("compute_at_steps.steps", f"1, 2, ..., caps.steps = {cap}", compute["steps"])
        for column in ("flops", "macs"):  # a budget in these units is found by bisection
            values = compute.get(column, [])
            if any(b < a for a, b in zip(values, values[1:], strict=False)):
                raise self.fail(f"compute_at_steps.{column}", "non-decreasing", values)

    def accuracy(self, table: dict, cap: int, k_max: int | None) -> None:
        """A row per expert budget 1..k_max (one row without experts) of caps.steps accuracies
        (null where the model has no such operating point); `by_batch`: that table per served
        batch size."""
        path = "accuracy_at_budgets"
        want = None if k_max is None else list(range(1, k_max + 1))
        if table.get("experts") != want:
            raise self.fail(path + ".experts", "null" if want is None else f"{want}", table.get("experts"))
        rows = len(want or [None])
        if "batch" in table:
            self.integer(table["batch"], path + ".batch", 1)
        if "examples" in table:
            self.integer(table["examples"], path + ".examples", 0)
        self.rows(self.get(table, "accuracy", path + "."), path + ".accuracy", rows, cap)
        if table.get("by_batch") is None:
            return
        served = self.obj(table["by_batch"], path + ".by_batch")
        sizes, tables = served.get("batch"), served.get("accuracy")
        if not (isinstance(sizes, list) and all(_is_int(b) and b >= 1 for b in sizes)):
            raise self.fail(path + ".by_batch.batch", "a list of batch sizes >= 1", sizes)
        if not (isinstance(tables, list) and len(tables) == len(sizes)):
            raise self.fail(path + ".by_batch.accuracy", f"{len(sizes)} tables, one per batch size", tables)
        for i, rows_of_size in enumerate(tables):
            self.rows(rows_of_size, f"{path}.by_batch.accuracy.{i}", rows, cap)

    def rows(self, value, path: str, rows: int, cap: int) -> None:
        if not (isinstance(value, list) and len(value) == rows):
            raise self.fail(path, f"a list of {rows} row(s), one per expert budget", value)
        for i, row in enumerate(value):
            ok = isinstance(row, list) and len(row) == cap
            if not ok or not all(a is None or (_is_number(a) and 0 <= a <= 1) for a in row):
                raise self.fail(f"{path}.{i}", f"{cap} (caps.steps) values, each null or a number in [0, 1]", row)

    def row(self, values, path: str, cap: int) -> None:
        """A compute column: one finite, non-negative number per step budget 1..cap."""
        if not (isinstance(values, list) and len(values) == cap):
            raise self.fail(path, f"a list of {cap} (caps.steps) numbers", values)
        if not all(_is_number(v) and v >= 0 for v in values):
            raise self.fail(path, "finite non-negative numbers", values)

    # -- primitives --

    def fail(self, key: str, must: str, got) -> ArtifactError:
        text = repr(got)  # repr escapes newlines: the message stays one line
        return ArtifactError(
            f"{self.where}: {key} must be {must}; got {text if len(text) <= 80 else text[:77] + '...'}"
        )

    def get(self, obj: dict, key: str, prefix: str = ""):
        if key not in obj:
            raise ArtifactError(f"{self.where}: {prefix}{key} is missing")
        return obj[key]

    def obj(self, value, path: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, "an object", value)
        return value

    def integer(self, value, path: str, lo: int) -> int:
        if not (_is_int(value) and value >= lo):
            raise self.fail(path, f"an integer >= {lo}", value)
        return value

    def checksum(self, value, path: str) -> None:
        if not (isinstance(value, str) and _HEX64.fullmatch(value)):
            raise self.fail(path, "64 lowercase hex characters", value)


def _budget_key(key: str) -> int | None:
    """An expert-budget key ("1", "2", ...) as an int; None when it is not one."""
    return int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
