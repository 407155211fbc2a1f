"""Every config file loads; bad keys and values are one-line errors naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest

from adaptive import config as config_lib
from adaptive.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((ROOT / "configs").glob("*.py"))


def _args_of(path: Path) -> list[str | None]:
    """The args a config file accepts: None, plus each `arg == "..."` it tests for."""
    import re

    return [None] + sorted(set(re.findall(r'arg == "(\w+)"', path.read_text())))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_file_loads(path):
    for arg in _args_of(path):
        spec = str(path) + (f":{arg}" if arg else "")
        cfg = config_lib.load(spec)
        assert isinstance(cfg, config_lib.Config)
        assert "adaptive train --config configs/" + path.name in path.read_text(), (
            "the docstring must hold the command that runs it"
        )


def test_overrides_are_typed_and_applied():
    cfg = config_lib.load(
        f"{ROOT}/configs/parity.py:tiny",
        [
            "--config.train.steps=7",
            "--config.optim.learning_rate=3e-4",
            "--config.logging.wandb=disabled",
            "--config.data.train_difficulty=1,8",
            "--config.logging.progress=false",
        ],
    )
    assert cfg.train.steps == 7
    assert cfg.optim.learning_rate == 3e-4
    assert cfg.logging.wandb == "disabled"
    assert cfg.data.train_difficulty == (1, 8)
    assert cfg.logging.progress is False
    assert Path(cfg.data.data_dir).is_absolute()
    assert cfg.data.text_dir == "" and cfg.budget.cost_model == ""  # the defaults stay empty
    relative = config_lib.load(
        f"{ROOT}/configs/parity.py", ["--config.data.text_dir=src", "--config.budget.cost_model=cost.json"]
    )  # resolved where the run starts: a resume or an eval elsewhere reads the same files
    assert relative.data.text_dir == str(Path.cwd() / "src") and relative.budget.cost_model == str(
        Path.cwd() / "cost.json"
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.stepz=3", "unknown config key 'train.stepz' (did you mean 'train.steps'?)"),
        ("--config.trian.steps=3", "unknown config key 'trian' (did you mean 'train'?)"),
        ("--config.logging.wandb=maybe", "'logging.wandb' is 'maybe'; allowed values: 'offline', 'online', 'disabled'"),
        ("--config.train.steps=0", "'train.steps' is 0; must be in [1, 1_000_000_000]"),
        ("--config.train.steps=abc", "'train.steps' must be int; got 'abc'"),
        ("--config.optim.b1=1.5", "'optim.b1' is 1.5; must be in [0.0, 1.0)"),
        ("--config.optim.b2=1.0", "'optim.b2' is 1.0; must be in [0.0, 1.0)"),  # Adam would divide 0 by 0
        ("--config.moe.capacity_factor=0", "'moe.capacity_factor' is 0.0; must be in (0.0, 1024.0]"),  # drops all
        ("--config.halting.pondernet_threshold=0", "'halting.pondernet_threshold' is 0.0; must be in (0.0, 1.0]"),
        ("--config.halting.lambda_p=1.0", "'halting.lambda_p' is 1.0; must be in [1e-06, 1.0)"),  # log 0 in the KL
        ("--config.mesh.process_id=5", "'mesh.process_id' is 5; must be in [0, mesh.num_processes=1)"),
        ("--config.data.name=addition", "is 'addition', a sequence task"),  # (parity.py's model is an rnn)
        ("--config.data.train_difficulty=3", "'data.train_difficulty' must be 2 values like 1,8; got 3"),
        ("--config.train=3", "'train' is a section"),
        ("--config.train.steps", "must look like --config.section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        config_lib.load(f"{ROOT}/configs/parity.py", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--workdir", "nowhere"],
        ["export", "--workdir", "nowhere", "--out", "art"],
        ["serve", "--artifact", "art"],
        ["generate", "--workdir", "nowhere", "--prompt", "x"],
        ["bench", "depth"],
    ],
)
def test_commands_that_read_a_saved_config_refuse_overrides_rather_than_ignore_them(argv, capsys):
    from adaptive.cli.main import main

    assert main([*argv, "--config.train.steps=5"]) == 2
    err = capsys.readouterr().err
    assert f"adaptive {argv[0]} takes no --config overrides (got --config.train.steps=5)" in err
    assert "they apply to train, sweep, reproduce" in err and len(err.strip().splitlines()) == 1


def test_bench_flags_are_taken_only_as_spelled_and_refused_by_their_command(capsys):
    from adaptive.cli.parser import build_parser, parse

    parser = build_parser()
    assert parse(parser, ["bench", "depth", "--rounds", "5"]).rounds == 5
    with pytest.raises(SystemExit):
        parse(parser, ["bench", "depth", "--rou", "5"])
    err = capsys.readouterr().err
    assert (
        err.startswith("usage: adaptive bench depth ")
        and "adaptive bench depth: error: unrecognized arguments: --rou 5" in err
    )
    with pytest.raises(SystemExit):
        parse(parser, ["eval", "--workdir", "w", "--rounds", "5"])  # a flag of another command
    assert "adaptive eval: error: unrecognized arguments: --rounds 5" in capsys.readouterr().err


def test_bad_config_files():
    with pytest.raises(ConfigError, match="does not exist"):
        config_lib.load("configs/nope.py")
    with pytest.raises(ConfigError, match="takes no arg"):
        config_lib.load(f"{ROOT}/configs/parity.py:huge")


@pytest.mark.parametrize(
    "body, said",
    [
        ("import my_helpers_missing\n", "line 1: ModuleNotFoundError: No module named 'my_helpers_missing'"),
        ("def get_config(arg=None)\n    return {}\n", "line 1: expected ':'"),
        ("def get_config(arg=None):\n    return 1 / 0\n", "line 2: ZeroDivisionError: division by zero"),
        (
            "from adaptive.config import default_config\n"
            "def get_config(arg=None):\n    c = default_config()\n    c.dat.num_eval = 5\n    return c\n",
            'line 4: \'dat\' Did you mean "data" instead of "dat"?',
        ),
    ],
)
def test_a_config_file_that_fails_to_run_is_one_line_naming_its_line(tmp_path, body, said):
    bad = tmp_path / "bad.py"
    bad.write_text(body)
    with pytest.raises(ConfigError) as e:
        config_lib.load(str(bad))
    message = str(e.value)
    assert said in message and (message.startswith(str(bad)) or message.startswith(f"config file {str(bad)!r}"))
    assert "\n" not in str(e.value)


def test_a_config_file_imports_helpers_beside_it_each_its_own(tmp_path):
    for name, steps in (("a", 7), ("b", 9)):  # two configs, each with its own common.py and package
        (tmp_path / name / "helpers").mkdir(parents=True)
        (tmp_path / name / "common.py").write_text(f"STEPS = {steps}\n")
        (tmp_path / name / "helpers" / "__init__.py").write_text(f"SEED = {steps + 1}\n")
        (tmp_path / name / "mine.py").write_text(
            "from adaptive.config import default_config\n"
            "from helpers import SEED\n"
            "def get_config(arg=None):\n    from common import STEPS  # imported as get_config runs\n"
            "    c = default_config()\n    c.train.steps, c.seed = STEPS, SEED\n    return c\n"
        )
    loaded = [config_lib.load(str(tmp_path / n / "mine.py")) for n in ("a", "b")]
    assert [(c.train.steps, c.seed) for c in loaded] == [(7, 8), (9, 10)]
    # a package installed below the folder (a virtual environment's) is not a helper: it stays
    site = tmp_path / "a" / ".venv" / "site"
    (site / "thirdpkg").mkdir(parents=True)
    (site / "thirdpkg" / "__init__.py").write_text("")
    (tmp_path / "a" / "venv_user.py").write_text(
        f"import sys\nsys.path.append({str(site)!r})\nimport thirdpkg\n"
        "from adaptive.config import default_config\ndef get_config(arg=None):\n    return default_config()\n"
    )
    try:
        config_lib.load(str(tmp_path / "a" / "venv_user.py"))
        assert "thirdpkg" in sys.modules
    finally:
        sys.modules.pop("thirdpkg", None)
        sys.path.remove(str(site))
    (tmp_path / "a" / "broken.py").write_text("X = (\n")
    (tmp_path / "a" / "uses.py").write_text("import broken\n")
    with pytest.raises(ConfigError, match=r"uses.py' \(.*broken.py\) line 1: '\(' was never closed"):
        config_lib.load(str(tmp_path / "a" / "uses.py"))
    (tmp_path / "a" / "key.py").write_text("def get_config(arg=None):\n    return {}['data']\n")
    with pytest.raises(ConfigError, match="key.py line 2: KeyError: data$"):
        config_lib.load(str(tmp_path / "a" / "key.py"))


def test_unknown_key_set_inside_a_config_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from adaptive.config import default_config\n"
        "def get_config(arg=None):\n    c = default_config()\n"
        "    c.model.hiden = 3\n    return c\n"
    )
    with pytest.raises(ConfigError, match="'model.hiden' \\(did you mean 'model.hidden'"):
        config_lib.load(str(bad))


@pytest.mark.parametrize(
    "override, line",
    [
        (
            "--config.model.kind=lstm",
            "config key 'model.kind' is 'lstm'; allowed values: 'mlp', 'rnn', 'transformer', 'lm'",
        ),
        ("--config.halting.bias_init=1e999", "config key 'halting.bias_init' is inf; must be a finite number"),
    ],
)
def test_cli_reports_one_line_and_exit_code_2(tmp_path, override, line):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "adaptive.cli",
            "train",
            "--config",
            f"{ROOT}/configs/parity.py:tiny",
            "--workdir",
            str(tmp_path / "w"),
            "--config.logging.wandb=disabled",
            override,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["adaptive: error: " + line]
    assert not (tmp_path / "w").exists(), "a rejected config must not create the workdir"


_FINITE = "must be a finite number"


@pytest.mark.parametrize(
    "source, message",
    [  # a --config override on parity.py:tiny, a config file's get_config body, or a raw dict
        pytest.param("--config.optim.learning_rate=nan", f"'optim.learning_rate' is nan; {_FINITE}", id="nan-cli"),
        pytest.param("--config.halting.tau=NaN", f"'halting.tau' is nan; {_FINITE}", id="NaN-cli"),
        pytest.param("--config.optim.learning_rate=inf", f"'optim.learning_rate' is inf; {_FINITE}", id="inf-cli"),
        pytest.param("--config.halting.exit_threshold=-inf", f"'halting.exit_threshold' is -inf; {_FINITE}", id="-inf"),
        pytest.param("--config.halting.bias_init=1e999", f"'halting.bias_init' is inf; {_FINITE}", id="1e999-cli"),
        pytest.param("--config.budget.requests=3,nan", f"'budget.requests[1]' is nan; {_FINITE}", id="nan-in-tuple"),
        pytest.param("--config.budget.target=nan", f"'budget.target' is nan; {_FINITE}", id="nan-optional"),
        pytest.param("--config.budget.target=1e39", "'budget.target' is 1e+39; must be a finite float32", id="f32"),
        pytest.param("c.optim.learning_rate = float('nan')", f"'optim.learning_rate' is nan; {_FINITE}", id="nan-file"),
        pytest.param("c.halting.bias_init = 1e999", f"'halting.bias_init' is inf; {_FINITE}", id="1e999-file"),
        pytest.param("c.budget.request_weights = (1.0, -1e999)", "'budget.request_weights[1]' is -inf", id="inf-tuple"),
        pytest.param({"optim": {"b2": 10**400}}, "characters); must be a finite float32 number", id="int-past-float"),
        pytest.param(
            "--config.seed=12345678901234567890",
            "'seed' is 12345678901234567890; must be in [0, 4_294_967_295]",
            id="seed-20-digits",
        ),
        pytest.param(
            "--config.data.seed=4294967296", "'data.seed' is 4294967296; must be in [0, 4_294_967_295]", id="seed-2**32"
        ),
        pytest.param(
            {"seed": 10**5000}, "'seed' is an int of 16610 bits; must be in [0, 4_294_967_295]", id="seed-huge"
        ),
        pytest.param(
            "--config.data.num_train=1000000000000",
            "'data.num_train' is 1000000000000; must be in [1, 10_000_000]",
            id="num_train",
        ),
        pytest.param(
            "--config.data.num_train=1e12", "'data.num_train' must be int; got 1000000000000.0", id="int-as-1e12"
        ),
        pytest.param(
            "--config.train.batch_size=10000000",
            "'train.batch_size' is 10000000; must be in [1, 1_000_000]",
            id="batch",
        ),
        pytest.param("--config.model.hidden=65536", "'model.hidden' is 65536; must be in [1, 16_384]", id="width"),
        pytest.param(
            "--config.train.steps=3000000000", "'train.steps' is 3000000000; must be in [1, 1_000_000_000]", id="steps"
        ),
        pytest.param(
            "c.data.parity_n = 4096; c.data.num_train = 200_000",
            "'data.num_train' is 200_000; with data.parity_n=4096 at most 131_072 examples",
            id="parity-bytes",
        ),
        pytest.param(
            "--config.data.train_difficulty=1,99",
            "'data.train_difficulty' is (1, 99); must be lo,hi with 1 <= lo",
            id="difficulty",
        ),
        pytest.param("--config.seed=[1]", "'seed' must be int; got [1]", id="list-for-int"),
        pytest.param({"optim": {"b1": {"a": 1.0}}}, "'optim.b1' must be float; got {'a': 1.0}", id="dict-for-float"),
        pytest.param("--config.train.steps=true", "'train.steps' must be int; got True", id="bool-for-int"),
        pytest.param(
            "c.name = 'a' * 10_000",
            f"'name' is '{'a' * 59}... (10002 characters); at most 4096 characters",
            id="long-name",
        ),
        pytest.param(
            "--config.budget.requests=" + ",".join(["3"] * 5000),
            "'budget.requests' has 5000 values; at most 1024",
            id="long-tuple",
        ),
        pytest.param({"train": {3: 1}}, "config key 3 in train must be a name", id="int-key"),
    ],
)
def test_hostile_values_are_one_line_errors(tmp_path, source, message):
    """NaN, infinities, huge seeds and sizes, wrong types: refused at load, one short line naming the key."""
    with pytest.raises(ConfigError) as err:
        if isinstance(source, dict):
            config_lib.from_dict(source)
        elif source.startswith("--config."):
            config_lib.load(f"{ROOT}/configs/parity.py:tiny", [source])
        else:
            file = tmp_path / "hostile.py"
            body = f"    c = default_config()\n    {source}\n    return c\n"
            file.write_text("from adaptive.config import default_config\ndef get_config(arg=None):\n" + body)
            config_lib.load(str(file))
    assert message in str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_edge_values_that_stay_allowed():
    cfg = config_lib.load(
        f"{ROOT}/configs/parity.py:tiny",
        ["--config.seed=4294967295", "--config.optim.learning_rate=-0.0", "--config.halting.exit_threshold=2.0"],
    )
    assert cfg.seed == 2**32 - 1  # jax.random.key's full uint32 range; 2**32 would alias seed 0
    assert str(cfg.optim.learning_rate) == "0.0"  # -0.0 is stored (and saved) as 0.0
    assert cfg.halting.exit_threshold == 2.0  # past every confidence: never exit


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if "def get_sweep" in p.read_text()], ids=lambda p: p.name)
def test_every_sweep_point_loads(path, tmp_path):
    from adaptive.experiments.sweep import load_points

    for arg in _args_of(path):
        spec = str(path) + (f":{arg}" if arg else "")
        try:
            points = load_points(spec, tmp_path)  # validates each point as a full config
        except config_lib.ConfigError as e:
            if "sweep takes" in str(e):  # an arg of get_config only (parity.py's static model)
                continue
            raise
        assert points and len({p.name for p in points}) == len(points)  # distinct workdirs


def test_the_budget_ceiling_sweep_is_the_two_sided_sweeps_act_points_under_a_ceiling(tmp_path):
    from adaptive.experiments.sweep import load_points

    two_sided = {p.values["name"]: p.values for p in load_points(f"{ROOT}/configs/budget.py:parity", tmp_path)}
    ceiling = load_points(f"{ROOT}/configs/budget.py:parity-ceiling", tmp_path)
    assert len(ceiling) == 9 and {p.values["seed"] for p in ceiling} == {0, 1, 2}
    for point in ceiling:
        name = point.values["name"]
        assert "two_sided" not in str(point.values) and name.startswith("parity-ceiling")
        assert point.values["budget.target"] == two_sided[name.replace("ceiling", "budget")]["budget.target"]
        cfg = config_lib.load(f"{ROOT}/configs/budget.py:parity-ceiling", point.overrides)
        assert cfg.budget.two_sided is False and cfg.halting.policy == "act"


def test_the_schema_is_importable_from_adaptive_config_and_a_saved_config_reloads():
    from adaptive import config_schema

    for name in ("Config", "MoEConfig", "MeshConfig", "MoELayers", "default_config", "to_dict", "step_cap"):
        assert getattr(config_lib, name) is getattr(config_schema, name), name
    cfg = config_lib.load(f"{ROOT}/configs/sut.py:tiny", ["--config.mesh.expert=2"])
    assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg  # what config.json holds loads back
    with pytest.raises(ConfigError, match="unknown config key 'moe.expert_parallel'"):
        config_lib.from_dict({"moe": {"expert_parallel": True}})  # derived from mesh.expert, never set


def test_expert_width_is_expert_hidden_or_the_dense_feed_forward_split_over_k():
    moe = config_lib.MoEConfig(k=2)
    assert moe.expert_width(64) == 64  # k experts of 2 * 64 / k units: the dense block's 2 * 64
    assert config_lib.MoEConfig(k=3).expert_width(64) == 42
    assert config_lib.MoEConfig(k=4).expert_width(1) == 1  # at least one unit
    assert config_lib.MoEConfig(expert_hidden=10).expert_width(64) == 10


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--config.moe.k=1"], "'moe.renormalize' is True; with moe.k=1 the gate is p/p = 1"),
        (["--config.moe.router=top_p"], "'moe.renormalize' is True; with moe.router='top_p' a token"),
    ],
    ids=["top_k-k1", "top_p"],
)
def test_renormalised_gates_that_starve_the_router_are_refused(overrides, message):
    """One renormalised gate is p/p = 1, which sends the router no gradient from the task."""
    with pytest.raises(ConfigError) as err:
        config_lib.load(f"{ROOT}/configs/moe.py:tiny", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
    for allowed in (
        ["--config.moe.k=1", "--config.moe.renormalize=false"],
        ["--config.moe.router=top_p", "--config.moe.renormalize=false"],
        ["--config.moe.router=expert_choice", "--config.moe.k=1"],  # expert choice has no renormalisation
        ["--config.moe.k=1", "--config.moe.enabled=false"],  # no experts, nothing to route
    ):
        config_lib.load(f"{ROOT}/configs/moe.py:tiny", allowed)


def test_an_addition_split_too_large_to_generate_is_refused():
    big = ["--config.data.num_train=2000000", "--config.data.addition_digits=64"]
    with pytest.raises(
        ConfigError, match="'data.num_train' is 2_000_000; with data.addition_digits=64 at most 1_048_576"
    ):
        config_lib.load(f"{ROOT}/configs/lm.py:tiny", ["--config.data.name=addition", *big])


def test_a_language_model_refuses_experts_that_choose_their_tokens():
    """An expert picks its tokens among the whole window: a token's output would depend on the
    tokens after it (and decoding, one token at a time, could not route as training did)."""
    over = ["--config.moe.enabled=true", "--config.moe.router=expert_choice"]
    with pytest.raises(ConfigError, match="^config key 'moe.router' is 'expert_choice'; a language model must not"):
        config_lib.load(f"{ROOT}/configs/lm.py:tiny", over)
    config_lib.load(f"{ROOT}/configs/lm.py:tiny", [*over[:1], "--config.moe.router=top_k"])
