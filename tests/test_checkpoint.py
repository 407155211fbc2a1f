"""Checkpoints: checksums catch flipped bits, unusable steps are skipped or set aside, a save that
fails on a full disk leaves the previous checkpoint, and old checkpoints without a checksum load."""

import errno
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from adaptive.workdir.checkpoint import Checkpointer, CheckpointError
from adaptive.workdir.runinfo import WorkdirError


def _state(step: int) -> dict:
    key = jax.random.key(step)
    return {
        "step": jnp.asarray(step, jnp.int32),
        "params": {"w": jax.random.normal(key, (64, 64)), "b": jnp.full((64,), float(step))},
    }


def _saved(tmp_path: Path, steps=(1, 2)) -> Checkpointer:
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=5)
    for step in steps:
        ckpt.save(step, _state(step), {"next_index": step})
    return ckpt


def flip_bits(step_folder: Path) -> Path:
    """Flips 3 bits in the middle of the biggest file of a checkpoint's arrays (orbax still reads
    it: only a checksum notices)."""
    # Array bytes live in the data folders (`d/`) of orbax's ocdbt store; the metadata beside
    # them (_METADATA, _sharding) is JSON that a flipped bit can make unreadable, not corrupt.
    files = [f for f in (step_folder / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
    biggest = max(files, key=lambda f: f.stat().st_size)
    data = bytearray(biggest.read_bytes())
    middle = len(data) // 2
    for offset, bit in ((0, 1), (7, 4), (13, 6)):
        data[middle + offset] ^= 1 << bit
    biggest.write_bytes(bytes(data))
    return biggest


def _equal(a, b) -> None:
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, a), jax.tree.map(np.asarray, b))


def test_a_flipped_bit_in_the_newest_checkpoint_is_caught_and_the_previous_one_used(tmp_path, caplog):
    ckpt = _saved(tmp_path)
    flip_bits(ckpt.directory / "2")
    with caplog.at_level(logging.WARNING, logger="adaptive.workdir.checkpoint"):
        step, state, data_state = ckpt.restore_latest(_state(0))
    assert step == 1 and data_state == {"next_index": 1}
    _equal(state, _state(1))
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {ckpt.directory / '2'} is corrupt (its content does not match its checksum); using step 1"
    ]
    assert ckpt.steps() == [1, 2]  # a reader renames nothing
    with pytest.raises(CheckpointError, match=r"checkpoint .*/2 is corrupt"):
        ckpt.restore(2, _state(0))  # asked for by number: refused in one line
    ckpt.close()


def test_when_no_checkpoint_is_usable_the_error_names_each_and_nothing_is_set_aside(tmp_path):
    ckpt = _saved(tmp_path)
    for step in (1, 2):
        flip_bits(ckpt.directory / str(step))
    with pytest.raises(
        CheckpointError, match=r"no checkpoint in .* can be restored: checkpoint .*/2 is corrupt .*/1 is"
    ):
        ckpt.restore_latest(_state(0), set_aside=True)
    assert sorted(p.name for p in ckpt.directory.iterdir()) == ["1", "2"]
    ckpt.close()


@pytest.mark.parametrize("part", ["state/_METADATA", "state/manifest.ocdbt", "data/metadata"])
def test_a_step_missing_a_file_orbax_needs_is_named_damaged_and_the_previous_one_used(tmp_path, caplog, part):
    """orbax names a missing tree metadata a "pytree structure error"; the step is named, with
    the file it lacks, and the older step resumes."""
    ckpt = _saved(tmp_path)
    target = ckpt.directory / "2" / part
    target.unlink()
    with caplog.at_level(logging.WARNING, logger="adaptive.workdir.checkpoint"):
        step, state, _ = ckpt.restore_latest(_state(0))
    assert step == 1
    _equal(state, _state(1))
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {ckpt.directory / '2'} is damaged: {part} missing; using step 1"
    ]
    if part != "state/manifest.ocdbt":  # a params-only read needs neither of the others
        _equal(ckpt.restore_params(2, _state(0)["params"]), _state(2)["params"])
    ckpt.close()


def test_training_sets_a_corrupt_step_aside_then_saves_that_step_again(tmp_path, caplog):
    ckpt = _saved(tmp_path)
    damaged = flip_bits(ckpt.directory / "2").read_bytes()
    with caplog.at_level(logging.WARNING, logger="adaptive.workdir.checkpoint"):
        step, _, _ = ckpt.restore_latest(_state(0), set_aside=True)
    (aside,) = ckpt.directory.glob("corrupt-2-*")
    assert step == 1 and ckpt.steps() == [1]
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {ckpt.directory / '2'} is corrupt (its content does not match its checksum); "
        f"moved it to {aside}, resuming from step 1"
    ]
    assert damaged in [f.read_bytes() for f in aside.rglob("*") if f.is_file()]  # kept as it was
    ckpt.save(2, _state(2), {"next_index": 2})
    assert ckpt.steps() == [1, 2]
    _equal(ckpt.restore(2, _state(0))[0], _state(2))
    ckpt.close()
    again = Checkpointer(tmp_path / "checkpoints", keep=5)
    assert again.steps() == [1, 2] and again.restore_latest(_state(0))[0] == 2  # not a step for orbax
    again.close()


