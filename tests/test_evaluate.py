"""`adaptive eval` and `adaptive report` on a finished tiny run."""

import dataclasses
import json
import subprocess

import numpy as np
import pytest

from adaptive.workdir.config_file import RunError
from tests.helpers import cli, train_tiny


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny") / "act"
    train_tiny(workdir, 30)
    return workdir


def _run(*args):
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=300)


def test_eval_under_a_budget_writes_json_and_respects_it(tiny_run):
    proc = _run("eval", "--workdir", str(tiny_run), "--split", "validation", "--budget", "2")
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tiny_run / "eval" / "validation-budget2-step30.json").read_text())
    assert out["budget"] == 2 and out["step"] == 30 and out["split"] == "validation"
    assert 1 <= out["eval/steps_mean"] <= 2 and out["eval/steps_max"] <= 2
    assert len(out["eval/steps_by_difficulty"]) == 17
    assert "eval accuracy" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "0"], "--budget must be in [1, 6] for this model; got 0"),
        (["--step", "7"], "has no checkpoint at step 7; it has [30]"),
    ],
)
def test_eval_bad_arguments_are_one_line_errors(tiny_run, args, message):
    proc = _run("eval", "--workdir", str(tiny_run), *args)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("adaptive: error: ") and message in line


def test_a_baseline_or_points_that_cannot_serve_are_refused_before_the_evaluation(tiny_run, tmp_path, capsys):
    from adaptive.cli.main import main

    assert main(["eval", "--workdir", str(tiny_run), "--baseline", str(tiny_run)]) == 2
    message = f"adaptive: error: --baseline {tiny_run} must be a static classifier run; it is halting.policy='act'"
    assert capsys.readouterr().err.strip() == message
    assert main(["eval", "--workdir", str(tiny_run), "--baseline", str(tmp_path)]) == 2
    assert "is not a training run (no config.json)" in capsys.readouterr().err
    assert main(["eval", "--workdir", str(tmp_path / "nope")]) == 2  # a typo is not "not a run"
    assert capsys.readouterr().err.strip() == f"adaptive: error: {tmp_path / 'nope'} does not exist"
    (tmp_path / "meta.json").write_text(json.dumps({"format": "adaptive-lm-export/1"}))  # a language model's
    assert main(["eval", "--workdir", str(tiny_run), "--points", str(tmp_path)]) == 2
    assert "meta.json: format must be 'adaptive-export/2'" in capsys.readouterr().err


