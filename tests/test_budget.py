"""Budgets: validation, the ceiling and two-sided penalties, projected and plain dual ascent, and
training under each."""

import dataclasses
import subprocess

import jax
import jax.numpy as jnp
import pytest

from adaptive import config as config_lib
from adaptive.compute.budget import Budget
from adaptive.compute.flops import flops_model
from adaptive.config import ConfigError
from adaptive.training.metrics import read_jsonl
from adaptive.training.train import train_and_evaluate
from tests.helpers import QUIET, ROOT, train_command

SHAPE, CLASSES = (16,), 2


def _budget(*overrides):
    cfg = config_lib.load(f"{ROOT}/configs/parity.py", list(overrides))
    return cfg, Budget.from_config(cfg, SHAPE, CLASSES)


def test_no_target_means_no_budget():
    assert _budget()[1] is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--config.budget.target=0"], "'budget.target' is 0.0; a budget must be positive"),
        (["--config.budget.target=-2"], "'budget.target' is -2.0; a budget must be positive"),
        (["--config.budget.target=21"], "'budget.target' is 21 steps; this model spends 1 to 20 steps per example"),
        (["--config.budget.unit=flops", "--config.budget.target=10"], "this model spends"),
        (["--config.budget.unit=joules", "--config.budget.target=1"], "allowed values: 'steps', 'flops', 'macs'"),
    ],
)
def test_invalid_budgets_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        _budget(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_units_follow_the_flops_model():
    cfg, budget = _budget("--config.budget.unit=macs", "--config.budget.target=100000")
    model = flops_model(cfg, SHAPE, CLASSES, batch=cfg.train.batch_size, train=True)
    assert budget.compute(7.0) == pytest.approx(model.at_steps(7.0) / 2)


FORMS = {  # the penalty forms, as config overrides
    "ceiling": ("--config.budget.penalty=lagrangian",),
    "two_sided": ("--config.budget.penalty=lagrangian", "--config.budget.two_sided=True"),
    "hinge": ("--config.budget.penalty=hinge",),
}
OVER, UNDER = jnp.full((4,), 12.0), jnp.full((4,), 4.0)  # against a target of 8 steps


def _form(form, target=8):
    return _budget(f"--config.budget.target={target}", *FORMS[form])[1]


def _grad(budget, compute_B, multiplier):
    return float(jax.grad(budget.penalty_term)(compute_B, jnp.float32(multiplier)).sum())


@pytest.mark.parametrize("form", list(FORMS))
def test_over_the_budget_every_penalty_pushes_compute_down(form):
    budget = _form(form)
    assert _grad(budget, OVER, 0.0) > 0 and float(budget.penalty_term(OVER, 0.0)) > 0
    if form != "hinge":  # a larger multiplier pushes harder
        assert _grad(budget, OVER, 1.0) > _grad(budget, OVER, 0.0)


@pytest.mark.parametrize("multiplier", [0.0, 0.5, 2.0])
def test_under_the_budget_a_ceiling_has_no_gradient(multiplier):
    """While lambda + rho * g <= 0 the ceiling exerts no force; at lambda = 0 it costs nothing."""
    budget = _form("ceiling")  # rho = 10, g = -4 / 8 = -0.5: inactive for lambda < 5
    assert _grad(budget, UNDER, multiplier) == 0.0
    value = float(budget.penalty_term(UNDER, multiplier))
    assert value == pytest.approx(-(multiplier**2) / (2 * budget.weight))
    assert (value == 0.0) == (multiplier == 0.0)
    assert _grad(_form("hinge"), UNDER, multiplier) == 0.0


def test_under_the_target_two_sided_pushes_compute_up():
    budget = _form("two_sided")
    assert _grad(budget, UNDER, 0.0) < 0
    assert _grad(budget, UNDER, -1.0) < _grad(budget, UNDER, 0.0)  # a negative multiplier pulls harder


def test_the_ceiling_is_the_two_sided_term_where_active_and_continuous_where_it_switches():
    ceiling, two_sided = _form("ceiling"), _form("two_sided")
    for compute, multiplier in ((12.0, 0.0), (12.0, 1.5), (7.0, 2.0), (5.0, 4.0)):  # lambda + rho * g > 0
        c_B = jnp.full((4,), compute)
        assert float(ceiling.penalty_term(c_B, multiplier)) == float(two_sided.penalty_term(c_B, multiplier))
        assert _grad(ceiling, c_B, multiplier) == _grad(two_sided, c_B, multiplier)
    lam, rho, scale = 2.0, ceiling.weight, ceiling.scale  # switches at g = -lambda / rho
    edge = ceiling.target - lam / rho * scale
    left, right = (float(ceiling.penalty_term(jnp.full((4,), edge + d), lam)) for d in (-1e-3, 1e-3))
    assert left == pytest.approx(right, abs=1e-4) and left == pytest.approx(-(lam**2) / (2 * rho), abs=1e-4)


def test_a_ceiling_with_no_quadratic_weight_is_the_plain_lagrangian():
    budget = _budget("--config.budget.target=8", "--config.budget.weight=0")[1]
    for c_B, lam in ((UNDER, 0.0), (UNDER, 0.5), (OVER, 0.5)):
        gap = (float(c_B.mean()) - 8) / budget.scale
        assert float(budget.penalty_term(c_B, lam)) == pytest.approx(lam * gap)
        assert _grad(budget, c_B, lam) == pytest.approx(lam / budget.scale)  # summed over the batch mean


def test_two_sided_is_the_augmented_lagrangian_of_an_equality_bit_for_bit():
    """The two-sided form is what every budget did before the ceiling: lambda * g + rho / 2 * g^2,
    and lambda + dual_lr * g unprojected. Pinned exactly, eagerly and under jit, values and grads."""
    budget = _form("two_sided")

    def reference(c_B, lam):
        gap = (jnp.mean(c_B) - budget.target) / budget.scale
        return lam * gap + 0.5 * budget.weight * gap**2

    def reference_step(lam, c_B):
        return lam + budget.dual_lr * (jnp.mean(c_B) - budget.target) / budget.scale

    pairs = [(budget.penalty_term, reference), (jax.grad(budget.penalty_term), jax.grad(reference))]
    pairs += [(jax.jit(ours), jax.jit(theirs)) for ours, theirs in pairs]
    steps = [(budget.dual_step, reference_step), (jax.jit(budget.dual_step), jax.jit(reference_step))]
    for c_B in (OVER, UNDER, jnp.array([3.0, 9.5, 8.25, 1.0])):
        for lam in (jnp.float32(-0.7), jnp.float32(0.0), jnp.float32(1.3)):
            for ours, theirs in pairs:
                assert ours(c_B, lam).tolist() == theirs(c_B, lam).tolist()
            for ours, theirs in steps:
                assert ours(lam, c_B).tolist() == theirs(lam, c_B).tolist()


def test_dual_ascent_on_a_ceiling_stays_nonnegative_and_relaxes_under_the_budget():
    budget = _form("ceiling")
    assert float(budget.dual_step(0.0, OVER)) == pytest.approx(budget.dual_lr * 0.5)  # g = 4 / 8
    assert float(budget.dual_step(0.0, UNDER)) == 0.0  # stays at 0
    assert float(budget.dual_step(0.3, jnp.array([8.0]))) == pytest.approx(0.3)
    lam = jnp.float32(0.3)
    for _ in range(5):  # 0.3 - 0.05 a step under the budget: 0 after 6, and it stays there
        lam = budget.dual_step(lam, UNDER)
    assert 0 < float(lam) < 0.3
    for _ in range(3):
        lam = budget.dual_step(lam, UNDER)
    assert float(lam) == 0.0


def test_two_sided_dual_ascent_goes_negative_under_the_target_and_a_hinge_has_no_multiplier():
    assert float(_form("two_sided").dual_step(0.0, UNDER)) < 0
    assert float(_form("two_sided").dual_step(0.0, OVER)) > 0
    assert float(_form("hinge").dual_step(0.3, OVER)) == 0.3


def test_two_sided_needs_the_lagrangian():
    with pytest.raises(ConfigError) as err:
        _budget("--config.budget.target=8", "--config.budget.penalty=hinge", "--config.budget.two_sided=True")
    assert str(err.value) == "config key 'budget.two_sided' needs budget.penalty=lagrangian; penalty is 'hinge'"


def _train(tmp_path, steps, *overrides):
    cfg = config_lib.load(f"{ROOT}/configs/parity.py:tiny", [*QUIET, *overrides])
    train = dataclasses.replace(cfg.train, steps=steps, log_every=50, eval_every=steps, checkpoint_every=steps)
    final = train_and_evaluate(dataclasses.replace(cfg, train=train), tmp_path)
    return final, [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]


def test_training_under_a_loose_ceiling_spends_what_the_task_needs(tmp_path):
    """Parity's tiny ACT model (ponder cost on, cap 6) settles near 4 steps on its own; a ceiling
    of 5 never binds: the multiplier stays 0 and compute stays under it."""
    final, rows = _train(tmp_path, 300, "--config.budget.target=5")
    assert all(r["budget/lagrange_multiplier"] == 0.0 for r in rows)
    assert rows[-1]["budget/realized_compute"] < 4.5 and final["eval/steps_mean"] < 4.5


def test_training_under_a_binding_ceiling_brings_compute_down_to_it(tmp_path):
    """With no ponder cost the model starts near 4 steps; a ceiling of 3 raises the multiplier
    until compute is under it, then the multiplier relaxes back to 0."""
    final, rows = _train(tmp_path, 300, "--config.budget.target=3", "--config.halting.tau=0")
    assert rows[0]["budget/realized_compute"] > 3 and max(r["budget/lagrange_multiplier"] for r in rows) > 0
    assert rows[-1]["budget/realized_compute"] <= 3 and final["eval/steps_mean"] <= 3
    assert rows[-1]["budget/lagrange_multiplier"] == 0.0


def test_two_sided_training_lands_realized_compute_on_the_target(tmp_path):
    """The same model as the loose ceiling's, two-sided: pushed up from ~4 steps onto the 5 asked for."""
    final, rows = _train(tmp_path, 300, "--config.budget.target=5", "--config.budget.two_sided=True")
    assert min(r["budget/lagrange_multiplier"] for r in rows) < 0
    assert rows[-1]["budget/target"] == 5.0
    assert rows[-1]["budget/realized_compute"] == pytest.approx(5.0, rel=0.05)
    assert final["eval/steps_mean"] == pytest.approx(5.0, rel=0.05)


def test_cli_refuses_an_unreachable_budget_before_creating_the_workdir(tmp_path):
    proc = subprocess.run(
        train_command(tmp_path / "w", "--config.budget.target=50"), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2  # (a first run also says it prepares the data the budget is priced on)
    assert proc.stderr.strip().splitlines()[-1] == (
        "adaptive: error: config key 'budget.target' is 50 steps; this model spends 1 to 6 steps per example"
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()


def test_request_budgets_become_step_caps_and_a_distribution():
    _, budget = _budget("--config.budget.requests=2,4.5", "--config.budget.request_weights=3,1")
    assert budget.target is None and budget.request_steps == (2, 4) and budget.request_probs == (0.75, 0.25)
    draws = jax.device_get(budget.sample_steps(jax.random.key(0), 4000))
    assert set(draws.tolist()) == {2, 4} and (draws == 2).mean() == pytest.approx(0.75, abs=0.03)
    cfg, flops = _budget("--config.budget.unit=flops", "--config.budget.target=300000")
    at = flops.compute  # a FLOPs request caps steps at the most whose FLOPs fit
    _, budget = _budget("--config.budget.unit=flops", f"--config.budget.requests={float(at(3.5))}")
    assert budget.request_steps == (3,) and budget.request_probs == (1.0,)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--config.budget.requests=0.5"], "'budget.requests' holds 0.5 steps; a request needs 1 to 20"),
        (["--config.budget.requests=3,30"], "'budget.requests' holds 30 steps"),
        (["--config.budget.requests=3,4", "--config.budget.request_weights=1"], "give one weight >= 0 per request (2)"),
        (["--config.budget.requests=3", "--config.budget.request_weights=0"], "not all 0"),
        (["--config.budget.requests=3,x"], "'budget.requests[1]' must be float"),
        (
            ["--config.budget.requests=3", "--config.halting.policy=none"],
            "'budget.requests' needs an adaptive model; halting.policy is 'none'",
        ),
    ],
)
def test_bad_request_budgets_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        _budget(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_training_and_evaluation_under_request_budgets_respect_each_cap(tmp_path, capsys):
    """Trained with caps of 2 or 4 steps drawn per example (3:1), the model never runs past a
    request's cap in training or evaluation, and `adaptive eval` scores it under the same draws."""
    from adaptive.cli.eval_reports import print_compute_report
    from adaptive.evaluation.budgeted_eval import evaluate_run

    cfg = config_lib.load(
        f"{ROOT}/configs/parity.py:tiny",
        [*QUIET, "--config.budget.requests=2,4", "--config.budget.request_weights=3,1", "--config.halting.tau=0"],
    )
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=40, log_every=20, eval_every=40))
    final = train_and_evaluate(cfg, tmp_path)
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    # no ponder cost: every example runs to its cap, 2 or 4, so the mean is 0.75 * 2 + 0.25 * 4
    assert rows[-1]["train/steps_mean"] == pytest.approx(2.5, abs=0.25)
    assert final["eval/steps_max"] <= 4 and 2.0 <= final["eval/steps_mean"] <= 3.0
    metrics, _ = evaluate_run(tmp_path)
    assert metrics["budget"] == "requests" and metrics["request_step_caps"] == {"2": 0.75, "4": 0.25}
    assert metrics["eval/steps_mean"] == final["eval/steps_mean"]  # the same draws
    at_cap, _ = evaluate_run(tmp_path, budget=6)
    assert at_cap["eval/steps_mean"] > final["eval/steps_mean"]
    print_compute_report(str(tmp_path), metrics, [])  # its figures are at every cap: said so, not run together
    said = capsys.readouterr().out
    assert said.startswith(
        "the report below runs every step budget up to the full cap, not the run's request caps (2, 4"
    )


