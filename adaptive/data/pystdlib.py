"""`pystdlib`: Python source code as byte-level language-model data, with no download.

Every machine that runs this package has tens of MB of real text next to the interpreter: the
standard library's `.py` files (found with `sysconfig`; site-packages excluded). Each file is
read as bytes and framed by BOS and EOS (adaptive.data.byte_vocab); a split is the
concatenation of its files in path order, served as windows of `window + 1` tokens whose
last token is the next window's first, so every token of the stream is a target exactly once.

Windows are stored many to a TFDS record (`rows_per_record`, the last record padded) and served
one at a time by `WindowRecords`: TFDS spends tens of microseconds of Python on every example
it writes, so one window a record made the short windows of the tiny config slow to prepare.
Records of about a thousand tokens prepare several times faster and are read at random as
quickly as single windows; bigger ones make a random read cost more
(experiments/design_measurements.md).

Files, not windows, are split: a hash of each file's path relative to the root sends it to
train, validation or test (SHARES), so no file contributes text to two splits, and adding or
removing a file moves no other file between splits.

The interpreter's version and a hash of the file list (each path with its content's SHA-256)
are stored in the prepared dataset's metadata: data prepared from another Python's library is
used as it was prepared, with a note saying so (`version_note`), never silently rebuilt or mixed.
`data.text_dir` points the builder at any other folder of `.py` files instead: its cache is named
by the folder and by a fingerprint of its listing (each file's path, size and modification
time, read once per process), so a corpus whose files changed is prepared again, into a cache of
its own, rather than read as it was (a checkout or a copy that resets modification times prepares
it again too; old caches stay until deleted); preparing it says what it found (`log`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import platform
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from adaptive.config_checks import ConfigError
from adaptive.data import byte_vocab
from adaptive.data.builder import OfflineBuilder

SPLITS = ("train", "validation", "test")
SHARES = (0.90, 0.05, 0.05)  # of the files, by path hash; each held-out split ~1.5 MB of text
TOKENS_PER_RECORD = 1024  # about: whole windows only, at least one
log = logging.getLogger(__name__)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


SKIPPED = {"site-packages", "dist-packages", "__pycache__"}  # folders never read


def source_files(root: Path) -> list[Path]:
    """The `.py` files under `root` in path order, installed packages excluded."""
    files = [p for p in root.rglob("*.py") if p.is_file() and not SKIPPED.intersection(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_of(relative_path: str) -> str:
    """The split a file belongs to: a hash of its path, so the choice never depends on other files."""
    digest = hashlib.sha256(relative_path.encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edges = np.cumsum(SHARES)
    return SPLITS[min(int(np.searchsorted(edges, u, side="right")), len(SPLITS) - 1)]


def files_sha256(root: Path, files: list[Path]) -> str:
    """A hash of the file list: every relative path with its content's SHA-256."""
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.relative_to(root).as_posix()}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


