"""Shared test set-up: one prepared-data cache for the session, wandb offline, one CPU device."""

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
