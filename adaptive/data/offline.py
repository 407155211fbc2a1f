"""Real classification data that needs no download: scikit-learn's digits and MNIST-1D.

Both are small enough to hold in memory while they are written; the split seed (in the config
name) decides which examples go to validation, so changing it gives a new cache. Splits are
disjoint by content, not only by index: of inputs that are equal as stored (float32), only the
first is kept, and an mnist1d training input equal to a test input is dropped. Neither source
holds such duplicates today, so this drops nothing and the prepared data are those of 1.0.0.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from adaptive.data.builder import OfflineBuilder

_DIGITS_HELD_OUT = 250  # digits: examples in validation and in test each (1797 in all).
_MNIST1D_VALIDATION = 500  # mnist1d: carved from its 4000 training examples.


@dataclasses.dataclass(kw_only=True)
class SplitSeedConfig(tfds.core.BuilderConfig):
    """The only parameter of these builders: the seed of the train/validation(/test) split."""

    seed: int

    @classmethod
    def create(cls, seed: int) -> SplitSeedConfig:
        return cls(name=f"s{seed}", seed=seed)


class _ClassificationBuilder(OfflineBuilder, skip_registration=True):
    """Shared features and writing; subclasses say how to load and split the arrays by defining
    `_splits(seed) -> {split: (x, y)}`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    INPUT_DIM: int

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "x": tfds.features.Tensor(shape=(self.INPUT_DIM,), dtype=np.float32),
                    "y": tfds.features.ClassLabel(num_classes=10),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        return {
            split: self._generate_examples(x, y) for split, (x, y) in self._splits(self.builder_config.seed).items()
        }

    def _generate_examples(self, x: np.ndarray, y: np.ndarray) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for i in range(len(y)):
            yield i, {"x": x[i].astype(np.float32), "y": int(y[i])}


class Digits(_ClassificationBuilder, skip_registration=True):
    """scikit-learn's bundled 8x8 digits, flattened to 64 features in [0, 1]."""

    INPUT_DIM = 64

    def _splits(self, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from sklearn.datasets import load_digits  # Lazy: scikit-learn is slow to import.

        data = load_digits()
        keep = distinct_rows(data.data / 16.0)  # Pixel intensities are 0..16.
        x, y = data.data[keep] / 16.0, data.target[keep]
        order = np.random.default_rng(seed).permutation(len(y))
        held = _DIGITS_HELD_OUT
        parts = {"train": order[2 * held :], "validation": order[held : 2 * held], "test": order[:held]}
        return {split: (x[idx], y[idx]) for split, idx in parts.items()}


class Mnist1d(_ClassificationBuilder, skip_registration=True):
    """MNIST-1D (Greydanus 2020): 40-sample 1-D signals of 10 digit templates, with its test split."""

    INPUT_DIM = 40

    def _splits(self, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from mnist1d.data import make_dataset  # Lazy: only needed to prepare.

        # make_dataset reseeds the global numpy and `random` generators (with its own fixed
        # seed, so the data is always the same); put them back so callers' randomness is intact.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            data = make_dataset()  # Generates locally; `get_dataset` would try a download.
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        keep = distinct_rows(data["x"], exclude=data["x_test"])  # the package fixes the test split
        x, y = data["x"][keep], data["y"][keep]
        order = np.random.default_rng(seed).permutation(len(y))
        parts = {"train": order[_MNIST1D_VALIDATION:], "validation": order[:_MNIST1D_VALIDATION]}
        splits = {split: (x[idx], y[idx]) for split, idx in parts.items()}
        return {**splits, "test": (data["x_test"], data["y_test"])}


def distinct_rows(x: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices, in order, of the rows of `x` to keep so that no two kept rows, and no kept row
    and a row of `exclude`, are equal as stored (float32): the first of equal rows is kept."""
    seen = set() if exclude is None else {row.tobytes() for row in _stored(exclude)}
    keep = []
    for i, row in enumerate(_stored(x)):
        if (key := row.tobytes()) not in seen:
            seen.add(key)
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def _stored(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