@functools.cache
def listing_fingerprint(root: Path) -> str:
    """A cheap fingerprint of a corpus folder (each `.py` file's path, size and modification time,
    no content read): what changes when a file is added, removed or edited. Once per process: a
    run whose corpus is edited while it trains keeps reading the data it started with."""
    h = hashlib.sha256()
    for path in source_files(root):
        stat = path.stat()
        h.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def rows_per_record(window: int) -> int:
    """Windows stored in one TFDS record."""
    return max(1, TOKENS_PER_RECORD // (window + 1))


def windows(stream: np.ndarray, window: int) -> np.ndarray:
    """Consecutive windows of `window + 1` tokens, each starting at the last token of the one
    before; the tail too short for a whole window is dropped."""
    count = max(0, (len(stream) - 1) // window)
    starts = np.arange(count) * window
    return stream[starts[:, None] + np.arange(window + 1)]


@dataclasses.dataclass(kw_only=True)
class PyStdlibConfig(tfds.core.BuilderConfig):
    window: int
    text_dir: str  # "" = this interpreter's standard library

    @classmethod
    def create(cls, window: int, text_dir: str = "") -> PyStdlibConfig:
        if window < 1:
            raise ValueError(f"window={window} must be >= 1")
        name = f"w{window}"
        if text_dir:  # another corpus: its own cache, named by its folder and what the folder holds
            folder = Path(text_dir).resolve()
            name += "-" + hashlib.sha256(str(folder).encode()).hexdigest()[:12]
            if folder.is_dir():  # (a missing folder is refused in one line when it would be read)
                name += "-" + listing_fingerprint(folder)
        return cls(name=name, window=window, text_dir=text_dir)


class PyStdlib(OfflineBuilder, skip_registration=True):
    """Python source code, byte-level, in windows; splits disjoint by file."""

    name = "pystdlib"
    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "2.0.0": "Windows stored many to a record."}

    def _root(self) -> Path:
        text_dir = self.builder_config.text_dir
        return Path(text_dir) if text_dir else stdlib_root()

    def _info(self) -> tfds.core.DatasetInfo:
        window = self.builder_config.window
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {"tokens": tfds.features.Tensor(shape=(rows_per_record(window), window + 1), dtype=np.int32)}
            ),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # windows in stream order: a reader can follow a file across them
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        root = self._root()
        if not root.is_dir():
            raise ConfigError(f"data.text_dir: {root} is not a folder")
        files = source_files(root)
        if not files:
            raise ConfigError(f"data.text_dir: no .py files under {root}")
        by_split = {split: [] for split in SPLITS}
        for path in files:
            by_split[split_of(path.relative_to(root).as_posix())].append(path)
        window = self.builder_config.window
        split_windows = {split: windows(_stream(paths), window) for split, paths in by_split.items()}
        if empty := [split for split, rows in split_windows.items() if len(rows) == 0]:
            counts = ", ".join(f"{split} {len(paths)}" for split, paths in by_split.items())
            raise ConfigError(
                f"data.text_dir: {root}'s {len(files)} .py files give no window of {window} bytes to "
                f"{' or '.join(empty)} (files by split: {counts}; each file goes to train, validation or test by "
                f"a hash of its path, {' / '.join(f'{s:.0%}' for s in SHARES)}): add files, or a shorter data.window"
            )
        if self.builder_config.text_dir:
            others = sum(  # files a user may have meant to be read: not under skipped or hidden folders
                1
                for p in root.rglob("*")
                if p.is_file()
                and p.suffix != ".py"
                and not any(part in SKIPPED or part.startswith(".") for part in p.relative_to(root).parts[:-1])
            )
            sizes = ", ".join(
                f"{split} {len(paths)} files / {sum(f.stat().st_size for f in paths):,} bytes"
                for split, paths in by_split.items()
            )
            log.info(
                "preparing data.text_dir %s: %d .py files (%s)%s",
                root, len(files), sizes, f"; {others} other files are not read" if others else "",
            )  # fmt: skip
        self.info.metadata.update(
            {
                "python_version": platform.python_version(),
                "root": str(root),
                "files": len(files),
                "files_sha256": files_sha256(root, files),
                "files_per_split": {split: len(paths) for split, paths in by_split.items()},
                "bytes_per_split": {split: sum(p.stat().st_size for p in paths) for split, paths in by_split.items()},
                "rows_per_record": rows_per_record(window),
                "windows_per_split": {split: len(rows) for split, rows in split_windows.items()},
            }
        )
        return {split: self._generate_examples(rows) for split, rows in split_windows.items()}

    def _generate_examples(self, rows: np.ndarray) -> Iterator[tuple[int, dict]]:
        per_record = rows_per_record(self.builder_config.window)
        for i, start in enumerate(range(0, len(rows), per_record)):
            record = rows[start : start + per_record]
            padding = np.zeros((per_record - len(record), rows.shape[1]), np.int32)  # the last record's
            yield i, {"tokens": np.concatenate([record, padding])}


def _stream(paths: list[Path]) -> np.ndarray:
    """The split's token stream: its files in order, each framed by BOS and EOS."""
    parts = [byte_vocab.encode(path.read_bytes()) for path in paths]
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


class WindowRecords:
    """A prepared split's windows, one example each (`{"tokens": int32[window + 1]}`), read
    from the records that hold them `rows_per_record` at a time: a TFDS data source's
    interface (`len`, `__getitems__`, `dataset_info`), so thinning and `Source` read it as any."""

    def __init__(self, records: Any, split: str):
        metadata = records.dataset_info.metadata
        self._records, self._rows = records, int(metadata["rows_per_record"])
        if self._rows != records.dataset_info.features["tokens"].shape[0]:  # a layout changed without a version
            raise ConfigError("pystdlib was prepared with another record layout; delete its folder to prepare it again")
        self._count = int(metadata["windows_per_split"][split])
        self.dataset_info = records.dataset_info

    def __len__(self) -> int:
        return self._count

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        where = np.asarray(indices, np.int64)
        if len(where) and not (0 <= where.min() and where.max() < self._count):
            raise IndexError(f"window indices must lie in [0, {self._count})")
        record_of, row_of = np.divmod(where, self._rows)
        wanted = np.unique(record_of)  # a batch's windows often share records: each is read once
        records = dict(zip(wanted.tolist(), self._records.__getitems__(wanted.tolist()), strict=True))
        pairs = zip(record_of.tolist(), row_of.tolist(), strict=True)
        return [{"tokens": np.asarray(records[record]["tokens"])[row]} for record, row in pairs]

    def __repr__(self) -> str:
        return f"WindowRecords({self._records!r}, {self._count} windows, {self._rows} per record)"


def version_note(metadata: dict, text_dir: str = "") -> str | None:
    """A one-line note when the prepared standard library came from another Python version."""
    prepared, running = metadata.get("python_version"), platform.python_version()
    if text_dir or prepared in (None, running):
        return None
    return (
        f"pystdlib was prepared from Python {prepared}'s standard library (files sha256 "
        f"{str(metadata.get('files_sha256'))[:12]}); this is Python {running}: "
        "using the prepared data as they are (delete its folder to prepare from this one)"
    )
