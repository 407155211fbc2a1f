"""The sequence tasks: the byte vocabulary, `addition` and `pystdlib` (real builders, read back)."""

from __future__ import annotations

import dataclasses
import platform

import numpy as np
import pytest

from adaptive import config as config_lib
from adaptive import data
from adaptive.data import addition, byte_vocab, pystdlib
from adaptive.nn.models import build_model
from tests.helpers import ROOT


@dataclasses.dataclass(frozen=True)
class Cfg:
    name: str = "addition"
    parity_n: int = 8
    num_train: int = 300
    num_eval: int = 100
    eval_examples: int = 0
    train_difficulty: tuple[int, int] | None = None
    eval_difficulty: tuple[int, int] | None = None
    data_dir: str = ""
    seed: int = 0
    image_key: str = "image"
    label_key: str = "label"
    window: int = 16
    text_dir: str = ""
    addition_digits: int = 5


def read_all(cfg, split):
    source = data.load_split(cfg, split)
    return source.read_batch(np.arange(len(source)))


def test_byte_vocab_round_trips_and_classes_tokens():
    text = b"def f(x_1):\n    return 42"
    tokens = byte_vocab.encode(text)
    assert tokens[0] == byte_vocab.BOS and tokens[-1] == byte_vocab.EOS and byte_vocab.decode(tokens) == text
    classes = [
        byte_vocab.TOKEN_CLASSES[c] for c in byte_vocab.token_class(byte_vocab.encode(b"a_ 9(", bos=False, eos=False))
    ]
    assert classes == ["identifier", "identifier", "whitespace", "digit", "punctuation"]
    assert byte_vocab.TOKEN_CLASSES[byte_vocab.token_class(np.array([byte_vocab.EOS]))[0]] == "other"


def _places_read(a: str, b: str, place: int) -> int:
    """Independent of the module: walk down from `place` until the carry into it is decided."""
    digits = [(int(x), int(y)) for x, y in zip(a[::-1], b[::-1], strict=True)]
    read = 0
    for below in range(place - 1, -1, -1):
        read += 1
        if sum(digits[below]) != 9:
            break
    return read


def test_addition_sums_and_carry_difficulties_are_right(tmp_path):
    cfg = Cfg(data_dir=str(tmp_path))
    spec = data.prepare(cfg)
    length = addition.sequence_length(5) - 1
    assert spec == data.DatasetSpec((length,), 258, {"train": 300, "validation": 100, "test": 100}, True, 5, True)
    seen = {}
    for split in data.SPLITS:
        batch = read_all(cfg, split)
        assert batch["x"].dtype == batch["y"].dtype == np.int32 and batch["x"].shape == (len(batch["x"]), length)
        np.testing.assert_array_equal(batch["x"][:, 1:], batch["y"][:, :-1])  # y is x shifted by one
        for x, y, difficulty in zip(batch["x"], batch["y"], batch["difficulty"], strict=True):
            text = byte_vocab.decode(np.concatenate([x[:1], y])).decode()
            left, answer = text.split("=")
            a, b = left.split("+")
            assert int(a) + int(b) == int(answer) and len(answer) == 6
            expected = [_places_read(a, b, place) for place in range(5, -1, -1)]  # answer, most significant first
            assert difficulty[difficulty >= 0].tolist() == expected
            assert (difficulty >= 0).sum() == 6 and (difficulty[-7:-1] >= 0).all()  # only the answer's targets
            seen.setdefault((a, b), set()).add(split)
    assert all(len(splits) == 1 for splits in seen.values())  # no pair in two splits
    chains = np.concatenate([read_all(cfg, "train")["difficulty"].ravel()])
    assert set(range(0, 4)) <= set(chains[chains >= 0].tolist())  # the bias makes chains of several places


def _corpus(root):
    rng = np.random.default_rng(0)
    for i in range(60):
        path = root / "pkg" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"# module {i}\n".encode() + bytes(rng.integers(32, 127, rng.integers(20, 200)).tolist()))
    (root / "site-packages").mkdir()
    (root / "site-packages" / "installed.py").write_text("not the library\n")
    (root / "pkg" / "notes.txt").write_text("not python\n")


# Windows are stored many to a record: the default packs this corpus's splits into one record
# each; 40 tokens a record (2 windows of 17) gives many, the last of each split padded.
@pytest.mark.parametrize("tokens_per_record", [pystdlib.TOKENS_PER_RECORD, 40])
def test_pystdlib_splits_by_file_and_every_byte_is_a_target_once(tmp_path, monkeypatch, tokens_per_record):
    monkeypatch.setattr(pystdlib, "TOKENS_PER_RECORD", tokens_per_record)
    root = tmp_path / "lib"
    _corpus(root)
    cfg = Cfg(name="pystdlib", data_dir=str(tmp_path / "data"), text_dir=str(root), window=16)
    spec = data.prepare(cfg)
    assert spec.sequence and spec.input_shape == (16,) and spec.num_classes == 258 and not spec.has_difficulty
    files = pystdlib.source_files(root)
    assert len(files) == 60  # site-packages and non-.py files left out
    for split in data.SPLITS:
        mine = [p for p in files if pystdlib.split_of(p.relative_to(root).as_posix()) == split]
        assert mine, f"no file in {split}"
        stream = np.concatenate([byte_vocab.encode(p.read_bytes()) for p in mine])
        batch = read_all(cfg, split)
        # in order, each window starts where the last ended: the targets are the stream, once each
        targets = batch["y"].ravel()
        np.testing.assert_array_equal(np.concatenate([stream[:1], targets]), stream[: len(targets) + 1])
        assert len(stream) - 1 - len(targets) < 16  # only the last partial window is dropped
        assert (batch["difficulty"] == -1).all()
        assert spec.split_sizes[split] == len(batch["x"])
        # read lazily, as a split too big for memory is: any windows, in any order, repeated
        records = pystdlib.WindowRecords(data.datasets._builder(cfg).as_data_source(split=split), split)
        picks = np.random.default_rng(0).choice(len(records), 7)
        got = np.stack([window["tokens"] for window in records.__getitems__(picks)])
        np.testing.assert_array_equal(got[:, 1:], batch["y"][picks])
        with pytest.raises(IndexError, match="window indices"):
            records.__getitems__([len(records)])


