"""Graves' (2016) parity task: is the number of +1 entries in a {-1, 0, +1} vector odd?

    adaptive train --config configs/parity.py --workdir runs/parity
    adaptive train --config configs/parity.py:tiny --workdir /tmp/parity --config.train.steps=300

The default is a static RNN that sees the input for one step: the baseline that adaptive
depth is measured against. `tiny` shrinks the data and the run for tests and CPU smoke runs.
"""

from adaptive.config import default_config


def get_config(arg: str | None = None):
    cfg = default_config()
    cfg.name = "parity"
    cfg.data.name = "parity"
    cfg.data.parity_n = 16
    cfg.model.kind = "rnn"
    cfg.model.hidden = 128
    cfg.model.depth = 1
    cfg.train.steps = 3000
    cfg.train.batch_size = 128
    if arg == "tiny":
        cfg.data.num_train = 4096
        cfg.data.num_eval = 512
        cfg.model.hidden = 32
        cfg.train.steps = 100
        cfg.train.eval_every = 50
        cfg.train.log_every = 10
        cfg.train.checkpoint_every = 50
        cfg.train.eval_batch_size = 256
    elif arg:
        raise ValueError(f"configs/parity.py takes no arg or 'tiny', not {arg!r}")
    return cfg
