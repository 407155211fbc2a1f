"""The serving engine: AOT executables per batch bucket, zero compilations in steady state,
budgets in any unit, caps that hold for any request, and grouping by budget."""

import copy

import jax
import numpy as np
import pytest

from adaptive.inference.export import ArtifactError, export_run, load_artifact
from adaptive.serving.engine import BudgetError, Engine
from tests.helpers import COMPILES, train_tiny


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    train_tiny(root / "run", 20)
    art = export_run(root / "run", root / "art")
    return Engine.from_artifact(art, buckets=(1, 4, 16)), Engine.from_run(root / "run", buckets=(1, 4, 16))


def _requests(n, seed):
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 0.0, 1.0], (n, 16)).astype(np.float32), rng.integers(-5, 30, n)


def test_steady_state_compiles_nothing_whatever_the_batch_size_and_budgets(engines):
    engine, _ = engines
    before = COMPILES["count"]
    jax.jit(lambda x: x * 3.0 + 1.0)(np.zeros((5,), np.float32))  # a new program is counted
    assert COMPILES["count"] > before
    before = COMPILES["count"]
    for i, n in enumerate([1, 3, 4, 9, 16, 17, 40, 2]):
        x, budget = _requests(n, i)
        out = engine.run(x, budget)
        assert out.prediction.shape == (n,)
    engine.run_grouped(*_requests(12, 99))
    assert COMPILES["count"] == before


def test_caps_hold_for_any_request_and_both_engines_agree(engines):
    artifact, checkpoint = engines
    for seed in range(5):
        x, budget = _requests(37, seed)
        a, c = artifact.run(x, budget), checkpoint.run(x, budget)
        assert (a.steps >= 1).all() and (a.steps <= np.clip(budget, 1, 6)).all()
        np.testing.assert_array_equal(a.prediction, c.prediction)
        np.testing.assert_array_equal(a.steps, c.steps)


def test_grouping_by_budget_answers_the_same_and_the_tightest_first(engines):
    engine, _ = engines
    x, _ = _requests(16, 5)
    budget = np.array([1, 6] * 8)
    plain, grouped = engine.run(x, budget), engine.run_grouped(x, budget)
    np.testing.assert_array_equal(plain.prediction, grouped.prediction)
    np.testing.assert_array_equal(plain.steps, grouped.steps)
    assert grouped.done_s[budget == 1].max() <= grouped.done_s[budget == 6].min()


def test_budgets_in_units_become_step_caps(engines):
    engine, _ = engines
    flops = engine.table["flops"]
    assert engine.steps_for(3, "steps") == 3 and engine.steps_for(100, "steps") == 6
    assert engine.steps_for(flops[2], "flops") == 3 and engine.steps_for(flops[2] - 1, "flops") == 2
    assert engine.steps_for(flops[0] / 2, "macs") == 1
    for value, unit, message in [
        (0.5, "steps", "below one step of this model"),
        (float("nan"), "steps", "budget nan steps is not a finite number"),
        (float("inf"), "flops", "budget inf flops is not a finite number"),
        (1.0, "latency_ms", "needs a cost model"),
        (1.0, "parsecs", "is not one of steps, flops"),
    ]:
        with pytest.raises(BudgetError, match=message):
            engine.steps_for(value, unit)
    with pytest.raises(ValueError, match="empty batch"):
        engine.run(np.zeros((0, 16), np.float32), np.zeros(0, np.int32))
    static = copy.copy(engine)  # the same table, of a model that runs every step
    static.meta = {**engine.meta, "config": {**engine.meta["config"], "halting": {"policy": "none"}}}
    with pytest.raises(
        BudgetError, match=rf"below this static model's least run \({flops[-1]:g} flops: all its 6 steps\)"
    ):
        static.steps_for(flops[0] / 2, "flops")


@pytest.fixture(scope="module")
def moe_art(tmp_path_factory):
    """ACT + experts (configs/sut.py:tiny: cap 3 steps, 16 tokens, 4 experts, at most 2 a token),
    with capacity at inference (dropless inference, the default, has no slots to share)."""
    root = tmp_path_factory.mktemp("moe")
    train_tiny(root / "run", 5, config="configs/sut.py:tiny", overrides=("--config.moe.eval_dropless=false",))
    return export_run(root / "run", root / "art")


def test_a_moe_artifact_keeps_steps_and_experts_within_budget_and_caps(moe_art):
    """For random inputs and budgets, steps <= min(budget, cap) and expert applications <=
    steps x tokens x k."""
    art = moe_art
    engine = Engine.from_artifact(art, buckets=(4, 16))
    assert engine.expert_budgets == [1]  # k = 2 is the main function; k = 1 its own executable
    before = COMPILES["count"]
    for seed in range(4):
        x, budget = _requests(21, seed)
        caps = np.clip(budget, 1, 3)
        for k in (None, 1, 2):
            out = engine.run(x, budget, experts=k)
            assert (out.steps >= 1).all() and (out.steps <= caps).all()
            assert (out.experts > 0).all() and (out.experts <= out.steps * 16 * (k or 2)).all()
    assert COMPILES["count"] == before
    with pytest.raises(ArtifactError, match="has no function for 3 expert"):
        load_artifact(art, experts=3)


