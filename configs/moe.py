"""Sparse experts alone: residual MoE blocks on MNIST-1D (offline), against the dense twin.

    adaptive train --config configs/moe.py --workdir runs/moe
    adaptive train --config configs/moe.py:dense --workdir runs/moe-dense
    adaptive train --config configs/moe.py:seq --workdir runs/moe-seq
    adaptive train --config configs/moe.py:seq_dense --workdir runs/moe-seq-dense
    adaptive train --config configs/moe.py:tiny --workdir /tmp/moe
    adaptive reproduce moe_vs_dense [--tiny]     # get_sweep's points, their claims checked

Two residual blocks of width 128 whose feed-forward is 8 experts with top-2 routing (each
expert 128 units wide, so the 2 active experts cost what the dense block's 256 units cost).
`dense` is the same network with the dense feed-forward: equal active FLOPs per example.
`seq` reads each MNIST-1D signal as a sequence of 40 scalar tokens through two transformer
blocks (width 64) whose feed-forward is 8 experts over all positions; `seq_dense` is its twin.
"""

from adaptive.config import default_config


def get_config(arg: str | None = None):
    cfg = default_config()
    cfg.name = "mnist1d-moe"
    cfg.data.name = "mnist1d"
    cfg.model.kind = "mlp"
    cfg.model.hidden = 128
    cfg.model.depth = 2
    cfg.model.share_weights = False
    cfg.halting.policy = "none"
    cfg.moe.enabled = True
    cfg.moe.num_experts = 8
    cfg.moe.k = 2
    cfg.optim.learning_rate = 2e-3
    cfg.optim.weight_decay = 1e-4
    cfg.train.steps = 4000
    cfg.train.batch_size = 128
    cfg.train.eval_every = 500
    if arg in ("seq", "seq_dense"):
        cfg.name = "mnist1d-seq-moe"
        cfg.model.kind = "transformer"
        cfg.model.hidden = 64
        cfg.model.num_heads = 4
        cfg.train.steps = 3000
        cfg.train.eval_batch_size = 500
    if arg in ("dense", "seq_dense"):
        cfg.name = cfg.name.replace("moe", "dense")
        cfg.moe.enabled = False
    elif arg == "tiny":
        cfg.model.hidden = 32
        cfg.moe.num_experts = 4
        cfg.train.steps = 40
        cfg.train.eval_every = 20
        cfg.train.log_every = 10
        cfg.train.checkpoint_every = 20
    elif arg not in (None, "", "seq"):
        raise ValueError(f"configs/moe.py takes no arg, 'dense', 'seq', 'seq_dense' or 'tiny', not {arg!r}")
    return cfg


def get_sweep(arg: str | None = None) -> list[dict]:
    """experiments/moe_vs_dense, x seeds 0, 1, 2: the MoE, its dense twin of the same active FLOPs,
    and the MoE without the load-balancing loss (named, so that claims select `name=...`);
    `tiny`: one seed of each."""
    if arg not in (None, "", "tiny"):
        raise ValueError(f"configs/moe.py's sweep takes no arg or 'tiny', not {arg!r}")
    points = []
    for seed in (0,) if arg == "tiny" else (0, 1, 2):
        points.append({"seed": seed, "name": "mnist1d-moe"})
        points.append({"seed": seed, "name": "mnist1d-dense", "moe.enabled": False})
        points.append({"seed": seed, "name": "mnist1d-moe-no-balance", "moe.balance_weight": 0.0})
    return points
