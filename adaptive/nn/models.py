"""Model assembly from a config: every model is a `DepthModel` (static or adaptive depth)."""

from __future__ import annotations

from typing import Protocol

import jax
from flax import nnx

from adaptive import config as config_lib
from adaptive.nn.depth import DepthModel, Inference, ModelOutput

__all__ = ["DepthModel", "Inference", "ModelOutput", "build_model"]


class ModelSpec(Protocol):
    """What a model needs to know about its data (see `adaptive.data.DatasetSpec`)."""

    input_shape: tuple[int, ...]
    num_classes: int


def build_model(cfg: config_lib.Config, spec: ModelSpec) -> DepthModel:
    """The model of a whole `Config` (its `model`, `halting` and `moe` sections), initialised from
    its seed. Its MoE layers are expert-parallel when the config's mesh shards experts
    (`config.moe_layers`)."""
    if getattr(spec, "sequence", False):
        raise ValueError(
            f"data.name={cfg.data.name!r} is a sequence task (tokens in, next tokens out); "
            f"model.kind={cfg.model.kind!r} classifies one input vector, and no model kind trains on sequences yet"
        )
    rngs = nnx.Rngs(params=jax.random.key(cfg.seed))
    moe_cfg = config_lib.moe_layers(cfg)
    return DepthModel(cfg.model, cfg.halting, tuple(spec.input_shape), spec.num_classes, rngs=rngs, moe_cfg=moe_cfg)
