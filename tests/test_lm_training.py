"""Training the language model end to end: objective, eval sums, resume, bad configs."""

from __future__ import annotations

import json
import math
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive import config as config_lib
from adaptive.nn.lm import LanguageModel
from adaptive.training import lm_steps
from adaptive.training.metrics import read_jsonl
from tests.helpers import QUIET, ROOT, cli, final_state, run_train, train_tiny

DATA = lambda tmp_path: (f"--config.data.data_dir={tmp_path / 'data'}",)  # noqa: E731
ADDITION = (
    "--config.data.name=addition",
    "--config.data.addition_digits=3",
    "--config.data.num_train=256",
    "--config.data.num_eval=64",
)


@pytest.mark.parametrize(
    "variant",
    [
        (),
        ("--config.lm.exits=true", "--config.lm.confidence=classifier", "--config.lm.exit_threshold=0.5"),
        ("--config.lm.mod_capacity=0.25", "--config.lm.mod_every=1"),
        ("--config.moe.enabled=true", "--config.moe.num_experts=4", "--config.moe.k=2"),
    ],
    ids=["plain", "exits", "mod", "experts"],
)
def test_the_lm_trains_and_reports_per_token_figures(tmp_path, variant):
    cfg = train_tiny(
        tmp_path,
        4,
        config="configs/lm.py:tiny",
        overrides=(*ADDITION, f"--config.data.data_dir={tmp_path / 'data'}", *variant),
    )
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"][-1]
    final = [r for r in rows if r["split"] == "eval"][-1]
    assert math.isfinite(train["train/bits_per_byte"]) and train["train/bits_per_byte"] > 0
    assert final["eval/examples"] == 64 * (3 * 3 + 4)  # every target token of the validation split
    assert 0 < final["eval/steps_mean"] <= cfg.model.depth
    assert 0 < final["eval/bits_per_byte"] < 9  # a byte costs at most ~8 bits once the model trains a bit
    counts = final["eval/accuracy_by_difficulty"]
    assert len(counts) == 4 and counts[0] is not None  # per carry-chain length, answer digits only
    if "--config.lm.mod_capacity=0.25" in variant:
        assert final["eval/steps_mean"] < cfg.model.depth  # tokens the predictor routes around a block


def test_the_calm_objective_weighs_deeper_exits_more():
    model = LanguageModel(vocab=258, width=16, layers=3, heads=2, max_length=8, exits=True, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 8)), jnp.int32)
    out = model(tokens, train=True)
    loss, metrics = lm_steps.lm_loss(out, tokens, classifier=False)
    ce = [float(np.mean(_ce(logits, tokens))) for logits in [*out.exit_logits_ExBxLxV, out.logits_BxLxV]]
    assert float(loss) == pytest.approx((1 * ce[0] + 2 * ce[1] + 3 * ce[2]) / 6, rel=1e-5)
    assert float(metrics["first_exit_loss"]) == pytest.approx(ce[0], rel=1e-5)


def _ce(logits, targets):
    logits = np.asarray(logits, np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return logz - np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]


