"""MoE routing and dispatch against a plain-loop reference; caps; aux losses; gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive.nn import routing as R
from adaptive.nn.dispatch import combine, dispatch
from adaptive.nn.moe import MoEFeedForward

E, T, D = 4, 24, 8


def reference_top_k(probs: np.ndarray, k: int, cap: int, renormalize: bool, priority: str = "top1"):
    """Plain loops: choice rank first, then the score descending (the token's top-1 probability,
    or the choice's own), ties by token index; first come first served."""
    gates = np.zeros((len(probs), k))
    experts = np.zeros((len(probs), k), int)
    for t, p in enumerate(probs):
        order = np.argsort(-p, kind="stable")[:k]
        experts[t], gates[t] = order, p[order]
    score = np.repeat(gates[:, :1], k, 1) if priority == "top1" else gates.copy()
    if renormalize:
        gates = gates / gates.sum(1, keepdims=True)
    load = [0] * probs.shape[1]
    kept = np.zeros((len(probs), k), bool)
    slots = np.full((len(probs), k), -1)
    for j in range(k):
        for t in sorted(range(len(probs)), key=lambda t: -score[t, j]):
            e = experts[t, j]
            if load[e] < cap:
                kept[t, j], slots[t, j] = True, load[e]
                load[e] += 1
    return experts, gates, kept, slots


def _as_TxK(routing, k):
    reshape = lambda a: np.asarray(a).reshape(k, -1).T  # noqa: E731  (assignments are choice-major)
    return reshape(routing.expert_A), reshape(routing.gate_A), reshape(routing.kept_A), reshape(routing.slot_A)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    k=st.integers(1, 3),
    cap=st.integers(1, 12),
    renorm=st.booleans(),
    scale=st.sampled_from([0.1, 1.0, 10.0]),
    priority=st.sampled_from(R.PRIORITIES),
)
def test_top_k_routing_matches_the_loop_reference(seed, k, cap, renorm, scale, priority):
    logits = scale * np.random.default_rng(seed).standard_normal((T, E)).astype(np.float32)
    routing = R.top_k(jnp.asarray(logits), k, cap, renormalize=renorm, priority=priority)
    experts, gates, kept, slots = reference_top_k(np.asarray(jax.nn.softmax(logits)), k, cap, renorm, priority)
    got_e, got_g, got_k, got_s = _as_TxK(routing, k)
    np.testing.assert_array_equal(got_e, experts)
    np.testing.assert_array_equal(got_k, kept)
    np.testing.assert_array_equal(np.where(kept, got_s, -1), slots)
    np.testing.assert_allclose(got_g, np.where(kept, gates, 0), rtol=1e-5, atol=1e-6)
    load = np.bincount(np.asarray(routing.expert_A)[np.asarray(routing.kept_A)], minlength=E)
    assert (load <= cap).all()  # capacity never exceeded


def _kept_pairs(routing):
    kept = np.asarray(routing.kept_A)
    tokens, experts = np.asarray(routing.token_A)[kept].tolist(), np.asarray(routing.expert_A)[kept].tolist()
    return set(zip(tokens, experts, strict=True))


def test_priority_rules_keep_different_assignments_past_capacity():
    """One slot per expert, top-2. First choices: tokens 0 and 2 want expert 0 (token 2 is more
    confident, 0.6 > 0.5, and keeps it), token 1 takes expert 2. Second choices: tokens 0 and 1
    both want expert 1 (token 2's second, expert 2, is full). "own" ranks them by that second
    probability (0.45 > 0.15: token 0 keeps it); "top1" by each token's top-1 probability
    (0.8 > 0.5: token 1 keeps it, and token 0 is dropped entirely), as V-MoE's batch priority."""
    probs = np.array([[0.50, 0.45, 0.05], [0.05, 0.15, 0.80], [0.60, 0.10, 0.30]], np.float32)
    logits = jnp.log(jnp.asarray(probs))
    own = R.top_k(logits, 2, 1, renormalize=False, priority="own")
    top1 = R.top_k(logits, 2, 1, renormalize=False, priority="top1")
    assert _kept_pairs(own) == {(2, 0), (1, 2), (0, 1)}
    assert _kept_pairs(top1) == {(2, 0), (1, 2), (1, 1)}
    top_p = R.top_p(logits, 2, 0.9, 1, renormalize=False, priority="top1")  # every token takes 2 here
    assert _kept_pairs(top_p) == _kept_pairs(top1)
    with pytest.raises(ValueError, match=r"priority 'best' is not one of \('top1', 'own'\)"):
        R.top_k(logits, 2, 1, renormalize=False, priority="best")


