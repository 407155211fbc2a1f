"""`adaptive export`: a jax.export artifact that plain JAX runs, equal to the live model, and
refused when corrupted, truncated or swapped."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from adaptive.inference.artifact_folder import PARTIAL_MARK, check_staging, staged_paths, write_staging
from adaptive.inference.export import COMPACTED_BATCHES, ArtifactError, export_run, load_artifact
from adaptive.inference.predictor import BudgetedPredictor
from adaptive.inference.restore import load_run
from tests.helpers import ROOT, cli, train_tiny

PLAIN_JAX = """
import hashlib, json, sys
import jax, numpy as np
art, x, budget = sys.argv[1], np.load(sys.argv[2]), np.load(sys.argv[3])
blob = open(f"{art}/model.jaxexport", "rb").read()
assert hashlib.sha256(blob).hexdigest() == json.load(open(f"{art}/meta.json"))["sha256"]
prediction, confidence, steps, experts = jax.export.deserialize(bytearray(blob)).call(x, budget)
assert not any(name.startswith("adaptive") for name in sys.modules)
print(json.dumps([np.asarray(v).tolist() for v in (prediction, confidence, steps, experts)]))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    train_tiny(root / "run", 20)
    return root / "run", export_run(root / "run", root / "art")


def _inputs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 0.0, 1.0], (n, 16)).astype(np.float32)
    return x, rng.integers(-3, 12, n).astype(np.int32)  # out-of-range budgets too: clipped in the graph


def test_artifact_matches_the_live_model_and_keeps_the_caps(exported):
    workdir, art = exported
    fn, meta = load_artifact(art)
    assert meta["caps"] == {"steps": 6, "experts_per_token": None} and meta["input"]["shape"] == ["batch", 16]
    assert len(meta["compute_at_steps"]["flops"]) == 6 and meta["packages"]["jax"] == jax.__version__
    x, budget = _inputs()
    prediction, confidence, steps, experts = (np.asarray(v) for v in fn.call(x, budget))
    run = load_run(workdir)
    live = BudgetedPredictor(run.graphdef, run.params, (16,), 6).predict(x, np.clip(budget, 1, 6))
    probs = np.asarray(jax.nn.softmax(live.logits_BxC, -1))
    np.testing.assert_array_equal(prediction, probs.argmax(-1))
    np.testing.assert_array_equal(steps, live.steps_B)
    np.testing.assert_allclose(confidence, probs.max(-1), rtol=1e-5)
    assert (steps >= 1).all() and (steps <= np.clip(budget, 1, 6)).all() and (experts == 0).all()
    for n in (1, 7):  # the batch dimension is symbolic: any size runs
        assert np.asarray(fn.call(x[:n], budget[:n])[0]).shape == (n,)


def test_meta_holds_the_validation_accuracy_of_every_step_budget(exported):
    """The table a server weighs operating points with is what the artifact itself scores."""
    workdir, art = exported
    fn, meta = load_artifact(art)
    table = meta["accuracy_at_budgets"]
    assert table["split"] == "validation" and table["experts"] is None and len(table["accuracy"]) == 1
    cfg = load_run(workdir).cfg
    assert table["examples"] == cfg.data.num_eval  # the whole validation split of parity
    for t in (1, 3, 6):
        assert table["accuracy"][0][t - 1] == pytest.approx(_validation_accuracy(fn, cfg, t), abs=1e-5)


def _validation_accuracy(fn, cfg, budget: int) -> float:
    from adaptive import data

    hits = []
    for b in data.eval_batches(cfg.data, "validation", 256):
        prediction = np.asarray(fn.call(b["x"].astype(np.float32), np.full(len(b["x"]), budget, np.int32))[0])
        hits.append((prediction == b["y"])[b["mask"] > 0])
    return float(np.concatenate(hits).mean())


def test_a_static_model_carries_its_accuracy_at_its_depth_only(tmp_path):
    """A static model of depth 3 always runs 3 steps: no smaller step budget is an operating point."""
    cfg = train_tiny(tmp_path / "run", 10, config="configs/parity.py:static", overrides=("--config.model.depth=3",))
    fn, meta = load_artifact(export_run(tmp_path / "run", tmp_path / "art"))
    (row,) = meta["accuracy_at_budgets"]["accuracy"]
    assert row[:2] == [None, None] and row[2] == pytest.approx(_validation_accuracy(fn, cfg, 3), abs=1e-5)


