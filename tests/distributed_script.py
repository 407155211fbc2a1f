"""Run by tests/test_mesh.py: one of two `jax.distributed` processes on localhost (CPU), each
with one device, training the same tiny model together in one workdir. Argv: PROCESS_ID PORT DIR."""

import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes

from tests.mesh_script import QUIET, ROOT  # noqa: E402


def main(process_id: int, port: int, workdir: str) -> None:
    import dataclasses

    from adaptive import config as config_lib
    from adaptive.training.train import train_and_evaluate

    overrides = [
        *QUIET,
        "--config.mesh.data=0",
        "--config.mesh.distributed=explicit",
        f"--config.mesh.coordinator_address=127.0.0.1:{port}",
        "--config.mesh.num_processes=2",
        f"--config.mesh.process_id={process_id}",
    ]
    cfg = config_lib.load(str(ROOT / "configs/parity.py:tiny"), overrides)
    train = dataclasses.replace(cfg.train, steps=5, eval_every=5, checkpoint_every=5, log_every=5)
    train_and_evaluate(dataclasses.replace(cfg, train=train), workdir)
    print(f"process {jax.process_index()} of {jax.process_count()} on {jax.device_count()} devices: done")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
