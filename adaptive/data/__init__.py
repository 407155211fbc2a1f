"""Datasets as TFDS array_record builders read through grain, without TensorFlow.

Built in: `parity` (Graves 2016, with per-example difficulty), `digits` (scikit-learn) and
`mnist1d`, generated locally and cached in `data_dir`. Any other name is a TFDS dataset that
must already be prepared (as array_record) in `data_dir`: nothing is ever downloaded.
"""

from adaptive.data.datasets import SPLITS, DatasetSpec, load_split, prepare
from adaptive.data.pipeline import eval_batches, train_iterator
from adaptive.data.source import Source

__all__ = [
    "SPLITS",
    "DatasetSpec",
    "Source",
    "eval_batches",
    "load_split",
    "prepare",
    "train_iterator",
]
