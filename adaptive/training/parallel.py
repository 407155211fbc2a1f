"""Devices and hosts, with JAX's own runtime: a mesh from the config, shardings for the train
state and the batches, multi-host start-up and per-host data.

- The mesh is `jax.make_mesh((data, expert), ("data", "expert"))`. One device is a mesh of one,
  and then nothing here changes how a run executes.
- The train state is replicated, except the experts' parameters (and their optimizer moments),
  which are split on `expert` along their expert axis.
- A batch is split over both axes, so each device routes its own share of tokens.
  Each host reads only its rows of every global batch (the same global batches as one host
  reads, so a run does not depend on how many hosts train it) and the global array is built
  with `jax.make_array_from_process_local_data`.
- Which path runs: with `expert` = 1 (one device, or data parallelism) the model code is
  sharding-agnostic and XLA (GSPMD) places the collectives. With `expert` > 1 the model's MoE
  layers are built expert-parallel (`config.moe_layers`, from the same `mesh.expert`), the train
  and eval steps run under the mesh as JAX's context mesh (`with_mesh`), and those layers then
  exchange their tokens with explicit all-to-alls on `expert` (adaptive/nn/expert_parallel.py);
  the rest of the model stays with GSPMD. That path needs `moe.num_groups` a multiple of the
  device count and capacity routing (`check_moe`); it then equals one device with the same groups.
- Only process 0 writes logs, metrics and wandb; every process takes part in checkpoints
  (orbax coordinates them), which restore onto whatever mesh the restoring run has.
"""

from __future__ import annotations

import logging
import os
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from adaptive.config import ConfigError

# Expert parameters: [..., E, D, F] kernels and [..., E, F] biases of a MoE layer.
log = logging.getLogger(__name__)
# Set by a sweep for each point it gives devices to: the ids, which make_mesh checks JAX sees (a
# CUDA_VISIBLE_DEVICES naming no device here makes JAX fall back to the CPU, with a warning only).
ASSIGNED_DEVICES = "ADAPTIVE_ASSIGNED_DEVICES"
_EXPERT_LEAF = re.compile(r"\b(w_in|w_out|b_in|b_out)\b")


def initialize(mesh_cfg) -> None:
    """Joins the cluster once per process (multi-host runs only): a process that has joined it
    (JAX's distributed client is up) is left as it is."""
    if mesh_cfg.distributed == "off" or jax.distributed.is_initialized():
        return
    if mesh_cfg.distributed == "auto":
        jax.distributed.initialize()
    else:
        if not mesh_cfg.coordinator_address:
            raise ConfigError("mesh.distributed=explicit needs mesh.coordinator_address=HOST:PORT of process 0")
        jax.distributed.initialize(mesh_cfg.coordinator_address, mesh_cfg.num_processes, mesh_cfg.process_id)


def check_assigned_devices() -> None:
    """Refuses a process given accelerator ids (ASSIGNED_DEVICES) that JAX does not see as many
    accelerators, before it trains for hours on the CPU instead."""
    assigned = os.environ.get(ASSIGNED_DEVICES)
    if not assigned:
        return
    ids, seen = assigned.split(","), jax.local_devices()
    # a TPU chip may hold two JAX devices (v2, v3; v4 without megacore): a whole number per id
    per_id = len(seen) % len(ids) == 0 if seen[0].platform == "tpu" else len(seen) == len(ids)
    if seen[0].platform == "cpu" or not per_id:
        found = f"{len(seen)} {seen[0].platform} device(s)"
        raise ConfigError(
            f"this point was given device(s) {assigned} (sweep --devices) but JAX sees {found}: "
            "give --devices ids of this machine's accelerators"
        )


