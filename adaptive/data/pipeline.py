"""grain pipelines: an endless, checkpointable training stream and fixed-shape eval batches."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from adaptive.config_checks import ConfigError
from adaptive.data.datasets import load_split
from adaptive.data.source import Example, Source


def _read_options(source: Source) -> grain.ReadOptions:
    """Reading stays in this process (worker processes are slower on 2 cores, DESIGN §4).

    An in-memory batch takes less time to read than a thread handoff, so it is read inline; a
    lazy one decodes for ms, which one prefetch thread overlaps with the train step.
    The buffer is short because each element is a whole batch.
    """
    return grain.ReadOptions(num_threads=0 if source.in_memory else 1, prefetch_buffer_size=4)


def train_iterator(cfg: Any, batch_size: int, seed: int, rows: slice | None = None) -> grain.DatasetIterator:
    """Batches of the train split forever, in a fresh shuffle each epoch.

    Yields dicts of numpy arrays `x` [B, ...] float32, `y` [B] int32, `difficulty` [B] int32.
    Batches may straddle an epoch boundary, so every batch is full and the stream's position
    is one integer: `get_state()` is a JSON-serialisable dict, and `set_state` on a fresh
    iterator with the same cfg, batch_size and seed resumes bitwise where it was saved.
    `rows` reads only those rows of every batch (one host's share of the global batch).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    source = load_split(cfg, "train")
    if len(source) == 0:
        raise ConfigError(f"the train split of data.name={cfg.name!r} is empty")
    read = source.read_batch if rows is None else (lambda indices: source.read_batch(indices[rows]))
    dataset = ShuffledIndexBatches(len(source), batch_size, seed).map(read)
    return iter(dataset.to_iter_dataset(_read_options(source)))


class ShuffledIndexBatches(grain.MapDataset):
    """Batch i holds positions [i*B, (i+1)*B) of the endless chain of per-epoch permutations.

    It replaces grain's `range().shuffle().repeat().batch()`, which yields the same kind of
    stream but pays Python per example (an index_shuffle call and a `__getitem__` per
    transformation): per batch, as long as a small model's whole train step. One numpy
    permutation per epoch costs next to nothing.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        super().__init__()
        self._num_examples, self._batch_size, self._seed = num_examples, batch_size, seed
        self._last = (-1, np.empty(0, np.int64))  # (epoch, its permutation)

    def __len__(self) -> int:
        return sys.maxsize  # Endless, like grain's repeat().

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        positions = np.arange(index * self._batch_size, (index + 1) * self._batch_size)
        epochs, offsets = np.divmod(positions, self._num_examples)
        indices = np.empty(self._batch_size, np.int64)
        for epoch in np.unique(epochs):  # Usually one; two where the batch straddles epochs.
            rows = epochs == epoch
            indices[rows] = self._permutation(int(epoch))[offsets[rows]]
        return indices

    def _permutation(self, epoch: int) -> np.ndarray:
        # One tuple read and one write: atomic under the GIL, so prefetch threads can share it.
        cached_epoch, permutation = self._last
        if cached_epoch != epoch:
            rng = np.random.default_rng((self._seed, epoch))
            permutation = rng.permutation(self._num_examples)
            self._last = (epoch, permutation)
        return permutation

    def __str__(self) -> str:
        return f"ShuffledIndexBatches(n={self._num_examples}, batch={self._batch_size})"


def eval_batches(cfg: Any, split: str, batch_size: int) -> Iterator[Example]:
    """Every example of `split` exactly once, in order, in batches of exactly `batch_size`.

    The last batch is padded with copies of its own rows and a `mask` float32 [B] (1 real, 0
    padding) says which rows count, so a jitted eval step sees one shape and never recompiles.
    Copies, not zeros: in a MoE layer with expert capacity, identical zero rows would all route to
    the same experts and take their slots from the real tokens.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    source = load_split(cfg, split)
    dataset = (
        grain.MapDataset.range(len(source))
        .batch(batch_size)
        .map(functools.partial(_read_padded, source=source, batch_size=batch_size))
    )
    yield from dataset.to_iter_dataset(_read_options(source))


def _read_padded(indices: np.ndarray, source: Source, batch_size: int) -> Example:
    count = len(indices)
    batch = {}
    for key, value in source.read_batch(indices).items():
        batch[key] = value[np.arange(batch_size) % count]
    batch["mask"] = (np.arange(batch_size) < count).astype(np.float32)
    return batch
