"""Cost model: calibration on a real run, JSON round trip, refusal of foreign or broken files."""

import dataclasses
import json
import re
import shutil
import subprocess

import pytest

from adaptive.compute.budget import Budget
from adaptive.compute.costmodel import CostModel, CostModelError, Fit, fingerprint, fit_line
from adaptive.config import ConfigError
from tests.helpers import cli, train_tiny

SHAPE = (16,)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny trained ACT run and its cost model, made by `adaptive calibrate`."""
    workdir = tmp_path_factory.mktemp("cal") / "run"
    cfg = train_tiny(workdir, 10)
    proc = subprocess.run(
        cli("calibrate", "--workdir", str(workdir), "--batches", "1,4", "--repeats", "3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "fit_error" in proc.stdout and "at 3 (money) per hour and 30 W (--price-per-hour" in proc.stdout
    return cfg, workdir / "cost_model.json"


def test_calibration_fits_every_batch_size_of_this_network(calibrated):
    cfg, path = calibrated
    model = CostModel.load(path, expect_fingerprint=fingerprint(cfg, SHAPE))
    assert sorted(model.fits) == ["b1_k0", "b4_k0"]
    assert sorted(model.tail_fits) == sorted(model.fits)
    for key, fit in model.fits.items():
        assert [p[0] for p in fit.points] == [1, 3, 6]  # forced depths up to the cap of 6
        assert all(ms > 0 for _, ms in fit.points)
        tail = model.tail_fits[key]  # the p99 of the same timings is never below their median
        assert all(p99 >= median for (_, p99), (_, median) in zip(tail.points, fit.points, strict=True))


def test_round_trip_and_derived_units(tmp_path):
    model = CostModel(
        "abc", "test machine", 3.6, 50.0, {"b2_k0": Fit(1.0, 0.5, [[1, 1.5], [3, 2.5]])}, {"b2_k0": Fit(2.0, 1.0, [])}
    )
    model.save(tmp_path / "c.json")
    again = CostModel.load(tmp_path / "c.json", expect_fingerprint="abc")
    assert again == model
    assert again.tail_latency_ms(4, batch=2) == pytest.approx(6.0)
    without_tails = json.loads((tmp_path / "c.json").read_text())
    del without_tails["tail_fits"]  # a file written before tails were recorded: the median serves
    (tmp_path / "old.json").write_text(json.dumps(without_tails))
    assert CostModel.load(tmp_path / "old.json").tail_latency_ms(4, batch=2) == pytest.approx(3.0)
    assert again.latency_ms(4, batch=2) == pytest.approx(3.0)
    assert again.cost_per_1k(4, batch=2) == pytest.approx(3.0 / 3.6e6 * 3.6 / 2 * 1000)
    assert again.energy_j(4, batch=2) == pytest.approx(50.0 * 0.003 / 2)
    with pytest.raises(CostModelError, match="no calibration for batch 8 and all experts; have batch 2: run "):
        again.latency_ms(1, batch=8)
    # a hand-edited or old file that would price cost or energy budgets with nonsense
    for key, value, message in [
        ("price_per_hour", float("nan"), "price_per_hour is nan; must be finite and >= 0"),
        ("power_watts", -3.0, "power_watts is -3.0; must be finite and >= 0"),
        ("fits", {}, "no calibrated batch size in its fits"),
        (
            "fits",
            {"b2_k0": {"intercept_ms": float("nan"), "per_step_ms": 0.5, "points": []}},
            "fit b2_k0: intercept nan, per step 0.5; must be finite, per step >= 0",
        ),
        (
            "fits",
            {"b2_k0": {"intercept_ms": -5.0, "per_step_ms": 0.001, "points": []}},
            "fit b2_k0 prices one step at -4.999 ms; a latency is > 0",
        ),
        ("tail_fits", None, "ValueError: tail_fits is NoneType, not an object of fits"),  # were tracebacks
        ("fits", [1, 2], "ValueError: fits is list, not an object of fits"),
        ("fits", {"b2_k0": 3}, "ValueError: fits.b2_k0 is not {intercept_ms, per_step_ms, points: a list}"),
        (
            "fits",
            {"b2_k0": {"intercept_ms": True, "per_step_ms": 0.5, "points": []}},
            "ValueError: fits.b2_k0.intercept_ms is True, not a number",
        ),
    ]:
        (tmp_path / "bad.json").write_text(json.dumps({**json.loads((tmp_path / "c.json").read_text()), key: value}))
        with pytest.raises(CostModelError, match=f"bad.json is not a valid cost model \\({message}\\)"):
            CostModel.load(tmp_path / "bad.json")


def test_a_moe_models_calibration_answers_for_all_its_experts_at_its_largest_budget():
    """`adaptive calibrate` times a MoE model at each expert budget k (keys b{B}_k{k}); readers
    with no expert budget (the compute report, a latency budget) mean all of them: the largest k."""
    fits = {"b1_k1": Fit(1.0, 0.5, []), "b1_k2": Fit(2.0, 1.0, []), "b4_k1": Fit(3.0, 1.0, [])}
    model = CostModel("abc", "test machine", 3.6, 50.0, fits, {"b1_k2": Fit(4.0, 2.0, [])})
    assert model.latency_ms(3, batch=1) == pytest.approx(5.0) == model.latency_ms(3, batch=1, experts=2)
    assert model.latency_ms(3, batch=1, experts=1) == pytest.approx(2.5)
    assert model.tail_latency_ms(3, batch=1) == pytest.approx(10.0)
    assert model.cost_per_1k(3, batch=4) == pytest.approx(6.0 / 3.6e6 * 3.6 / 4 * 1000)
    with pytest.raises(CostModelError, match="no calibration for batch 1 and 3 experts"):
        model.latency_ms(3, batch=1, experts=3)
    with pytest.raises(CostModelError, match="no calibration for batch 8 and all experts"):
        model.latency_ms(3, batch=8)
    # A budget in a cost-model unit prices a model served at fewer experts by that k's calibration;
    # a cost model without it prices the whole k (an overestimate, never an underestimate).
    energy = Budget("energy_j", None, "lagrangian", 1.0, 0.1, None, model)
    assert energy.compute(3.0, expert_budget=1) == pytest.approx(50.0 * 2.5 / 1000)
    assert energy.compute(3.0) == energy.compute(3.0, expert_budget=2) == pytest.approx(50.0 * 5.0 / 1000)
    older = CostModel("abc", "test machine", 3.6, 50.0, {"b1_k2": Fit(2.0, 1.0, [])})
    assert Budget("latency_ms", None, "lagrangian", 1.0, 0.1, None, older).compute(3.0, expert_budget=1) == 5.0


def test_fit_line_recovers_a_line():
    fit = fit_line([(1, 2.5), (5, 4.5), (9, 6.5)])
    assert fit.intercept_ms == pytest.approx(2.0) and fit.per_step_ms == pytest.approx(0.5)


def test_foreign_corrupted_and_missing_files_are_refused(calibrated, tmp_path):
    cfg, path = calibrated
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hidden=64))
    with pytest.raises(CostModelError, match="calibrated for another model or config"):
        CostModel.load(path, expect_fingerprint=fingerprint(other, SHAPE))
    broken = tmp_path / "broken.json"
    broken.write_text(path.read_text()[:50])
    with pytest.raises(CostModelError, match="is not a valid cost model"):
        CostModel.load(broken)
    with pytest.raises(CostModelError, match="run `adaptive calibrate"):
        CostModel.load(tmp_path / "absent.json")


def test_training_hyperparameters_do_not_change_the_fingerprint(calibrated):
    cfg, _ = calibrated
    retuned = dataclasses.replace(
        cfg, halting=dataclasses.replace(cfg.halting, tau=0.0), optim=dataclasses.replace(cfg.optim, learning_rate=0.1)
    )
    assert fingerprint(retuned, SHAPE) == fingerprint(cfg, SHAPE)


def test_a_line_through_noise_never_prices_the_fewest_steps_at_zero_or_less():
    fit = fit_line([(2, 0.1), (3, 0.1), (10, 5.0)])  # the least-squares line prices 2 steps below 0 ms
    assert fit.intercept_ms == 0.0 and fit.per_step_ms == pytest.approx((0.1 / 2 + 0.1 / 3 + 5.0 / 10) / 3)


def test_a_cost_model_from_another_machine_is_warned_of_once(tmp_path, caplog):
    from adaptive.compute.costmodel import machine

    model = CostModel("abc", "aarch64 gpu x64 (some-other-box)", 3.6, 50.0, {"b1_k0": Fit(1.0, 0.5, [])})
    model.save(tmp_path / "other.json")
    CostModel(model.fingerprint, machine(), 3.6, 50.0, model.fits).save(tmp_path / "here.json")
    # this machine with another count of visible devices (forced host devices, a subset of GPUs):
    # one executable's latency is the same
    recounted = re.sub(r" x\d+ \(", " x7 (", machine())
    assert recounted != machine()
    CostModel(model.fingerprint, recounted, 3.6, 50.0, model.fits).save(tmp_path / "recounted.json")
    with caplog.at_level("WARNING", logger="adaptive.compute.costmodel"):
        for _ in range(2):
            CostModel.load(tmp_path / "other.json")
        CostModel.load(tmp_path / "here.json")
        CostModel.load(tmp_path / "recounted.json")
    (said,) = [r.getMessage() for r in caplog.records if r.name == "adaptive.compute.costmodel"]
    assert said.startswith(f"{tmp_path / 'other.json'} was calibrated on aarch64 gpu x64 (some-other-box); this is ")


def test_a_negative_fitted_slope_is_noise():
    fit = fit_line([(1, 2.0), (5, 1.9), (9, 2.1), (13, 1.8)])
    assert fit.per_step_ms == 0.0 and fit.intercept_ms == pytest.approx(1.95)


def test_latency_budget_goes_through_the_cost_model(calibrated, tmp_path):
    cfg, _ = calibrated
    path = tmp_path / "cost_model.json"  # known numbers: timings of a tiny model are noise
    CostModel(
        fingerprint(cfg, SHAPE), "test", 3.0, 30.0, {"b1_k0": Fit(1.0, 0.5, []), "b4_k0": Fit(1.0, 0.0, [])}
    ).save(path)
    target = 1.0 + 3 * 0.5
    with_budget = dataclasses.replace(
        cfg, budget=dataclasses.replace(cfg.budget, unit="latency_ms", target=target, cost_model=str(path))
    )
    budget = Budget.from_config(with_budget, SHAPE, 2)
    assert budget.compute(3.0) == pytest.approx(target)
    no_model = dataclasses.replace(with_budget, budget=dataclasses.replace(with_budget.budget, cost_model=""))
    with pytest.raises(ConfigError, match="needs budget.cost_model=PATH"):
        Budget.from_config(no_model, SHAPE, 2)
    # A latency cap per request converts through the p99 fit: 1 + 0.5 s (median) but 2 + 0.5 s at
    # the tail, so a 4 ms cap allows 4 steps by the tail, not the 6 the median would allow.
    tails = tmp_path / "with_tails.json"
    CostModel(
        fingerprint(cfg, SHAPE), "test", 3.0, 30.0, {"b1_k0": Fit(1.0, 0.5, [])}, {"b1_k0": Fit(2.0, 0.5, [])}
    ).save(tails)
    capped = dataclasses.replace(
        with_budget, budget=dataclasses.replace(with_budget.budget, requests=(4.0,), cost_model=str(tails))
    )
    assert Budget.from_config(capped, SHAPE, 2).request_steps == (4,)
    flat = dataclasses.replace(with_budget, budget=dataclasses.replace(with_budget.budget, serving_batch=4))
    with pytest.raises(ConfigError, match="shows no latency per step at batch 4"):
        Budget.from_config(flat, SHAPE, 2)
    # eval's latency at a batch the cost model was not calibrated at: said, not silently unpredicted
    from adaptive.evaluation.budgeted_eval import measure_latency
    from adaptive.inference.restore import load_run

    run = load_run(calibrated[1].parent)
    run = dataclasses.replace(run, budget=budget)
    timed = measure_latency(run, "validation", 6, batch=2, calls=4)
    assert "latency/predicted_p50_ms" not in timed
    assert timed["latency/unpredicted"] == (
        "the cost model has no calibration at batch 2 (it has batch 1, batch 4): "
        "`adaptive calibrate --batches 2` adds one"
    )
    assert "latency/predicted_p50_ms" in measure_latency(run, "validation", 6, batch=1, calls=4)
    # Without a budget: DIR/cost_model.json (`adaptive calibrate`), as `adaptive export` prices with
    folder = load_run(calibrated[1].parent)
    assert folder.budget is None and "latency/predicted_p50_ms" in measure_latency(folder, "validation", 6, 1, 4)
    (tmp_path / "bare").mkdir()
    bare = measure_latency(dataclasses.replace(folder, workdir=tmp_path / "bare"), "validation", 6, batch=1, calls=4)
    assert bare["latency/unpredicted"] == (
        "no cost model of this run to check: `adaptive calibrate --workdir DIR --batches 1` fits one"
    )
    (tmp_path / "b4").mkdir()  # a folder calibrated at batch 4 alone (not the serving batch): it checks batch 4
    CostModel(fingerprint(cfg, SHAPE), "test", 3.0, 30.0, {"b4_k0": Fit(1.0, 0.5, [])}).save(
        tmp_path / "b4" / "cost_model.json"
    )
    at_4 = dataclasses.replace(folder, workdir=tmp_path / "b4")
    assert "latency/predicted_p50_ms" in measure_latency(at_4, "validation", 6, batch=4, calls=4)
    assert "(it has batch 4)" in measure_latency(at_4, "validation", 6, batch=2, calls=4)["latency/unpredicted"]


def test_each_timed_call_is_judged_against_the_tightest_request_it_drew(calibrated, tmp_path):
    """Requests of 3 and 4 ms, equally likely: a batch of one is judged by its own request (not
    all by 3 ms), a batch of many by its tightest."""
    from adaptive.evaluation.budgeted_eval import call_slas

    cfg, _ = calibrated
    path = tmp_path / "cost_model.json"
    CostModel(fingerprint(cfg, SHAPE), "test", 3.0, 30.0, {"b1_k0": Fit(1.0, 0.5, [])}).save(path)
    budget = dataclasses.replace(cfg.budget, unit="latency_ms", target=None, requests=(3.0, 4.0), cost_model=str(path))
    requests = Budget.from_config(dataclasses.replace(cfg, budget=budget), SHAPE, 2)
    ones = call_slas(requests, budget.requests, 200, 50, 1)
    assert set(ones) == {3.0, 4.0} and 0.3 < (ones == 4.0).mean() < 0.7
    assert (call_slas(requests, budget.requests, 20, 20, 64) == 3.0).all()  # 64 draws: a 3 ms one among them


def test_a_run_keeps_the_cost_model_it_was_trained_under(calibrated, tmp_path, caplog):
    """budget.cost_model names a file `adaptive calibrate` of another run may rewrite: the run
    copies it as it starts, and its budgets read the copy from then on."""
    from adaptive.workdir.config_file import RUN_COST_MODEL, load_config

    cfg, _ = calibrated
    source, run = tmp_path / "cost.json", tmp_path / "run"
    CostModel(fingerprint(cfg, SHAPE), "test", 3.0, 30.0, {"b1_k0": Fit(1.0, 0.5, [])}).save(source)
    overrides = (
        "--config.budget.unit=latency_ms",
        "--config.budget.target=2.5",
        f"--config.budget.cost_model={source}",
        "--config.budget.serving_batch=1",
    )
    train_tiny(run, 5, overrides=overrides)
    assert (run / RUN_COST_MODEL).read_text() == source.read_text()
    CostModel(fingerprint(cfg, SHAPE), "test", 3.0, 30.0, {"b8_k0": Fit(9.0, 9.0, [])}).save(source)  # recalibrated
    loaded = load_config(run)
    assert loaded.budget.cost_model == str(run.resolve() / RUN_COST_MODEL)
    assert Budget.from_config(loaded, SHAPE, 2).compute(3.0) == pytest.approx(1.0 + 3 * 0.5)
    with caplog.at_level("WARNING", logger="adaptive.training"):
        train_tiny(run, 10, overrides=overrides)  # resumed: the run keeps its copy, and says so
    assert f"{source} changed since this run started; the run keeps the cost model it started with" in caplog.text
    assert (run / RUN_COST_MODEL).read_text() != source.read_text()


def test_an_export_prices_latency_with_the_folders_calibration(calibrated, tmp_path):
    """`adaptive calibrate` then `adaptive export`, with no budget.cost_model in the config: the
    artifact prices latency, money and energy through DIR/cost_model.json; one calibrated for
    another network is named and left out."""
    from adaptive.inference.export import cost_model_of
    from adaptive.inference.restore import load_run

    _, path = calibrated
    run = load_run(path.parent)
    assert run.budget is None and cost_model_of(run) is not None
    proc = subprocess.run(
        cli("export", "--workdir", str(path.parent), "--out", str(tmp_path / "art")), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((tmp_path / "art" / "meta.json").read_text())
    assert meta["cost_model"] is not None and {"latency_ms", "latency_ms_p99", "energy_j"} <= set(
        meta["compute_at_steps"]
    )
    _latency_budget_is_judged_by_the_measured_run(tmp_path / "art")
    other = tmp_path / "other"
    shutil.copytree(path.parent, other)
    CostModel("another network", "test", 3.0, 30.0, {"b1_k0": Fit(1.0, 0.5, [])}).save(other / "cost_model.json")
    said = []
    assert cost_model_of(load_run(other), said.append) is None
    assert said and "is not used" in said[0] and "another model or config" in said[0]


def _latency_budget_is_judged_by_the_measured_run(artifact):
    """A request's latency_ms budget is priced by the cost model to choose its steps, and judged
    in /metrics and in its answer by the run that answered it (`run_ms`), not by that price;
    the adaptive policy also prices it at the server's own runs, and refuses what they cannot keep."""
    import asyncio
    import time

    import numpy as np
    from aiohttp.test_utils import TestClient, TestServer

    from adaptive.serving.controller import Controller
    from adaptive.serving.engine import Engine
    from adaptive.serving.server import Server

    engine = Engine.from_artifact(artifact, buckets=(1,))
    budget = float(engine.compute_of(np.array([1]), "latency_ms")[0]) * 1.001  # one step, as priced, fits
    x = np.zeros(engine.input_shape, np.float32).tolist()
    run = engine.run

    def slow_run(*args):  # this machine under load: every run takes far longer than its price
        time.sleep(max(20 * budget, 30.0) / 1e3)
        return run(*args)

    async def main(mode: str, idle: bool = False):
        engine.run = slow_run
        controller = Controller(engine.cap, 1e4, mode=mode)
        server = Server(engine, controller, max_batch=1)
        async with TestClient(TestServer(server.app())) as client:
            if idle:  # no request for longer than the served runs are trusted; keep-warm runs meanwhile
                controller._ran_at = {point: at - 60.0 for point, at in controller._ran_at.items()}
                await asyncio.sleep(0.3)
            answer = await (await client.post("/predict", json={"x": x, "budget": budget, "unit": "latency_ms"})).json()
            return answer, await (await client.get("/metrics")).text()

    answer, metrics = asyncio.run(main("static"))  # the cost model's price alone: it runs
    assert answer["status"] == "ok" and answer["steps"] <= answer["budget_steps"]
    assert budget < answer["run_ms"] <= answer["latency_ms"] and answer["within_budget"] is False
    assert "adaptive_budget_adherence 0.000000" in metrics  # priced to fit, ran over
    answer, metrics = asyncio.run(main("adaptive"))  # its own runs, timed as it started, say it cannot
    assert answer["status"] == "rejected" and "is under this server's runs now" in answer["reason"]
    # Idle past the served runs' trust: the keep-warm runs' one step still says it cannot.
    answer, _ = asyncio.run(main("adaptive", idle=True))
    assert answer["status"] == "rejected", answer
    engine.run = run


