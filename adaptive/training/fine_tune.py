"""A short fine-tune of a changed model: after pruning, or quantization-aware before quantizing.

The run's own objective (classifier or language model, its budget term included) and train
stream drive it, with AdamW at a constant `lr_scale` of the run's learning rate: the model is
near a solution already and only needs to recover what the change cost. `transform(model)`, when
given, maps the parameters inside the loss before the forward pass (quantization-aware
training: weights fake-quantized with straight-through gradients, adaptive.nn.quantize).
Nothing is checkpointed: the caller keeps the parameters it returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
from flax import nnx

from adaptive import data
from adaptive.training import lm_steps, steps
from adaptive.training.optim import make_optimizer


def fine_tune(
    cfg,
    spec,
    graphdef: nnx.GraphDef,
    params,
    num_steps: int,
    *,
    budget=None,
    transform: Callable | None = None,
    lr_scale: float = 0.1,
    seed_offset: int = 1,
    log=None,
):
    """`params` after `num_steps` steps on the train split (a stream seeded apart from the
    run's own, `seed_offset`); `log(line)`: progress every quarter."""
    if num_steps < 1:
        return params
    optim = dataclasses.replace(
        cfg.optim, learning_rate=cfg.optim.learning_rate * lr_scale, warmup_steps=0, schedule="constant"
    )
    tx = make_optimizer(optim, num_steps)
    loss_fn = lm_steps.loss_fn_of(cfg, spec, graphdef, budget) or steps.classifier_loss_fn(
        graphdef, cfg.halting, budget
    )
    if transform is not None:
        plain = loss_fn

        def loss_fn(params, batch, multiplier, key):
            return plain(transform(params), batch, multiplier, key)

    pure = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    pure = jax.tree.map(lambda a: jax.numpy.array(a, copy=True), pure)  # the step donates its state
    state = steps.init_state(
        graphdef, pure, tx, cfg.halting, spec.input_shape, budget, cfg.train.batch_size, loss_fn, spec.sequence
    )
    train_step = steps.make_train_step(graphdef, tx, cfg.halting, budget, cfg.seed + seed_offset, loss_fn)
    step = jax.jit(train_step, donate_argnums=0)
    batches = data.train_iterator(cfg.data, cfg.train.batch_size, seed=cfg.seed + seed_offset)
    for i in range(num_steps):
        state = step(state, next(batches))
        if log and (i + 1) % max(num_steps // 4, 1) == 0:
            count = max(int(state["metric_count"]), 1)
            log(f"fine-tune step {i + 1}/{num_steps}: loss {float(state['metric_sums']['loss']) / count:.4f}")
            state = steps.reset_metric_sums(state)
    return state["params"]
