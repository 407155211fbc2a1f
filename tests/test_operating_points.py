"""`adaptive export --precision ... --prune ...`: one checksummed function per operating point, each
described in meta.json (accuracy, FLOPs, weight bytes, memory, measured latency) and loadable."""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from adaptive.cli.serve_command import _fallback_points, points_of_artifact
from adaptive.evaluation.operating_points import operating_points
from adaptive.inference.artifact_meta import ArtifactError
from adaptive.inference.export import load_artifact
from adaptive.inference.restore import load_run
from adaptive.serving.engine import Engine
from adaptive.serving.fallbacks import Fallback
from adaptive.serving.launch import build_controller, rung_name
from adaptive.serving.point_meta import ladder_points
from adaptive.serving.server import Server
from adaptive.serving.service_times import ServiceTimes
from tests.helpers import cli, stopped_clock, train_tiny


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("points")
    overrides = (f"--config.data.data_dir={root / 'd'}", "--config.budget.serving_batch=16")  # memory at batch 16
    train_tiny(root / "run", 20, config="configs/mnist1d.py:tiny", overrides=overrides)
    command = cli("export", "--workdir", str(root / "run"), "--out", str(root / "art"))
    flags = ["--precision", "fp32,int8", "--prune", "0,0.5", "--fine-tune-steps", "2", "--points-batch", "4"]
    proc = subprocess.run([*command, *flags], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc.stdout


def test_each_point_is_a_checksummed_function_described_in_meta(artifact):
    root, stdout = artifact
    _, meta = load_artifact(root / "art")
    points = {(p["precision"], p["prune"]): p for p in meta["operating_points"]}
    assert set(points) == {("fp32", 0.0), ("int8", 0.0), ("fp32", 0.5), ("int8", 0.5)}
    assert "file" not in points[("fp32", 0.0)]  # model.jaxexport itself
    for key in (("int8", 0.0), ("fp32", 0.5), ("int8", 0.5)):
        assert (root / "art" / points[key]["file"]).is_file()
    assert points[("int8", 0.0)]["weight_bytes"] < points[("fp32", 0.0)]["weight_bytes"] / 3
    assert points[("int8", 0.0)]["memory"]["total"] < points[("fp32", 0.0)]["memory"]["total"]
    assert all(p["memory"]["batch"] == 16 for p in points.values()) and meta["memory"]["batch"] == 16
    assert points[("fp32", 0.5)]["flops"] < 0.8 * points[("fp32", 0.0)]["flops"]
    assert points[("int8", 0.5)]["flops"] == points[("fp32", 0.5)]["flops"]  # precision changes no FLOP count
    assert all(p["latency_ms"]["median"] > 0 and p["latency_ms"]["batch"] == 4 for p in points.values())
    assert all(0 <= p["accuracy"] <= 1 for p in points.values())
    assert "int8 prune 0.5" in stdout


def test_a_point_loads_and_answers_like_its_neighbours(artifact):
    root, _ = artifact
    x = np.random.RandomState(0).standard_normal((8, 40)).astype(np.float32)
    budget = np.full((8,), 3, np.int32)
    full, _ = load_artifact(root / "art")
    small, _ = load_artifact(root / "art", point=("int8", 0.5))
    assert small.call(x, budget)[0].shape == (8,)
    same = (np.asarray(full.call(x, budget)[0]) == np.asarray(small.call(x, budget)[0])).mean()
    assert same > 0.5  # a pruned int8 model still mostly agrees with its source
    with pytest.raises(ArtifactError, match="no operating point int4"):
        load_artifact(root / "art", point=("int4", 0.0))


def test_a_corrupted_point_is_refused_and_meta_is_validated(artifact, tmp_path):
    root, _ = artifact
    _, meta = load_artifact(root / "art")
    entry = next(p for p in meta["operating_points"] if p.get("file"))
    copy = tmp_path / "art"
    copy.mkdir()
    for f in (root / "art").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    blob = bytearray((copy / entry["file"]).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / entry["file"]).write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(copy, point=(entry["precision"], entry["prune"]))
    edited = json.loads((root / "art" / "meta.json").read_text())
    edited["operating_points"][1]["prune"] = 1.5
    (copy / "meta.json").write_text(json.dumps(edited))
    with pytest.raises(ArtifactError, match="prune"):
        load_artifact(copy)
    edited = json.loads((root / "art" / "meta.json").read_text())
    edited["operating_points"][1]["flops_at_steps"] = edited["operating_points"][1]["flops_at_steps"][:-1]
    (copy / "meta.json").write_text(json.dumps(edited))
    with pytest.raises(ArtifactError, match=r"operating_points\[1\]\.flops_at_steps must be a list of \d+ \(caps"):
        load_artifact(copy)


def test_bad_points_are_one_line_errors(artifact, tmp_path):
    root, _ = artifact
    for flags, said in (
        (["--prune", "0,1.5"], "[0, 1)"),
        (["--precision", "int3"], "int3"),
        (["--prune", "0.251"], "whole percents"),
    ):
        command = cli("export", "--workdir", str(root / "run"), "--out", str(tmp_path / "x"), *flags)
        proc = subprocess.run(command, capture_output=True, text=True)
        assert proc.returncode != 0 and said in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "x").exists()