@pytest.mark.parametrize("priority", R.PRIORITIES)
def test_the_layer_routes_with_its_priority(priority):
    x = jnp.asarray(np.random.default_rng(10).standard_normal((T, D)), jnp.float32)
    layer = _layer(priority=priority, capacity_factor=0.5)
    routing, logits, cap = layer.route(x, train=True)
    want = R.top_k(logits, 2, cap, renormalize=True, priority=priority)
    np.testing.assert_array_equal(np.asarray(routing.kept_A), np.asarray(want.kept_A))
    with pytest.raises(ValueError, match=r"priority 'x' is not one of"):
        _layer(priority="x")


def test_everything_to_one_expert_keeps_the_capacity():
    logits = jnp.zeros((T, E)).at[:, 2].set(50.0)  # an adversarial router: one expert wins every token
    routing = R.top_k(logits, 2, 5, renormalize=False)
    kept_to_2 = np.asarray(routing.kept_A & (routing.expert_A == 2)).sum()
    assert kept_to_2 == 5
    assert np.asarray(routing.kept_A).sum() <= 2 * 5 + 0  # second choices share the others' slots
    metrics = R.routing_metrics(routing, E)
    assert 0 < float(metrics["moe/drop_fraction"]) < 1


def test_ties_route_without_nan():
    routing = R.top_k(jnp.zeros((T, E)), 2, 100, renormalize=True)  # all experts tie for every token
    assert np.isfinite(np.asarray(routing.gate_A)).all()
    np.testing.assert_allclose(np.asarray(routing.gate_A).reshape(2, T).sum(0), 1.0, rtol=1e-6)
    assert (np.asarray(routing.expert_A).reshape(2, T)[0] != np.asarray(routing.expert_A).reshape(2, T)[1]).all()


def test_expert_choice_takes_each_experts_top_tokens():
    logits = np.random.default_rng(0).standard_normal((T, E)).astype(np.float32)
    routing = R.expert_choice(jnp.asarray(logits), 5)
    probs = np.asarray(jax.nn.softmax(logits))
    for e in range(E):
        chosen = np.asarray(routing.token_A)[np.asarray(routing.expert_A) == e]
        assert set(chosen) == set(np.argsort(-probs[:, e], kind="stable")[:5])


@pytest.mark.parametrize("k_active", [1, 2])
@pytest.mark.parametrize("crowd", [False, True])
def test_expert_choice_holds_an_expert_budget_per_token(k_active, crowd):
    """Experts choose, so one token can be taken by all of them (`crowd`: every expert prefers
    the same few tokens); an expert budget keeps each token's highest-gated k_active."""
    logits = np.random.default_rng(3).standard_normal((T, E)).astype(np.float32)
    if crowd:  # all tokens but three sure of expert 0: experts 1.. all take those three first
        logits[3:, 0] += 20.0
        logits[:3] = 0.0
    full = R.expert_choice(jnp.asarray(logits), 5)
    routing = R.expert_choice(jnp.asarray(logits), 5, jnp.int32(k_active))
    kept, token, gate = (np.asarray(a) for a in (routing.kept_A, routing.token_A, routing.gate_A))
    per_token = np.bincount(token[kept], minlength=T)
    assert per_token.max() <= k_active and (gate[~kept] == 0).all()
    if crowd:
        assert np.bincount(np.asarray(full.token_A), minlength=T)[:3].min() == E - 1 > k_active  # work for the cap
    for t in np.unique(token):  # the kept ones are the token's best
        mine = token == t
        assert gate[mine & kept].min(initial=np.inf) >= np.asarray(full.gate_A)[mine & ~kept].max(initial=-np.inf)
    # one budget per token (T x 1), held at any budget below the number of experts (a model's k
    # included: its caps say k experts per token); none: uncapped, as trained
    per_token = R.expert_choice(jnp.asarray(logits), 5, jnp.full((T, 1), k_active, jnp.int32))
    np.testing.assert_array_equal(np.asarray(per_token.kept_A), kept)
    assert (
        np.asarray(full.kept_A).all() and np.asarray(R.expert_choice(jnp.asarray(logits), 5, jnp.int32(E)).kept_A).all()
    )


