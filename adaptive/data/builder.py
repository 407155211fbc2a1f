"""The base of the offline TFDS builders and the one place that prepares them."""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import tensorflow_datasets as tfds

from adaptive.config_checks import ConfigError


class _DropCustomConfigNotice(logging.Filter):
    """TFDS warns "Using custom data configuration" each time one of our builders is made:
    for parameterised builders that is the normal case, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Using custom data configuration")


logging.getLogger("absl").addFilter(_DropCustomConfigNotice())


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder whose data is generated locally, so it has no URLs and no checksums file.

    `code_path = None` stops TFDS looking for a checksums file next to the code: for a builder
    that lives in a package, that lookup imports `importlib_resources`, which TFDS does not
    install on Python >= 3.9. Subclasses pass `skip_registration=True` too: they are only ever
    made from their class, and a registered name could clash with a user's dataset of that name.
    """

    code_path = None


def build(make: Callable[[], tfds.core.DatasetBuilder]) -> tfds.core.DatasetBuilder:
    """Prepares the builder `make()` returns unless its files exist; returns a ready builder.

    A lock serialises parallel runs: TFDS writes into a temporary folder and renames it at the
    end, so two processes preparing the same config would both generate and one rename fails.
    """
    builder = make()
    data_path = Path(builder.data_path)
    if data_path.exists():  # The common case: nothing to do, no lock file touched.
        return builder
    data_path.parent.mkdir(parents=True, exist_ok=True)
    with open(data_path.parent / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not data_path.exists():
            print(
                f"preparing {builder.name}/{builder.builder_config.name} in {data_path.parent} "
                "(once; later runs reuse it)",
                file=sys.stderr,
            )
        tfds.display_progress_bar(False)  # TFDS's nested per-split bars would bury the run's own
        # TFDS prints "Downloading and preparing ..." although nothing is downloaded: hide it.
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                builder.download_and_prepare()  # Returns at once if another process just wrote them.
            except AssertionError as e:  # TFDS asserts on a split its generator left empty
                raise ConfigError(f"preparing {builder.name}: {str(e).splitlines()[0]}") from None
    # A fresh builder re-reads the split sizes, which `builder` lacks if another process won.
    return make()