def test_eval_of_a_folder_that_is_not_a_run(tmp_path):
    proc = _run("eval", "--workdir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"adaptive: error: {tmp_path} is not a training run (no config.json)"


def test_report_writes_table_and_plot(tiny_run, tmp_path):
    md, png = tmp_path / "r.md", tmp_path / "r.png"
    proc = _run("report", str(tiny_run), "--split", "validation", "--markdown", str(md), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    table = md.read_text().splitlines()
    assert table[0].split(" | ")[:3] == ["| run", "method", "kind"]
    assert "ACT tau=0.003" in table[2] and "validation_accuracy" in table[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_names_the_step_a_split_scored_when_the_newest_checkpoint_is_corrupt(tmp_path, capsys):
    from adaptive.evaluation.report import report

    workdir = tmp_path / "run"
    train_tiny(workdir, 10)
    train_tiny(workdir, 20)  # resumed: checkpoints at steps 10 and 20
    for data in (workdir / "checkpoints" / "20" / "state").rglob("d/*"):  # every array file cut short
        data.write_bytes(data.read_bytes()[:64])
    md = tmp_path / "r.md"
    (row,) = report([str(workdir)], splits=["validation"], plot=None, markdown=str(md))
    assert row["step"] == 20 and row["validation_at_step"] == 10
    note = "run: its validation columns score the step-10 checkpoint; the others are step 20's eval, whose "
    note += "checkpoint cannot be restored"
    assert f"note: {note}" in capsys.readouterr().out and f"Note: {note}" in md.read_text()
    with pytest.raises(RunError, match=f"--plot and --pareto both name {tmp_path / 'same.png'}; give each output"):
        report(
            [str(workdir)], splits=[], plot=str(tmp_path / "same.png"), markdown=None, pareto=str(tmp_path / "same.png")
        )


def test_eval_times_the_compiled_predictor_on_real_batches(tiny_run):
    proc = _run("eval", "--workdir", str(tiny_run), "--latency-batch", "32")
    assert proc.returncode == 0, proc.stderr
    assert "step 30 split validation budget" in proc.stdout  # without --split: validation, never test
    # 512 validation examples: 16 full batches, cycled through for 200 timed calls
    assert "latency at batch 32 over 200 calls (16 distinct batches): p50" in proc.stdout
    out = json.loads((tiny_run / "eval" / "validation-step30.json").read_text())
    assert out["split"] == "validation"
    assert 0 < out["latency/p50_ms"] <= out["latency/p95_ms"] <= out["latency/p99_ms"]
    assert 1 <= out["latency/steps_mean"] <= 6


def test_tables_keep_small_values_visible_and_no_correct_answer_has_no_cost_per_one(tmp_path):
    from types import SimpleNamespace

    from adaptive.evaluation.eval_report import _cost_per_correct
    from adaptive.evaluation.tables import markdown_table

    assert markdown_table(
        [{"cost": 3.1e-4, "acc": 0.91234, "flops": 12345.6, "zero": 0.0}], ["cost", "acc", "flops", "zero"]
    ) == ("| cost | acc | flops | zero |\n|---|---|---|---|\n| 0.00031 | 0.9123 | 12346 | 0.0000 |\n")
    nobody = _cost_per_correct(SimpleNamespace(budget=None, workdir=tmp_path), 0.0, 3.0, 1e6)
    assert nobody == {"flops": None, "correct": False}
    assert json.loads(json.dumps(nobody, allow_nan=False)) == nobody  # strict JSON: no Infinity


def test_pareto_front_on_hand_made_points():
    from adaptive.evaluation.curves import pareto_front

    points = [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.9), (5, 0.9), (0.5, 0.4), (2, 0.65)]
    assert pareto_front(points) == [(0.5, 0.4), (1, 0.5), (2, 0.7), (4, 0.9)]
    from adaptive.evaluation.curves import on_front

    tied = [(2, 0.7), (1, 0.5), (2, 0.7), (3, 0.6), (2, 0.7)]  # three settings with one result: one point
    assert on_front(tied) == [True, True, False, False, False]


def test_eval_report_covers_every_budget_with_a_baseline_plots_and_a_shifted_split(tiny_run, tmp_path):
    static = tmp_path / "static"
    train_tiny(static, 30, overrides=("--config.halting.policy=none", "--config.model.depth=3"))
    proc = _run("eval", "--workdir", str(tiny_run), "--baseline", str(static))
    assert proc.returncode == 0, proc.stderr
    assert "Pareto front of accuracy vs compute (flops)" in proc.stdout
    report = json.loads((tiny_run / "eval" / "validation-report-step30.json").read_text())
    assert report["split"] == "validation"
    grid = report["budget_grid"]
    assert [r["step_budget"] for r in grid] == [1, 2, 3, 4, 5, 6]
    assert all(r["steps"] <= r["step_budget"] for r in grid)
    assert [r["steps"] for r in grid] == sorted(r["steps"] for r in grid)  # more budget, never less compute
    front = report["pareto_front"]
    assert front and all(r in grid for r in front)
    assert [r["accuracy"] for r in front] == sorted(r["accuracy"] for r in front)
    assert report["accuracy"] == grid[-1]["accuracy"]  # the model's own halting is the cap's row
    dist = report["compute_distribution"]["steps"]
    assert 1 <= dist["p50"] <= dist["p99"] <= dist["max"] <= 6
    assert report["cost_per_correct"]["flops"] >= grid[-1]["flops"]
    assert [r["difficulty"] for r in report["by_difficulty"]] == list(range(1, 17))
    # validation's own vectors, harder: trained on every difficulty, the hardest quarter of them
    assert report["shifted"]["what"] == "parity difficulty 12..16, the hardest of the 1..16 it was trained on"
    assert {r["difficulty"] for r in report["shifted"]["by_difficulty"]} == set(range(12, 17))
    (baseline,) = report["baselines"]
    assert baseline["name"] == "static" and baseline["steps"] == 3.0
    assert "static baselines on the same split" in proc.stdout and "\nstatic " in proc.stdout  # its row, printed
    assert report["budgeted_batch"] == []  # ACT has no per-step prediction to exit on
    for name in ("accuracy_vs_compute", "compute_histogram", "compute_vs_difficulty"):
        assert (tiny_run / "eval" / f"validation-step30-{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_report_of_early_exits_calibrates_budgeted_batch_thresholds(tmp_path):
    from adaptive.evaluation.eval_report import compute_report
    from adaptive.inference.restore import load_run

    run_dir = tmp_path / "exits"
    exits = ("--config.halting.policy=early_exit", "--config.model.kind=mlp", "--config.model.share_weights=false")
    train_tiny(run_dir, 30, overrides=exits)
    report, _ = compute_report(load_run(run_dir), "test")
    assert len(report["anytime_accuracy"]) == 6 and report["threshold_curve"]
    rows = report["budgeted_batch"]
    assert [r["target_steps"] for r in rows] == [1.5, 3.0, 4.5]
    for r in rows:  # the validation split exits as planned, up to ties and rounding
        assert r["calibration_split"] == "validation" and r["split"] == "test"
        assert np.allclose(r["validation_exit_fractions"], r["planned_exit_fractions"], atol=0.02)
        assert r["steps"] == pytest.approx(r["target_steps"], abs=0.5)  # test: close to the target
    # Scoring validation itself still calibrates there (thresholds are a choice: never on train).
    report, _ = compute_report(load_run(run_dir), "validation")
    assert {(r["calibration_split"], r["split"]) for r in report["budgeted_batch"]} == {("validation", "validation")}


def test_eval_report_of_experts_sweeps_expert_budgets(tmp_path):
    from adaptive.compute.flops import flops_model
    from adaptive.evaluation.eval_report import compute_report
    from adaptive.inference.export import at_expert_budget
    from adaptive.inference.restore import load_run

    # Capacity dispatch at inference: its buffers shrink with the expert budget, so the FLOPs do.
    capacity = ("--config.moe.dispatch=capacity", "--config.moe.eval_dropless=false")
    train_tiny(tmp_path / "sut", 10, config="configs/sut.py:tiny", overrides=capacity)
    run = load_run(tmp_path / "sut")
    report, _ = compute_report(run, "test")
    grid = report["budget_grid"]
    assert {(r["expert_budget"], r["step_budget"]) for r in grid} == {(k, t) for k in (1, 2) for t in (1, 2, 3)}
    by = {(r["expert_budget"], r["step_budget"]): r for r in grid}
    one = flops_model(at_expert_budget(run.cfg, 1), run.spec.input_shape, run.spec.num_classes,
                      batch=run.cfg.train.eval_batch_size)  # fmt: skip
    for t in (1, 2, 3):  # one expert a token never uses more experts than two
        assert by[(1, t)]["experts"] <= by[(2, t)]["experts"]
        assert by[(1, t)]["experts"] <= 16 * by[(1, t)]["steps"] + 1e-6  # 16 tokens, at most 1 expert each
        assert by[(1, t)]["flops"] == pytest.approx(float(one.at_steps(by[(1, t)]["steps"])))
        assert by[(1, t)]["flops"] < by[(2, t)]["flops"] or by[(1, t)]["steps"] < by[(2, t)]["steps"]
    # A latency budget prices each expert budget at its own calibration (`adaptive calibrate`
    # times each k), not at the trained k's: known fits, since a tiny model's timings are noise.
    from adaptive.compute.budget import Budget
    from adaptive.compute.costmodel import CostModel, Fit

    fits = {"b1_k1": Fit(1.0, 0.5, []), "b1_k2": Fit(2.0, 1.0, [])}
    cost_model = CostModel("fingerprint", "test machine", 3.6, 50.0, fits)
    budget = Budget("latency_ms", 3.0, "lagrangian", 1.0, 0.1, one, cost_model)
    priced, _ = compute_report(dataclasses.replace(run, budget=budget), "test")
    assert priced["unit"] == "latency_ms"
    for r in priced["budget_grid"]:
        intercept, per_step = (1.0, 0.5) if r["expert_budget"] == 1 else (2.0, 1.0)
        assert r["compute"] == pytest.approx(intercept + per_step * r["steps"], rel=1e-5), r


def test_eval_of_a_static_model_with_experts_reports_each_expert_budget(tmp_path, capsys):
    from adaptive.cli.main import main

    train_tiny(tmp_path / "moe", 10, config="configs/moe.py:tiny")  # static, top-2 experts
    assert main(["eval", "--workdir", str(tmp_path / "moe"), "--split", "validation"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy at each expert budget (experts per token)" in printed
    rows = json.loads((tmp_path / "moe" / "eval" / "validation-experts-step10.json").read_text())["rows"]
    summary = json.loads((tmp_path / "moe" / "eval" / "validation-step10.json").read_text())
    assert [r["expert_budget"] for r in rows] == [1, 2]
    assert rows[1]["accuracy"] == pytest.approx(summary["eval/accuracy"])  # the trained k: the model as it runs
    assert rows[0]["expert_applications"] < rows[1]["expert_applications"] and rows[0]["flops"] < rows[1]["flops"]


def test_eval_report_refuses_models_without_budget_curves(tmp_path, capsys):
    from adaptive.evaluation.eval_report import compute_report
    from adaptive.inference.restore import load_run
    from adaptive.workdir.config_file import RunError

    train_tiny(tmp_path / "static", 5, overrides=("--config.halting.policy=none", "--config.model.depth=3"))
    with pytest.raises(RunError, match="a static model has a single operating point"):
        compute_report(load_run(tmp_path / "static"), "test")
    from adaptive.evaluation.budgeted_eval import evaluate_run

    with pytest.raises(
        RunError, match="--budget 1: a static model runs all its 3 steps"
    ):  # not scored at its depth as "1"
        evaluate_run(tmp_path / "static", split="validation", budget=1)
    with pytest.raises(RunError, match=r"^--budget must be 3 for this static model \(all its steps\); got 0$"):
        evaluate_run(tmp_path / "static", split="validation", budget=0)  # not "in [1, 3]", then "1 is refused"
    from adaptive.cli.main import main

    assert main(["eval", "--workdir", str(tmp_path / "static"), "--split", "validation"]) == 0
    assert (
        "a static model has one step budget (all its 3 steps): no accuracy-vs-budget report" in capsys.readouterr().out
    )
    sampled = ("--config.halting.policy=pondernet", "--config.halting.pondernet_inference=sample")
    train_tiny(tmp_path / "sampled", 5, overrides=sampled)
    with pytest.raises(RunError, match="sampled PonderNet halting has no per-budget trajectory"):
        compute_report(load_run(tmp_path / "sampled"), "test")


def test_eval_halt_scores_a_pondernet_run_by_sampling_and_refuses_other_policies(tiny_run, tmp_path):
    """One checkpoint, two halting rules: the sampled score is written beside the threshold one,
    each JSON naming its rule, and the threshold rule gives what the run gives as trained."""
    workdir = tmp_path / "pondernet"
    train_tiny(workdir, 5, overrides=("--config.halting.policy=pondernet",))
    scores = {}
    for halt in ("threshold", "sample"):
        proc = _run("eval", "--workdir", str(workdir), "--split", "validation", "--halt", halt)
        assert proc.returncode == 0, proc.stderr
        assert f"halting {halt}:" in proc.stdout
        scores[halt] = json.loads((workdir / "eval" / f"validation-{halt}-step5.json").read_text())
        assert scores[halt]["halting"] == halt and scores[halt]["eval/steps_max"] <= 6
    as_trained = _run("eval", "--workdir", str(workdir), "--split", "validation", "--budget", "6")
    assert as_trained.returncode == 0, as_trained.stderr
    trained = json.loads((workdir / "eval" / "validation-budget6-step5.json").read_text())
    assert trained["eval/accuracy"] == scores["threshold"]["eval/accuracy"]
    assert trained["eval/steps_mean"] == scores["threshold"]["eval/steps_mean"]
    proc = _run("eval", "--workdir", str(tiny_run), "--halt", "sample")
    assert proc.returncode == 2
    assert "--halt applies to PonderNet runs; this run's halting policy is 'act'" in proc.stderr


def test_outcomes_the_predictor_and_the_eval_step_agree_through_the_one_inference_function(tiny_run):
    """On one batch of a trained run: outcomes at step budget t are what the predictor answers
    under t, and the eval step's sums at t add up the same answers."""
    import jax

    from adaptive import data
    from adaptive.inference.outcomes import collect
    from adaptive.inference.predictor import BudgetedPredictor
    from adaptive.inference.restore import load_run
    from adaptive.training.steps import make_eval_step

    run = load_run(tiny_run)
    outcomes = collect(run.graphdef, run.params, run.cfg, "validation", k_max=None, batch_size=64, limit=64)
    batch = next(iter(data.eval_batches(run.cfg.data, "validation", 64)))
    predictor = BudgetedPredictor(run.graphdef, run.params, run.spec.input_shape, 6)
    eval_step = jax.jit(make_eval_step(run.graphdef, run.spec.max_difficulty))
    for t in range(1, 7):
        logits, steps = predictor(batch["x"], t)
        correct = np.asarray(logits).argmax(-1) == batch["y"]
        np.testing.assert_array_equal(outcomes.correct_KxTxB[0, t - 1], correct)
        np.testing.assert_array_equal(outcomes.steps_KxTxB[0, t - 1], steps)
        sums = jax.device_get(eval_step(run.params, batch, np.int32(t)))
        assert sums["correct"] == correct.sum() and sums["steps"] == np.sum(steps)


def test_expert_budgets_agree_between_the_predictor_the_eval_step_and_every_budget_at_once():
    """An untrained early-exit MoE model: `infer_every_step_budget` (outcomes' pass) answers as
    the predictor at every (expert budget, step budget), experts counted alike, and the eval
    step (experts as trained) as the largest expert budget."""
    import jax
    from flax import nnx

    from adaptive import config as config_lib
    from adaptive.inference.infer import infer_every_step_budget
    from adaptive.inference.predictor import BudgetedPredictor
    from adaptive.nn.models import build_model
    from adaptive.training.steps import make_eval_step
    from tests.helpers import ROOT

    overrides = ["--config.model.kind=mlp", "--config.halting.policy=early_exit", "--config.halting.max_steps=3"]
    moe = ["--config.model.hidden=16", "--config.moe.enabled=true", "--config.moe.num_experts=4", "--config.moe.k=2"]
    cfg = config_lib.load(f"{ROOT}/configs/parity.py:tiny", overrides + moe)

    class Spec:
        input_shape, num_classes = (16,), 2

    graphdef, params = nnx.split(build_model(cfg, Spec), nnx.Param)
    params = nnx.to_pure_dict(params)
    rng = np.random.default_rng(0)
    x = rng.choice([-1.0, 0.0, 1.0], (32, 16)).astype(np.float32)
    batch = {"x": x, "y": rng.integers(0, 2, 32), "mask": np.ones(32, np.float32), "difficulty": np.zeros(32, int)}
    predictor = BudgetedPredictor(graphdef, params, (16,), 3, k_max=2)
    eval_step = jax.jit(make_eval_step(graphdef, 0))
    for k in (1, 2):
        every, _ = jax.jit(infer_every_step_budget(graphdef, k, 3))(params, x)
        for t in (1, 2, 3):
            live = predictor.predict(x, t, k)
            np.testing.assert_array_equal(np.argmax(every.logits_BxC[t - 1], -1), np.argmax(live.logits_BxC, -1))
            np.testing.assert_array_equal(every.steps_B[t - 1], live.steps_B)
            np.testing.assert_array_equal(every.experts_B[t - 1], live.experts_B)
            if k == 2:
                sums = jax.device_get(eval_step(params, batch, np.int32(t)))
                assert sums["steps"] == np.sum(live.steps_B) and sums["experts"] == np.sum(live.experts_B)
                assert sums["correct"] == np.sum(np.argmax(live.logits_BxC, -1) == batch["y"])
