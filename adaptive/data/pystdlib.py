"""`pystdlib`: Python source code as byte-level language-model data, with no download.

Every machine that runs this package has tens of MB of real text next to the interpreter: the
standard library's `.py` files (found with `sysconfig`; site-packages excluded). Each file is
read as bytes and framed by BOS and EOS (adaptive.data.byte_vocab); a split is the
concatenation of its files in path order, served as windows of `window + 1` tokens whose
last token is the next window's first, so every token of the stream is a target exactly once.

Files, not windows, are split: a hash of each file's path relative to the root sends it to
train, validation or test (SHARES), so no file contributes text to two splits, and adding or
removing a file moves no other file between splits.

The interpreter's version and a hash of the file list (each path with its content's SHA-256)
are stored in the prepared dataset's metadata: data prepared from another Python's library is
used as it was prepared, with a note saying so (`version_note`), never silently rebuilt or mixed.
`data.text_dir` points the builder at any other folder of `.py` files instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from adaptive.config_checks import ConfigError
from adaptive.data import byte_vocab
from adaptive.data.builder import OfflineBuilder

SPLITS = ("train", "validation", "test")
SHARES = (0.90, 0.05, 0.05)  # of the files, by path hash; each held-out split ~1.5 MB of text


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path) -> list[Path]:
    """The `.py` files under `root` in path order, installed packages excluded."""
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files = [p for p in root.rglob("*.py") if p.is_file() and not skip.intersection(p.relative_to(root).parts)]
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
        if text_dir:  # another corpus: its own cache, named by its folder
            name += "-" + hashlib.sha256(str(Path(text_dir).resolve()).encode()).hexdigest()[:12]
        return cls(name=name, window=window, text_dir=text_dir)


class PyStdlib(OfflineBuilder, skip_registration=True):
    """Python source code, byte-level, in windows; splits disjoint by file."""

    name = "pystdlib"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _root(self) -> Path:
        text_dir = self.builder_config.text_dir
        return Path(text_dir) if text_dir else stdlib_root()

    def _info(self) -> tfds.core.DatasetInfo:
        window = self.builder_config.window
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({"tokens": tfds.features.Tensor(shape=(window + 1,), dtype=np.int32)}),
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
        self.info.metadata.update(
            {
                "python_version": platform.python_version(),
                "root": str(root),
                "files": len(files),
                "files_sha256": files_sha256(root, files),
                "files_per_split": {split: len(paths) for split, paths in by_split.items()},
                "bytes_per_split": {split: sum(p.stat().st_size for p in paths) for split, paths in by_split.items()},
            }
        )
        return {split: self._generate_examples(paths) for split, paths in by_split.items()}

    def _generate_examples(self, paths: list[Path]) -> Iterator[tuple[int, dict]]:
        parts = [byte_vocab.encode(path.read_bytes()) for path in paths]
        stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        for i, tokens in enumerate(windows(stream, self.builder_config.window)):
            yield i, {"tokens": tokens}


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
