"""`adaptive bench act-train`: the framework's training loop against a bare-JAX ACT loop.

The same model both ways: Graves' parity RNN (hidden 128, input shown at every step with a
first-step flag), ACT over a cap of 20 steps, batch 128, Adam 1e-3, tau 1e-3. The bare loop is
written here from scratch in plain JAX + optax on pre-generated batches: the speed a careful
researcher gets by hand. The framework figure is `perf/steps_per_sec` of a real
`train_and_evaluate` run (data pipeline, metrics, the non-finite guard, checkpoints included),
averaged over its log windows after the first (which holds the compile). Checkpoints are saved at
the main job's interval, shortened so that at least two saves fall inside those windows (a save
at a log step is timed in the window that follows it; the final save comes after the last one).
`ratio` = framework / bare steps per second. The framework's config is built (and a bad `n`
refused, named as `--n`) before either loop runs.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adaptive import config as config_lib
from adaptive.bench.results import write_json
from adaptive.config import ConfigError
from adaptive.evaluation.tables import print_table
from adaptive.training.metrics import read_jsonl

HIDDEN, CAP, BATCH, TAU, EPS = 128, 20, 128, 1e-3, 0.01


def _bare_step_fn(n: int):
    def init(key):
        k = jax.random.split(key, 4)
        glorot = lambda kk, shape: jax.random.normal(kk, shape) / np.sqrt(shape[0])  # noqa: E731
        return {
            "wx": glorot(k[0], (n + 1, HIDDEN)),
            "wh": glorot(k[1], (HIDDEN, HIDDEN)),
            "b": jnp.zeros(HIDDEN),
            "wp": glorot(k[2], (HIDDEN, 1)),
            "bp": jnp.full((1,), -1.0),
            "wo": glorot(k[3], (HIDDEN, 2)),
            "bo": jnp.zeros(2),
        }

    def loss_fn(p, x, y):
        def cell(h, t):
            inp = jnp.concatenate([x, jnp.full((x.shape[0], 1), (t == 0).astype(x.dtype))], -1)
            h = jnp.tanh(inp @ p["wx"] + h @ p["wh"] + p["b"])
            return h, (h, jax.nn.sigmoid(h @ p["wp"] + p["bp"])[:, 0])

        _, (hs, ps) = jax.lax.scan(cell, jnp.zeros((x.shape[0], HIDDEN)), jnp.arange(CAP))
        cum = jnp.cumsum(ps, 0)
        stop = (cum >= 1 - EPS) | (jnp.arange(CAP)[:, None] == CAP - 1)
        n_halt = jnp.argmax(stop, 0)  # 0-based step of the halt
        t = jnp.arange(CAP)[:, None]
        remainder = 1 - jnp.where(t < n_halt, ps, 0).sum(0)
        w = jnp.where(t < n_halt, ps, jnp.where(t == n_halt, remainder, 0))
        logits = (w[..., None] * hs).sum(0) @ p["wo"] + p["bo"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + TAU * (n_halt + 1 + remainder).mean()

    opt = optax.adam(1e-3)

    def step(state, x, y):
        params, opt_state = state
        grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return init, opt, jax.jit(step, donate_argnums=0)


def _parity_batches(n: int, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(count):
        k = rng.integers(1, n + 1, BATCH)
        x = np.zeros((BATCH, n), np.float32)
        for i, ki in enumerate(k):
            x[i, rng.choice(n, ki, replace=False)] = rng.choice([-1.0, 1.0], ki)
        xs.append(jnp.asarray(x))
        ys.append(jnp.asarray(((x == 1).sum(1) % 2).astype(np.int32)))
    return xs, ys


def bare_steps_per_sec(n: int, steps: int) -> float:
    init, opt, step = _bare_step_fn(n)
    params = init(jax.random.key(0))
    state = (params, opt.init(params))
    xs, ys = _parity_batches(n, 64)
    for i in range(20):  # warm-up, compile included
        state = step(state, xs[i % 64], ys[i % 64])
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(steps):
        state = step(state, xs[i % 64], ys[i % 64])
    jax.block_until_ready(state)
    return steps / (time.perf_counter() - start)


# The repository's config, found from this file: the benchmark may be run from any folder.
PARITY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "parity.py"


def framework_config(n: int, steps: int) -> config_lib.Config:
    """The parity config of the framework's loop; a parity length it refuses is named as `--n`."""
    try:
        cfg = config_lib.load(
            str(PARITY_CONFIG),
            [
                "--config.halting.policy=act",
                f"--config.data.parity_n={n}",
                "--config.logging.wandb=disabled",
                "--config.logging.progress=false",
            ],
        )
    except ConfigError as e:
        raise ConfigError(f"--n {n} (the config's data.parity_n): {e}") from None
    log_every = max(steps // 10, 1)
    checkpoint_every = max(min(cfg.train.checkpoint_every, steps // 3), 1)  # saves inside timed windows
    train = dataclasses.replace(
        cfg.train, steps=steps, log_every=log_every, eval_every=steps, checkpoint_every=checkpoint_every
    )
    return dataclasses.replace(cfg, train=train, halting=dataclasses.replace(cfg.halting, tau=TAU))


def framework_steps_per_sec(n: int, steps: int, cfg: config_lib.Config | None = None) -> float:
    cfg = cfg or framework_config(n, steps)
    from adaptive.training.train import train_and_evaluate

    with tempfile.TemporaryDirectory() as workdir:
        train_and_evaluate(cfg, workdir)
        rows = [r for r in read_jsonl(f"{workdir}/metrics.jsonl") if r["split"] == "train"]
    return statistics.mean(r["perf/steps_per_sec"] for r in rows[1:])  # the first window holds the compile


BASELINES = (
    "ratio = framework_steps_per_sec / bare_jax_steps_per_sec (framework: the mean over its log windows "
    "after the first; bare: one timed run of every step after 20 warm-up steps)"
)


def run(*, n: int, steps: int, json_out: str | None) -> list[dict]:
    if steps < 2:
        raise ConfigError(f"--steps {steps}: a rate needs at least 2 timed steps")
    cfg = framework_config(n, steps)  # refused before either loop runs
    bare = bare_steps_per_sec(n, steps)
    framework = framework_steps_per_sec(n, steps, cfg)
    rows = [
        {
            "n": n,
            "steps": steps,
            "bare_jax_steps_per_sec": bare,
            "framework_steps_per_sec": framework,
            "ratio": framework / bare,
        }
    ]
    print(BASELINES)
    print_table(rows, list(rows[0]))
    write_json(json_out, rows)
    return rows
