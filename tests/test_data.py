"""The data layer: parity's correctness and statistics, caching, offline datasets, pipelines."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from adaptive import config as config_lib
from adaptive import data
from adaptive.data.builder import OfflineBuilder
from adaptive.data.parity import (
    SPLITS,
    Parity,
    ParityConfig,
    _all_vectors,
    parity_arrays,
    split_arrays,
    split_of,
)
from adaptive.data.pipeline import ShuffledIndexBatches
from adaptive.data.source import Source
from tests.helpers import ROOT


@dataclasses.dataclass(frozen=True)
class Cfg:
    """The duck-typed shape of the data config, so these tests don't depend on adaptive.config."""

    name: str = "parity"
    parity_n: int = 8
    num_train: int = 2000
    num_eval: int = 500
    eval_examples: int = 0
    train_difficulty: tuple[int, int] | None = (1, 4)
    eval_difficulty: tuple[int, int] | None = (5, 8)
    data_dir: str = ""
    seed: int = 0
    image_key: str = "image"
    label_key: str = "label"


@pytest.fixture(scope="module")
def parity_cfg(tmp_path_factory) -> Cfg:
    return Cfg(data_dir=str(tmp_path_factory.mktemp("parity")))


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory) -> str:
    """One cache for the tests that only read datasets: mnist1d takes seconds to generate."""
    return str(tmp_path_factory.mktemp("datasets"))


def read_all(cfg: Cfg, split: str) -> dict[str, np.ndarray]:
    source = data.load_split(cfg, split)
    return source.read_batch(np.arange(len(source)))


def test_eval_examples_thins_a_classifiers_evaluation_splits_too(parity_cfg):
    every, kept = read_all(parity_cfg, "test"), read_all(dataclasses.replace(parity_cfg, eval_examples=7), "test")
    picks = np.linspace(0, len(every["y"]) - 1, 7).round().astype(int)
    for key in ("x", "y", "difficulty"):
        np.testing.assert_array_equal(kept[key], every[key][picks])
    assert len(data.load_split(dataclasses.replace(parity_cfg, eval_examples=7), "train")) == 2000
    sizes = data.prepare(dataclasses.replace(parity_cfg, eval_examples=7)).split_sizes
    assert sizes == {"train": 2000, "validation": 7, "test": 7}  # as load_split serves them


def test_parity_labels_and_difficulty_match_the_inputs(parity_cfg):
    spec = data.prepare(parity_cfg)
    assert spec == data.DatasetSpec(
        input_shape=(8,),
        num_classes=2,
        split_sizes={"train": 2000, "validation": 500, "test": 500},
        has_difficulty=True,
        max_difficulty=8,
    )
    for split, (lo, hi) in [("train", (1, 4)), ("validation", (1, 4)), ("test", (5, 8))]:
        arrays = read_all(parity_cfg, split)
        x = arrays["x"]
        assert x.dtype == np.float32 and x.shape == (spec.split_sizes[split], 8)
        assert set(np.unique(x)) <= {-1.0, 0.0, 1.0}
        np.testing.assert_array_equal(arrays["y"], (x == 1).sum(axis=1) % 2)
        np.testing.assert_array_equal(arrays["difficulty"], (x != 0).sum(axis=1))
        assert arrays["difficulty"].min() == lo and arrays["difficulty"].max() == hi
        assert arrays["y"].dtype == arrays["difficulty"].dtype == np.int32


def test_parity_statistics_are_uniform():
    """Bounds are many standard deviations wide: with a fixed seed they hold or fail for good."""
    arrays = parity_arrays(np.random.default_rng(0), 50_000, 8, (1, 8))
    x, k = arrays["x"], arrays["difficulty"]
    np.testing.assert_allclose(np.bincount(k, minlength=9)[1:] / len(k), 1 / 8, rtol=0.1)
    nonzero = x[x != 0]
    assert abs((nonzero == 1).mean() - 0.5) < 0.02  # Each sign 50/50.
    position_rate = (x != 0).mean(axis=0)  # Non-zero positions spread evenly over the vector.
    np.testing.assert_allclose(position_rate, position_rate.mean(), rtol=0.05)
    assert abs(arrays["y"].mean() - 0.5) < 0.02