def test_training_refuses_a_target_the_penalty_cannot_steer():
    """Compute the penalty cannot move (every step run, exits chosen by a threshold, top-p experts
    priced in steps): the multiplier and the loss would grow without end. Such a config still
    loads (a run trained before the check is read); training refuses it in one line."""
    cases = [
        (
            "parity.py",
            ["--config.halting.policy=none", "--config.model.depth=10", "--config.budget.target=10"],
            "every step",
        ),
        ("parity.py", ["--config.halting.policy=early_exit", "--config.budget.target=8"], "confidence threshold"),
        ("budget.py:moe", ["--config.budget.unit=steps", "--config.budget.target=2"], "top-p experts priced"),
    ]
    for config, overrides, message in cases:
        cfg = config_lib.load(f"{ROOT}/configs/{config}", overrides)
        shape, classes = (SHAPE, CLASSES) if config == "parity.py" else ((40,), 10)
        budget = Budget.from_config(cfg, shape, classes)
        with pytest.raises(ConfigError, match=message) as err:
            budget.check_trainable(cfg)
        assert "\n" not in str(err.value)
    for config, overrides, shape, classes in [
        ("parity.py", ["--config.budget.target=8"], SHAPE, CLASSES),  # ACT
        ("budget.py:moe", [], (40,), 10),  # top-p experts under a FLOPs target
    ]:
        cfg = config_lib.load(f"{ROOT}/configs/{config}", overrides)
        Budget.from_config(cfg, shape, classes).check_trainable(cfg)


