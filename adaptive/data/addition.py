"""`addition`: "a+b=" then the sum, a sequence task whose per-token difficulty is known.

Each example is BOS, a and b as `digits` decimal digits (zero-padded), '+', '=', the sum as
digits + 1 digits, most significant first, and EOS, in the byte vocabulary of
adaptive.data.byte_vocab (so a model of `pystdlib` reads it unchanged). Written most
significant first, an answer digit cannot be produced before the carry into its place is known,
and that takes reading down the operands' lower places: at place i (0 = units) the place below
decides the carry unless its digits sum to exactly 9, in which case the carry is the one coming
into that place, and so on down. An answer digit's `difficulty` is the number of places read:

    0 for the units digit, else min(i, 1 + the run of places directly below i that sum to 9)

so "harder tokens get more compute" can be measured per token. Every other token has
difficulty -1. Uniform digits sum to 9 one place in ten, which makes long chains rare; a place
is set to sum to 9 with probability NINE_BIAS on top of that, so chains of every length up to
`digits` occur in a split of a few thousand examples.

Splits are disjoint by content: a hash of (a, b) sends every pair to one split (SHARES), and a
split draws only its own pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from adaptive.data import byte_vocab
from adaptive.data.builder import OfflineBuilder

SPLITS = ("train", "validation", "test")
SHARES = (0.8, 0.1, 0.1)
NINE_BIAS = 0.3  # chance a place's two digits are redrawn to sum to 9 (a carry that propagates)
_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}
_PLUS, _EQUALS, _ZERO = ord("+"), ord("="), ord("0")


def sequence_length(digits: int) -> int:
    """Tokens in one example: BOS, a, '+', b, '=', the sum (one digit longer), EOS."""
    return 3 * digits + 5


def carry_difficulty(a_digits: np.ndarray, b_digits: np.ndarray) -> np.ndarray:
    """Places read to know each answer place's carry, [N, digits + 1], place 0 = units first.

    `a_digits`, `b_digits`: [N, digits], place 0 (units) first."""
    n, digits = a_digits.shape
    nine = (a_digits + b_digits) == 9
    out = np.zeros((n, digits + 1), np.int32)
    run = np.zeros(n, np.int32)  # places directly below the current one that sum to 9
    for place in range(1, digits + 1):
        run = np.where(nine[:, place - 1], run + 1, 0)
        out[:, place] = np.minimum(place, 1 + run)
    return out


def split_of(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """The index in SPLITS of each pair's split: a seeded hash of (a, b)."""
    edges = np.cumsum(SHARES)[:-1]
    digests = (hashlib.sha256(f"{seed}:{x}+{y}".encode()).digest() for x, y in zip(a, b, strict=True))
    u = np.array([int.from_bytes(d[:8], "big") / 2**64 for d in digests])
    return np.searchsorted(edges, u, side="right")


def _draw_digits(rng: np.random.Generator, num: int, digits: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.integers(0, 10, (num, digits))
    b = rng.integers(0, 10, (num, digits))
    nine = rng.random((num, digits)) < NINE_BIAS
    return a, np.where(nine, 9 - a, b)


def _value(place_digits: np.ndarray) -> np.ndarray:
    """Integers from digits (place 0 first), as Python ints: exact for any number of digits."""
    return np.array([int("".join(map(str, row[::-1]))) for row in place_digits], dtype=object)


def split_arrays(digits: int, num: int, split: str, seed: int) -> dict[str, np.ndarray]:
    """`num` examples of `split`: tokens and difficulty, int32 [num, sequence_length(digits)]."""
    rng = np.random.default_rng((seed, _SPLIT_STREAM[split]))
    a = np.zeros((0, digits), np.int64)
    b = np.zeros((0, digits), np.int64)
    want = SPLITS.index(split)
    for _ in range(1000):  # each round keeps ~SHARES[split] of its draws
        if len(a) >= num:
            break
        da, db = _draw_digits(rng, 2 * num, digits)
        keep = split_of(_value(da), _value(db), seed) == want
        a, b = np.concatenate([a, da[keep]]), np.concatenate([b, db[keep]])
    if len(a) < num:  # checked after the last round too, which may have filled it
        raise ValueError(f"addition: could not draw {num} {split} pairs of {digits} digits")
    a, b = a[:num], b[:num]
    total = a + b
    answer = np.zeros((num, digits + 1), np.int64)
    carry = np.zeros(num, np.int64)
    for place in range(digits):
        answer[:, place] = (total[:, place] + carry) % 10
        carry = (total[:, place] + carry) // 10
    answer[:, digits] = carry
    msb_first = lambda d: d[:, ::-1] + _ZERO  # noqa: E731
    column = lambda value: np.full((num, 1), value)  # noqa: E731
    tokens = np.concatenate(
        [
            column(byte_vocab.BOS),
            msb_first(a),
            column(_PLUS),
            msb_first(b),
            column(_EQUALS),
            msb_first(answer),
            column(byte_vocab.EOS),
        ],
        axis=1,
    ).astype(np.int32)
    difficulty = np.full(tokens.shape, -1, np.int32)
    difficulty[:, 2 * digits + 3 : 3 * digits + 4] = carry_difficulty(a, b)[:, ::-1]
    return {"tokens": tokens, "difficulty": difficulty}


@dataclasses.dataclass(kw_only=True)
class AdditionConfig(tfds.core.BuilderConfig):
    digits: int
    num_train: int
    num_eval: int
    seed: int

    @classmethod
    def create(cls, digits: int, num_train: int, num_eval: int, seed: int) -> AdditionConfig:
        if not 1 <= digits <= 64:
            raise ValueError(f"addition digits={digits} must be in 1..64")
        name = f"d{digits}-tr{num_train}-ev{num_eval}-s{seed}"
        return cls(name=name, digits=digits, num_train=num_train, num_eval=num_eval, seed=seed)


class Addition(OfflineBuilder, skip_registration=True):
    """Decimal addition as byte sequences, with each answer digit's carry-chain difficulty."""

    name = "addition"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        length = sequence_length(self.builder_config.digits)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "tokens": tfds.features.Tensor(shape=(length,), dtype=np.int32),
                    "difficulty": tfds.features.Tensor(shape=(length,), dtype=np.int32),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        cfg = self.builder_config
        sizes = {"train": cfg.num_train, "validation": cfg.num_eval, "test": cfg.num_eval}
        return {split: self._generate_examples(split, sizes[split]) for split in SPLITS}

    def _generate_examples(self, split: str, num: int) -> Iterator[tuple[int, dict]]:
        cfg = self.builder_config
        arrays = split_arrays(cfg.digits, num, split, cfg.seed)
        for i in range(num):
            yield i, {key: value[i] for key, value in arrays.items()}
