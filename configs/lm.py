"""A byte-level causal language model on Python source code (`pystdlib`), or on `addition`.

    adaptive train --config configs/lm.py --workdir runs/lm
    adaptive train --config configs/lm.py:tiny --workdir /tmp/lm          # under a minute
    adaptive train --config configs/lm.py:addition --workdir runs/lm-add

tiny's validation and test are thinned to 4,096 windows evenly spread (data.eval_examples), for
its evals and for every later reader of them (eval, export, calibrate-exits).

Four pre-LN blocks of width 128 (4 heads, rotary positions), the head tied to the byte
embedding, windows of 256 bytes. Per-token adaptive compute is switched on by keys of `lm`:
`--config.lm.exits=true` (CALM exits; `lm.confidence`, `lm.exit_threshold`),
`--config.lm.mod_capacity=0.125` (Mixture-of-Depths on every other block), and
`--config.moe.enabled=true` (experts in every block), `--config.halting.policy=act
--config.halting.max_steps=4` (one shared block, halting per position by ACT). A budget per token needs one of them to
vary compute (top-p experts: `--config.moe.router=top_p --config.moe.renormalize=false`):

    adaptive train --config configs/lm.py --workdir runs/lm-exits --config.lm.exits=true \
        --config.budget.unit=flops --config.budget.target=1.3e6 --config.budget.two_sided=true
"""

from adaptive.config import default_config


def get_config(arg: str | None = None):
    cfg = default_config()
    cfg.name = "lm"
    cfg.data.name = "pystdlib"
    cfg.data.window = 256
    cfg.model.kind = "lm"
    cfg.model.hidden = 128
    cfg.model.depth = 4
    cfg.model.num_heads = 4
    cfg.halting.policy = "none"
    cfg.optim.learning_rate = 1e-3
    cfg.train.steps = 3000
    cfg.train.batch_size = 32
    cfg.train.eval_every = 1000
    cfg.train.eval_batch_size = 64
    if arg == "addition":
        cfg.name = "lm-addition"
        cfg.data.name = "addition"
        cfg.data.addition_digits = 8
        cfg.data.num_train = 100_000
        cfg.data.num_eval = 2000
        cfg.train.eval_batch_size = 250
    elif arg == "tiny":
        cfg.data.window = 32
        cfg.data.eval_examples = 4096  # short windows make a long validation split, scored at every eval
        cfg.model.hidden = 32
        cfg.model.depth = 2
        cfg.train.steps = 30
        cfg.train.eval_every = 30
        cfg.train.log_every = 10
    elif arg is not None:
        raise ValueError(f"configs/lm.py takes tiny or addition, not {arg!r}")
    return cfg