def test_plain_jax_runs_the_artifact_without_this_package(exported, tmp_path):
    _, art = exported
    x, budget = _inputs(seed=1)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "b.npy", budget)
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_JAX, str(art), str(tmp_path / "x.npy"), str(tmp_path / "b.npy")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the repository: `adaptive` is only importable as an installed package
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    fn, _ = load_artifact(art)
    want = [np.asarray(v).tolist() for v in fn.call(x, budget)]
    assert got[0] == want[0] and got[2] == want[2] and np.allclose(got[1], want[1])


# The README's client, verbatim: a classifier's artifact run by plain JAX.
README_CLIENT = """
import json, sys
import jax, numpy as np
art = sys.argv[1]
meta = json.load(open(f"{art}/meta.json"))
predict = jax.export.deserialize(bytearray(open(f"{art}/model.jaxexport", "rb").read()))
x = np.zeros((2, *meta["input"]["shape"][1:]), np.float32)  # a batch of two examples
budget = np.array([1, meta["caps"]["steps"]], np.int32)  # steps per example
prediction, confidence, steps, experts = predict.call(x, budget)
print(np.asarray(prediction).tolist(), np.asarray(steps).tolist())
"""


def test_the_readmes_plain_jax_client_runs_the_artifact(exported, tmp_path):
    _, art = exported
    guard = "import sys; sys.modules['adaptive'] = None\n"  # any import of the package fails
    proc = subprocess.run(
        [sys.executable, "-c", guard + README_CLIENT, str(art)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    fn, meta = load_artifact(art)
    x = np.zeros((2, *meta["input"]["shape"][1:]), np.float32)
    prediction, _, steps, _ = fn.call(x, np.array([1, meta["caps"]["steps"]], np.int32))
    assert proc.stdout.strip() == f"{np.asarray(prediction).tolist()} {np.asarray(steps).tolist()}"
    assert np.asarray(steps).tolist()[0] == 1  # the budget of one step held
    assert README_CLIENT.strip() in (ROOT / "README.md").read_text()


def test_corrupted_truncated_and_swapped_artifacts_are_refused(exported, tmp_path):
    import shutil

    _, art = exported
    with pytest.raises(ArtifactError, match=r"no function for 2 expert\(s\) per token; its model has no experts"):
        load_artifact(art, experts=2)
    cases = {}
    for name in ("flipped", "truncated", "swapped", "no_meta", "bad_meta"):
        cases[name] = tmp_path / name
        shutil.copytree(art, cases[name])
    blob = bytearray((art / "model.jaxexport").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (cases["flipped"] / "model.jaxexport").write_bytes(bytes(blob))
    (cases["truncated"] / "model.jaxexport").write_bytes((art / "model.jaxexport").read_bytes()[:-100])
    meta = json.loads((art / "meta.json").read_text())
    (cases["swapped"] / "meta.json").write_text(json.dumps({**meta, "sha256": "0" * 64}))
    (cases["no_meta"] / "meta.json").unlink()
    (cases["bad_meta"] / "meta.json").write_text("{not json")
    expected = {
        "flipped": "does not match meta.json's checksum",
        "truncated": "is truncated or padded",
        "swapped": "does not match meta.json's checksum",
        "no_meta": "is not an artifact (no meta.json)",
        "bad_meta": "meta.json is corrupted",
    }
    for name, message in expected.items():
        with pytest.raises(ArtifactError, match=re.escape(message)) as err:
            load_artifact(cases[name])
        assert "\n" not in str(err.value)


def test_export_command(exported, tmp_path):
    workdir, _ = exported
    proc = subprocess.run(
        cli("export", "--workdir", str(workdir), "--out", str(tmp_path / "a")), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "verified against the live model" in proc.stdout and (tmp_path / "a" / "meta.json").exists()
    assert not (tmp_path / "a.partial").exists()
    bad = subprocess.run(
        cli("export", "--workdir", str(tmp_path), "--out", str(tmp_path / "b")), capture_output=True, text=True
    )
    assert bad.returncode == 2 and "is not a training run" in bad.stderr and not (tmp_path / "b").exists()


def _snapshot(folder):
    """Every path under `folder` with its bytes (None for folders): what must survive a refusal."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def test_export_onto_its_own_workdir_is_refused_and_deletes_nothing(exported):
    """`--out` equal to the workdir used to print success after deleting the run."""
    workdir, _ = exported
    before = _snapshot(workdir)
    proc = subprocess.run(
        cli("export", "--workdir", str(workdir), "--out", str(workdir), "--force"), capture_output=True, text=True
    )
    assert proc.returncode == 2 and "is inside the run's workdir" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    with pytest.raises(ArtifactError, match="is inside the run's workdir"):
        export_run(workdir, workdir / "art", force=True)
    with pytest.raises(ArtifactError, match="contains the run's workdir"):
        export_run(workdir, workdir.parent, force=True)
    assert _snapshot(workdir) == before
    assert all((workdir / name).exists() for name in ("checkpoints", "metrics.jsonl", "config.json"))
    assert not (workdir.parent / f"{workdir.name}.partial").exists()


def test_export_onto_a_users_folder_or_file_is_refused_and_deletes_nothing(exported, tmp_path):
    workdir, _ = exported
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(ArtifactError, match="is a folder but not an artifact") as err:
            export_run(workdir, mine, force=force)
        assert "\n" not in str(err.value)
    (tmp_path / "file.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="is a file or a link"):
        export_run(workdir, tmp_path / "file.txt", force=True)
    assert (mine / "notes.txt").read_text() == "mine" and (tmp_path / "file.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "mine"]


def test_re_export_needs_force_and_force_replaces_only_a_previous_artifact(exported, tmp_path):
    workdir, _ = exported
    out = tmp_path / "art"
    out.mkdir()  # an empty folder is fine
    export_run(workdir, out)
    with pytest.raises(ArtifactError, match="is an artifact already; pass --force to replace it"):
        export_run(workdir, out)
    staging = tmp_path / "art.partial"  # what an export killed mid-write leaves: removed
    staging.mkdir()
    (staging / PARTIAL_MARK).touch()
    (staging / "model.jaxexport").write_bytes(b"half")
    (out / "model.jaxexport").write_bytes(b"a corrupted previous artifact is still one to replace")
    export_run(workdir, out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    blobs = ["model.jaxexport", *(f"model-b{b}.jaxexport" for b in COMPACTED_BATCHES)]  # an ACT model's
    assert sorted(p.name for p in out.iterdir()) == sorted(["meta.json", *blobs]) and load_artifact(out)
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    with pytest.raises(ArtifactError, match="holds notes.txt, which is not part of an artifact"):
        export_run(workdir, out, force=True)
    assert _snapshot(out) == before


def test_a_replacement_stopped_part_way_leaves_a_whole_artifact_and_the_next_export_finishes_it(
    exported, tmp_path, monkeypatch
):
    workdir, _ = exported
    out = export_run(workdir, tmp_path / "art")
    old = _snapshot(out)
    rename = Path.rename

    def stops_before_moving_the_new_one_in(self, target):
        if self.name == "art.partial":
            raise OSError(5, "Input/output error")  # as a crash between the two renames would
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", stops_before_moving_the_new_one_in)
    with pytest.raises(ArtifactError, match="cannot finish replacing .*art .*the verified new artifact is at"):
        export_run(workdir, out, force=True)
    monkeypatch.undo()
    # the previous artifact whole beside ART, the verified new one staged: neither lost
    assert _snapshot(tmp_path / "art.replaced") == old and load_artifact(tmp_path / "art.replaced")
    assert (tmp_path / "art.partial" / "meta.json").exists() and not out.exists()
    export_run(workdir, out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"] and load_artifact(out)


def test_an_unwritable_staging_folder_or_an_empty_out_name_is_one_line(tmp_path, monkeypatch):
    assert staged_paths(".") == (Path.cwd(), Path.cwd().with_name(Path.cwd().name + ".partial"))
    with pytest.raises(ArtifactError, match="names no folder"):
        staged_paths("/")

    def full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    staging = tmp_path / "art.partial"
    with pytest.raises(
        ArtifactError, match=r"cannot write the artifact into .*art.partial \(No space left on device\)"
    ):
        write_staging(staging, {"model.jaxexport": b"blob"}, {"format": "x"})
    monkeypatch.undo()
    check_staging(staging)  # still marked partial: the next export removes it
    assert not staging.exists()


@pytest.mark.parametrize("suffix", [".partial", ".replaced"])
def test_a_users_folder_named_like_the_staging_folder_is_never_deleted(exported, tmp_path, suffix):
    """Refused before anything is scored or written, whether named as the staging folder or as
    the aside copy a replacement makes."""
    workdir, _ = exported
    for i, files in enumerate((["notes.txt"], ["model.jaxexport"], ["meta.json"])):
        staging = tmp_path / f"art{i}{suffix}"
        staging.mkdir()
        for name in files:
            (staging / name).write_text("mine")
        before = _snapshot(staging)
        with pytest.raises(ArtifactError, match="is not a partial export"):
            export_run(workdir, tmp_path / f"art{i}")
        assert _snapshot(staging) == before and not (tmp_path / f"art{i}").exists()