def test_a_two_sided_target_near_the_least_compute_is_warned_of(caplog):
    """Landing on a level near the cheapest path drives nearly everything onto it; a ceiling
    there, or a level well above it, is the model's own choice and says nothing."""
    parity = f"{ROOT}/configs/parity.py"
    lm = [f"{ROOT}/configs/lm.py:tiny", "--config.lm.exits=true", "--config.budget.unit=steps"]
    moe = f"{ROOT}/configs/moe.py:tiny"
    top_p = ["--config.moe.router=top_p", "--config.moe.renormalize=false", "--config.budget.unit=flops"]
    top_p += ["--config.budget.penalty=lagrangian"]
    cases = [
        (parity, ["--config.budget.unit=steps", "--config.budget.target=1.5"], True, True),  # 1 to 20 steps
        (parity, ["--config.budget.unit=steps", "--config.budget.target=1.5"], False, False),  # a ceiling
        (parity, ["--config.budget.unit=steps", "--config.budget.target=10"], True, False),
        (lm[0], [*lm[1:], "--config.budget.target=1.05"], True, True),
        # top-p experts in every step (halting.policy=none): the floor is each step at one expert
        (moe, [*top_p, "--config.budget.target=14000"], True, True),  # 13498 to 22330 FLOPs
        (moe, [*top_p, "--config.budget.target=16000"], True, False),
    ]
    for spec, overrides, two_sided, warned in cases:
        cfg = config_lib.load(spec, [*overrides, f"--config.budget.two_sided={two_sided}"])
        if spec == moe:
            budget = Budget.from_config(cfg, (40,), 10)
        else:
            budget = Budget.from_config(cfg, SHAPE, CLASSES) if spec == parity else _lm_budget(cfg)
        caplog.clear()
        budget.check_trainable(cfg)
        said = [r.getMessage() for r in caplog.records if r.name == "adaptive.compute.budget"]
        assert bool(said) == warned, (overrides, said)
        if warned:
            assert "is two-sided and within 10% of the way from the least compute" in said[0] and "\n" not in said[0]


def _lm_budget(cfg) -> Budget:
    from adaptive import data

    spec = data.prepare(cfg.data)
    return Budget.from_config(cfg, spec.input_shape, spec.num_classes)
