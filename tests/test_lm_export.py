"""`adaptive export` of a language model: a generation artifact plain JAX runs, caps in the graph."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from adaptive.data import byte_vocab
from adaptive.inference.artifact_folder import check_out
from adaptive.inference.artifact_meta import ArtifactError
from adaptive.inference.generate import Generation, decoder_for_run
from adaptive.inference.lm_export import load_lm_artifact
from adaptive.inference.restore import load_run
from adaptive.nn.quantize import quantize_model
from tests.helpers import COMPILES, ROOT, cli, train_tiny

ROOT_README = ROOT / "README.md"

# The README's client, verbatim between the markers: generation from the artifact with plain JAX.
CLIENT = """
import json, sys
import jax, numpy as np
art, text = sys.argv[1], sys.argv[2].encode()
meta = json.load(open(f"{art}/meta.json"))
generate = jax.export.deserialize(bytearray(open(f"{art}/model.jaxexport", "rb").read()))
ids = [meta["tokenizer"]["bos"], *text]
prompt = np.zeros((1, meta["prompt_capacity"]), np.int32)
prompt[0, : len(ids)] = ids
one = lambda value, dtype: np.array([value], dtype)  # one sequence: every limit is a [1] array
limits = [one(16, np.int32), one(meta["caps"]["layers"], np.int32), one(1, np.int32), one(np.inf, np.float32),
          one(meta["exit_threshold"]["default"], np.float32), one(0, np.float32), one(0, np.float32),
          one(1, np.float32), one(0, np.uint32), one(False, bool)]