def make_mesh(mesh_cfg) -> Mesh:
    check_assigned_devices()
    count = jax.device_count()
    expert = mesh_cfg.expert
    data = mesh_cfg.data or count // expert
    if data < 1:  # mesh.data=0: as many replicas as fit, and not one does
        raise ConfigError(f"config key 'mesh.expert' is {expert}; there are only {count} device(s) here")
    if data * expert > count:
        fits = "mesh.data=0 fits as many data replicas as the devices hold"
        if expert > count:  # no count of replicas fits
            fits = f"mesh.expert={expert} alone is more than there are"
        raise ConfigError(
            f"config keys 'mesh.data' x 'mesh.expert' = {data} x {expert} need {data * expert} devices; {count} "
            f"here ({fits})"
        )
    if data * expert < count and jax.process_count() > 1:  # every process feeds its own rows: all must be in it
        raise ConfigError(
            f"config keys 'mesh.data' x 'mesh.expert' = {data} x {expert} use {data * expert} of the {count} devices; "
            "a run over several processes uses them all"
        )
    if data * expert < count:
        log.warning("the mesh %d x %d (data x expert) uses %d of the %d devices here", data, expert, data * expert,
                    count)  # fmt: skip
    # Auto axes: XLA propagates the shardings (GSPMD); the model code stays sharding-agnostic.
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((data, expert), ("data", "expert"), axis_types=auto, devices=jax.devices()[: data * expert])


def check_moe(moe_cfg, mesh: Mesh) -> None:
    """Expert parallelism's conditions, refused before training rather than at the first trace."""
    expert = mesh.shape["expert"]
    if not moe_cfg.enabled or expert == 1:
        return
    shape = f"{mesh.shape['data']} x {expert} (data x expert)"
    if moe_cfg.dropless:
        raise ConfigError(
            f"config key 'moe.dropless' is true; experts sharded on a {shape} mesh need capacity routing: "
            "set moe.dropless=false or mesh.expert=1"
        )
    if moe_cfg.num_groups % mesh.size:
        raise ConfigError(
            f"config key 'moe.num_groups' is {moe_cfg.num_groups}; on a {shape} mesh it must be a multiple of "
            f"{mesh.size} (every device routes its own groups)"
        )
    if moe_cfg.num_experts % expert:
        raise ConfigError(
            f"config key 'moe.num_experts' is {moe_cfg.num_experts}; on a {shape} mesh it must be a multiple "
            f"of {expert}"
        )


def with_mesh(fn, mesh: Mesh):
    """`fn` called with `mesh` as JAX's context mesh when the mesh shards experts, so that the
    expert-parallel MoE layers it traces (built so from the same config) run on it; `fn` itself
    otherwise (nothing changes)."""
    if mesh.shape["expert"] == 1:
        return fn

    def under_mesh(*args):
        with jax.set_mesh(mesh):
            return fn(*args)

    return under_mesh


def is_trivial(mesh: Mesh) -> bool:
    return mesh.size == 1 and jax.process_count() == 1


def state_shardings(state, mesh: Mesh):
    """A NamedSharding for every leaf of the train state: experts on `expert`, the rest replicated."""

    def spec(path, leaf) -> NamedSharding:
        name = jax.tree_util.keystr(path)
        ndim = np.ndim(leaf)
        if mesh.shape["expert"] > 1 and _EXPERT_LEAF.search(name):
            axis = ndim - (3 if re.search(r"\bw_(in|out)\b", name) else 2)  # the expert axis
            if axis >= 0:
                return NamedSharding(mesh, P(*([None] * axis), "expert"))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(spec, state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "expert")))


def check_batch(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.size or batch_size % jax.process_count():
        raise ConfigError(
            f"config key 'train.batch_size' is {batch_size}; it must divide over the mesh's {mesh.size} device(s) "
            f"and {jax.process_count()} process(es)"
        )


def host_rows(batch_size: int) -> slice:
    """This process's rows of every global batch."""
    per_host = batch_size // jax.process_count()
    return slice(jax.process_index() * per_host, (jax.process_index() + 1) * per_host)


def global_batch(local: dict, mesh: Mesh) -> dict:
    """The global, sharded batch from this host's rows."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def is_writer() -> bool:
    """Only process 0 writes logs, metrics and wandb."""
    return jax.process_index() == 0
