"""The parity task of Graves (2016), "Adaptive Computation Time", as a TFDS builder.

Each input has a random number k of entries set to +1 or -1 and the rest 0; the label is the
parity of the number of +1 entries. k is the example's difficulty: a model that ponders should
spend more steps on larger k, which is why k is stored with every example.

Splits are disjoint by content: a seeded hash of each vector assigns it to exactly one split
(`split_of`), and each split draws only its own vectors. Drawing every split independently
would not do: there are only 2n vectors of difficulty 1 (and 480 of difficulty 2 at n = 16),
so a large training split holds nearly all easy vectors and the held-out splits repeat them.
Dropping the held-out vectors that happen to be in train would not do either: it would strip
validation and test of their easy examples, skewing their difficulty distribution. With the
hash, k stays uniform over each split's range and each vector is uniform among its split's.
An easy range has few distinct vectors per split (validation owns 4 of the 32 vectors of
difficulty 1 at n = 16), drawn again and again, as any split of it was before. Version 2.0.0
(the hash) keeps caches of 1.0.0, whose splits overlapped, from being read.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from adaptive.data.builder import OfflineBuilder

SPLITS = ("train", "validation", "test")
# The share of all vectors (of each difficulty) that belongs to each split, in SPLITS order.
SHARES = (0.8, 0.1, 0.1)
# Split -> stream of the seed's numpy Generator, so splits never share random draws.
_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}
_HASH_STREAM = 3  # the stream of the hash's per-position weights
# Every split owns >= 7% of each difficulty's vectors (split_of), so a vector is kept in a draw
# with chance >= 0.07: 10,000 rounds leave one undrawn with chance below 1e-300.
_MAX_REDRAWS = 10_000
# Difficulties with at most this many vectors are split by rank (see split_of); a larger one
# leaves a split none of its vectors with a chance below 0.9^4096 = 1e-187.
_ENUMERATE_UP_TO = 4096


def _vectors(rng: np.random.Generator, k: np.ndarray, n: int) -> np.ndarray:
    """One vector of length n per entry of k, with k[i] entries of random sign at random places.

    Vectorised: ranking a uniform matrix row-wise gives each row a random permutation, so
    `rank < k` marks k distinct positions drawn uniformly.
    """
    ranks = rng.random((len(k), n)).argsort(axis=1).argsort(axis=1)
    signs = rng.integers(0, 2, size=(len(k), n), dtype=np.int8) * 2 - 1
    return np.where(ranks < k[:, None], signs, 0).astype(np.int8)


def parity_arrays(
    rng: np.random.Generator,
    num: int,
    n: int,
    difficulty: tuple[int, int],
    keep: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Draws `num` parity examples of length `n` with k uniform over the inclusive `difficulty`.

    With `keep` (vectors -> bool mask), a vector it rejects is drawn again at the same k, until
    every one is kept: k stays uniform, and each vector is uniform among the kept ones of its k.
    A k whose vectors `keep` (nearly) all rejects is a ValueError after _MAX_REDRAWS rounds.
    """
    lo, hi = difficulty
    k = rng.integers(lo, hi + 1, size=num)
    x = _vectors(rng, k, n)
    if keep is not None:
        redo = np.flatnonzero(~keep(x))
        for _ in range(_MAX_REDRAWS):
            if not redo.size:
                break
            x[redo] = _vectors(rng, k[redo], n)
            redo = redo[~keep(x[redo])]
        if redo.size:  # checked after the last round too, which may have kept them all
            raise ValueError(f"no kept vector of difficulty {int(k[redo[0]])} (parity_n={n}) in {_MAX_REDRAWS} draws")
    y = ((x == 1).sum(axis=1) % 2).astype(np.int32)
    return {"x": x, "y": y, "difficulty": k.astype(np.int32)}