tokens, count, layers, *_ = generate.call(prompt, one(len(ids), np.int32), *limits)
n = int(count[0])
print(bytes(int(t) for t in np.asarray(tokens)[0, :n] if t < 256).decode("utf-8", "replace"))
print(" ".join(str(int(d)) for d in np.asarray(layers)[0, :n]))
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-export")
    train_tiny(root / "run", 2, config="configs/lm.py:tiny", overrides=("--config.lm.exits=true",))
    command = cli("export", "--workdir", str(root / "run"), "--out", str(root / "art"))
    proc = subprocess.run(
        [*command, "--prompt-capacity", "16", "--new-tokens", "12", "--slots", "2", "--precision", "fp32,int8"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verified against the live decoder" in proc.stdout
    return root / "run", root / "art"


def test_plain_jax_generates_the_live_decoders_text_without_this_package(artifact):
    run_dir, art = artifact
    guard = "import sys; sys.modules['adaptive'] = None\n"  # any import of the package fails
    proc = subprocess.run([sys.executable, "-c", guard + CLIENT, str(art), "def f("], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text, depths = proc.stdout.rstrip("\n").rsplit("\n", 1)
    meta = json.loads((art / "meta.json").read_text())
    decoder = decoder_for_run(load_run(run_dir, language_model=True), prompt_capacity=16, new_capacity=12)
    limits = decoder.limits(1, max_new_tokens=12, expert_cap=1, threshold=meta["exit_threshold"]["default"])
    live = decoder([byte_vocab.encode(b"def f(", eos=False)], limits)
    n = int(live.count_B[0])
    assert text == byte_vocab.decode(np.asarray(live.tokens_BxM)[0, :n]).decode("utf-8", "replace")
    assert depths.split() == [str(int(d)) for d in np.asarray(live.layers_BxM)[0, :n]]
    assert (art / "model.jaxexport").exists() and (CLIENT.strip() in (ROOT_README).read_text())


def test_the_caps_hold_inside_the_graph_for_any_inputs(artifact):
    _, art = artifact
    generate, meta = load_lm_artifact(art)
    prompt = np.full((3, 16), 300, np.int32)  # tokens outside the vocabulary too
    bad = [
        np.array([1000, -5, 3], np.int32),  # max new tokens
        np.array([100, 0, -1], np.int32),  # layer cap
        np.array([0, 99, 1], np.int32),  # expert cap
        np.array([np.nan, -1.0, np.inf], np.float32),  # FLOPs budget
        np.array([np.nan, -3.0, 0.5], np.float32),  # threshold
        np.zeros(3, np.float32),
        np.array([np.nan, -1.0, 5.0], np.float32),  # temperature
        np.array([5.0, 0.0, np.nan], np.float32),  # top-p
        np.arange(3, dtype=np.uint32),
        np.zeros(3, bool),
    ]
    tokens, count, layers, experts, flops, _, stop = (
        np.asarray(a) for a in generate.call(prompt, np.array([0, 99, 4], np.int32), *bad)
    )
    assert (count >= 1).all() and (count <= meta["new_capacity"]).all()
    valid = np.arange(meta["new_capacity"])[None, :] < count[:, None]
    assert (layers[valid] >= 1).all() and (layers[valid] <= meta["caps"]["layers"]).all()
    assert ((tokens >= 0) & (tokens < meta["tokenizer"]["vocab"])).all() and np.isfinite(flops).all()
    assert count[0] == 1 and count[1] == 1  # a NaN or negative budget pays for nothing past the first token


def test_an_edited_or_corrupted_artifact_is_refused_in_one_line(artifact, tmp_path):
    _, art = artifact
    copy = tmp_path / "art"
    copy.mkdir()
    for name in ("meta.json", "model.jaxexport"):
        (copy / name).write_bytes((art / name).read_bytes())
    meta = json.loads((copy / "meta.json").read_text())
    edited = {**meta, "caps": {**meta["caps"], "layers": 99}}
    (copy / "meta.json").write_text(json.dumps(edited))
    with pytest.raises(ArtifactError, match="modified after export"):
        load_lm_artifact(copy)
    (copy / "meta.json").write_text(json.dumps(meta))
    blob = (art / "model.jaxexport").read_bytes()
    (copy / "model.jaxexport").write_bytes(blob[:1000])  # a cut copy is said to be cut
    with pytest.raises(
        ArtifactError, match=f"model.jaxexport is truncated or padded: 1000 bytes, meta.json says {len(blob)}$"
    ):
        load_lm_artifact(copy)
    (copy / "model.jaxexport").write_bytes(blob[:-7] + b"garbage")
    with pytest.raises(ArtifactError, match="model.jaxexport does not match meta.json's checksum"):
        load_lm_artifact(copy)
    (copy / "meta.json").write_text(json.dumps({**meta, "format": "adaptive-export/2"}))
    with pytest.raises(ArtifactError, match="a language model's artifact"):
        load_lm_artifact(copy)


def test_an_int8_operating_point_generates_what_the_live_int8_decoder_does(artifact):
    workdir, art = artifact
    _, meta = load_lm_artifact(art)
    fp32, int8 = meta["operating_points"]
    assert (fp32["precision"], int8["precision"]) == ("fp32", "int8") and "file" not in fp32
    assert int8["file"] == "point-int8-p0.jaxexport" and int8["bytes"] < meta["bytes"]
    assert int8["weight_bytes"] < 0.35 * fp32["weight_bytes"] and int8["flops"] == fp32["flops"]
    # priced over the artifact's cache of 16 + 12 tokens (not the training window of 32): what
    # its generation spends at most, as meta.json's worst case and serving count it
    assert fp32["flops"] == pytest.approx(meta["worst_flops_per_token_at_layer_cap"][-1], rel=2e-5)
    assert int8["memory"]["total_mb"] < fp32["memory"]["total_mb"]
    for entry in (fp32, int8):
        assert entry["bits_per_byte"] > 0 and entry["latency_ms"]["per_token"] > 0
    run = load_run(workdir, language_model=True)
    graphdef, params = quantize_model(run.graphdef, run.params, "int8", int8["clip"])
    live = decoder_for_run(
        dataclasses.replace(run, graphdef=graphdef, params=params), prompt_capacity=16, new_capacity=12
    )
    exported, _ = load_lm_artifact(art, point=("int8", 0))
    prompt = np.zeros((2, 16), np.int32)
    prompt[:, :3] = byte_vocab.encode(b"de", eos=False)
    limits = live.limits(2, temperature=[0.0, 1.0], seed=[3, 4], threshold=meta["exit_threshold"]["default"])
    want = live([prompt[0, :3], prompt[1, :3]], limits)
    got = exported.call(prompt, np.full((2,), 3, np.int32), *limits)
    for name, a, b in zip(Generation._fields, got, want, strict=True):
        assert np.allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-3), name


def test_a_missing_edited_or_corrupted_point_is_refused_in_one_line(artifact, tmp_path):
    _, art = artifact
    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    with pytest.raises(ArtifactError, match="no operating point int4 prune 0; it has int8 prune 0"):
        load_lm_artifact(copy, point=("int4", 0))
    blob = bytearray((copy / "point-int8-p0.jaxexport").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / "point-int8-p0.jaxexport").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="point-int8-p0.jaxexport does not match"):
        load_lm_artifact(copy, point=("int8", 0))
    load_lm_artifact(copy)  # the model itself still loads
    for key_path, said in (
        (("operating_points", 1, "file"), r"operating_points\[1\]\.file must be"),
        (("operating_points", 1, "slots", "step", "file"), r"operating_points\[1\]\.slots\.step\.file must be"),
        (("slots", "prefill", "file"), r"slots\.prefill\.file must be 'slot-prefill.jaxexport'"),
    ):
        meta = json.loads((art / "meta.json").read_text())
        entry = meta
        for key in key_path[:-1]:
            entry = entry[key]
        entry[key_path[-1]] = "../model.jaxexport"  # never opened: a file name outside the artifact
        (copy / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(ArtifactError, match=said):
            load_lm_artifact(copy)
    unsealed = json.loads((art / "meta.json").read_text())
    del unsealed["meta_sha256"]
    (copy / "meta.json").write_text(json.dumps(unsealed))
    with pytest.raises(ArtifactError, match="has no meta_sha256"):
        load_lm_artifact(copy)


def test_a_resealed_meta_with_a_field_a_server_reads_broken_is_refused_in_one_line(artifact, tmp_path):
    """The seal is a checksum anyone can recompute: the loader checks the fields themselves."""
    from adaptive.inference.artifact_meta import seal
    from adaptive.inference.slot_export import ExportedSlots

    _, art = artifact
    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    good = json.loads((art / "meta.json").read_text())
    for edit, said in (
        (lambda m: m.pop("sha256"), "sha256 is missing"),
        (lambda m: m.update(prompt_capacity=0), "prompt_capacity must be an integer >= 1; got 0"),
        (lambda m: m["caps"].update(layers="2"), "caps.layers must be an integer >= 1; got '2'"),
        (lambda m: m["exit_threshold"].update(default=-1), "exit_threshold.default must be a number >= 0"),
        (lambda m: m["exit_threshold"].update(calibrated={"tested": [{"threshold": 0.5}]}), "calibrated.tested must"),
        (lambda m: m["slots"].update(count=0), "slots.count must be an integer >= 1; got 0"),
        (lambda m: m["slots"].update(state=[[[2], "float32", 1]]), "slots.state must be a list of"),
    ):
        meta = json.loads(json.dumps(good))
        edit(meta)
        (copy / "meta.json").write_text(json.dumps(seal(meta)))
        with pytest.raises(ArtifactError, match=said) as err:
            load_lm_artifact(copy)
        assert "\n" not in str(err.value)
    meta = json.loads(json.dumps(good))
    meta["slots"]["state"][0][0][0] += 1  # a well-formed state the slot functions do not take
    (copy / "meta.json").write_text(json.dumps(seal(meta)))
    resealed = load_lm_artifact(copy)[1]
    with pytest.raises(ArtifactError, match="take another slot state than meta.json's slots.state"):
        ExportedSlots(copy, resealed)


def test_an_operating_points_slot_functions_generate_what_its_whole_generation_does(artifact, tmp_path):
    from adaptive.inference.slot_export import ExportedSlots
    from adaptive.serving.lm_engine import LMEngine
    from tests.test_slots import _run_through_slots

    _, art = artifact
    generate, meta = load_lm_artifact(art, point=("int8", 0))
    slots = ExportedSlots(art, meta, point=("int8", 0))
    assert meta["operating_points"][1]["slots"]["step"]["file"] == "point-int8-p0-slot-step.jaxexport"
    prompts = [byte_vocab.encode(t, eos=False) for t in (b"def f(", b"import os")]
    requests = [dict(max_new_tokens=5), dict(temperature=1.0, seed=2)]
    got = _run_through_slots(LMEngine(slots), prompts, requests)
    for prompt, request, tokens in zip(prompts, requests, got, strict=True):
        padded = np.zeros((1, 16), np.int32)
        padded[0, : len(prompt)] = prompt
        want = generate.call(padded, np.array([len(prompt)], np.int32), *slots.limits(1, **request))
        assert tokens == np.asarray(want[0])[0, : int(want[1][0])].tolist()
    for flags, said in (
        (["--point", "int4,0"], "has no such operating point (it has fp32,0, int8,0)"),
        (["--fallback-point", "all"], "one fallback"),
    ):
        proc = subprocess.run(cli("serve", "--artifact", str(art), *flags), capture_output=True, text=True)
        assert proc.returncode != 0 and said in proc.stderr and "Traceback" not in proc.stderr


def test_eval_draws_the_artifacts_points_beside_the_thresholds_on_validation_only(artifact):
    from adaptive.evaluation.lm_report import evaluate_lm
    from adaptive.workdir.config_file import RunError

    workdir, art = artifact
    report, _, plots = evaluate_lm(workdir, split="validation", points=art)
    rows = {r["label"]: r for r in report["operating_points"]}
    meta = load_lm_artifact(art)[1]
    assert list(rows) == ["fp32 prune 0", "int8 prune 0"] and plots[0].exists()
    assert rows["int8 prune 0"]["validation_bits_per_byte"] == meta["operating_points"][1]["bits_per_byte"]
    # drawn at a training window's price, beside the thresholds priced so; what it spends served beside
    from adaptive.evaluation.pruning import flops_of

    window = flops_of(load_run(workdir, language_model=True))
    assert rows["fp32 prune 0"]["flops_per_token"] == pytest.approx(window, rel=1e-6)
    assert rows["fp32 prune 0"]["served_flops_per_token"] == meta["operating_points"][0]["flops"] != window
    assert rows["int8 prune 0"]["pareto_flops_per_token"] != rows["fp32 prune 0"]["pareto_flops_per_token"] or (
        rows["int8 prune 0"]["validation_bits_per_byte"] == rows["fp32 prune 0"]["validation_bits_per_byte"]
    )  # equal FLOPs: only the lower bits per byte is on the front
    with pytest.raises(RunError, match="validation figures"):
        evaluate_lm(workdir, split="test", points=art)


def test_bad_lm_points_are_one_line_errors_with_nothing_written(artifact, tmp_path):
    workdir, art = artifact
    proc = subprocess.run(cli("export", "--workdir", str(workdir), "--out", str(art)), capture_output=True, text=True)
    assert proc.returncode != 0 and "is an artifact already; pass --force" in proc.stderr
    check_out(art, workdir, force=True)  # an LM artifact is recognised as one, so --force may replace it
    for flags, said in (
        (["--prune", "0,1.5"], "[0, 1)"),
        (["--precision", "int3"], "int3"),
        (["--precision", "int8", "--points-batch", "0"], "--points-batch=0 must be >= 1"),
    ):
        command = cli("export", "--workdir", str(workdir), "--out", str(tmp_path / "x"), *flags)
        proc = subprocess.run(command, capture_output=True, text=True)
        assert proc.returncode != 0 and said in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "x").exists()
    for flags, said in (
        (["--small-point", "int4,0.5"], "no such operating point"),
        (["--small-point", "fp32,0"], "the primary itself"),
        (["--policies", "controller + fallback"], "the 'controller + fallback' policy needs its fallback: --small"),
    ):
        proc = subprocess.run(cli("bench", "serve-lm", "--artifact", str(art), *flags), capture_output=True, text=True)
        assert proc.returncode != 0 and said in proc.stderr and "Traceback" not in proc.stderr


def test_the_artifacts_slot_functions_serve_requests_joining_mid_way(artifact, tmp_path):
    from adaptive.inference.slot_export import ExportedSlots
    from adaptive.serving.lm_engine import LMEngine
    from tests.test_slots import _run_through_slots

    workdir, art = artifact
    meta = load_lm_artifact(art)[1]
    slots = ExportedSlots(art, meta)
    assert slots.slots == 2 == meta["slots"]["count"]
    decoder = decoder_for_run(load_run(workdir, language_model=True), prompt_capacity=16, new_capacity=12)
    prompts = [byte_vocab.encode(t, eos=False) for t in (b"def f(", b"import os", b"x = [")]
    requests = [dict(threshold=0.5, max_new_tokens=5), dict(temperature=1.0, seed=2), dict(layer_cap=1)]
    got = _run_through_slots(LMEngine(slots), prompts, requests)
    for prompt, request, tokens in zip(prompts, requests, got, strict=True):
        want = decoder([prompt], decoder.limits(1, **request))
        assert tokens == np.asarray(want.tokens_BxM[0, : int(want.count_B[0])]).tolist()
    assert slots.traces == {"prefill": 1, "step": 1}
    # each function compiles once, in the warm-up's first calls: its empty state is committed to the
    # device as the functions' outputs are (an uncommitted one compiled the prefill again at its
    # second call, inside the warm-up's timed round, so that a server's first estimate of a
    # prefill was a compilation, seconds where a prefill takes a millisecond)
    fresh = ExportedSlots(art, meta)  # functions of its own: nothing compiled yet
    engine = LMEngine(fresh)
    engine.warm()
    before = COMPILES["count"]
    _run_through_slots(engine, prompts, requests)
    assert COMPILES["count"] == before
    assert fresh._prefill._cache_size() == 1 and fresh._step._cache_size() == 1
    broken = tmp_path / "broken"
    shutil.copytree(art, broken)
    step_file = broken / meta["slots"]["step"]["file"]
    step_blob = step_file.read_bytes()
    step_file.write_bytes(step_blob[:-7] + b"garbage")
    with pytest.raises(ArtifactError, match="slot-step.jaxexport does not match meta.json's checksum"):
        ExportedSlots(broken, meta)
    step_file.write_bytes(step_blob[:500])
    with pytest.raises(ArtifactError, match="slot-step.jaxexport is truncated or padded: 500 bytes"):
        ExportedSlots(broken, meta)


def test_adaptive_serve_streams_generation_from_the_artifact_with_its_int8_point_as_fallback(artifact):
    import threading
    import urllib.error
    import urllib.request

    _, art = artifact
    flags = ("--port", "0", "--ttft-ms", "2000", "--tpot-ms", "200", "--fallback-point", "int8,0")
    process = subprocess.Popen(
        cli("serve", "--artifact", str(art), *flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(180, process.kill)  # a server that never comes up fails, not hangs
    watchdog.start()
    try:
        line = process.stdout.readline()
        assert line.startswith("serving ") and "2 slots" in line, process.stderr.read()
        assert f"fallback {art} (int8, prune 0)" in line
        url = "http://127.0.0.1:" + line.split("http://127.0.0.1:")[1].split(" ")[0]
        body = json.dumps({"prompt": "def f(", "max_new_tokens": 6, "stream": True}).encode()
        request = urllib.request.Request(url + "/generate", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            kind, stream = response.headers["Content-Type"], response.read().decode()
        with urllib.request.urlopen(url + "/metrics", timeout=60) as response:
            metrics = response.read().decode()
        with urllib.request.urlopen(url + "/healthz", timeout=60) as response:
            health = json.loads(response.read())
        with urllib.request.urlopen(url + "/openapi.json", timeout=60) as response:
            document = json.loads(response.read())
        body = json.dumps({"prompt": "def f(", "expert_cap": 1}).encode()
        refused = urllib.request.Request(url + "/generate", body, {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(refused, timeout=60)
        refusal = (error.value.code, json.loads(error.value.read())["error"])
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        watchdog.cancel()
        process.kill()
    events = [json.loads(x.removeprefix("data: ")) for x in stream.split("\n\n") if x.startswith("data: ")]
    assert kind.startswith("text/event-stream") and events[-1]["done"] and events[-1]["status"] == "ok"
    assert len(events) - 1 == events[-1]["count"] <= 6
    assert 'adaptive_lm_requests_total{status="ok"} 1' in metrics and "adaptive_lm_ttft_ms_count 1" in metrics
    # the artifact's model has exits but neither experts nor MoD blocks: the limits it cannot apply are refused
    assert set(health["not_applicable"]) == {"expert_cap", "mod_bias"}
    assert refusal == (400, '"expert_cap" does not apply to this model: it has no experts (moe.enabled=false)')
    generate = document["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "threshold" in generate["properties"] and not {"expert_cap", "mod_bias"} & set(generate["properties"])
    assert generate["properties"]["max_new_tokens"]["maximum"] == 12
    assert "Traceback" not in process.stderr.read()


@pytest.mark.slow
def test_the_tiny_generation_serving_benchmark_runs_end_to_end(artifact, tmp_path):
    _, art = artifact
    out = tmp_path / "rows.json"
    command = cli("bench", "serve-lm", "--artifact", str(art), "--small", str(art), "--small-point", "int8,0", "--tiny")
    proc = subprocess.run([*command, "--out", str(tmp_path), "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert {r["policy"] for r in rows} >= {"full depth", "full depth + shedding", "controller + fallback"}
    assert {r["fallback"] for r in rows if "fallback" in r["policy"]} == {f"{art} int8,0"}
    assert {r["pattern"] for r in rows} == {"poisson", "gamma", "spike"}
    full = [r for r in rows if r["policy"] == "full depth"]
    assert all(r["agreement"] == 1.0 for r in full if r["count_ok"])  # full depth is its own reference
    assert "adaptive_lm_ttft_ms_bucket" in json.loads((tmp_path / "metrics_excerpts.json").read_text())["full depth"]


def test_classifier_serving_flags_are_refused_for_a_language_model(artifact, capsys):
    from adaptive.cli.main import main

    _, art = artifact
    for flag, value in (("--sla-ms", "50"), ("--max-batch", "4"), ("--default-budget", "2")):
        assert main(["serve", "--artifact", str(art), flag, value]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"adaptive: error: {flag} applies to classifiers;") and "language model" in err, err
