"""Shared test set-up: one prepared-data cache and one persistent compilation cache for the
session (shared by pytest-xdist's workers), wandb offline, one CPU device, compiled programs let
go between test modules."""

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
#
# Most of that compilation is LLVM optimizing machine code that a test then runs a few times:
# JAX_DISABLE_MOST_OPTIMIZATIONS (LLVM at -O0, its expensive passes off; XLA's HLO passes, and so
# fusion, layouts and the reduction kernels that set a program's bits, are unchanged) makes a
# compile-bound module much faster (experiments/design_measurements.md). The bitwise tests keep
# their teeth under it: with `compaction.smallest_bucket`'s floor removed, the same reduction-
# kernel cases fail with and without it. A caller's own setting is kept (=0 runs the suite with
# full optimization). A module that mostly runs, not compiles (thousands of training steps), asks
# for `fully_optimized`.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="adaptive-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # every program, however quick
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

# Datasets are prepared once per session into one temporary folder, which the workers and every
# subprocess find through ADAPTIVE_DATA_DIR (preparing takes a lock, so two workers wanting the
# same dataset prepare it once). Preparing the tiny language model's windows takes seconds, so a
# test should not point `data.data_dir` at a folder of its own unless preparation is what it
# tests. ADAPTIVE_TESTS_DATA_DIR names a folder to use instead and keep: `.ci/run` gives
# its two pytest runs one (a fresh folder each time: one kept across code changes would serve data
# a changed builder no longer makes). A user's own ADAPTIVE_DATA_DIR is never read or written.
if "ADAPTIVE_TESTS_DATA_DIR" not in os.environ:
    os.environ["ADAPTIVE_TESTS_DATA_DIR"] = tempfile.mkdtemp(prefix="adaptive-tests-data-")
    atexit.register(shutil.rmtree, os.environ["ADAPTIVE_TESTS_DATA_DIR"], ignore_errors=True)
os.environ["ADAPTIVE_DATA_DIR"] = os.environ["ADAPTIVE_TESTS_DATA_DIR"]


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


@pytest.fixture(scope="module")
def fully_optimized():
    """Full compiler optimization for a module that mostly runs its programs (test_learning's
    thousands of training steps run several times slower with LLVM at -O0). Programs compiled
    before are let go (JAX's in-memory caches do not key on the setting); subprocesses keep the
    session's setting."""
    import jax

    before = jax.config.read("jax_disable_most_optimizations")
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", before)
