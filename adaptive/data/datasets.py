"""From a data config to prepared TFDS files and model-ready, random-access splits.

Every split, whatever its origin, reads as dicts of `x`, `y` and `difficulty` (-1 where the task
has no notion of difficulty), so the rest of the framework never branches on the dataset. A
classification task gives `x` float32[input_shape], `y` int32 and `difficulty` int32; a sequence
task (`pystdlib`, `addition`; `DatasetSpec.sequence`) gives the input tokens `x` int32[L], the
next tokens `y` int32[L] and each target's `difficulty` int32[L].
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from adaptive import config_checks
from adaptive.data import byte_vocab, pystdlib
from adaptive.data.addition import Addition, AdditionConfig
from adaptive.data.builder import build
from adaptive.data.offline import Digits, Mnist1d, SplitSeedConfig
from adaptive.data.parity import Parity, ParityConfig
from adaptive.data.source import EvenlySpread, Source

SPLITS = ("train", "validation", "test")
# A dataset prepared without a validation split has one carved from the end of its train split.
VALIDATION_PERCENT = 10
_BUILDERS = {
    "parity": Parity,
    "digits": Digits,
    "mnist1d": Mnist1d,
    "pystdlib": pystdlib.PyStdlib,
    "addition": Addition,
}
SEQUENCE_TASKS = config_checks.SEQUENCE_TASKS  # read by model.kind = lm
# Splits whose float32 inputs fit in this many bytes are decoded once and kept in memory.
IN_MEMORY_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a model and a training loop need to know about a dataset before seeing it."""

    input_shape: tuple[int, ...]
    num_classes: int
    split_sizes: dict[str, int]
    has_difficulty: bool
    max_difficulty: int  # the largest possible difficulty (parity_n, addition_digits), else 0.
    sequence: bool = False  # x and y are token sequences (input_shape[0] tokens, num_classes symbols)


def _builder(cfg: Any) -> tfds.core.DatasetBuilder:
    """The prepared builder of a built-in task; generates the files on first use only."""
    if cfg.name == "parity":
        config = ParityConfig.create(
            n=cfg.parity_n,
            num_train=cfg.num_train,
            num_eval=cfg.num_eval,
            train_difficulty=cfg.train_difficulty,
            eval_difficulty=cfg.eval_difficulty,
            seed=cfg.seed,
        )
    elif cfg.name == "pystdlib":
        config = pystdlib.PyStdlibConfig.create(cfg.window, cfg.text_dir)
    elif cfg.name == "addition":
        config = AdditionConfig.create(cfg.addition_digits, cfg.num_train, cfg.num_eval, cfg.seed)
    else:
        config = SplitSeedConfig.create(cfg.seed)
    cls = _BUILDERS[cfg.name]
    builder = build(lambda: cls(config=config, data_dir=cfg.data_dir, file_format="array_record"))
    if cfg.name == "pystdlib":
        _note_once(pystdlib.version_note(dict(builder.info.metadata), cfg.text_dir))
    return builder


@functools.cache
def _note_once(note: str | None) -> None:
    if note:
        logging.getLogger(__name__).warning(note)


def _not_prepared(cfg: Any, why: str) -> ValueError:
    return config_checks.ConfigError(
        f"dataset {cfg.name!r} is not prepared as array_record in data_dir={cfg.data_dir} "
        f"({why}); nothing can be downloaded here: prepare it where there is network with "
        "tfds file_format='array_record' and copy it into data_dir"
    )


def _external_source(cfg: Any, split: str) -> Any:
    """The TFDS data source of a dataset someone prepared in data_dir; never downloads.

    The folder check comes first so a missing dataset fails at once without TFDS touching
    data_dir; `download=False` then keeps TFDS from fetching anything.
    """
    folder = Path(cfg.data_dir) / cfg.name.split(":")[0].split("/")[0]
    if not folder.is_dir():
        raise _not_prepared(cfg, f"no folder {folder}")
    try:
        train = tfds.data_source(cfg.name, split="train", data_dir=cfg.data_dir, download=False)
        if split == "train" and "validation" in train.dataset_info.splits:
            return train
        carved = _carved_split(cfg.name, split, set(train.dataset_info.splits))
        return tfds.data_source(cfg.name, split=carved, data_dir=cfg.data_dir, download=False)
    except (tfds.core.DatasetNotFoundError, NotImplementedError, AssertionError) as e:
        raise _not_prepared(cfg, str(e).splitlines()[0]) from None