def test_eval_examples_keeps_evaluation_windows_spread_over_the_split_and_all_of_train(tmp_path, monkeypatch):
    monkeypatch.setattr(pystdlib, "TOKENS_PER_RECORD", 30)  # 3 windows of 9 a record: thinning picks across records
    root = tmp_path / "lib"
    _corpus(root)
    full = Cfg(name="pystdlib", data_dir=str(tmp_path / "data"), text_dir=str(root), window=8)
    for split in data.SPLITS:
        every = read_all(full, split)["x"]
        for count in (1, 5, len(every) - 1, len(every), len(every) + 3):
            kept = read_all(dataclasses.replace(full, eval_examples=count), split)["x"]
            if split == "train" or count >= len(every):
                np.testing.assert_array_equal(kept, every)  # training data is never thinned
                continue
            picks = np.linspace(0, len(every) - 1, count).round().astype(int)
            np.testing.assert_array_equal(kept, every[picks])  # in order, first and last included
    with pytest.raises(config_lib.ConfigError, match="'data.eval_examples'"):
        config_lib.load(str(ROOT / "configs/parity.py:tiny"), ["--config.data.eval_examples=-1"])


def test_pystdlib_records_its_source_and_notes_another_python(tmp_path):
    root = tmp_path / "lib"
    _corpus(root)
    cfg = Cfg(name="pystdlib", data_dir=str(tmp_path / "data"), text_dir=str(root), window=32)
    data.prepare(cfg)
    builder = data.datasets._builder(cfg)
    meta = dict(builder.info.metadata)
    assert meta["python_version"] == platform.python_version() and meta["files"] == 60
    assert meta["files_sha256"] == pystdlib.files_sha256(root, pystdlib.source_files(root))
    assert pystdlib.version_note(meta) is None
    other = {**meta, "python_version": "3.99.0"}
    note = pystdlib.version_note(other)
    assert "3.99.0" in note and platform.python_version() in note and "\n" not in note
    assert pystdlib.version_note(other, text_dir=str(root)) is None  # a user's folder: no library version


def test_a_corpus_whose_files_changed_is_prepared_again_and_says_what_it_read(tmp_path, caplog):
    root = tmp_path / "lib"
    _corpus(root)
    cfg = Cfg(name="pystdlib", data_dir=str(tmp_path / "data"), text_dir=str(root), window=16)
    with caplog.at_level("INFO", logger="adaptive.data.pystdlib"):
        before = data.datasets._builder(cfg)
    (said,) = [r.getMessage() for r in caplog.records if r.name == "adaptive.data.pystdlib"]
    assert (
        said.startswith(f"preparing data.text_dir {root}: 60 .py files (train ")
        and "1 other files are not read" in said
    )
    edited = next(
        p for p in pystdlib.source_files(root) if pystdlib.split_of(p.relative_to(root).as_posix()) == "train"
    )
    edited.write_bytes(edited.read_bytes() + b"\n# an edit\n")
    assert data.datasets._builder(cfg).builder_config.name == before.builder_config.name  # this process: as it began
    pystdlib.listing_fingerprint.cache_clear()  # a new process
    after = data.datasets._builder(cfg)
    assert after.builder_config.name != before.builder_config.name  # a cache of its own: the old one is kept
    assert dict(after.info.metadata)["files_sha256"] == pystdlib.files_sha256(root, pystdlib.source_files(root))
    assert dict(before.info.metadata)["files_sha256"] != dict(after.info.metadata)["files_sha256"]


def test_a_corpus_too_small_for_every_split_is_refused_in_one_line(tmp_path):
    root = tmp_path / "few"
    root.mkdir()
    for name in ("a.py", "b.py"):
        (root / name).write_text("x = 1\n" * 20)
    cfg = Cfg(name="pystdlib", data_dir=str(tmp_path / "data"), text_dir=str(root), window=16)
    with pytest.raises(
        config_lib.ConfigError, match=r"data.text_dir: .*'s 2 .py files give no window of 16 bytes"
    ) as e:
        data.prepare(cfg)
    assert "files by split: train" in str(e.value) and "\n" not in str(e.value)


def test_the_interpreters_standard_library_is_there_to_read():
    files = pystdlib.source_files(pystdlib.stdlib_root())
    assert len(files) > 500 and sum(p.stat().st_size for p in files) > 5_000_000
    assert not any("site-packages" in p.parts for p in files)


def test_a_classifier_refuses_a_sequence_task(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="sequence task"):  # at load, in one line
        config_lib.load(str(ROOT / "configs/parity.py"), ["--config.data.name=addition"])
    cfg = config_lib.load(str(ROOT / "configs/parity.py"))
    spec = data.prepare(Cfg(data_dir=str(tmp_path)))  # whatever reaches build_model is checked again
    with pytest.raises(ValueError, match="sequence task"):
        build_model(cfg, spec)


def test_windows_overlap_by_one_token():
    out = pystdlib.windows(np.arange(10), 3)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
    assert pystdlib.windows(np.arange(3), 3).shape == (0, 4)
