"""meta.json is validated against its schema and covered by its own checksum: a tampered or
malformed one is refused in one line naming the key, before anything is served."""

import hashlib
import json
import logging
import shutil
import subprocess

import pytest

from adaptive.inference.artifact_meta import FORMAT, FORMAT_1, meta_checksum, seal, validate
from adaptive.inference.export import ArtifactError, export_run, load_artifact
from adaptive.serving.engine import Engine
from tests.helpers import cli, train_tiny


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    train_tiny(root / "run", 20)
    return export_run(root / "run", root / "art")


def _copy(art, tmp_path, edit, *, reseal: bool = True):
    """A copy of the artifact whose meta.json went through `edit(meta)` (then resealed, so that the
    schema, not the checksum, is what refuses it)."""
    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    meta = json.loads((copy / "meta.json").read_text())
    edit(meta)
    (copy / "meta.json").write_text(json.dumps(seal(meta) if reseal else meta))
    return copy


def _set(path: str, value):
    def edit(meta):
        *parents, last = path.split(".")
        node = meta
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


def _moe_variant(file: str):
    def edit(meta):
        meta["caps"]["experts_per_token"] = 2
        meta["expert_variants"] = {"1": {"file": file, "sha256": meta["sha256"], "bytes": meta["bytes"]}}

    return edit


