"""Training to a compute budget: ACT with an augmented-Lagrangian penalty on expected FLOPs.

    adaptive train --config configs/budget.py:parity,0.5 --workdir runs/budget/parity-50
    adaptive train --config configs/budget.py:mnist1d,0.25 --workdir runs/budget/mnist1d-25
    adaptive train --config configs/budget.py:moe,0.5 --workdir runs/budget/moe-50
    adaptive train --config configs/budget.py:sut,0.5 --workdir runs/budget/sut-50
    adaptive train --config configs/budget.py:tiny --workdir /tmp/budget

The arg is TASK,FRACTION: the budget is FRACTION of the FLOPs per example the model spends at
its cap (parity: the ACT RNN of configs/parity.py, cap 20; mnist1d: a stack of 8 residual MLP
blocks with ACT halting after each; moe: MNIST-1D through 2 residual blocks of 8 experts with
top-p routing, up to 4 experts a token, so the budget sets how many experts tokens use; sut:
parity as 16 tokens through an ACT-halted transformer block whose feed-forward is 4 top-p
experts (up to 2 a token), where the budget reaches both depth and experts). Graves' ponder
cost is off (tau = 0): the budget alone decides how much to compute. Static baselines of the
same compute: `--config.halting.policy=none --config.model.depth=D --config.budget.target=None`.

    adaptive reproduce budget_targeting [--tiny]     # get_sweep's points, their claims checked
    adaptive sweep --config configs/budget.py:parity-ceiling --workdir runs/budget_ceiling/parity
"""

from adaptive.compute.flops import flops_model
from adaptive.config import default_config, from_dict


def get_config(arg: str | None = None):
    task, _, fraction = (arg or "parity,0.5").partition(",")
    task = task.removesuffix("-ceiling")  # get_sweep's TASK-ceiling: the same task, default penalty
    cfg = default_config()
    cfg.halting.policy = "act"
    cfg.halting.tau = 0.0
    cfg.budget.unit = "flops"
    cfg.budget.penalty = "lagrangian"
    if task in ("parity", "tiny"):
        cfg.data.name = "parity"
        cfg.model.kind = "rnn"
        cfg.model.hidden = 128
        cfg.halting.max_steps = 20
        cfg.optim.schedule = "constant"
        cfg.train.steps = 8000
        cfg.train.eval_every = 2000
        cfg.train.checkpoint_every = 2000
        shape, classes = (cfg.data.parity_n,), 2
    elif task == "moe":
        cfg.data.name = "mnist1d"
        cfg.model.kind = "mlp"
        cfg.model.hidden = 128
        cfg.model.depth = 2
        cfg.model.share_weights = False
        cfg.halting.policy = "none"
        _top_p_experts(cfg, num_experts=8, k=4)
        cfg.optim.learning_rate = 2e-3
        cfg.optim.weight_decay = 1e-4
        cfg.train.steps = 3000
        cfg.train.eval_every = 1000
        shape, classes = (40,), 10
    elif task == "sut":
        cfg.data.name = "parity"
        cfg.model.kind = "transformer"
        cfg.model.hidden = 64
        cfg.model.num_heads = 4
        cfg.halting.max_steps = 8
        _top_p_experts(cfg, num_experts=4, k=2)
        cfg.train.steps = 3000
        cfg.train.batch_size = 64
        cfg.train.eval_every = 1000
        cfg.train.eval_batch_size = 500
        shape, classes = (cfg.data.parity_n,), 2
    elif task == "mnist1d":
        cfg.data.name = "mnist1d"
        cfg.model.kind = "mlp"
        cfg.model.hidden = 128
        cfg.model.share_weights = False
        cfg.halting.max_steps = 8
        cfg.optim.learning_rate = 2e-3
        cfg.optim.weight_decay = 1e-4
        cfg.train.steps = 3000
        cfg.train.eval_every = 1000
        shape, classes = (40,), 10
    else:
        raise ValueError(
            f"configs/budget.py takes TASK,FRACTION (TASK: parity, mnist1d, moe, sut) or 'tiny'; not {arg!r}"
        )
    if task == "tiny":
        cfg.data.num_train, cfg.data.num_eval = 4096, 512
        cfg.model.hidden, cfg.halting.max_steps = 32, 6
        cfg.train.steps, cfg.train.eval_every, cfg.train.log_every, cfg.train.checkpoint_every = 60, 30, 10, 30
        cfg.train.eval_batch_size = 256
        fraction = fraction or "0.5"
    fraction = float(fraction or 0.5)
    if not 0 < fraction <= 1:
        raise ValueError(f"the budget fraction must be in (0, 1]; got {fraction}")
    cfg.name = f"{task}-budget{int(round(100 * fraction))}"
    flops = flops_model(from_dict(cfg.to_dict()), shape, classes, batch=cfg.budget.serving_batch)  # as Budget prices it
    cap = cfg.model.depth if cfg.halting.policy == "none" else cfg.halting.max_steps
    cfg.budget.target = fraction * flops.at_steps(cap)
    return cfg


def _top_p_experts(cfg, *, num_experts: int, k: int) -> None:
    """Top-p experts whose count per token a FLOPs budget can train (gates not renormalised, so
    a token with one expert still sends the router a gradient)."""
    cfg.moe.enabled = True
    cfg.moe.num_experts = num_experts
    cfg.moe.k = k
    cfg.moe.router = "top_p"
    cfg.moe.top_p = 0.5
    cfg.moe.renormalize = False


def get_sweep(arg: str | None = None) -> list[dict]:
    """experiments/budget_targeting. TASK (parity, the default, or mnist1d): ACT at 25, 50 and 75%
    of its cap's FLOPs and the static networks of the same depth (5, 10, 15 of parity's 20 steps),
    x seeds 0, 1, 2. The budget is two-sided here (`budget.two_sided`): the claim is that compute
    lands on the target, which a ceiling does not ask for. `TASK-ceiling`: the same ACT points
    with the budget as a ceiling (the default penalty), named `TASK-ceiling25` etc., to set beside
    the static points on the accuracy-vs-realized-compute front. `tiny`: one seed, ACT at 25% and
    75% of a 6-step cap and the static network of 2 steps, 60 training steps: a check of the
    pipeline."""
    task, _, mode = (arg or "parity").partition("-")
    if task not in ("parity", "mnist1d", "tiny") or mode not in ("", "ceiling") or (task == "tiny" and mode):
        raise ValueError(
            f"configs/budget.py's sweep takes parity, mnist1d, parity-ceiling, mnist1d-ceiling or tiny; not {arg!r}"
        )
    seeds, fractions = ((0,), (0.25, 0.75)) if task == "tiny" else ((0, 1, 2), (0.25, 0.5, 0.75))
    depths = (2,) if task == "tiny" else [round(f * get_config(task).halting.max_steps) for f in fractions]
    targets = {f: round(get_config(f"{task},{f}").budget.target) for f in fractions}
    points = []
    for seed in seeds:
        for f, target in targets.items():
            if mode == "ceiling":
                points.append({"seed": seed, "name": f"{task}-ceiling{round(100 * f)}", "budget.target": target})
                continue
            name = f"{task}-budget{round(100 * f)}"  # what claims select by: `name=parity-budget25`
            points.append({"seed": seed, "name": name, "budget.target": target, "budget.two_sided": True})
        for depth in depths if mode != "ceiling" else ():
            static = {"halting.policy": "none", "model.depth": depth, "budget.target": None}
            points.append({"seed": seed, "name": f"{task}-static{depth}", **static})
    return points
