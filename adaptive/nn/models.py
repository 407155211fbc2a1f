"""Model assembly from a config: every model is a `DepthModel` (static or adaptive depth)."""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive import config as config_lib
from adaptive.nn.depth import DepthModel, Inference, ModelOutput
from adaptive.nn.lm import LanguageModel, LMOutput

__all__ = ["DepthModel", "Inference", "LMOutput", "LanguageModel", "ModelOutput", "build_model"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ModelSpec(Protocol):
    """What a model needs to know about its data (see `adaptive.data.DatasetSpec`)."""

    input_shape: tuple[int, ...]
    num_classes: int


def build_model(cfg: config_lib.Config, spec: ModelSpec) -> DepthModel | LanguageModel:
    """The model of a whole `Config` (its `model`, `halting`, `moe` and `lm` sections), initialised
    from its seed: a `LanguageModel` for model.kind = lm, else a `DepthModel`. Its MoE layers are
    expert-parallel when the config's mesh shards experts (`config.moe_layers`)."""
    sequence = getattr(spec, "sequence", False)
    if sequence != (cfg.model.kind == "lm"):
        what = "a sequence task (tokens in, next tokens out)" if sequence else "not a sequence task"
        raise ValueError(f"data.name={cfg.data.name!r} is {what}; model.kind={cfg.model.kind!r} does not fit it")
    rngs = nnx.Rngs(params=jax.random.key(cfg.seed))
    moe_cfg = config_lib.moe_layers(cfg)
    if sequence:
        m, lm, act = cfg.model, cfg.lm, cfg.halting.policy == "act"
        return LanguageModel(
            vocab=spec.num_classes,
            width=m.hidden,
            layers=config_lib.step_cap(cfg),  # act: the cap on steps of its one shared block
            heads=m.num_heads,
            max_length=spec.input_shape[0],
            positions=lm.positions,
            exits=lm.exits,
            confidence=lm.confidence,
            mod_capacity=lm.mod_capacity,
            mod_every=lm.mod_every,
            moe_cfg=moe_cfg if cfg.moe.enabled else None,
            act=act,
            act_eps=cfg.halting.eps,
            act_bias_init=cfg.halting.bias_init,
            dtype=DTYPES[m.dtype],
            rngs=rngs,
        )
    return DepthModel(cfg.model, cfg.halting, tuple(spec.input_shape), spec.num_classes, rngs=rngs, moe_cfg=moe_cfg)