MALFORMED = {
    "steps_0": (_set("caps.steps", 0), "caps.steps must be an integer >= 1; got 0"),
    "steps_negative": (_set("caps.steps", -1), "caps.steps must be an integer >= 1; got -1"),
    "steps_fraction": (_set("caps.steps", 2.5), "caps.steps must be an integer >= 1; got 2.5"),
    "steps_string": (_set("caps.steps", "8"), "caps.steps must be an integer >= 1; got '8'"),
    "steps_bool": (_set("caps.steps", True), "caps.steps must be an integer >= 1; got True"),
    "no_caps": (lambda meta: meta.pop("caps"), "caps is missing"),
    "caps_string": (_set("caps", "six"), "caps must be an object; got 'six'"),
    "experts_0": (_set("caps.experts_per_token", 0), "caps.experts_per_token must be an integer >= 1; got 0"),
    "accuracy_above_1": (
        _set("accuracy_at_budgets.accuracy", [[0.5, 0.5, 0.5, 0.5, 0.5, 1.5]]),
        "accuracy_at_budgets.accuracy.0 must be 6 (caps.steps) values, each null or a number in [0, 1]",
    ),
    "accuracy_short_row": (
        _set("accuracy_at_budgets.accuracy", [[0.5, 0.5]]),
        "accuracy_at_budgets.accuracy.0 must be 6 (caps.steps) values",
    ),
    "accuracy_two_rows": (
        _set("accuracy_at_budgets.accuracy", [[0.5] * 6, [0.5] * 6]),
        "accuracy_at_budgets.accuracy must be a list of 1 row(s)",
    ),
    "accuracy_by_batch": (
        _set("accuracy_at_budgets.by_batch", {"batch": [1, 2], "accuracy": [[[0.5] * 6]]}),
        "accuracy_at_budgets.by_batch.accuracy must be 2 tables",
    ),
    "shape_without_batch": (_set("input.shape", [16]), 'input.shape must be ["batch", positive integers...]'),
    "shape_zero": (_set("input.shape", ["batch", 0]), "input.shape must be"),
    "shape_string": (_set("input.shape", "16"), "input.shape must be"),
    "num_classes_1": (_set("num_classes", 1), "num_classes must be an integer >= 2; got 1"),
    "path_escape": (_moe_variant("../x"), "expert_variants.1.file must be 'model-k1.jaxexport'; got '../x'"),
    "absolute_path": (_moe_variant("/etc/passwd"), "expert_variants.1.file must be 'model-k1.jaxexport'"),
    "variant_without_experts": (_set("expert_variants", {"1": {}}), "expert_variants must be keyed by integers in"),
    "batch_path_escape": (
        _set("batch_variants", {"16": {"file": "../model.jaxexport", "sha256": "0" * 64, "bytes": 1}}),
        "batch_variants.16.file must be 'model-b16.jaxexport'; got '../model.jaxexport'",
    ),
    "batch_1": (_set("batch_variants", {"1": {}}), "batch_variants must be keyed by batch sizes >= 2; got '1'"),
    "steps_column_short": (_set("compute_at_steps.steps", [1, 2, 3]), "compute_at_steps.steps must be a list of 6"),
    "flops_decreasing": (
        _set("compute_at_steps.flops", [6.0, 5, 4, 3, 2, 1]),
        "compute_at_steps.flops must be non-decreasing",
    ),
    "flops_nan": (_set("compute_at_steps.flops", [float("nan")] * 6), "compute_at_steps.flops must be finite"),
    "no_flops": (lambda meta: meta["compute_at_steps"].pop("flops"), "compute_at_steps.flops is missing"),
    "bad_sha": (_set("sha256", "abc"), "sha256 must be 64 lowercase hex characters; got 'abc'"),
    "negative_bytes": (_set("bytes", -1), "bytes must be an integer >= 0; got -1"),
    "format": (_set("format", "adaptive-export/9"), "format must be 'adaptive-export/2' or"),
    "config_string": (_set("config", "x"), "config must be an object; got 'x'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_meta_json_is_refused_in_one_line_naming_the_key(exported, tmp_path, case):
    edit, message = MALFORMED[case]
    copy = _copy(exported, tmp_path, edit)
    with pytest.raises(ArtifactError) as err:
        load_artifact(copy)
    assert str(err.value).startswith(f"{copy}/meta.json: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def _swap_blob(copy):
    """Another blob in place of the exported one, with meta.json's sha256 and bytes updated."""
    blob = (copy / "model.jaxexport").read_bytes()[:-100]
    (copy / "model.jaxexport").write_bytes(blob)
    meta = json.loads((copy / "meta.json").read_text())
    meta.update(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob))
    (copy / "meta.json").write_text(json.dumps(meta))


TAMPERED = {
    "blob_swapped_sha_updated": _swap_blob,
    "num_classes_changed": lambda copy: _edit_file(copy, _set("num_classes", 10)),
    "flops_halved": lambda copy: _edit_file(copy, _set("compute_at_steps.flops", [1.0, 2, 3, 4, 5, 6])),
    "accuracy_raised": lambda copy: _edit_file(copy, _set("accuracy_at_budgets.accuracy", [[1.0] * 6])),
    "checksum_dropped": lambda copy: _edit_file(copy, lambda meta: meta.pop("meta_sha256")),
}


def _edit_file(copy, edit):
    meta = json.loads((copy / "meta.json").read_text())
    edit(meta)
    (copy / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("case", list(TAMPERED))
def test_meta_json_edited_after_export_is_refused(exported, tmp_path, case):
    copy = tmp_path / "art"
    shutil.copytree(exported, copy)
    TAMPERED[case](copy)
    with pytest.raises(ArtifactError) as err:
        load_artifact(copy)
    want = "meta_sha256 is missing" if case == "checksum_dropped" else "meta.json was modified after export"
    assert want in str(err.value) and "\n" not in str(err.value)


def test_a_valid_artifact_loads_and_its_meta_is_sealed(exported, tmp_path):
    fn, meta = load_artifact(exported)
    assert meta["format"] == FORMAT and meta["meta_sha256"] == meta_checksum(meta)
    validate(meta, "meta.json")  # what export wrote passes its own schema
    assert fn.in_avals[0].shape[1:] == (16,)
    # Reformatting is not an edit: the checksum is of the canonical JSON.
    copy = _copy(exported, tmp_path, lambda meta: None, reseal=False)
    (copy / "meta.json").write_text(json.dumps(meta, indent=4, sort_keys=True))
    assert load_artifact(copy)[1] == meta


def test_a_format_1_artifact_loads_with_a_warning(exported, tmp_path, caplog):
    def downgrade(meta):
        meta["format"] = FORMAT_1
        del meta["meta_sha256"]

    copy = _copy(exported, tmp_path, downgrade, reseal=False)
    with caplog.at_level(logging.WARNING):
        _, meta = load_artifact(copy)
    assert meta["format"] == FORMAT_1
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "not covered by a checksum" in warning and "re-export" in warning and "\n" not in warning


def test_a_format_1_artifact_is_validated_too_and_its_input_shape_checked_against_the_blob(exported, tmp_path):
    def downgrade(meta, shape):
        meta.update(format=FORMAT_1, input={**meta["input"], "shape": shape})
        del meta["meta_sha256"]

    (tmp_path / "a").mkdir()
    bad = _copy(exported, tmp_path / "a", lambda meta: downgrade(meta, ["batch", 0]), reseal=False)
    with pytest.raises(ArtifactError, match=r"input\.shape must be"):
        load_artifact(bad)
    (tmp_path / "b").mkdir()
    wrong = _copy(exported, tmp_path / "b", lambda meta: downgrade(meta, ["batch", 17]), reseal=False)
    with pytest.raises(ArtifactError, match=r"input\.shape says \['batch', 17\]") as err:
        load_artifact(wrong)
    assert "\n" not in str(err.value)


def test_the_engine_and_the_server_refuse_a_bad_meta_json_before_serving(exported, tmp_path):
    """caps.steps 0 used to serve and reject every request while /healthz said ok."""
    bad = _copy(exported, tmp_path, _set("caps.steps", 0))
    with pytest.raises(ArtifactError, match=r"caps\.steps must be an integer >= 1; got 0"):
        Engine.from_artifact(bad, buckets=(1,))
    proc = subprocess.run(
        cli("serve", "--artifact", str(bad), "--port", "0"), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "caps.steps must be an integer >= 1; got 0" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