def test_dispatch_and_combine_against_a_loop():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, D)).astype(np.float32)
    routing = R.top_k(jnp.asarray(rng.standard_normal((T, E)), jnp.float32), 2, 4, renormalize=True)
    buffer = np.asarray(dispatch(jnp.asarray(x), routing, E, 4))
    want = np.zeros((E, 4, D), np.float32)
    for a in range(len(routing.token_A)):
        if routing.kept_A[a]:
            want[routing.expert_A[a], routing.slot_A[a]] = x[routing.token_A[a]]
    np.testing.assert_array_equal(buffer, want)
    y = rng.standard_normal((E, 4, D)).astype(np.float32)
    out = np.asarray(combine(jnp.asarray(y), routing, T))
    ref = np.zeros((T, D), np.float32)
    for a in range(len(routing.token_A)):
        if routing.kept_A[a]:
            ref[routing.token_A[a]] += float(routing.gate_A[a]) * y[routing.expert_A[a], routing.slot_A[a]]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_load_balancing_loss_is_smallest_under_uniform_routing():
    uniform = R.load_balancing_loss(R.top_k(jnp.zeros((64, E)), 1, 64, renormalize=False), E)
    skewed_logits = jnp.zeros((64, E)).at[:, 0].set(3.0)
    skewed = R.load_balancing_loss(R.top_k(skewed_logits, 1, 64, renormalize=False), E)
    np.testing.assert_allclose(float(uniform), 1.0, rtol=1e-5)
    assert float(skewed) > float(uniform)


def _layer(**kw):
    return MoEFeedForward(D, 16, E, rngs=nnx.Rngs(0), **kw)


def test_dropless_ragged_path_equals_capacity_path_when_nothing_is_dropped():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((T, D)), jnp.float32)
    padded = _layer(capacity_factor=float(E))  # capacity = k*T: nothing can be dropped
    dropless = _layer(dropless=True)
    a, b = padded(x), dropless(x)
    assert float(a.metrics["moe/drop_fraction"]) == 0.0
    np.testing.assert_allclose(np.asarray(a.y_TxD), np.asarray(b.y_TxD), rtol=1e-5, atol=1e-5)


def test_gradients_reach_router_and_experts():
    layer = _layer(capacity_factor=1.0)
    graphdef, params = nnx.split(layer, nnx.Param)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((T, D)), jnp.float32)

    def loss(p):
        out = nnx.merge(graphdef, p)(x)
        return jnp.sum(out.y_TxD**2) + out.aux_loss

    grads = jax.grad(loss)(params)
    for name in ("router", "w_in", "w_out"):
        assert float(jnp.abs(jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads[name])])).sum()) > 0, name


@pytest.mark.parametrize("k_active", [1, 2])
def test_expert_budget_caps_experts_per_token(k_active):
    layer = _layer(k=2, capacity_factor=4.0)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((T, D)), jnp.float32)
    out = layer(x, train=False, k_active=jnp.int32(k_active))
    assert int(out.experts_T.max()) <= k_active


def test_limit_experts_returns_a_capped_copy_and_leaves_the_model_as_it_was():
    from adaptive.nn.moe import limit_experts

    model = _layer(k=2, num_groups=4, expert_parallel=True, capacity_factor=4.0)
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    limited = limit_experts(model, 1)
    assert limited is not model and isinstance(limited, MoEFeedForward)
    assert (limited.k, limited.num_groups, limited.expert_parallel) == (1, 1, False)
    assert (model.k, model.num_groups, model.expert_parallel) == (2, 4, True)  # untouched
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    x = jnp.asarray(np.random.default_rng(8).standard_normal((T, D)), jnp.float32)
    out = limited(x, train=False)
    assert int(out.experts_T.max()) <= 1
    assert limit_experts(model, None).k == 2  # None: the cap as trained


