"""Checkpoints: the only module that imports orbax.

A checkpoint holds the train state (a pytree of arrays) and the data pipeline's position (JSON),
saved together under one step. orbax writes into a temporary folder and renames it when done, so
a process killed mid-save leaves the previous checkpoint as the latest complete one. A checkpoint
that fails to restore is reported and the next older one is tried: a run never loses its last
good checkpoint to a bad newer one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No checkpoint in the folder could be restored."""


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int):
        self.directory = Path(directory).resolve()
        # Saves are synchronous: the train step donates its state buffers, and a save must have
        # finished reading them before the next step reuses the memory.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict) -> None:
        if step in self._manager.all_steps():
            return  # already saved (e.g. the final step after a SIGTERM at the same step)
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
            force=True,
        )

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """Restores `step` into the structure, shapes, dtypes and shardings of `like`: a state
        saved on one mesh restores onto another."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), like
        )
        out = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
        )
        return out["state"], out["data"]

    def restore_latest(self, like: Any) -> tuple[int, Any, dict] | None:
        """The newest checkpoint that restores, or None if the folder has none."""
        steps = self.steps()
        errors = []
        for step in reversed(steps):
            try:
                return (step, *self.restore(step, like))
            except Exception as e:  # noqa: BLE001 - any failure means "this one is unusable"
                first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
                log.warning(
                    "checkpoint %s/%d cannot be restored (%s); trying an older one",
                    self.directory,
                    step,
                    first_line[:200],
                )
                errors.append(f"step {step}: {first_line[:200]}")
        if steps:
            raise CheckpointError(f"no checkpoint in {self.directory} can be restored ({'; '.join(errors)})")
        return None

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
