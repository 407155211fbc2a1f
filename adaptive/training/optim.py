"""The optimizer a config asks for: AdamW, warm-up + cosine/constant, global-norm clipping."""

from __future__ import annotations

import optax


def warmup_length(cfg, total_steps: int) -> int:
    """The warm-up steps of a run of `total_steps`: `warmup_steps`, cut to the run's length."""
    return min(cfg.warmup_steps, total_steps)


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate`, then cosine decay or constant."""
    warmup = warmup_length(cfg, total_steps)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.learning_rate)
    else:
        after = optax.cosine_decay_schedule(cfg.learning_rate, max(total_steps - warmup, 1), alpha=cfg.end_lr_fraction)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), after], [warmup])


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm > 0 else []
    parts.append(
        optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    )
    return optax.chain(*parts)
