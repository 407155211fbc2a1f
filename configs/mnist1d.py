"""MNIST-1D (Greydanus 2020), generated offline by the `mnist1d` package: 40-dim signals, 10 classes.

    adaptive train --config configs/mnist1d.py --workdir runs/mnist1d
    adaptive train --config configs/mnist1d.py:tiny --workdir /tmp/mnist1d

The default is a static three-layer MLP.
"""

from adaptive.config import default_config


def get_config(arg: str | None = None):
    cfg = default_config()
    cfg.name = "mnist1d"
    cfg.data.name = "mnist1d"
    cfg.model.kind = "mlp"
    cfg.model.hidden = 256
    cfg.model.depth = 3
    cfg.optim.learning_rate = 2e-3
    cfg.optim.weight_decay = 1e-4
    cfg.train.steps = 4000
    cfg.train.batch_size = 128
    cfg.train.eval_every = 500
    if arg == "tiny":
        cfg.model.hidden = 32
        cfg.train.steps = 60
        cfg.train.eval_every = 30
        cfg.train.log_every = 10
        cfg.train.checkpoint_every = 30
    elif arg:
        raise ValueError(f"configs/mnist1d.py takes no arg or 'tiny', not {arg!r}")
    return cfg