def test_a_memory_budget_keeps_the_points_that_fit(artifact):
    root, _ = artifact
    run = load_run(root / "run")
    entries, _ = operating_points(run, ["fp32", "int8"], [0.0], batch=4, repeats=2)
    sizes = {e["precision"]: e["memory"]["total_mb"] for e in entries}
    kept, blobs = operating_points(run, ["fp32", "int8"], [0.0], batch=4, repeats=2, memory_mb=sum(sizes.values()) / 2)
    assert [(e["precision"], e["fits"]) for e in kept] == [("fp32", False), ("int8", True)] and len(blobs) == 1
    with pytest.raises(ArtifactError, match="no operating point fits the memory budget"):
        operating_points(run, ["fp32", "int8"], [0.0], batch=4, repeats=2, memory_mb=min(sizes.values()) / 2)


def test_a_point_serves_as_the_fallback_rung_priced_by_its_own_flops_and_accuracy(artifact):
    root, _ = artifact
    _, meta = load_artifact(root / "art")
    points = {(p["precision"], p["prune"]): p for p in meta["operating_points"]}
    primary = Engine.from_artifact(root / "art", buckets=(1, 4))
    backup = Engine.from_artifact(root / "art", buckets=(1, 4), expert_budgets=False, point=("int8", 0.5))
    own = points[("int8", 0.5)]["flops_at_steps"]  # its own FLOPs at each step, not the base's scaled
    assert len(own) == primary.cap and own[-1] == points[("int8", 0.5)]["flops"]
    np.testing.assert_allclose(backup.table["flops"], own)
    assert all(s < b for s, b in zip(backup.table["flops"], primary.table["flops"], strict=True))
    if "macs" in primary.table:
        ratios = np.asarray(own) / np.asarray(primary.table["flops"])
        np.testing.assert_allclose(backup.table["macs"], np.asarray(primary.table["macs"]) * ratios)
    assert backup.meta["memory"]["total"] == points[("int8", 0.5)]["memory"]["total"]
    controller = build_controller(primary, backup, sla_ms=50.0, mode="adaptive", max_batch=4, tolerance=0.005)
    scored = {primary.cap: points[("int8", 0.5)]["accuracy"]}
    assert controller.fallbacks == (Fallback("fallback", primary.cap, scored),)
    x = np.random.RandomState(0).standard_normal((4, 40)).astype(np.float32)
    small, _ = load_artifact(root / "art", point=("int8", 0.5))
    want = np.asarray(small.call(x, np.full((4,), primary.cap, np.int32))[0])
    got = backup.run(x, np.full((4,), primary.cap, np.int32))
    np.testing.assert_array_equal(np.asarray(got.prediction), want)


def test_eval_scores_the_points_on_a_split_and_plots_them(artifact):
    root, _ = artifact
    command = cli("eval", "--workdir", str(root / "run"), "--split", "validation", "--points", str(root / "art"))
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "int8 prune 0.5" in proc.stdout
    (report,) = (root / "run" / "eval").glob("validation-points-step*.json")
    rows = json.loads(report.read_text())["operating_points"]
    assert len(rows) == 4 and report.with_suffix(".png").is_file()
    for row in rows:  # the exported functions, scored on validation, agree with what export measured there
        assert abs(row["accuracy"] - row["validation_accuracy"]) <= 0.01
        assert row["flops"] <= row["flops_at_cap"] * (1 + 1e-9)  # as run: an adaptive model halts before the cap
    assert any(r["pareto_memory_mb"] for r in rows) and any(r["pareto_flops"] for r in rows)


