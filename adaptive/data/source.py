"""A split as model-ready examples: random access one at a time or a batch at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Example = dict[str, np.ndarray]

_DECODE_CHUNK = 8192  # Examples decoded per call while materialising, to bound peak memory.


class Source:
    """Reads a TFDS data source as `x` float32 (flattened), `y` int32 and `difficulty` int32;
    a `sequence` source (a `tokens` feature, `difficulty` per token if it has one) as the input
    tokens `x`, the next tokens `y` and each target's `difficulty`, int32 [L] each.

    Reading through TFDS is slow per example, nearly all of it TFDS's per-example Python
    decoding, so a split that fits `in_memory` is decoded once and then served by numpy
    indexing (microseconds a batch); bigger splits are read lazily. `read_batch` exists because
    grain 0.2.18's `MapDataset.batch` reads its parent one index at a time (its batched-read
    path is switched off), a Python call per example on top of TFDS's own.
    """

    def __init__(self, tfds_source: Any, x_key: str, y_key: str, in_memory: bool, sequence: bool = False):
        self._source, self._x_key, self._y_key, self._sequence = tfds_source, x_key, y_key, sequence
        self._arrays = self._materialise() if in_memory and len(tfds_source) else None

    def __len__(self) -> int:
        return len(self._source)

    @property
    def in_memory(self) -> bool:
        return self._arrays is not None

    def __getitem__(self, index: int) -> Example:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a split of {len(self)}")
        return {key: value[0] for key, value in self.read_batch([index % len(self)]).items()}

    def read_batch(self, indices: Sequence[int] | np.ndarray) -> Example:
        """The examples at `indices`, stacked along a new leading axis."""
        if self._arrays is not None:
            rows = np.asarray(indices, dtype=np.int64)
            return {key: value[rows] for key, value in self._arrays.items()}
        return self._decode(indices)

    def _decode(self, indices: Sequence[int] | np.ndarray) -> Example:
        examples = self._source.__getitems__([int(i) for i in indices])
        if self._sequence:
            return _shifted(examples, self._x_key)
        x = np.stack([np.asarray(e[self._x_key]) for e in examples]).reshape(len(examples), -1)
        # uint8 images are 0..255 by TFDS convention; scale them as digits and mnist1d are.
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        return {
            "x": x,
            "y": np.array([e[self._y_key] for e in examples], np.int32),
            "difficulty": np.array([e.get("difficulty", -1) for e in examples], np.int32),
        }

    def _materialise(self) -> Example:
        chunks = [
            self._decode(range(start, min(start + _DECODE_CHUNK, len(self))))
            for start in range(0, len(self), _DECODE_CHUNK)
        ]
        return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}

    def __repr__(self) -> str:
        where = "in memory" if self.in_memory else "lazy"
        return f"Source({self._source!r}, {where})"


def _shifted(examples: list[dict], key: str) -> Example:
    """Next-token pairs: inputs are the tokens but the last, targets the tokens but the first."""
    tokens = np.stack([np.asarray(e[key]) for e in examples]).astype(np.int32)
    if "difficulty" in examples[0]:
        difficulty = np.stack([np.asarray(e["difficulty"]) for e in examples]).astype(np.int32)
    else:
        difficulty = np.full(tokens.shape, -1, np.int32)
    return {"x": tokens[:, :-1], "y": tokens[:, 1:], "difficulty": difficulty[:, 1:]}


class EvenlySpread:
    """`count` examples of a TFDS data source, evenly spread over it in order: an evaluation
    split thinned by `data.eval_examples`. A language model's windows lie in file order, so its
    first `count` would be a few files; every k-th window samples them all."""

    def __init__(self, tfds_source: Any, count: int):
        self._source = tfds_source
        self._indices = np.linspace(0, len(tfds_source) - 1, count).round().astype(np.int64)
        self.dataset_info = tfds_source.dataset_info

    def __len__(self) -> int:
        return len(self._indices)

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        return self._source.__getitems__([int(self._indices[i]) for i in indices])

    def __repr__(self) -> str:
        return f"EvenlySpread({self._source!r}, {len(self)} of {len(self._source)})"