def test_padding_rows_take_no_expert_slots_from_real_ones(moe_art):
    """With one expert a token, each expert has slots for 2x its share of a batch's tokens; a
    request padded to a bucket of 16 answers exactly as it does alone (padding rows of zeros
    would route together and take the slots of the real tokens)."""
    alone, padded = Engine.from_artifact(moe_art, buckets=(1,)), Engine.from_artifact(moe_art, buckets=(16,))
    x, _ = _requests(12, 5)
    budget = np.full(12, 3)
    for i in range(12):
        a, b = (
            alone.run(x[i : i + 1], budget[i : i + 1], experts=1),
            padded.run(x[i : i + 1], budget[i : i + 1], experts=1),
        )
        assert (a.prediction, a.steps, a.experts) == (b.prediction, b.steps, b.experts)


def test_a_moe_artifact_scores_its_accuracy_in_the_batch_sizes_it_serves(moe_art):
    """Tokens of one batch share the experts' slots, so meta.json also holds the accuracy table
    scored per served batch size: what the artifact's own functions score in batches of that size."""
    from adaptive import data
    from adaptive.inference.restore import load_run

    served = load_artifact(moe_art)[1]["accuracy_at_budgets"]["by_batch"]
    assert served["batch"] == [1, 2, 4, 8, 16, 32] and served["examples"] == 256  # the whole tiny split
    cfg = load_run(moe_art.parent / "run").cfg
    for k in (1, 2):
        fn = jax.jit(load_artifact(moe_art, experts=k)[0].call)
        for size in (1, 4):
            table = served["accuracy"][served["batch"].index(size)][k - 1]
            for steps in (1, 3):
                hits = [
                    np.asarray(fn(b["x"].astype(np.float32), np.full(size, steps, np.int32))[0]) == b["y"]
                    for b in data.eval_batches(cfg.data, "validation", size)
                ]
                assert table[steps - 1] == pytest.approx(np.concatenate(hits).mean(), abs=1e-5)


def test_a_halting_artifact_compacts_in_the_batch_sizes_it_was_compiled_for(engines, tmp_path):
    """An ACT artifact carries functions for the COMPACTED_BATCHES sizes, whose loops shrink to
    the running rows; the engine serves those buckets with them, and they answer as the symbolic
    function does, within every cap; a bucket without one runs the symbolic function."""
    from adaptive.inference.export import COMPACTED_BATCHES

    engine, _ = engines
    art = engine.name
    meta = load_artifact(art)[1]
    assert sorted(map(int, meta["batch_variants"])) == sorted(COMPACTED_BATCHES)
    symbolic = load_artifact(art)[0]
    fixed = load_artifact(art, batch=16)[0]
    x, budget = _requests(16, 3)
    budget = budget.astype(np.int32)

    def loops(exported):
        return exported.mlir_module().count("stablehlo.while")

    assert loops(fixed) > loops(symbolic)  # a loop per bucket: the compacting chain
    want, got = symbolic.call(x, budget), fixed.call(x, budget)
    for i in (0, 2, 3):
        np.testing.assert_array_equal(np.asarray(want[i]), np.asarray(got[i]))
    np.testing.assert_allclose(np.asarray(want[1]), np.asarray(got[1]), rtol=1e-5)
    assert engine.compacted_buckets == [16]
    out = engine.run(x, budget)
    np.testing.assert_array_equal(out.steps, np.asarray(want[2]))
    with pytest.raises(ArtifactError, match="has no function for batches of 5"):
        load_artifact(art, batch=5)


def test_a_moe_model_evaluated_one_example_at_a_time_exports_no_smaller_batches(moe_art):
    """Capacity shares a batch's slots, so export scores the table again in each served batch
    size below the evaluation batch; below a batch of 1 there is none to score."""
    import dataclasses

    from adaptive.inference.export import accuracy_table
    from adaptive.inference.restore import load_run

    run = load_run(moe_art.parent / "run")
    one = dataclasses.replace(run.cfg, train=dataclasses.replace(run.cfg.train, eval_batch_size=1))
    table = accuracy_table(dataclasses.replace(run, cfg=one))
    assert table["batch"] == 1 and "by_batch" not in table and len(table["accuracy"]) == 2  # k = 1, 2


def test_eval_refuses_an_artifact_without_operating_points_before_evaluating(engines, capsys):
    from pathlib import Path

    from adaptive.cli.main import main

    engine, _ = engines
    run = Path(engine.meta["source"]["workdir"])
    art = run.parent / "art"  # exported without --precision or --prune
    assert main(["eval", "--workdir", str(run), "--points", str(art)]) == 2
    assert f"--points {art} has no operating points: export it with --precision and --prune" in capsys.readouterr().err
    assert not list(run.glob("eval/*points*"))