def test_parity_config_names_every_parameter_and_checks_ranges():
    config = ParityConfig.create(16, 100_000, 10_000, None, (9, 16), 3)
    assert config.name == "n16_tr1-16_te9-16_s3_100000-10000"
    with pytest.raises(ValueError, match="eval_difficulty"):
        ParityConfig.create(8, 10, 10, None, (5, 9), 0)


def test_preparation_is_deterministic_and_seeded(parity_cfg, tmp_path):
    again = dataclasses.replace(parity_cfg, data_dir=str(tmp_path / "a"))
    other_seed = dataclasses.replace(again, seed=1)
    for split in data.SPLITS:
        first, second = read_all(parity_cfg, split), read_all(again, split)
        for key in first:
            np.testing.assert_array_equal(first[key], second[key])
        assert not np.array_equal(first["x"], read_all(other_seed, split)["x"])
    # Each setting has its own cache folder beside the others.
    assert len(list((tmp_path / "a" / "parity").iterdir())) == 2


def test_second_prepare_reuses_the_files(tmp_path, monkeypatch):
    cfg = Cfg(data_dir=str(tmp_path), num_train=100, num_eval=50)
    spec = data.prepare(cfg)
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.array_record*")}
    assert len(files) == 3

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a prepared dataset")

    monkeypatch.setattr(Parity, "_generate_examples", fail)
    assert data.prepare(cfg) == spec
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.array_record*")} == files


@pytest.mark.parametrize(
    "name, dim, sizes",
    [
        ("digits", 64, {"train": 1297, "validation": 250, "test": 250}),
        ("mnist1d", 40, {"train": 3500, "validation": 500, "test": 1000}),
    ],
)
def test_offline_datasets(shared_dir, name, dim, sizes):
    cfg = Cfg(name=name, data_dir=shared_dir)
    spec = data.prepare(cfg)
    assert spec == data.DatasetSpec((dim,), 10, sizes, has_difficulty=False, max_difficulty=0)
    train = read_all(cfg, "train")
    assert train["x"].shape == (sizes["train"], dim) and train["x"].dtype == np.float32
    assert set(np.unique(train["y"])) == set(range(10))
    assert (train["difficulty"] == -1).all()
    if name == "digits":
        assert train["x"].min() == 0.0 and train["x"].max() == 1.0


@pytest.mark.parametrize(
    "cfg",
    [
        Cfg(),  # train and validation on difficulty 1..4 of 8, test on 5..8
        Cfg(parity_n=16, train_difficulty=(1, 3), eval_difficulty=(1, 3), num_train=5000, num_eval=1000),
        Cfg(parity_n=4, train_difficulty=None, eval_difficulty=None, num_train=500, num_eval=100, seed=1),
        Cfg(name="digits"),
        Cfg(name="mnist1d"),
    ],
    ids=["parity", "parity-easy", "parity-n4", "digits", "mnist1d"],
)
def test_splits_are_disjoint_by_content(shared_dir, cfg):
    """No input of one split is an input of another: evals on validation and test score unseen inputs."""
    cfg = dataclasses.replace(cfg, data_dir=shared_dir)
    rows = {split: {row.tobytes() for row in read_all(cfg, split)["x"]} for split in data.SPLITS}
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not rows[a] & rows[b], f"{a} and {b} share inputs"
    assert all(rows.values())


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_every_parity_vector_belongs_to_one_split_and_each_split_can_be_drawn(n):
    """Each split owns some vectors of every difficulty and, where there are 3 or more of each,
    of every label: any difficulty range can be drawn for any split and any seed."""
    for seed in range(4):
        for k in range(1, n + 1):
            x = _all_vectors(n, k)
            owner = split_of(x, seed)
            np.testing.assert_array_equal(owner, split_of(x[::-1], seed)[::-1])  # a function of content
            labels = (x == 1).sum(axis=1) % 2 if len(x) >= 6 else np.zeros(len(x), int)
            for label in np.unique(labels):
                assert set(owner[labels == label]) == {0, 1, 2}, (n, k, seed, label)


