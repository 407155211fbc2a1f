"""Shared test set-up: one prepared-data cache for the session, wandb offline, one CPU device,
compiled programs let go between test modules, and one persistent compilation cache for the
session."""

import atexit
import gc
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# The suite is mostly XLA compilation, and many tests compile the same programs: each
# `adaptive train` / `export` subprocess of a tiny run compiles its steps afresh, and so does
# each test module after `compiled_programs_released`. One JAX persistent compilation cache for
# the session (the process that starts first makes it; pytest-xdist's workers and every
# subprocess inherit it through the environment) lets them load what another compiled. Set
# before any test imports JAX; a cache the caller set is kept and used as is. Removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="adaptive-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # every program, however quick
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


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