@pytest.mark.slow
def test_a_resumed_lm_run_ends_where_an_uninterrupted_one_does(tmp_path):
    # a constant rate: a run of 2 steps then 4 follows the schedule of a run of 4
    constant = ("--config.optim.schedule=constant", "--config.optim.warmup_steps=0")
    common = (*ADDITION, *constant, f"--config.data.data_dir={tmp_path / 'data'}", "--config.train.checkpoint_every=2")
    once = run_train(tmp_path / "once", *common, "--config.train.steps=4", config="configs/lm.py:tiny")
    assert once.returncode == 0, once.stderr[-2000:]
    half = run_train(tmp_path / "twice", *common, "--config.train.steps=2", config="configs/lm.py:tiny")
    again = run_train(tmp_path / "twice", *common, "--config.train.steps=4", config="configs/lm.py:tiny")
    assert half.returncode == again.returncode == 0, again.stderr[-2000:]
    (a_step, a), (b_step, b) = final_state(tmp_path / "once"), final_state(tmp_path / "twice")
    assert a_step == b_step == 4
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("--config.model.kind=mlp",), "sequence task"),
        (("--config.data.name=parity",), "not a sequence task"),
        (("--config.halting.policy=pondernet",), "halting.policy"),
        (("--config.halting.policy=act", "--config.lm.exits=true"), "does not combine"),
        (("--config.model.num_heads=3",), "num_heads"),
        (("--config.lm.confidence=entropy",), "lm.confidence"),
    ],
)
def test_bad_lm_configs_are_refused_in_one_line(overrides, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load(str(ROOT / "configs/lm.py:tiny"), list(overrides))


def test_the_tiny_config_trains_from_the_command_line(tmp_path):
    command = cli("train", "--config", str(ROOT / "configs/lm.py:tiny"), "--workdir", str(tmp_path / "run"))
    extra = [*QUIET, *ADDITION, f"--config.data.data_dir={tmp_path / 'data'}", "--config.train.steps=2"]
    out = subprocess.run([*command, *extra], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "bits per byte" in out.stdout and "tokens" in out.stdout
    # the tools that read classifiers refuse a language model in one line
    refused = subprocess.run(
        cli("calibrate", "--workdir", str(tmp_path / "run")), capture_output=True, text=True, timeout=300
    )
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "language model" in lines[0], refused.stderr[-2000:]


def test_adaptive_eval_of_a_language_model_reports_bits_against_flops(tmp_path):
    exits = ("--config.lm.exits=true", "--config.model.depth=3")
    train_tiny(tmp_path / "run", 4, config="configs/lm.py:tiny", overrides=(*ADDITION, *DATA(tmp_path), *exits))
    out = subprocess.run(cli("eval", "--workdir", str(tmp_path / "run")), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "every block: bits per byte" in out.stdout and "exit at 0.9" in out.stdout
    report = json.loads((tmp_path / "run" / "eval" / "validation-lm-report-step4.json").read_text())
    points = report["points"]
    assert [p["threshold"] for p in points] == [None, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
    assert points[0]["blocks_mean"] == 3 and any(p["pareto"] for p in points)
    for p in points:
        assert sum(p["blocks_histogram"]) == p["tokens"] == 64 * 13
        assert 1 <= p["blocks_mean"] <= 3 and p["flops_per_token"] > 0
        assert [row["difficulty"] for row in p["by_difficulty"]] == sorted(
            {row["difficulty"] for row in p["by_difficulty"]}
        )
    # a token that leaves early skips the blocks (and exits) above it: no point costs more than all blocks
    assert all(p["flops_per_token"] <= points[0]["flops_per_token"] for p in points)
    assert (tmp_path / "run" / "eval" / "validation-step4-bits_vs_flops.png").exists()
    refused = subprocess.run(
        cli("eval", "--workdir", str(tmp_path / "run"), "--budget", "2"), capture_output=True, text=True, timeout=300
    )
    assert refused.returncode != 0 and "applies to classifiers" in refused.stderr


def test_the_lm_report_sweeps_mod_predictor_biases_and_expert_budgets(tmp_path):
    from adaptive.evaluation.lm_report import lm_report
    from adaptive.inference.restore import load_run

    knobs = ("--config.lm.mod_capacity=0.5", "--config.moe.enabled=true", "--config.moe.num_experts=4")
    knobs += ("--config.moe.k=2", "--config.model.depth=2")
    train_tiny(tmp_path / "run", 2, config="configs/lm.py:tiny", overrides=(*ADDITION, *DATA(tmp_path), *knobs))
    report, _ = lm_report(load_run(tmp_path / "run", language_model=True), "validation", tmp_path / "eval", limit=2)
    labels = [p["label"] for p in report["points"]]
    assert (tmp_path / "eval" / "validation-step2-blocks_histogram.png").is_file()  # MoD tokens run different blocks
    assert labels == ["MoD as trained", "MoD bias -2", "MoD bias -1", "MoD bias +1", "MoD bias +2", "1 expert a block"]
    shares = [p["mod_share"] for p in report["points"][1:5]]
    assert shares == sorted(shares, reverse=True) and shares[0] > shares[-1]  # a higher bias runs fewer tokens
    flops = [p["flops_per_token"] for p in report["points"][1:5]]
    assert flops == sorted(flops, reverse=True)
    one_expert = report["points"][-1]
    # 2 blocks, one of them MoD: a token gets one expert in the dense block and one where MoD runs it
    assert one_expert["experts_per_token"] == pytest.approx(1 + one_expert["mod_share"])
    assert one_expert["flops_per_token"] < report["points"][0]["flops_per_token"]