def test_eval_refuses_another_runs_points_before_evaluating(artifact, tmp_path):
    root, _ = artifact
    other = tmp_path / "other"
    shutil.copytree(root / "run", other, ignore=shutil.ignore_patterns("eval"))
    command = cli("eval", "--workdir", str(other), "--split", "validation", "--points", str(root / "art"))
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"adaptive: error: --points {root / 'art'} was exported from {(root / 'run').resolve()}, not from {other}"
    ]
    assert not (other / "eval").exists()  # refused before the run was scored
    # the same run at a step other than the artifact's: its points would be scored on other weights
    before = sorted((root / "run" / "eval").glob("*"))
    command = cli("eval", "--workdir", str(root / "run"), "--split", "validation", "--points", str(root / "art"))
    proc = subprocess.run([*command, "--step", "7"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"adaptive: error: --points {root / 'art'} was exported at step 20 of {root / 'run'}, which is evaluated "
        "at step 7: export that step again, or give --step 20"
    ]
    assert sorted((root / "run" / "eval").glob("*")) == before


@pytest.mark.slow
def test_an_adaptive_runs_compute_report_draws_its_points_beside_its_budgets(tmp_path):
    train_tiny(tmp_path / "run", 10, overrides=(f"--config.data.data_dir={tmp_path / 'd'}",))
    export = cli("export", "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "art"))
    proc = subprocess.run([*export, "--precision", "fp32,int8", "--points-batch", "4"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    command = cli("eval", "--workdir", str(tmp_path / "run"), "--points", str(tmp_path / "art"))
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (report,) = (tmp_path / "run" / "eval").glob("*-report-step*.json")
    report = json.loads(report.read_text())
    points = report["operating_points"]
    assert [p["label"] for p in points] == ["fp32 prune 0", "int8 prune 0"]
    # the fp32 point is the run itself: at the full budget it halts as the report's own runs do
    full, realized = points[0], report["compute_distribution"]
    assert full["steps"] == pytest.approx(realized["steps"]["mean"], abs=0.05)
    assert full["flops"] == pytest.approx(realized["flops"]["mean"], rel=0.01) and full["flops"] < full["flops_at_cap"]


def test_serve_refuses_points_it_cannot_serve_before_loading(artifact):
    root, _ = artifact
    for flags, said in (
        (["--fallback-point", "int4,0"], "has no such operating point"),
        (["--point", "int8,0.3"], "has no such operating point"),
        (["--point", ""], "--point '': give PRECISION,PRUNE"),
        (["--fallback-point", "fp32,0"], "the primary itself"),
        (["--point", "int8,0.5", "--fallback-point", "int8,0.5"], "the primary itself"),
        (["--fallback-point", "int8,0", "--fallback-point", "int8"], "give PRECISION,PRUNE"),
        (["--fallback-point", "int8,0", "--policy", "static"], "--fallback-point is for --policy adaptive; --policy"),
    ):
        proc = subprocess.run(cli("serve", "--artifact", str(root / "art"), *flags), capture_output=True, text=True)
        assert proc.returncode != 0 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-500:]


def test_an_unknown_point_is_told_every_point_served_the_unquantized_model_included():
    """An export of `--precision int8 --prune 0.5` lists one point; model.jaxexport (fp32,0) is
    still served, so the refusal of another names it too."""
    from adaptive.cli.serve_command import check_point
    from adaptive.config import ConfigError

    have = {("int8", 0.5): {}}
    check_point("--point", ("fp32", 0.0), "art", have)
    with pytest.raises(
        ConfigError, match=r"^--point int8,0: art has no such operating point \(it has fp32,0, int8,0.5\)$"
    ):
        check_point("--point", ("int8", 0.0), "art", have)


def test_a_fallback_of_another_task_is_refused_before_loading(artifact):
    """Its answers would be to other questions, or its input another shape (a 500 per request)."""
    from adaptive.cli.serve_command import _refuse_other_task
    from adaptive.config import ConfigError

    root, _ = artifact
    _, meta = load_artifact(root / "art")
    args = argparse.Namespace(artifact="art", fallback="fb")
    _refuse_other_task(args, meta, copy.deepcopy(meta))  # a point or a smaller model of the same task
    _refuse_other_task(args, meta, {**meta, "format": "adaptive-export/1"})  # an older export still serves
    parity = copy.deepcopy(meta)
    parity["input"]["shape"], parity["num_classes"], parity["config"]["data"]["name"] = ["batch", 16], 2, "parity"
    lm = {"format": "adaptive-lm-export/1"}
    for other, said in (
        (parity, "--fallback fb has input ['batch', 16] and --artifact art ['batch', 40]"),
        ({**meta, "num_classes": 2}, "--fallback fb has classes 2 and --artifact art 10"),
        ({**meta, "config": {**meta["config"], "data": {"name": "fake"}}}, "has data fake and --artifact art mnist1d"),
        (lm, "--fallback fb holds a language model and --artifact art a classifier"),
    ):
        with pytest.raises(ConfigError, match=re.escape(said)):
            _refuse_other_task(args, meta, other)


def test_a_malformed_meta_is_refused_in_one_line_before_its_points_are_read(tmp_path):
    for meta in ([1], {"operating_points": [1]}, {"operating_points": {"int8": 0}}):
        with pytest.raises(ArtifactError, match="meta.json is malformed: operating_points must be a list of objects"):
            points_of_artifact(str(tmp_path), meta)
    (tmp_path / "meta.json").write_text("[1]")
    proc = subprocess.run(
        cli("serve", "--artifact", str(tmp_path), "--point", "int8,0"), capture_output=True, text=True
    )
    assert proc.returncode == 2 and "is malformed" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-500:]


def test_a_ladder_of_points_each_answers_under_its_own_name(artifact):
    """`--fallback-point all`: every point but the primary that was quicker at export, the most
    accurate first; a server of those rungs runs a row on the rung the plan names, and says
    which in its answer."""
    root, _ = artifact
    _, meta = load_artifact(root / "art")
    args = argparse.Namespace(artifact=str(root / "art"), fallback=None, point=None, fallback_point=["all"])
    edited = copy.deepcopy(meta)  # latencies set, so that which point is quicker is not up to this machine
    latency = {("fp32", 0.0): 1.0, ("int8", 0.0): 0.8, ("fp32", 0.5): 0.5, ("int8", 0.5): 1.2}
    for p in edited["operating_points"]:
        p["latency_ms"]["median"] = latency[p["precision"], p["prune"]]
    ranked = _fallback_points(args, edited, None)
    accuracy = {(p["precision"], p["prune"]): p["accuracy"] for p in meta["operating_points"]}
    assert sorted(ranked) == [("fp32", 0.5), ("int8", 0.0)]  # int8 pruned: slower than the primary
    assert [accuracy[p] for p in ranked] == sorted((accuracy[p] for p in ranked), reverse=True)
    primary = Engine.from_artifact(root / "art", buckets=(1,))
    rungs = {
        f"fallback:{p[0]},{p[1]:g}": Engine.from_artifact(root / "art", buckets=(1,), expert_budgets=False, point=p)
        for p in [("int8", 0.0), ("fp32", 0.5)]
    }
    controller = build_controller(primary, rungs, sla_ms=20.0, mode="adaptive", max_batch=1, tolerance=0.005)
    stopped_clock(controller)
    assert [f.name for f in controller.fallbacks] == list(rungs)

    async def scenario():
        server = Server(primary, controller, fallback=rungs, max_batch=1)
        for name in ("primary", *rungs):  # a hopeless machine, but for the last rung
            controller.service[name, None] = ServiceTimes(primary.cap)
            if name != "fallback:fp32,0.5":
                controller.observe(name, 1, 25.0)  # one step takes longer than the SLA
        async with TestClient(TestServer(server.app())) as client:
            health = await (await client.get("/healthz")).json()
            answer = await (await client.post("/predict", json={"x": [0.0] * 40})).json()
            under = []  # budgets under the primary's least run: a rung keeps them, or none does (400)
            for budget in budgets:
                response = await client.post("/predict", json={"x": [0.0] * 40, **budget})
                under.append((response.status, await response.json()))
        lone = build_controller(primary, {}, sla_ms=20.0, mode="adaptive", max_batch=1, tolerance=0.005)
        async with TestClient(TestServer(Server(primary, lone, max_batch=1).app())) as client:
            alone = await client.post("/predict", json={"x": [0.0] * 40, **budgets[0]})  # no rung: refused
            under.append((alone.status, await alone.json()))
        return health, answer, under

    small = rungs["fallback:fp32,0.5"]  # a static model, as the primary: it runs all its steps
    full, small_full = primary.table["flops"][-1], small.table["flops"][-1]
    memory, small_memory = primary.meta["memory"]["total_mb"], small.meta["memory"]["total_mb"]
    assert small_full < full and small_memory < memory  # the premise: the pruned rung is smaller
    budgets = [
        {"budget": (memory + small_memory) / 2, "unit": "memory_mb"},  # under the primary's memory
        {"budget": (full + small_full) / 2, "unit": "flops"},  # fewer steps than the primary runs
        {"budget": small.table["flops"][0] / 2, "unit": "flops"},  # under every model's one step
    ]
    health, answer, under = asyncio.run(scenario())
    assert list(health["fallbacks"]) == list(rungs) and health["fallback"].endswith("(int8,0)")
    assert answer["status"] == "fallback" and answer["model"] == "fallback:fp32,0.5"
    for status, body in under[:2]:
        assert status == 200 and body["status"] == "fallback" and body["model"] == "fallback:fp32,0.5", body
    least = min((e.least_budget("flops"), name) for name, e in rungs.items())
    assert least[0] > budgets[2]["budget"]  # the least any fallback runs in, said with its name
    said = f"); no fallback runs within it (the least: {least[0]:g} flops, on {least[1]})"
    assert under[2][0] == 400 and under[2][1]["error"].endswith(said)
    assert under[3][0] == 400 and under[3][1]["error"].startswith(f"budget {budgets[0]['budget']:g} memory_mb is below")


def test_bench_serve_has_a_point_ladder_policy_priced_per_rung(artifact, monkeypatch):
    """Without --small, no small-model policy; the point ladder's FLOPs tables are named as the
    server names its rungs, each the point's own FLOPs at each step."""
    from adaptive.bench import serve

    root, _ = artifact
    _, meta = load_artifact(root / "art")
    edited = copy.deepcopy(meta)  # latencies set, so that which point is quicker is not up to this machine
    latency = {("fp32", 0.0): 1.0, ("int8", 0.0): 0.8, ("fp32", 0.5): 0.5, ("int8", 0.5): 1.2}
    for p in edited["operating_points"]:
        p["latency_ms"]["median"] = latency[p["precision"], p["prune"]]
    monkeypatch.setattr(serve, "read_meta", lambda path: edited)
    policies = serve._policies(str(root / "art"), None, 2, 50.0, 8)
    assert not any("small" in name or name.endswith("+ fallback") for name in policies)
    ladder = ladder_points(edited)
    assert sorted(ladder) == [("fp32", 0.5), ("int8", 0.0)]
    server_args, flops = policies["adaptive + controller + point ladder"]
    assert server_args[server_args.index("--fallback-point") + 1] == "all"
    expected = {rung_name(p, len(ladder)): p for p in ladder}
    assert set(flops) == {"primary", *expected}
    own = {(p["precision"], p["prune"]): p["flops_at_steps"] for p in meta["operating_points"]}
    for name, point in expected.items():
        np.testing.assert_allclose(flops[name], own[point])
    assert "adaptive + controller" not in policies  # the ladder's policy runs the controller
    # Without points or --small the controller still runs, alone: fewer steps under load, then rejection.
    monkeypatch.setattr(serve, "read_meta", lambda path: {**edited, "operating_points": []})
    alone = serve._policies(str(root / "art"), None, 2, 50.0, 8)
    server_args, flops = alone["adaptive + controller"]
    assert server_args[:4] == ["--artifact", str(root / "art"), "--policy", "adaptive"]
    assert "--fallback" not in server_args and "--fallback-point" not in server_args and set(flops) == {"primary"}


def test_a_point_over_the_memory_budget_leaves_with_every_file_it_has():
    from adaptive.evaluation.operating_points import keep_fitting

    slots = {
        "prefill": {"file": "point-int8-p0-slot-prefill.jaxexport"},
        "step": {"file": "point-int8-p0-slot-step.jaxexport"},
    }
    entries = [
        {"precision": "fp32", "prune": 0.0, "memory": {"total_mb": 3.0}},
        {
            "precision": "int8",
            "prune": 0.0,
            "memory": {"total_mb": 2.0},
            "file": "point-int8-p0.jaxexport",
            "slots": slots,
        },
        {"precision": "int8", "prune": 0.5, "memory": {"total_mb": 0.5}, "file": "point-int8-p50.jaxexport"},
    ]
    blobs = {name: b"x" for name in ("point-int8-p0.jaxexport", "point-int8-p50.jaxexport")}
    blobs |= {s["file"]: b"x" for s in slots.values()}
    said = []
    kept, left = keep_fitting(entries, dict(blobs), 1.0, said.append)
    assert [(e["precision"], e["prune"]) for e in kept] == [("fp32", 0.0), ("int8", 0.5)]
    assert said[-1].startswith("the model itself (fp32, prune 0) needs 3 MB, over the budget: kept as the reference")
    assert said[-1].endswith("adaptive serve --artifact ART --point int8,0.5")  # what serve would refuse, said now
    assert list(left) == ["point-int8-p50.jaxexport"] and not kept[0]["fits"] and kept[1]["fits"]
    with pytest.raises(ArtifactError, match="no operating point fits the memory budget of 0.1 MB"):
        keep_fitting(entries, dict(blobs), 0.1, lambda line: None)


@pytest.mark.parametrize(
    "precisions, prunes, message",
    [
        ([], [0.0], "--precision and --prune each need one value or more"),  # `--precision ''`
        (["fp32"], [], "--precision and --prune each need one value or more"),
        (["int3"], [0.0], "precision 'int3' is not one of fp32, bf16, int8, int4"),
        (["fp32"], [0.251], "give whole percents"),
        (["fp32", "fp32"], [0.0], "list each value once"),
    ],
)
def test_operating_points_asked_for_are_checked_before_any_is_computed(precisions, prunes, message):
    from adaptive.evaluation.operating_points import check_points

    with pytest.raises(ValueError, match=message):
        check_points(precisions, prunes)


def test_an_empty_entry_in_an_exports_point_flags_is_refused_not_dropped():
    from adaptive.cli.export_command import _points
    from adaptive.config import ConfigError

    for precision, prune, said in (
        ("fp32,int8,", "0", r"^--precision 'fp32,int8,' has an empty entry \(a stray comma\?\)"),
        ("int8", "0,,0.5", r"^--prune '0,,0.5' has an empty entry"),
    ):
        with pytest.raises(ConfigError, match=said):
            _points(argparse.Namespace(precision=precision, prune=prune), print)
    with pytest.raises(ConfigError, match="--precision and --prune each need one value or more"):
        _points(argparse.Namespace(precision="", prune="0"), print)
    assert _points(argparse.Namespace(precision=" fp32 ", prune="0"), print) is None  # the model alone
    from adaptive.cli.bench_command import _precisions

    with pytest.raises(ConfigError, match=r"^--precisions 'int8,' has an empty entry"):  # `adaptive bench quant`
        _precisions("int8,")


def test_a_flops_budget_under_a_moe_points_experts_names_the_point_as_lacking_fewer():
    """point_meta leaves a base model's expert variants out (they run its own weights): the 400
    says the operating point has none, not the artifact (which does)."""
    from types import SimpleNamespace

    from adaptive.serving.answerable import _at_its_experts

    parsed = SimpleNamespace(unit="flops", expert_steps=None)
    base = SimpleNamespace(meta={"caps": {"experts_per_token": 2}}, expert_budgets=[])
    point = SimpleNamespace(meta={**base.meta, "point": {"precision": "int8", "prune": 0.0}}, expert_budgets=[])
    assert _at_its_experts(parsed, base) == " at its 2 experts per token (this artifact has no fewer-experts variants)"
    assert _at_its_experts(parsed, point) == (
        " at its 2 experts per token (this operating point int8,0 has no fewer-experts variants)"
    )