def test_eval_warns_where_measured_latency_is_far_from_the_cost_models():
    from adaptive.cli.main import latency_gap_warning

    assert latency_gap_warning(1.0, 0.6) is None and latency_gap_warning(1.0, 1.9) is None
    assert latency_gap_warning(0.136, 1.170).startswith("warning: measured p50 is 0.12x the cost model's")
    assert "9" in latency_gap_warning(9.0, 1.0) and latency_gap_warning(1.0, 0.0) is not None


def test_calibration_notes_a_poor_line_and_latency_that_hardly_follows_steps():
    from adaptive.evaluation.calibrate import _notes, _worst_error

    assert _worst_error(Fit(1.0, 0.5, []), {1: 1.5, 3: 2.5}) == pytest.approx(0.0)
    assert _worst_error(Fit(1.0, 0.5, []), {1: 1.0}) == pytest.approx(0.5)
    flat = {"batch": 1, "experts": "all", "fit_error": 0.3, "1_steps_ms": 0.1137, "6_steps_ms": 0.1193}
    steep = {"batch": 4, "experts": "all", "fit_error": 0.01, "1_steps_ms": 0.1, "6_steps_ms": 0.5}
    notes = _notes([flat, steep], [1, 6])
    assert len(notes) == 2 and all(n.startswith("batch 1, experts all: ") for n in notes)
    assert "misses a timed point by 30%" in notes[0] and "latency hardly follows steps" in notes[1]
    # p99s falling as steps rise (3.75 ms at 1, 1.07 at 6): the line is clamped flat and misses them
    tail = fit_line([(1, 3.75), (6, 1.07)])
    noisy = {**steep, "batch": 8, "p99_fit_error": _worst_error(tail, {1: 3.75, 6: 1.07})}
    (note,) = _notes([noisy], [1, 6])
    assert note.startswith("batch 8, experts all: the p99 line misses a timed p99 by ") and "more --repeats" in note