def _carved_split(name: str, split: str, have: set[str]) -> str:
    """The TFDS split that serves `split`: itself, or for a dataset published without a
    validation split (mnist, cifar10: train and test) the last VALIDATION_PERCENT of train,
    which train then leaves out, so that choices are made on examples it never trains on."""
    carve = "validation" not in have and split in ("train", "validation")
    if "train" not in have or (split not in have and not carve):
        raise config_checks.ConfigError(f"dataset {name!r} has no {split!r} split; it has {sorted(have)}")
    if not carve:
        return split
    keep = 100 - VALIDATION_PERCENT
    return {"train": f"train[:{keep}%]", "validation": f"train[{keep}%:]"}[split]


def prepare(cfg: Any) -> DatasetSpec:
    """Makes sure the dataset's files exist (generating built-in tasks once) and describes it."""
    if cfg.name in SEQUENCE_TASKS:
        info = _builder(cfg).info
        length = info.features["tokens"].shape[-1] - 1  # inputs and targets: the tokens shifted by one
        addition = cfg.name == "addition"
        windows = info.metadata.get("windows_per_split") if cfg.name == "pystdlib" else None  # many a record
        return DatasetSpec(
            input_shape=(length,),
            num_classes=byte_vocab.VOCAB_SIZE,
            split_sizes=_thinned_sizes(cfg, info, windows and dict(windows)),
            has_difficulty=addition,
            max_difficulty=cfg.addition_digits if addition else 0,
            sequence=True,
        )
    if cfg.name in _BUILDERS:
        info = _builder(cfg).info
        x_key, y_key = "x", "y"
    else:
        info = _external_source(cfg, "train").dataset_info
        served = [s for s in SPLITS if s in info.splits or s == "validation"]  # a test split may be absent
        sizes = {split: len(_external_source(cfg, split)) for split in served}
        x_key, y_key = cfg.image_key, cfg.label_key
    for key in (x_key, y_key):
        if key not in info.features:
            raise config_checks.ConfigError(f"{cfg.name!r} has no feature {key!r}; it has {list(info.features)}")
    parity = cfg.name == "parity"
    return DatasetSpec(
        input_shape=(math.prod(info.features[x_key].shape),),
        num_classes=info.features[y_key].num_classes,
        split_sizes=_thinned_sizes(cfg, info, None if cfg.name in _BUILDERS else sizes),
        has_difficulty=parity,
        max_difficulty=cfg.parity_n if parity else 0,
    )


def _thinned_sizes(cfg: Any, info: Any, sizes: dict[str, int] | None = None) -> dict[str, int]:
    """Each split's examples as `load_split` serves them (`sizes`, else the dataset's own):
    evaluation splits thinned by `eval_examples`."""
    sizes = sizes or {name: split.num_examples for name, split in info.splits.items()}
    if cfg.eval_examples > 0:
        sizes = {name: n if name == "train" else min(n, cfg.eval_examples) for name, n in sizes.items()}
    return sizes


@functools.lru_cache(maxsize=8)
def load_split(cfg: Any, split: str) -> Source:
    """A prepared split as a random-access `Source`; prepares built-in tasks if needed.

    Cached per (cfg, split), so `cfg` must be hashable (a frozen dataclass is): repeated evals
    and a resumed iterator then reuse the decoded in-memory copy instead of decoding again.
    """
    if cfg.name in _BUILDERS:
        builder = _builder(cfg)
        if split not in builder.info.splits:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        tfds_source, x_key, y_key = builder.as_data_source(split=split), "x", "y"
        if cfg.name in SEQUENCE_TASKS:
            x_key = y_key = "tokens"
        if cfg.name == "pystdlib":
            tfds_source = pystdlib.WindowRecords(tfds_source, split)
    else:
        tfds_source = _external_source(cfg, split)
        x_key, y_key = cfg.image_key, cfg.label_key
    if split != "train" and 0 < cfg.eval_examples < len(tfds_source):
        tfds_source = EvenlySpread(tfds_source, cfg.eval_examples)
    x_size = math.prod(tfds_source.__getitems__([0])[0][x_key].shape) if len(tfds_source) else 0
    copies = 3 if cfg.name in SEQUENCE_TASKS else 1  # tokens become x, y and difficulty
    in_memory = len(tfds_source) * x_size * 4 * copies <= IN_MEMORY_BYTES
    return Source(tfds_source, x_key, y_key, in_memory=in_memory, sequence=cfg.name in SEQUENCE_TASKS)
