"""A language model's budget per token: what it refuses, how it prices tokens, which way it pushes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from adaptive import config as config_lib
from adaptive.compute.budget import Budget
from adaptive.compute.lm_flops import lm_flops
from adaptive.data.byte_vocab import VOCAB_SIZE
from adaptive.nn.models import build_model
from adaptive.training import lm_budget, lm_steps, steps
from tests.helpers import ROOT

LENGTH, BATCH = 16, 4
TOP_P = ["--config.moe.enabled=true", "--config.moe.router=top_p", "--config.moe.renormalize=false"]
TOP_P += ["--config.moe.num_experts=4", "--config.moe.k=3", "--config.moe.top_p=0.7"]
MECHANISMS = {
    "exits, max_prob": ["--config.lm.exits=true"],
    "exits, classifier": ["--config.lm.exits=true", "--config.lm.confidence=classifier"],
    "mod": ["--config.lm.mod_capacity=0.25", "--config.lm.mod_every=2"],
    "top-p experts": TOP_P,
    "act": ["--config.halting.policy=act", "--config.halting.max_steps=4"],
}


class Spec:
    input_shape, num_classes, sequence = (LENGTH,), VOCAB_SIZE, True


def _cfg(*extra: str):
    base = ["--config.model.hidden=32", "--config.model.depth=4", f"--config.data.window={LENGTH}"]
    return config_lib.load(str(ROOT / "configs/lm.py:tiny"), [*base, *extra])


def _budget(cfg) -> Budget:
    return Budget.from_config(cfg, (LENGTH,), VOCAB_SIZE)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.budget.target=1e5"], "fixed compute per token"),
        (["--config.lm.exits=true", "--config.budget.unit=latency_ms", "--config.budget.target=1"], "steps, flops"),
        (["--config.lm.exits=true", "--config.budget.unit=flops", "--config.budget.target=1e12"], "flops per token"),
        (["--config.lm.exits=true", "--config.budget.unit=steps", "--config.budget.target=0.5"], "1 to 4 steps"),
        (["--config.lm.exits=true", "--config.budget.unit=steps", "--config.budget.requests=[2]"], "per-request"),
    ],
    ids=["nothing adapts", "latency", "above the most", "below one block", "requests"],
)
def test_budgets_a_language_model_cannot_meet_are_refused_in_one_line(extra, message):
    with pytest.raises(config_lib.ConfigError, match=message) as error:
        _budget(_cfg(*extra))
    assert "\n" not in str(error.value)


def test_a_token_is_priced_block_by_block_as_the_whole_model_is():
    ones = np.ones((4, 1, 1))
    dense = lm_flops(_cfg("--config.lm.exits=true"), LENGTH, VOCAB_SIZE)
    assert dense.of_tokens(ones, ones)[0, 0] == pytest.approx(dense.full())
    mod = lm_flops(_cfg(*MECHANISMS["mod"]), LENGTH, VOCAB_SIZE)
    share = np.array([1.0 if i not in mod.mod_layers else 0.25 for i in range(4)]).reshape(4, 1, 1)
    assert mod.of_tokens(ones, share)[0, 0] == pytest.approx(mod.full())  # the top-k's share: its mean
    act = lm_flops(_cfg(*MECHANISMS["act"]), LENGTH, VOCAB_SIZE)
    assert act.of_tokens(ones, ones)[0, 0] == pytest.approx(act.full())
    for flops, exits in ((dense, True), (mod, False), (lm_flops(_cfg(*TOP_P), LENGTH, VOCAB_SIZE), False), (act, True)):
        least, most = flops.extremes(exits)
        assert least < most


@pytest.mark.parametrize("threshold, end", [(0.0, "least"), (1.01, "most")])
def test_evaluation_prices_what_each_token_really_ran(threshold, end):
    cfg = _cfg("--config.lm.exits=true")
    model = build_model(cfg, Spec)
    tokens = jax.random.randint(jax.random.key(0), (BATCH, LENGTH), 0, 256)
    out = model(tokens, train=False, exit_threshold=threshold)
    priced = lm_flops(cfg, LENGTH, VOCAB_SIZE, exiting=True)
    least, most = priced.extremes(exits=True)
    spent = np.asarray(priced.of_tokens(out.reached_NxBxL, out.ran_NxBxL))
    np.testing.assert_allclose(spent, least if end == "least" else most, rtol=1e-6)


def _train_on_the_penalty(extra: list[str], target: float, params=None) -> tuple[float, float, dict]:
    """(realized compute per token before, after, the params) 15 Adam steps on the penalty alone."""
    cfg = _cfg(*extra, f"--config.budget.target={target!r}", "--config.budget.two_sided=true")
    budget = _budget(cfg)
    graphdef, fresh = nnx.split(build_model(cfg, Spec), nnx.Param)
    params = fresh if params is None else params
    threshold = cfg.lm.exit_threshold if cfg.lm.exits else None
    tokens = jax.random.randint(jax.random.key(1), (BATCH, LENGTH), 0, 256)

    def penalty(p):
        m = nnx.merge(graphdef, p)
        terms = lm_budget.budget_terms(m(tokens, train=True), budget, 0.0, threshold, m.mod_layers)
        return terms[0], terms[1]["budget/realized_compute"]

    tx = optax.adam(3e-2)
    state = tx.init(params)
    grad = jax.jit(jax.value_and_grad(penalty, has_aux=True))
    (_, before), _ = grad(params)
    for _ in range(15):
        _, g = grad(params)
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    (_, after), _ = grad(params)
    return float(before), float(after), params


@pytest.mark.parametrize("name", list(MECHANISMS))
@pytest.mark.parametrize("direction", ["down", "up"])
def test_the_penalty_moves_decoding_compute_toward_the_target(name, direction):
    extra = list(MECHANISMS[name])
    if direction == "up" and name == "act":  # start where positions halt after about two steps
        extra.append("--config.halting.bias_init=1.0")
    if direction == "up" and name.startswith("exits"):  # start where many tokens leave at once
        extra.append("--config.lm.exit_threshold=0.3" if "classifier" in name else "--config.lm.exit_threshold=0.04")
    extra.append("--config.budget.unit=flops")
    cfg = _cfg(*extra)
    priced = lm_flops(cfg, LENGTH, VOCAB_SIZE, batch=cfg.train.eval_batch_size, exiting=cfg.lm.exits)
    least, most = priced.extremes(cfg.lm.exits or name == "act")
    params = None
    if direction == "up" and name == "top-p experts":  # a fresh router's near-uniform tokens take k already
        params = _train_on_the_penalty(extra, least)[2]
    before, after, _ = _train_on_the_penalty(extra, least if direction == "down" else most, params)
    if direction == "down":
        assert after < before
    else:
        assert after > before


def test_a_train_step_raises_the_multiplier_while_over_the_budget():
    cfg = _cfg("--config.lm.exits=true", "--config.budget.unit=steps", "--config.budget.target=1.5")
    budget = _budget(cfg)
    graphdef, params = nnx.split(build_model(cfg, Spec), nnx.Param)
    loss_fn = lm_steps.loss_fn_of(cfg, Spec, graphdef, budget)
    tx = optax.adam(1e-3)
    state = steps.init_state(graphdef, nnx.to_pure_dict(params), tx, cfg.halting, (LENGTH,), budget, BATCH, loss_fn)
    step = jax.jit(steps.make_train_step(graphdef, tx, cfg.halting, budget, 0, loss_fn))
    tokens = jax.random.randint(jax.random.key(2), (BATCH, LENGTH), 0, 256)
    for _ in range(2):  # max_prob of an untrained exit is ~1/258: every token runs all 4 blocks
        state = step(state, {"x": tokens, "y": jnp.roll(tokens, -1, axis=1)})
    assert float(state["metric_sums"]["budget/realized_compute"]) == pytest.approx(2 * 4.0)
    assert float(state["multiplier"]) > 0
