"""Shared test set-up: one prepared-data cache for the session, wandb offline, one CPU device,
and compiled programs let go between test modules."""

import gc
import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
    """Datasets are prepared once per test session into a temporary cache (also for subprocesses)."""
    path = tmp_path_factory.mktemp("tfds")
    os.environ["ADAPTIVE_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def compiled_programs_released():
    """After each test module, JAX's caches are cleared so that its compiled programs are freed.
    Each one holds a few memory maps of JIT code (about 3.3 for a small function here), and a
    process may hold 65530 (vm.max_map_count): the whole suite in one process compiles enough to
    approach that, and past it XLA's compiler crashes (a segfault in backend_compile, seen once
    on CI at 90% of the suite, never with the modules alone)."""
    yield
    import jax

    gc.collect()
    jax.clear_caches()
    gc.collect()