def test_expert_parallelism_is_chosen_by_the_layer_not_by_the_mesh_around_it():
    """Off, a layer never looks at a mesh; on, it refuses a context mesh that cannot shard its
    experts in one line, and with no mesh set runs the one-device code."""
    x = jnp.asarray(np.random.default_rng(9).standard_normal((T, D)), jnp.float32)
    off, on = _layer(), _layer(expert_parallel=True)
    want = np.asarray(off(x).y_TxD)
    np.testing.assert_array_equal(np.asarray(on(x).y_TxD), want)  # no mesh set
    mesh = jax.make_mesh((1, 1), ("data", "expert"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with jax.set_mesh(mesh):
        np.testing.assert_array_equal(np.asarray(off(x).y_TxD), want)
        with pytest.raises(ValueError, match=r"needs a context mesh with an 'expert' axis of more than one device"):
            on(x)


def test_models_are_built_expert_parallel_exactly_when_the_mesh_shards_experts():
    from adaptive import config as config_lib
    from adaptive.nn.models import build_model
    from tests.helpers import ROOT

    class Spec:
        input_shape, num_classes = (12,), 3

    for expert in (1, 2):
        cfg = config_lib.load(f"{ROOT}/configs/moe.py", ["--config.model.hidden=16", f"--config.mesh.expert={expert}"])
        assert config_lib.moe_layers(cfg).expert_parallel == (expert > 1)
        layers = [m for _, m in build_model(cfg, Spec).iter_modules() if isinstance(m, MoEFeedForward)]
        assert layers and all(m.expert_parallel == (expert > 1) for m in layers)
        assert all(m.w_in.shape[-1] == cfg.moe.expert_width(16) for m in layers)
        assert all(m.priority == cfg.moe.priority == "top1" for m in layers)  # the paper's rule by default
        assert "expert_parallel" not in config_lib.to_dict(cfg)["moe"]  # not a config key


@pytest.mark.parametrize("config", ["configs/moe.py:tiny", "configs/sut.py:tiny"])
def test_moe_models_train_log_routing_metrics_and_resume(config, tmp_path):
    """A MoE model (alone, and under ACT as a Sparse Universal Transformer) trains, logs moe/
    metrics (expert usage per expert), and a rerun on the finished workdir restores it."""
    import dataclasses

    from adaptive import config as config_lib
    from adaptive.training.metrics import read_jsonl
    from adaptive.training.train import train_and_evaluate
    from tests.helpers import QUIET, ROOT

    cfg = config_lib.load(f"{ROOT}/{config}", QUIET)
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, steps=10, eval_every=10, log_every=5, checkpoint_every=5)
    )
    final = train_and_evaluate(cfg, tmp_path)
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert len(rows[-1]["moe/expert_usage"]) == cfg.moe.num_experts
    assert 0.0 <= rows[-1]["moe/drop_fraction"] <= 1.0
    assert final["eval/experts_mean"] > 0
    assert train_and_evaluate(cfg, tmp_path) == final  # resumes at the end: same eval, no training
    from adaptive.evaluation.report import report

    (row,) = report([str(tmp_path)], splits=[], plot=None, markdown=None, usage=str(tmp_path / "usage.png"))
    assert row["experts_per_example"] == final["eval/experts_mean"]
    assert 0.0 <= row["train_drop_fraction"] <= 1.0 and row["usage_entropy"] > 0
    assert (tmp_path / "usage.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("router", "dispatch"), [("top_k", "blocks"), ("expert_choice", "capacity"), ("expert_choice", "blocks")]
)
def test_model_expert_budget_bounds_expert_applications(router, dispatch):
    """A traced budget (k_active) and a static one (limit_experts, as an exported function per k
    has it) both hold per token, at the trained k too (an artifact's caps say k): expert choice's
    experts pick tokens, so a cap per token is what holds it (training leaves them uncapped)."""
    from adaptive import config as config_lib
    from adaptive.inference.infer import budgeted_model
    from adaptive.nn.models import build_model
    from adaptive.nn.moe import limit_experts
    from tests.helpers import ROOT

    class Spec:
        input_shape, num_classes = (12,), 3

    cfg = config_lib.load(
        f"{ROOT}/configs/moe.py",
        ["--config.model.hidden=16", "--config.halting.policy=act", "--config.halting.max_steps=4"]
        + [f"--config.moe.router={router}", f"--config.moe.dispatch={dispatch}"],
    )
    model = build_model(cfg, Spec)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((16, 12)), jnp.float32)
    uncapped = model.infer(x, jnp.int32(3), compact=False)  # expert choice: tokens taken by more than k
    assert router == "top_k" or (np.asarray(uncapped.experts_B) > 2 * np.asarray(uncapped.steps_B)).any()
    graphdef, params = nnx.split(model, nnx.Param)
    eval_step_model = budgeted_model(graphdef, nnx.to_pure_dict(params), trained_groups=True)  # its groups kept
    for k_active in (1, 2):
        for out in (
            model.infer(x, jnp.int32(3), k_active=jnp.int32(k_active), compact=False),
            limit_experts(model, k_active).infer(x, jnp.int32(3), compact=False),
            limit_experts(model, None if k_active == 2 else 1).infer(x, jnp.int32(3), compact=False),  # as served
            *([eval_step_model.infer(x, jnp.int32(3), compact=False)] if k_active == 2 else []),  # eval's scores
        ):
            assert (np.asarray(out.experts_B) <= k_active * np.asarray(out.steps_B)).all()
            assert (np.asarray(out.steps_B) <= 3).all()


