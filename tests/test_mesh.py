"""Scale-out on JAX's own runtime: the same run on 1 device, on meshes of 8 host CPU devices,
across a restore onto another mesh, and as two jax.distributed processes, gives the same
parameters. The multi-device runs go to subprocesses so that every other test keeps 1 device."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from adaptive.config import ConfigError, MoEConfig
from adaptive.training import parallel
from tests.helpers import ROOT, run_train

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_meshes_and_cross_mesh_restores_give_the_one_device_parameters(tmp_path):
    """ACT + MoE (configs/sut.py:tiny), 5 steps on (data=8) and on (data=2, expert=4); then 5
    steps saved on 8 devices and resumed to 8 on 1, and the other way round onto (2, 4). The
    (2, 4) train step exchanges tokens by explicit all-to-alls (expert parallelism); the
    data-only one has none."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/mesh_script.py"), str(tmp_path)],
        env={**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    gaps = result["gaps"]
    assert set(gaps) == {"data8", "data2_expert4", "saved_on_8_restored_on_1", "saved_on_1_restored_on_2x4"}
    # Float noise in near-zero gradients, which Adam scales up towards its step size, depends on
    # the machine's reduction order, so the gap differs by orders of magnitude between machines.
    # An exchange that sends a token to the wrong expert moves parameters at the scale of Adam's
    # step, the learning rate (1e-3): 1e-4 still sees it.
    assert all(g <= 1e-4 for g in gaps.values()), gaps
    assert result["all_to_alls"]["data8"] == 0 and result["all_to_alls"]["data2_expert4"] > 0, result


@pytest.mark.slow
def test_two_jax_distributed_processes_train_like_one(tmp_path):
    from tests.mesh_script import gap, train_parity

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = str(ROOT / "tests/distributed_script.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(i), str(port), str(tmp_path / "two")],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "process 0 of 2 on 2 devices: done" in outputs[0][0]
    assert "process 1 of 2 on 2 devices: done" in outputs[1][0]
    two = train_parity(tmp_path / "two", restore_only=True)  # restored here, on one device
    one = train_parity(tmp_path / "one")
    assert gap(jax.tree.map(np.asarray, two), one) <= 1e-5


def test_a_mesh_that_does_not_fit_the_devices_is_a_one_line_error(tmp_path):
    proc = run_train(tmp_path / "w", "--config.mesh.data=4", "--config.mesh.expert=1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "adaptive: error: config keys 'mesh.data' x 'mesh.expert' = 4 x 1 need 4 devices; 1 here "
        "(mesh.data=0 fits as many data replicas as the devices hold)"
    ]
    proc = run_train(tmp_path / "w", "--config.mesh.data=1", "--config.mesh.expert=2")  # data=0 would not fit
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "adaptive: error: config keys 'mesh.data' x 'mesh.expert' = 1 x 2 need 2 devices; 1 here "
        "(mesh.expert=2 alone is more than there are)"
    ]
    proc = run_train(tmp_path / "w", "--config.mesh.data=0", "--config.mesh.expert=3")  # 0: every device
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "adaptive: error: config key 'mesh.expert' is 3; there are only 1 device(s) here"
    ]


@pytest.mark.parametrize(
    "change, key",
    [
        ({"num_groups": 4}, "moe.num_groups"),
        ({"num_groups": 8, "dropless": True}, "moe.dropless"),
        ({"num_groups": 8, "num_experts": 6}, "moe.num_experts"),
    ],
)
def test_expert_parallelism_refuses_what_it_cannot_split_before_training(change, key):
    moe = dataclasses.replace(MoEConfig(enabled=True), **change)
    with pytest.raises(ConfigError) as error:  # a mesh's shape is all the check reads
        parallel.check_moe(moe, jax.sharding.AbstractMesh((2, 4), ("data", "expert")))
    message = str(error.value)
    assert f"'{key}'" in message and "2 x 4 (data x expert)" in message and "\n" not in message
    parallel.check_moe(moe, jax.sharding.AbstractMesh((8, 1), ("data", "expert")))  # data only: GSPMD, any groups


def test_routing_groups_that_do_not_divide_a_batch_are_refused_before_training(tmp_path):
    from adaptive import config as config_lib
    from adaptive.training.train import train_and_evaluate

    cfg = config_lib.load("configs/sut.py:tiny", ["--config.moe.num_groups=3", "--config.logging.wandb=disabled"])
    with pytest.raises(ConfigError, match=r"'moe.num_groups' is 3; it must divide the \d+ tokens of a batch of train"):
        train_and_evaluate(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_per_example_experts_train_with_several_routing_groups(tmp_path):
    """An MLP's experts route one token per example: the train state's first (abstract) trace
    runs on a train batch, which the groups divide, not on a batch of 2, which they do not."""
    from tests.helpers import metric_rows, train_tiny

    train_tiny(tmp_path / "run", 2, config="configs/budget.py:moe,0.5", overrides=("--config.moe.num_groups=4",))
    assert metric_rows(tmp_path / "run")[-1]["step"] == 2
    # Served, a request batch of any size routes as one group: batches of 1 and 3 run.
    from adaptive.inference.export import export_run
    from adaptive.serving.engine import Engine

    engine = Engine.from_artifact(export_run(tmp_path / "run", tmp_path / "art"), buckets=(1, 4))
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    for n in (1, 3):
        assert engine.run(x[:n], np.full(n, 1, np.int32)).prediction.shape == (n,)
