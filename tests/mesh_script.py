"""Run by tests/test_mesh.py in a subprocess with 8 host CPU devices (XLA_FLAGS): trains the
same tiny ACT + MoE model on several meshes and across a checkpoint restore onto another mesh,
and prints as JSON the largest parameter differences from the one-device run and the
all-to-alls in each mesh run's train step, as JAX hands it to XLA (before GSPMD adds its own)."""

import dataclasses
import json
import sys
from pathlib import Path

import jax
import numpy as np

from adaptive import config as config_lib
from adaptive.training.resume import restore_state
from adaptive.training.train import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
# A constant learning rate, so that a run stopped at step 5 and resumed to 8 follows the same
# schedule as one that trains 8 steps straight (cosine decay depends on the planned length).
QUIET = [
    "--config.logging.wandb=disabled",
    "--config.logging.progress=false",
    "--config.optim.schedule=constant",
    "--config.optim.warmup_steps=0",
]


# 8 routing groups in every run: the expert-parallel path needs them to divide over 8 devices,
# and one device gives the same results with the same groups.
GROUPS = "--config.moe.num_groups=8"


def train(workdir: Path, data: int, expert: int, steps: int) -> dict:
    mesh = [f"--config.mesh.data={data}", f"--config.mesh.expert={expert}"]
    cfg = config_lib.load(str(ROOT / "configs/sut.py:tiny"), [*QUIET, GROUPS, *mesh])
    train_cfg = dataclasses.replace(cfg.train, steps=steps, eval_every=steps, checkpoint_every=5, log_every=5)
    train_and_evaluate(dataclasses.replace(cfg, train=train_cfg), workdir)
    _, state = restore_state(workdir)
    return jax.tree.map(np.asarray, state["params"])


def train_parity(workdir: Path, *, restore_only: bool = False) -> dict:
    """The tiny parity run of the two-process test, on this process's devices: 5 steps."""
    if not restore_only:
        cfg = config_lib.load(str(ROOT / "configs/parity.py:tiny"), QUIET)
        train_cfg = dataclasses.replace(cfg.train, steps=5, eval_every=5, checkpoint_every=5, log_every=5)
        train_and_evaluate(dataclasses.replace(cfg, train=train_cfg), workdir)
    _, state = restore_state(workdir)
    return jax.tree.map(np.asarray, state["params"])


def gap(a: dict, b: dict) -> float:
    """Largest |a - b| over all parameters but the attention's key bias: softmax ignores a
    shift shared by all keys, so that bias has a gradient of exactly zero and its value is float
    noise that Adam scales up to step size, different on every mesh."""
    pairs = zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True)
    return max(
        float(np.max(np.abs(x - y))) for (path, x), y in pairs if "['key']['bias']" not in jax.tree_util.keystr(path)
    )


def train_counting_all_to_alls(workdir: Path, data: int, expert: int) -> tuple[dict, int]:
    """`train` for 5 steps, and the all_to_all ops in the train step it compiled (dumped by JAX)."""
    ir = workdir.with_name(f"{workdir.name}_ir")
    jax.config.update("jax_dump_ir_to", str(ir))
    try:
        params = train(workdir, data, expert, 5)
    finally:
        jax.config.update("jax_dump_ir_to", "")
    dumped = list(ir.glob("*jit_train_step*.mlir"))
    assert dumped, f"no train step dumped in {ir}"
    return params, sum(path.read_text().count("stablehlo.all_to_all") for path in dumped)


def main(out: str) -> None:
    root = Path(out)
    assert jax.device_count() == 8, jax.devices()
    one = train(root / "one", 1, 1, 5)
    gaps, exchanges = {}, {}
    for name, data, expert in (("data8", 8, 1), ("data2_expert4", 2, 4)):
        params, exchanges[name] = train_counting_all_to_alls(root / name, data, expert)
        gaps[name] = gap(params, one)
    straight = train(root / "one8", 1, 1, 8)
    train(root / "from8", 8, 1, 5)
    gaps["saved_on_8_restored_on_1"] = gap(train(root / "from8", 1, 1, 8), straight)
    train(root / "from1", 1, 1, 5)
    gaps["saved_on_1_restored_on_2x4"] = gap(train(root / "from1", 2, 4, 8), straight)
    print(json.dumps({"gaps": gaps, "all_to_alls": exchanges}))


if __name__ == "__main__":
    main(sys.argv[1])
