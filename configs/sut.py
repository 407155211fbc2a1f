"""ACT + experts (a Sparse Universal Transformer) on parity read as a sequence of 16 tokens.

    adaptive train --config configs/sut.py --workdir runs/sut
    adaptive train --config configs/sut.py:tiny --workdir /tmp/sut

One pre-LN transformer block (width 64, 4 heads) is applied again and again; ACT halts each
position on its own, up to 8 steps; the block's feed-forward is 4 experts with top-2 routing
over all positions of the batch.
"""

from adaptive.config import default_config


def get_config(arg: str | None = None):
    cfg = default_config()
    cfg.name = "parity-sut"
    cfg.data.name = "parity"
    cfg.data.parity_n = 16
    cfg.model.kind = "transformer"
    cfg.model.hidden = 64
    cfg.model.num_heads = 4
    cfg.halting.policy = "act"
    cfg.halting.max_steps = 8
    cfg.halting.tau = 3e-3
    cfg.moe.enabled = True
    cfg.moe.num_experts = 4
    cfg.moe.k = 2
    cfg.optim.learning_rate = 1e-3
    cfg.train.steps = 4000
    cfg.train.batch_size = 64
    cfg.train.eval_every = 1000
    cfg.train.eval_batch_size = 500
    if arg == "tiny":
        cfg.data.num_train = 2048
        cfg.data.num_eval = 256
        cfg.model.hidden = 16
        cfg.halting.max_steps = 3
        cfg.train.steps = 20
        cfg.train.eval_every = 10
        cfg.train.log_every = 10
        cfg.train.checkpoint_every = 10
        cfg.train.eval_batch_size = 128
    elif arg:
        raise ValueError(f"configs/sut.py takes no arg or 'tiny', not {arg!r}")
    return cfg