def test_a_checkpoint_saved_before_checksums_restores_with_a_warning(tmp_path, caplog):
    directory = tmp_path / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=3, enable_async_checkpointing=False, create=True)
    with ocp.CheckpointManager(directory, options=options) as manager:  # the layout of earlier versions
        args = ocp.args.Composite(state=ocp.args.StandardSave(_state(3)), data=ocp.args.JsonSave({"next_index": 3}))
        manager.save(3, args=args)
    ckpt = Checkpointer(directory, keep=3)
    with caplog.at_level(logging.WARNING, logger="adaptive.workdir.checkpoint"):
        step, state, data_state = ckpt.restore_latest(_state(0))
    assert step == 3 and data_state == {"next_index": 3}
    _equal(state, _state(3))
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {directory.resolve() / '3'} has no checksum (saved by an older version); restored unverified"
    ]
    ckpt.close()


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # how tensorstore reports a full disk while writing the arrays
        ValueError("RESOURCE_EXHAUSTED: Error writing local file \"x\": No space left on device [os_error_code='28']"),
    ],
)
def test_a_save_that_fails_on_a_full_disk_leaves_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    ckpt = _saved(tmp_path, steps=(1,))

    async def full_disk(self, item, directory):
        raise failure

    with monkeypatch.context() as patch:
        patch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full_disk)
        with pytest.raises(WorkdirError) as raised:
            ckpt.save(2, _state(2), {"next_index": 2})
    assert str(raised.value) == f"cannot write {ckpt.directory / '2'}: No space left on device"
    assert [p.name for p in ckpt.directory.iterdir() if "tmp" in p.name]  # orbax's unfinished folder stays
    ckpt.close()
    reopened = Checkpointer(tmp_path / "checkpoints", keep=5)
    assert reopened.steps() == [1]
    _equal(reopened.restore_latest(_state(0))[1], _state(1))
    reopened.save(2, _state(2), {"next_index": 2})  # with room again, the same step saves
    assert reopened.restore_latest(_state(0))[0] == 2
    reopened.close()


def test_params_only_restore_reads_the_params_alone_and_checks_their_own_checksum(tmp_path, caplog):
    ckpt = _saved(tmp_path)
    params = ckpt.restore_params(2, _state(0)["params"])
    assert set(params) == {"w", "b"}  # the params subtree only: no step counter, no optimizer
    _equal(params, _state(2)["params"])
    flip_bits(ckpt.directory / "2")  # every array byte here but one scalar is a parameter
    with caplog.at_level(logging.WARNING, logger="adaptive.workdir.checkpoint"):
        step, params = ckpt.restore_latest_params(_state(0)["params"])
    assert step == 1
    _equal(params, _state(1)["params"])
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {ckpt.directory / '2'} is corrupt (its content does not match its checksum); using step 1"
    ]
    ckpt.close()


def test_inference_restores_a_run_without_its_optimizer_state(tmp_path):
    """A run's parameters load for inference even when its optimizer state could not be read:
    load_run never asks for it (the partial restore reads the params subtree only)."""
    import shutil

    from adaptive.inference.restore import load_run
    from adaptive.training.resume import restore_state
    from tests.helpers import train_tiny

    train_tiny(tmp_path / "run", 3)
    run, state = restore_state(tmp_path / "run")
    step_folder = tmp_path / "run" / "checkpoints" / str(run.step)
    metadata = step_folder / "state" / "_METADATA"
    text = metadata.read_text()
    assert '"opt_state"' in text
    shutil.copy(metadata, tmp_path / "metadata.bak")
    metadata.write_text(text.replace('"opt_state"', '"opt_state_gone"'))  # the optimizer's arrays, unlisted
    with pytest.raises(Exception):  # noqa: B017 - the full train state no longer restores
        restore_state(tmp_path / "run", step=run.step)
    loaded = load_run(tmp_path / "run", step=run.step)
    _equal(loaded.params, state["params"])


@pytest.mark.parametrize("older", ["no checksum", "a checksum of the whole state only"])
def test_params_of_an_older_checkpoint_are_read_with_a_warning(tmp_path, caplog, older):
    directory = tmp_path / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=3, enable_async_checkpointing=False, create=True)
    items = {"state": ocp.args.StandardSave(_state(3)), "data": ocp.args.JsonSave({"next_index": 3})}
    if older != "no checksum":
        items["checksum"] = ocp.args.JsonSave({"sha256": "0" * 64})
    with ocp.CheckpointManager(directory, options=options) as manager:  # the layouts of earlier versions
        manager.save(3, args=ocp.args.Composite(**items))
    ckpt = Checkpointer(directory, keep=3, create=False)
    with caplog.at_level(logging.WARNING, logger="adaptive.workdir.checkpoint"):
        step, params = ckpt.restore_latest_params(_state(0)["params"])
    assert step == 3
    _equal(params, _state(3)["params"])
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {directory.resolve() / '3'} has no checksum of its params "
        "(saved by an older version); read unverified"
    ]
    ckpt.close()


