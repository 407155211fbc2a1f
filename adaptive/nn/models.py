"""Model assembly from a config: every model is a `DepthModel` (static or adaptive depth)."""

from __future__ import annotations

from typing import Protocol

import jax
from flax import nnx

from adaptive.nn.depth import DepthModel, Inference, ModelOutput

__all__ = ["DepthModel", "Inference", "ModelOutput", "build_model"]


class ModelSpec(Protocol):
    """What a model needs to know about its data (see `adaptive.data.DatasetSpec`)."""

    input_shape: tuple[int, ...]
    num_classes: int


def build_model(cfg, spec: ModelSpec) -> DepthModel:
    """The model of a whole `Config` (its `model` and `halting` sections), initialised from its seed."""
    rngs = nnx.Rngs(params=jax.random.key(cfg.seed))
    return DepthModel(cfg.model, cfg.halting, tuple(spec.input_shape), spec.num_classes, rngs=rngs, moe_cfg=cfg.moe)