def test_parity_splits_keep_uniform_difficulty_and_balanced_labels():
    """Drawing each split from its own vectors keeps k uniform and labels balanced, easy ones included."""
    config = ParityConfig.create(8, 20_000, 8_000, None, (1, 2), 0)
    for split in SPLITS:
        arrays = split_arrays(config, split)
        y, k = arrays["y"], arrays["difficulty"]
        lo, hi = config.split_ranges()[split][1]
        np.testing.assert_allclose(np.bincount(k, minlength=hi + 1)[lo:] / len(k), 1 / (hi - lo + 1), rtol=0.15)
        assert abs(y.mean() - 0.5) < 0.03, split


def test_a_split_that_owns_no_vector_of_a_difficulty_is_a_clear_error():
    with pytest.raises(ValueError, match="no kept vector of difficulty 1 .parity_n=4. in"):
        parity_arrays(np.random.default_rng(0), 5, 4, (1, 1), keep=lambda x: np.zeros(len(x), bool))


def test_a_redraw_that_succeeds_in_its_last_round_is_kept_not_an_error(monkeypatch):
    from adaptive.data import parity

    monkeypatch.setattr(parity, "_MAX_REDRAWS", 1)
    rounds = []

    def keep(x):  # rejects every vector of the first draw, keeps every one of the redraw (the last round)
        rounds.append(len(x))
        return np.full(len(x), len(rounds) > 1)

    arrays = parity_arrays(np.random.default_rng(0), 5, 4, (1, 2), keep=keep)
    assert rounds == [5, 5] and arrays["x"].shape == (5, 4)


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(count)]


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for left, right in zip(a, b, strict=True):
        assert left.keys() == right.keys()
        for key in left:
            np.testing.assert_array_equal(left[key], right[key])


def test_train_iterator_resumes_bitwise(parity_cfg):
    # 300 does not divide 2000: the 12 batches straddle an epoch boundary.
    iterator = data.train_iterator(parity_cfg, batch_size=300, seed=4)
    first = take(iterator, 7)
    assert {k: (v.shape, v.dtype) for k, v in first[0].items()} == {
        "x": ((300, 8), np.float32),
        "y": ((300,), np.int32),
        "difficulty": ((300,), np.int32),
    }
    state = json.loads(json.dumps(iterator.get_state()))  # As a checkpoint stores it.
    rest = take(iterator, 5)
    resumed = data.train_iterator(parity_cfg, batch_size=300, seed=4)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 5), rest)


def test_train_iterator_is_seeded(parity_cfg):
    a = take(data.train_iterator(parity_cfg, 64, seed=0), 3)
    assert_same_batches(a, take(data.train_iterator(parity_cfg, 64, seed=0), 3))
    b = take(data.train_iterator(parity_cfg, 64, seed=1), 3)
    assert not np.array_equal(a[0]["x"], b[0]["x"])


def test_each_epoch_is_a_fresh_permutation():
    batches = ShuffledIndexBatches(num_examples=10, batch_size=4, seed=0)
    stream = np.concatenate([batches[i] for i in range(5)])  # 20 indices: exactly two epochs.
    first, second = stream[:10], stream[10:]
    assert sorted(first) == sorted(second) == list(range(10))
    assert not np.array_equal(first, second)


def test_eval_batches_cover_each_example_once_in_order(parity_cfg):
    batches = list(data.eval_batches(parity_cfg, "validation", batch_size=64))
    assert len(batches) == 8  # 500 = 7 * 64 + 52
    for batch in batches:
        assert batch["x"].shape == (64, 8) and batch["mask"].shape == (64,)
        assert batch["mask"].dtype == np.float32
    last = batches[-1]  # padded with copies of its own rows (zero rows would crowd one expert)
    assert last["mask"].sum() == 52 and np.array_equal(last["x"][52:], last["x"][:12])
    mask = np.concatenate([b["mask"] for b in batches]).astype(bool)
    expected = read_all(parity_cfg, "validation")
    for key, value in expected.items():
        np.testing.assert_array_equal(np.concatenate([b[key] for b in batches])[mask], value)