def test_a_restore_error_names_its_root_cause_not_a_repr():
    """orbax wraps a TensorStore failure in a line that ends in a bound method's repr; the one
    line a user reads names what the root cause says (which file, what is wrong with it)."""
    from adaptive.workdir.checkpoint import _first_line

    try:
        try:
            raise ValueError('OUT_OF_RANGE: Error reading "params.kernel/0.0": byte range [3833, 5900) is not valid')
        except ValueError as cause:
            raise Exception(
                "Encountered error while reading array index: (slice(0, 17, 1),). See full TensorStore details: "
                "<bound method pybind11_detail_function_record.spec of TensorStore({\n 'base': {}})>"
            ) from cause
    except Exception as e:
        line = _first_line(e)
    assert line == (
        "Encountered error while reading array index: (slice(0, 17, 1),).: "
        'OUT_OF_RANGE: Error reading "params.kernel/0.0": byte range [3833, 5900) is not valid'
    )
    assert _first_line(ValueError("plain\nmore")) == "plain"


RESTORE_INTO_OTHER_SHAPES = """
import sys
import numpy as np
from adaptive.workdir.checkpoint import Checkpointer, CheckpointError
ckpt = Checkpointer(sys.argv[1], keep=2)
ckpt.save(1, {"params": {f"w{i}": np.full((17, 32), i, np.float32) for i in range(12)}}, {"i": 0})
try:
    ckpt.restore_latest({"params": {f"w{i}": np.zeros((17, 64), np.float32) for i in range(12)}})
except CheckpointError as e:
    print(e)
import logging
try:
    raise ValueError("not orbax")
except ValueError:
    logging.getLogger("absl").exception("mine")
"""


def test_a_failed_restore_says_only_its_one_line_until_exit(tmp_path):
    """Orbax leaves the reads of a failed restore in flight: they end (or are collected) after the
    call, up to the interpreter's exit, each with a traceback or a warning on stderr. Other code's
    errors still show after it (the filters are orbax's and tensorstore's)."""
    import subprocess
    import sys

    for attempt in range(3):  # what is left in flight varies from run to run
        proc = subprocess.run(
            [sys.executable, "-c", RESTORE_INTO_OTHER_SHAPES, str(tmp_path / str(attempt))],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.stdout.startswith("no checkpoint in ") and "is not compatible with the stored shape" in proc.stdout
        noise = ("Traceback", "Exception ignored", "never awaited", "Event loop is closed", "ERROR")
        mine = "ERROR:absl:mine\nTraceback (most recent call last):\n"  # other code's error after it: shown
        assert mine in proc.stderr and "\nValueError: not orbax\n" in proc.stderr, proc.stderr
        rest = proc.stderr.replace(mine, "").replace("ValueError: not orbax", "")
        assert not [line for line in rest.splitlines() if any(n in line for n in noise)], proc.stderr


def test_a_checkpoint_that_lost_its_checksum_among_others_that_have_one_is_not_trusted(tmp_path):
    """An older version saved no checksum; a step without one after steps with one lost it (a
    damaged copy), and its arrays could hold anything: the next older step is used."""
    import shutil

    ckpt = _saved(tmp_path, steps=(1, 2, 3))
    shutil.rmtree(tmp_path / "checkpoints" / "3" / "checksum")
    step, state, _ = ckpt.restore_latest(_state(0))
    assert step == 2
    _equal(state, _state(2))
    with pytest.raises(CheckpointError, match="checkpoint .*/3 has lost its checksum \\(the run's earlier checkpoints"):
        ckpt.restore(3, _state(0))
    with pytest.raises(CheckpointError, match="/3 has lost its checksum"):
        ckpt.restore_params(3, _state(0)["params"])
    # the first step without one, later ones with: a run an older version began (it stays readable)
    shutil.rmtree(tmp_path / "checkpoints" / "1" / "checksum")
    assert ckpt.restore(1, _state(0))[1] == {"next_index": 1}
    ckpt.close()


def test_a_reader_whose_steps_a_trainer_rotated_out_reads_the_newer_ones(tmp_path):
    """`adaptive eval` beside a running trainer that keeps few checkpoints: the steps the reader
    listed are removed before it reads them, and newer ones saved; it lists them anew."""
    import shutil

    trainer = _saved(tmp_path, steps=(1, 2))
    reader = Checkpointer(tmp_path / "checkpoints", keep=5, create=False)
    assert reader.steps() == [1, 2]
    for step in (3, 4):
        trainer.save(step, _state(step), {"next_index": step})
    for gone in (1, 2):
        shutil.rmtree(tmp_path / "checkpoints" / str(gone))
    step, state, _ = reader.restore_latest(_state(0))
    assert step == 4
    _equal(state, _state(4))
    shutil.rmtree(tmp_path / "checkpoints" / "3")
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    with pytest.raises(CheckpointError, match="checkpoint .*/4 is gone \\(removed since it was listed\\)$"):
        reader.restore(4, _state(0))  # said as gone, not as damaged
    assert reader.restore_latest(_state(0)) is None  # listed anew: none left
    trainer.close()
    reader.close()