def test_predictor_expert_budget_uses_one_executable_per_k():
    from adaptive import config as config_lib
    from adaptive.inference.predictor import BudgetedPredictor
    from adaptive.nn.models import build_model
    from tests.helpers import ROOT

    class Spec:
        input_shape, num_classes = (12,), 3

    cfg = config_lib.load(f"{ROOT}/configs/moe.py", ["--config.model.hidden=16"])
    graphdef, params = nnx.split(build_model(cfg, Spec), nnx.Param)
    predictor = BudgetedPredictor(graphdef, nnx.to_pure_dict(params), (12,), cap=2, k_max=2)
    x = np.random.default_rng(6).standard_normal((16, 12)).astype(np.float32)
    for k in (1, 2):
        out = predictor.predict(x, experts=k)
        assert (np.asarray(out.experts_B) <= k * 2).all()
    sizes = {k: f._cache_size() for k, f in predictor._infer_by_k.items()}
    for k in (2, 1, 2):
        predictor.predict(x, experts=k)
    assert {k: f._cache_size() for k, f in predictor._infer_by_k.items()} == sizes  # no recompiles
    for bad in (0, 3, 1.5):
        with pytest.raises(ValueError, match=r"expert budget must be a whole number in \[1, 2\]"):
            predictor.predict(x, experts=bad)


def test_top_p_takes_experts_until_their_mass_reaches_p():
    """Probabilities per token (4 experts): a token takes choices until the mass before the next
    one reaches p = 0.6, never more than k."""
    probs = np.array(
        [
            [0.70, 0.10, 0.10, 0.10],  # the first choice alone holds 0.7 >= 0.6: one expert
            [0.40, 0.30, 0.20, 0.10],  # 0.4 < 0.6, then 0.7: two
            [0.25, 0.25, 0.25, 0.25],  # 0.25, 0.5 < 0.6, then 0.75: three (k = 3)
            [0.30, 0.28, 0.22, 0.20],  # 0.3, 0.58 < 0.6: would take four, k caps it at three
        ],
        np.float32,
    )
    logits = jnp.log(jnp.asarray(probs))
    routing = R.top_p(logits, 3, 0.6, cap=16, renormalize=False)
    assert np.asarray(routing.active_A).reshape(3, 4).sum(0).tolist() == [1, 2, 3, 3]
    assert np.asarray(routing.soft_experts_T).round(4).tolist() == [1.0, 2.0, 3.0, 3.0]
    capped = R.top_p(logits, 3, 0.6, cap=16, renormalize=False, k_active=jnp.int32(2))
    assert np.asarray(capped.active_A).reshape(3, 4).sum(0).tolist() == [1, 2, 2, 2]


def test_lowering_the_top_p_expert_count_makes_the_router_confident():
    """Gradient descent on the differentiable count alone lowers the realized count."""
    logits = jnp.asarray(np.random.default_rng(7).standard_normal((64, 8)), jnp.float32) * 0.3
    count = lambda z: R.top_p(z, 4, 0.5, cap=64, renormalize=False).soft_experts_T.mean()  # noqa: E731
    before, grad = float(count(logits)), jax.jit(jax.grad(count))
    for _ in range(50):
        logits = logits - 5.0 * grad(logits)
    assert before > 2.5 and float(count(logits)) < before - 1.0


def test_a_flops_budget_trains_the_number_of_experts(tmp_path):
    """A MoE-only model (fixed depth, top-p routing, k <= 2) trained to the FLOPs of 1.4 experts
    per token lands there: the budget reaches the router."""
    import dataclasses

    from adaptive import config as config_lib
    from adaptive.compute.flops import flops_model
    from adaptive.training.metrics import read_jsonl
    from adaptive.training.train import train_and_evaluate
    from tests.helpers import QUIET, ROOT

    overrides = [*QUIET, "--config.moe.router=top_p", "--config.moe.renormalize=false", "--config.budget.unit=flops"]
    cfg = config_lib.load(f"{ROOT}/configs/moe.py:tiny", overrides)
    flops = flops_model(cfg, (40,), 10, batch=cfg.train.batch_size, train=True)
    assert flops.fewest(2.0) < flops.at_steps(2.0, 2 * 1.4) < flops.at_steps(2.0)
    cfg = config_lib.load(
        f"{ROOT}/configs/moe.py:tiny",
        [*overrides, f"--config.budget.target={flops.at_steps(2.0, 2.8)}", "--config.budget.two_sided=True"],
    )
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=350, log_every=50, eval_every=350))
    final = train_and_evaluate(cfg, tmp_path)
    last = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"][-1]
    assert last["moe/experts_per_token"] == pytest.approx(1.4, rel=0.05)
    assert last["budget/realized_compute"] == pytest.approx(last["budget/target"], rel=0.05)
    assert final["eval/experts_mean"] / 2 == pytest.approx(1.4, rel=0.10)  # 2 layers, per token