def test_lazy_and_in_memory_sources_agree(parity_cfg):
    tfds_source = Parity(
        config=ParityConfig.create(8, 2000, 500, (1, 4), (5, 8), 0),
        data_dir=parity_cfg.data_dir,
        file_format="array_record",
    ).as_data_source(split="test")
    lazy = Source(tfds_source, "x", "y", in_memory=False)
    eager = Source(tfds_source, "x", "y", in_memory=True)
    assert not lazy.in_memory and eager.in_memory and len(lazy) == len(eager) == 500
    indices = np.random.default_rng(0).permutation(500)[:50]
    assert_same_batches([lazy.read_batch(indices)], [eager.read_batch(indices)])
    assert_same_batches([lazy[7]], [eager[-493]])


class TinyImages(OfflineBuilder, skip_registration=True):
    """Stands in for a TFDS dataset prepared elsewhere: uint8 images under the usual keys."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Tensor(shape=(2, 3, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=3),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6), "test": self._generate_examples(2)}

    def _generate_examples(self, num):
        for i in range(num):
            yield i, {"image": np.full((2, 3, 1), 51 * (i % 6), np.uint8), "label": i % 3}


def test_a_prepared_tfds_dataset_is_read_from_data_dir(tmp_path):
    """TinyImages has train and test only (as mnist and cifar10 do): validation is carved from
    the end of train, which leaves it out."""
    TinyImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    cfg = Cfg(name="tiny_images", data_dir=str(tmp_path))
    spec = data.prepare(cfg)
    assert spec == data.DatasetSpec((6,), 3, {"train": 5, "validation": 1, "test": 2}, False, 0)
    train, validation = read_all(cfg, "train"), read_all(cfg, "validation")
    assert train["x"].dtype == np.float32 and train["x"].shape == (5, 6) and validation["x"].shape == (1, 6)
    together = np.concatenate([train["x"][:, 0], validation["x"][:, 0]])
    assert sorted(together) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])  # disjoint, and all of train
    assert (train["difficulty"] == -1).all()


def test_data_errors_are_config_errors_in_one_line(tmp_path):
    """What the command line prints in one line (adaptive.cli.main catches ConfigError)."""
    from adaptive.config import ConfigError
    from adaptive.data.datasets import _carved_split

    assert _carved_split("no_test", "validation", {"train", "validation"}) == "validation"  # trains; no test
    with pytest.raises(ConfigError, match="dataset 'no_test' has no 'test' split; it has \\['train', 'validation'\\]"):
        _carved_split("no_test", "test", {"train", "validation"})
    with pytest.raises(ConfigError, match="has no 'foo' split"):
        _carved_split("images", "foo", {"train", "test"})
    cfg = config_lib.load(f"{ROOT}/configs/lm.py:tiny", [f"--config.data.text_dir={tmp_path / 'none'}"])
    with pytest.raises(ConfigError, match="data.text_dir: .* is not a folder"):
        data.prepare(cfg.data)
    (tmp_path / "empty").mkdir()
    cfg = config_lib.load(f"{ROOT}/configs/lm.py:tiny", [f"--config.data.text_dir={tmp_path / 'empty'}"])
    with pytest.raises(ConfigError, match="data.text_dir: no .py files under"):
        data.prepare(cfg.data)
    with pytest.raises(ConfigError, match="data.name='my_images' is not a sequence task \\(pystdlib, addition\\)"):
        config_lib.load(f"{ROOT}/configs/lm.py:tiny", ["--config.data.name=my_images"])


@pytest.mark.parametrize("make_folder", [False, True])
def test_an_unprepared_dataset_is_a_fast_one_line_error(tmp_path, make_folder):
    if make_folder:  # A folder that holds no prepared dataset: TFDS itself must say so.
        (Path(tmp_path) / "no_such_dataset_xyz").mkdir()
    cfg = Cfg(name="no_such_dataset_xyz", data_dir=str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="not prepared.*nothing can be downloaded") as error:
        data.prepare(cfg)
    assert "\n" not in str(error.value)
    assert time.perf_counter() - start < 30  # Guards against TFDS's minutes of download retries.
