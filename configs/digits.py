"""scikit-learn's 8x8 digits (1797 images, offline): a small real dataset.

    adaptive train --config configs/digits.py --workdir runs/digits
    adaptive train --config configs/digits.py:tiny --workdir /tmp/digits

The default is a static two-layer MLP.
"""

from adaptive.config import default_config


def get_config(arg: str | None = None):
    cfg = default_config()
    cfg.name = "digits"
    cfg.data.name = "digits"
    cfg.model.kind = "mlp"
    cfg.model.hidden = 128
    cfg.model.depth = 2
    cfg.optim.learning_rate = 3e-3
    cfg.train.steps = 1500
    cfg.train.batch_size = 64
    cfg.train.eval_every = 250
    cfg.train.checkpoint_every = 500
    if arg == "tiny":
        cfg.model.hidden = 32
        cfg.train.steps = 60
        cfg.train.eval_every = 30
        cfg.train.log_every = 10
        cfg.train.checkpoint_every = 30
    elif arg:
        raise ValueError(f"configs/digits.py takes no arg or 'tiny', not {arg!r}")
    return cfg
