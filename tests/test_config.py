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


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.stepz=3", "unknown config key 'train.stepz' (did you mean 'train.steps'?)"),
        ("--config.trian.steps=3", "unknown config key 'trian' (did you mean 'train'?)"),
        ("--config.logging.wandb=maybe", "'logging.wandb' is 'maybe'; allowed values: 'offline', 'online', 'disabled'"),
        ("--config.train.steps=0", "'train.steps' is 0; must be in >= 1"),
        ("--config.train.steps=abc", "'train.steps' must be int; got 'abc'"),
        ("--config.optim.b1=1.5", "'optim.b1' is 1.5; must be in [0.0, 1.0]"),
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


def test_bad_config_files():
    with pytest.raises(ConfigError, match="does not exist"):
        config_lib.load("configs/nope.py")
    with pytest.raises(ConfigError, match="takes no arg"):
        config_lib.load(f"{ROOT}/configs/parity.py:huge")


def test_unknown_key_set_inside_a_config_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from adaptive.config import default_config\n"
        "def get_config(arg=None):\n    c = default_config()\n"
        "    c.model.hiden = 3\n    return c\n"
    )
    with pytest.raises(ConfigError, match="'model.hiden' \\(did you mean 'model.hidden'"):
        config_lib.load(str(bad))


def test_cli_reports_one_line_and_exit_code_2(tmp_path):
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
            "--config.model.kind=lstm",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["adaptive: error: config key 'model.kind' is 'lstm'; allowed values: 'mlp', 'rnn', 'transformer'"]
    assert not (tmp_path / "w").exists(), "a rejected config must not create the workdir"


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if "def get_sweep" in p.read_text()], ids=lambda p: p.name)
def test_every_sweep_point_loads(path, tmp_path):
    from adaptive.sweep import load_points

    for arg in _args_of(path):
        spec = str(path) + (f":{arg}" if arg else "")
        points = load_points(spec, tmp_path)  # validates each point as a full config
        assert points and len({p.name for p in points}) == len(points)  # distinct workdirs
