"""The parity task of Graves (2016), "Adaptive Computation Time", as a TFDS builder.

Each input has a random number k of entries set to +1 or -1 and the rest 0; the label is the
parity of the number of +1 entries. k is the example's difficulty: a model that ponders should
spend more steps on larger k, which is why k is stored with every example.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from adaptive.data.builder import OfflineBuilder

# Split -> stream of the seed's numpy Generator, so splits never share random draws.
_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}


def parity_arrays(rng: np.random.Generator, num: int, n: int, difficulty: tuple[int, int]) -> dict[str, np.ndarray]:
    """Draws `num` parity examples of length `n` with k uniform over the inclusive `difficulty`.

    Vectorised: ranking a uniform matrix row-wise gives each row a random permutation, so
    `rank < k` marks k distinct positions drawn uniformly.
    """
    lo, hi = difficulty
    k = rng.integers(lo, hi + 1, size=num)
    ranks = rng.random((num, n)).argsort(axis=1).argsort(axis=1)
    signs = rng.integers(0, 2, size=(num, n), dtype=np.int8) * 2 - 1
    x = np.where(ranks < k[:, None], signs, 0).astype(np.int8)
    y = ((x == 1).sum(axis=1) % 2).astype(np.int32)
    return {"x": x, "y": y, "difficulty": k.astype(np.int32)}


@dataclasses.dataclass(kw_only=True)
class ParityConfig(tfds.core.BuilderConfig):
    """Every parameter that changes the data, so that each setting gets its own cache folder."""

    n: int
    num_train: int
    num_eval: int
    train_difficulty: tuple[int, int]
    eval_difficulty: tuple[int, int]
    seed: int

    @classmethod
    def create(
        cls,
        n: int,
        num_train: int,
        num_eval: int,
        train_difficulty: tuple[int, int] | None,
        eval_difficulty: tuple[int, int] | None,
        seed: int,
    ) -> ParityConfig:
        """Validates the ranges (None = 1..n) and derives the config name from all parameters."""
        tr = _check_range(train_difficulty, n, "train_difficulty")
        te = _check_range(eval_difficulty, n, "eval_difficulty")
        name = f"n{n}_tr{tr[0]}-{tr[1]}_te{te[0]}-{te[1]}_s{seed}_{num_train}-{num_eval}"
        return cls(
            name=name,
            n=n,
            num_train=num_train,
            num_eval=num_eval,
            train_difficulty=tr,
            eval_difficulty=te,
            seed=seed,
        )


def _check_range(difficulty: tuple[int, int] | None, n: int, key: str) -> tuple[int, int]:
    if difficulty is None:
        return (1, n)
    lo, hi = (int(v) for v in difficulty)
    if not 1 <= lo <= hi <= n:
        raise ValueError(f"{key}={difficulty!r} must satisfy 1 <= lo <= hi <= parity_n={n}")
    return (lo, hi)


class Parity(OfflineBuilder, skip_registration=True):
    """Parity vectors stored as int8 (4x smaller than float32); the pipeline casts them."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        n = self.builder_config.n
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "x": tfds.features.Tensor(shape=(n,), dtype=np.int8),
                    "y": tfds.features.ClassLabel(num_classes=2),
                    "difficulty": tfds.features.Scalar(dtype=np.int32),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        c = self.builder_config
        sizes = {"train": c.num_train, "validation": c.num_eval, "test": c.num_eval}
        ranges = {"train": c.train_difficulty, "validation": c.train_difficulty}
        return {
            split: self._generate_examples(split, num, ranges.get(split, c.eval_difficulty))
            for split, num in sizes.items()
        }

    def _generate_examples(
        self, split: str, num: int, difficulty: tuple[int, int]
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        c = self.builder_config
        rng = np.random.default_rng((c.seed, _SPLIT_STREAM[split]))
        arrays = parity_arrays(rng, num, c.n, difficulty)
        for i in range(num):
            yield i, {key: value[i] for key, value in arrays.items()}