def split_of(x: np.ndarray, seed: int) -> np.ndarray:
    """The index in SPLITS of the split each vector (row of x, entries -1/0/+1) belongs to.

    Vectors are ordered by a seeded hash. A difficulty with few vectors (at most
    _ENUMERATE_UP_TO: at n = 16, k <= 2) is split by rank in that order, per label where each
    label has at least 3 vectors, so that every split owns max(1, round(share * count)) of
    each label: a bare hash would leave some split none of the 16 vectors of k = 1 at n = 8
    for some seeds (then that split could not be drawn), or only vectors of one label. A larger
    difficulty is cut at the cumulative SHARES of the hash read as a number in [0, 1).
    """
    x = np.atleast_2d(np.asarray(x))
    n, h = x.shape[-1], _hash(x, seed)
    out = np.searchsorted(np.cumsum(SHARES)[:-1], (h >> np.uint64(11)) / 2.0**53, side="right")
    k, y = (x != 0).sum(axis=1), (x == 1).sum(axis=1) % 2
    for kk in np.unique(k).tolist():
        count = math.comb(n, kk) * 2**kk
        if not 3 <= count <= _ENUMERATE_UP_TO:
            continue
        by_label = count // 2 >= 3  # for k >= 1, half the vectors have each label
        for label in (0, 1) if by_label else (None,):
            rows = (k == kk) & (y == label) if by_label else k == kk
            out[rows] = _split_by_rank(h[rows], _group_hashes(n, kk, label, seed))
    return out


def _hash(x: np.ndarray, seed: int) -> np.ndarray:
    """uint64 per row: a seeded linear hash of the entries, mixed by splitmix64's finaliser
    (uint64 arithmetic wraps, as hashing wants)."""
    weights = np.random.default_rng((seed, _HASH_STREAM)).bit_generator.random_raw(x.shape[-1]).astype(np.uint64)
    h = (x.astype(np.int64) + 1).astype(np.uint8) @ weights
    h = np.asarray(h, dtype=np.uint64)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def _split_by_rank(h: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """Splits of vectors from their hashes' rank in `ordered` (their group's sorted hashes): the
    last held-out counts go to validation and test, the rest (at least one) to train."""
    held = [max(1, round(share * len(ordered))) for share in SHARES[1:]]
    bounds = [len(ordered) - sum(held), len(ordered) - held[-1]]
    return np.searchsorted(bounds, np.searchsorted(ordered, h), side="right")


@functools.lru_cache(maxsize=64)
def _group_hashes(n: int, k: int, label: int | None, seed: int) -> np.ndarray:
    """The sorted hashes of every vector of difficulty k (and parity `label`, unless None)."""
    x = _all_vectors(n, k)
    if label is not None:
        x = x[(x == 1).sum(axis=1) % 2 == label]
    return np.sort(_hash(x, seed))


def _all_vectors(n: int, k: int) -> np.ndarray:
    """Every vector of length n with exactly k entries of +-1."""
    places = np.array(list(itertools.combinations(range(n), k)), dtype=np.int64).reshape(-1, k)
    signs = np.array(list(itertools.product((-1, 1), repeat=k)), dtype=np.int8).reshape(-1, k)
    x = np.zeros((len(places), len(signs), n), np.int8)
    rows = np.arange(len(places))[:, None, None]
    x[rows, np.arange(len(signs))[None, :, None], places[:, None, :]] = signs[None, :, :]
    return x.reshape(-1, n)


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

    def split_ranges(self) -> dict[str, tuple[int, tuple[int, int]]]:
        """Split -> (examples, difficulty range): validation is drawn like train (held-out
        examples of the training distribution), test from eval_difficulty."""
        return {
            "train": (self.num_train, self.train_difficulty),
            "validation": (self.num_eval, self.train_difficulty),
            "test": (self.num_eval, self.eval_difficulty),
        }


def _check_range(difficulty: tuple[int, int] | None, n: int, key: str) -> tuple[int, int]:
    if difficulty is None:
        return (1, n)
    lo, hi = (int(v) for v in difficulty)
    if not 1 <= lo <= hi <= n:
        raise ValueError(f"{key}={difficulty!r} must satisfy 1 <= lo <= hi <= parity_n={n}")
    return (lo, hi)


def split_arrays(config: ParityConfig, split: str) -> dict[str, np.ndarray]:
    """The examples of one split of `config`, drawn from that split's own vectors only."""
    num, difficulty = config.split_ranges()[split]
    rng = np.random.default_rng((config.seed, _SPLIT_STREAM[split]))
    index = SPLITS.index(split)
    try:
        return parity_arrays(rng, num, config.n, difficulty, keep=lambda x: split_of(x, config.seed) == index)
    except ValueError as e:
        raise ValueError(f"parity split {split!r} cannot be filled: {e}") from None


class Parity(OfflineBuilder, skip_registration=True):
    """Parity vectors stored as int8 (4x smaller than float32); the pipeline casts them."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "2.0.0": "Splits disjoint by content: each vector belongs to one split, by a seeded hash.",
        "1.0.0": "Initial release.",
    }

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
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        arrays = split_arrays(self.builder_config, split)
        for i in range(len(arrays["y"])):
            yield i, {key: value[i] for key, value in arrays.items()}
