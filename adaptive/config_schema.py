"""The config schema: frozen dataclasses that are both the fields and their defaults, each field
with its validation rule (allowed values or a range; the rules themselves are in
adaptive/config_checks.py). Loading and overrides are in adaptive/config.py, which re-exports
every name here: import them from `adaptive.config`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_collections

from adaptive import config_checks as checks


def _f(
    default: Any,
    *,
    choices: tuple | None = None,
    lo: float | None = None,
    hi: float | None = None,
    below: float | None = None,
    above: float | None = None,
) -> Any:
    """A dataclass field carrying its validation rule: allowed values, or a range from `lo` up to
    `hi` inclusive or strictly `below` a bound (Adam's betas: 1 divides 0 by 0), or strictly
    `above` one (a capacity factor of 0 drops every token)."""
    rule = {"choices": choices, "lo": lo, "hi": hi, "below": below, "above": above}
    return field(default=default, metadata=rule)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how it is generated, and where prepared TFDS files are cached."""

    name: str = "parity"  # parity | digits | mnist1d | pystdlib | addition | a TFDS dataset in data_dir
    parity_n: int = _f(16, lo=2, hi=4096)
    window: int = _f(256, lo=1, hi=1 << 16)  # pystdlib: tokens a model reads per example
    text_dir: str = ""  # pystdlib: a folder of .py files; "" = this interpreter's standard library
    addition_digits: int = _f(8, lo=1, hi=64)  # addition: digits of each operand
    num_train: int = _f(100_000, lo=1, hi=checks.MAX_EXAMPLES)
    num_eval: int = _f(10_000, lo=1, hi=checks.MAX_EXAMPLES)
    # Validation and test thinned to this many examples (a language model's: windows), evenly
    # spread over each split, for every reader of them (0: all). Training data is never thinned.
    eval_examples: int = _f(0, lo=0, hi=checks.MAX_EXAMPLES)
    # Inclusive ranges of parity's difficulty (non-zero entries); None means 1..parity_n.
    train_difficulty: tuple[int, int] | None = None
    eval_difficulty: tuple[int, int] | None = None
    data_dir: str = ""  # "" -> $ADAPTIVE_DATA_DIR or ~/.cache/adaptive/tfds
    seed: int = _f(0, lo=0, hi=checks.MAX_SEED)
    # The split periodic evals score (and early stopping, calibration and sweeps choose on); the
    # test split is read once, at the end, by an explicit `adaptive eval --split test`.
    eval_split: str = _f("validation", choices=("validation", "test"))
    image_key: str = "image"
    label_key: str = "label"


@dataclass(frozen=True)
class ModelConfig:
    """The network: which block is applied step after step, and how wide it is.

    `rnn` is Graves' parity cell (the input shown at every step); `mlp` a residual MLP block on
    an encoded vector; `transformer` a pre-LN attention block over the input read as a sequence
    of scalar tokens (Universal-Transformer style, halting per position under ACT); `lm` a causal
    language model over a sequence task's tokens (adaptive.nn.lm; its own settings in `lm`).
    """

    kind: str = _f("rnn", choices=("mlp", "rnn", "transformer", "lm"))
    hidden: int = _f(128, lo=1, hi=checks.MAX_WIDTH)
    depth: int = _f(1, lo=1, hi=1024)  # steps of a static model (halting.policy = none); lm: blocks
    share_weights: bool = True  # one block reused at every step, or a distinct block per step
    num_heads: int = _f(4, lo=1, hi=1024)  # transformer and lm
    # lm: the matmuls' precision (parameters stay float32); bfloat16 is how it runs on an accelerator
    dtype: str = _f("float32", choices=("float32", "bfloat16"))


@dataclass(frozen=True)
class LMConfig:
    """The language model's adaptive compute (model.kind = lm; adaptive.nn.lm says what each does).

    Exits: CALM's per-token early exit; training weighs exit l's loss by l (deeper exits count
    more, as CALM does), and evaluation lets a token leave at the first exit whose `confidence`
    reaches `exit_threshold`. MoD: every `mod_every`-th block runs on `mod_capacity` of each
    sequence's tokens (0 = no MoD).
    """

    positions: str = _f("rotary", choices=("rotary", "learned"))
    exits: bool = False
    confidence: str = _f("max_prob", choices=("max_prob", "margin", "state_saturation", "classifier"))
    exit_threshold: float = _f(0.9, lo=0.0, hi=1.0)
    mod_capacity: float = _f(0.0, lo=0.0, hi=1.0)
    mod_every: int = _f(2, lo=1, hi=1024)


@dataclass(frozen=True)
class HaltingConfig:
    """Adaptive depth: the policy, its hard cap and its hyper-parameters.

    bias_init = -1 starts the halting unit at p = sigmoid(-1) = 0.27 a step, so elements ponder
    several steps at first and learn where to halt. Graves' +1 (p = 0.73) halts them after about
    two, where a ponder cost tends to keep them; harder tasks (longer parity) want it lower.
    """

    policy: str = _f("none", choices=("none", "act", "pondernet", "early_exit"))
    max_steps: int = _f(20, lo=1, hi=1024)  # the hard cap, compiled into train and inference
    eps: float = _f(0.01, lo=0.0, hi=0.5)  # ACT halts once the halting mass reaches 1 - eps
    bias_init: float = _f(-1.0, lo=-50.0, hi=50.0)  # sigmoid(50) is 1 in float32
    tau: float = _f(1e-3, lo=0.0, hi=checks.MAX_WEIGHT)  # ACT's ponder-cost weight
    lambda_p: float = _f(0.2, lo=1e-6, below=1.0)  # PonderNet's geometric prior (1: log 0 in its KL)
    beta: float = _f(0.01, lo=0.0, hi=checks.MAX_WEIGHT)  # PonderNet's KL weight
    pondernet_inference: str = _f("threshold", choices=("threshold", "sample"))
    pondernet_threshold: float = _f(0.5, above=0.0, hi=1.0)  # halt when cumulative p reaches it (0: at step 1)
    # sampled halting: one key per example, from this seed and the example's input
    pondernet_sample_seed: int = _f(0, lo=0, hi=checks.MAX_SEED)
    confidence: str = _f("max_prob", choices=("max_prob", "margin", "neg_entropy"))
    exit_threshold: float = _f(0.9)  # early exit when confidence reaches it


@dataclass(frozen=True)
class MoEConfig:
    """Sparse experts in place of the block's feed-forward layer (mlp and transformer kinds).

    Defaults follow Switch / ST-MoE: capacity factor 1.25 in training and 2.0 in evaluation,
    load-balancing loss 1e-2, router z-loss 1e-3. `expert_hidden` 0 sizes each expert so that k
    of them cost what the dense block's feed-forward costs (2 * hidden / k units each).
    """

    enabled: bool = False
    num_experts: int = _f(8, lo=1, hi=checks.MAX_EXPERTS)
    k: int = _f(2, lo=1, hi=checks.MAX_EXPERTS)  # experts per token; the cap at inference (a request may ask for fewer)
    router: str = _f("top_k", choices=("top_k", "top_p", "expert_choice"))
    # top_p: a token takes experts by probability until their mass reaches top_p (at most k), so
    # its expert count is trainable by a FLOPs budget; set renormalize False with it, or a token
    # with one expert gets gate 1 and the router no gradient from the task.
    top_p: float = _f(0.5, lo=0.0, hi=1.0)
    capacity_factor: float = _f(1.25, above=0.0, hi=float(checks.MAX_EXPERTS))
    eval_capacity_factor: float = _f(2.0, above=0.0, hi=float(checks.MAX_EXPERTS))
    renormalize: bool = True  # top-k gates rescaled to sum to 1 over the chosen experts
    # Batch-prioritised dropping past capacity: every choice of a token ranked by the token's top-1
    # probability (Riquelme et al. 2021), or each choice by its own probability.
    priority: str = _f("top1", choices=("top1", "own"))
    jitter: float = _f(0.0, lo=0.0, hi=1.0)  # multiplicative router-input noise in training
    balance_weight: float = _f(1e-2, lo=0.0, hi=checks.MAX_WEIGHT)
    z_weight: float = _f(1e-3, lo=0.0, hi=checks.MAX_WEIGHT)
    # Routing without a capacity (nothing dropped): in training (dropless) and at inference
    # (eval_dropless; false: eval_capacity_factor applies, and a batch's tokens compete for slots).
    dropless: bool = False
    eval_dropless: bool = True
    # Where kept assignments are computed (same results): "blocks" (groups padded to block_size
    # rows, about the useful FLOPs), "capacity" ([E, C, D] buffers), "ragged" (lax.ragged_dot, for
    # accelerators with a grouped-matmul kernel; XLA:CPU runs it densely).
    dispatch: str = _f("blocks", choices=("blocks", "capacity", "ragged"))
    block_size: int = _f(128, lo=8, hi=4096)
    expert_hidden: int = _f(0, lo=0, hi=checks.MAX_EXPERT_WIDTH)
    # Independent routing groups, each with its own capacity; with experts sharded (mesh.expert > 1)
    # a multiple of the mesh's devices, so that each device routes whole groups.
    num_groups: int = _f(1, lo=1, hi=checks.MAX_DEVICES)

    def expert_width(self, width: int) -> int:
        """Units of each expert's hidden layer in blocks of `width`: `expert_hidden`, or (0) the
        width at which k experts cost what the dense block's feed-forward (2 * width) costs."""
        return self.expert_hidden or max(1, 2 * width // self.k)


# The units a budget can be stated in, at training (budget.unit) and per request when serving.
BUDGET_UNITS = ("steps", "flops", "macs", "latency_ms", "cost_per_1k", "energy_j", "requests_per_s", "memory_mb")


@dataclass(frozen=True)
class BudgetConfig:
    """A compute budget stated before training: the mean compute per example to land on, and
    per-request hard caps.

    `unit`: steps (blocks applied), flops or macs per example (see adaptive/compute/flops.py), or
    latency (ms), cost (money per 1k requests) or energy (J per request) on the machine a cost
    model was calibrated on. With g = (E[c] - target) / target, the hinge adds `weight` * relu(g)
    (only over budget); the lagrangian is an augmented Lagrangian whose multiplier lambda moves by
    dual ascent on realized compute each step. By default the budget is a ceiling: lambda is kept
    >= 0 and the penalty is (max(0, lambda + weight * g)^2 - lambda^2) / (2 * weight), zero
    pressure once under budget with lambda at 0. `two_sided` uses lambda * g + weight / 2 * g^2
    instead and lands on the target. E[c] is differentiable through the halting distribution.
    A language model's budget is per token (steps = blocks run, flops or macs), priced as decoding
    spends them (adaptive.training.lm_budget). `requests_per_s`, a throughput to sustain, is held
    as its inverse through the cost model: serving milliseconds per request at `serving_batch`
    (a floor on throughput is a ceiling on that). `memory_mb` bounds the device memory of the
    compiled inference at `serving_batch` plus its weights: it does not depend on steps, so it
    steers no training; `adaptive export` keeps the operating points (precision, pruning) that fit.
    """

    unit: str = _f("steps", choices=BUDGET_UNITS)
    target: float | None = None  # None: no budget
    penalty: str = _f("lagrangian", choices=("hinge", "lagrangian"))
    # The target is a ceiling: the Lagrange multiplier stays >= 0 (projected dual ascent), so it
    # relaxes to zero under the budget. two_sided lands on the target instead (for sweeps that want
    # a compute level), pushing compute up when the model is under it.
    two_sided: bool = False
    # The hinge's weight; the augmented Lagrangian's quadratic weight. With dual_lr, large enough
    # to hold compute near the target while the task is being learned (smaller ones let it drift over).
    weight: float = _f(10.0, lo=0.0, hi=checks.MAX_WEIGHT)
    dual_lr: float = _f(0.1, lo=0.0, hi=checks.MAX_WEIGHT)  # the Lagrange multiplier's step size
    # latency_ms, cost_per_1k and energy_j go through a calibrated cost model of this network
    # (`adaptive calibrate`), for requests served in batches of `serving_batch`.
    cost_model: str = ""
    serving_batch: int = _f(1, lo=1, hi=checks.MAX_BATCH)
    # Per-request hard budgets in `unit`, enforced at inference as a step cap per request: one
    # value for every request, or several drawn with `request_weights` (a distribution over
    # requests; default equal weights). Training halts each example at a budget drawn from the
    # same distribution, so the model learns to answer well at every budget it will be given.
    # Works with or without a target; needs an adaptive halting policy.
    requests: tuple[float, ...] = ()
    request_weights: tuple[float, ...] = ()


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then a cosine or constant schedule, and global-norm clipping."""

    learning_rate: float = _f(1e-3, lo=0.0, hi=10.0)
    warmup_steps: int = _f(100, lo=0, hi=checks.MAX_STEPS)
    schedule: str = _f("cosine", choices=("cosine", "constant"))
    end_lr_fraction: float = _f(0.0, lo=0.0, hi=1.0)
    weight_decay: float = _f(0.0, lo=0.0, hi=checks.MAX_WEIGHT)
    b1: float = _f(0.9, lo=0.0, below=1.0)  # 1: Adam's bias correction divides 0 by 0
    b2: float = _f(0.999, lo=0.0, below=1.0)
    grad_clip_norm: float = _f(1.0, lo=0.0)  # 0 disables clipping


@dataclass(frozen=True)
class TrainConfig:
    """Loop lengths and intervals, in steps."""

    steps: int = _f(3000, lo=1, hi=checks.MAX_STEPS)
    batch_size: int = _f(128, lo=1, hi=checks.MAX_BATCH)
    eval_every: int = _f(500, lo=1, hi=checks.MAX_STEPS)
    eval_batch_size: int = _f(1000, lo=1, hi=checks.MAX_BATCH)
    log_every: int = _f(50, lo=1, hi=checks.MAX_STEPS)
    checkpoint_every: int = _f(500, lo=1, hi=checks.MAX_STEPS)
    keep_checkpoints: int = _f(3, lo=1, hi=checks.MAX_STEPS)
    max_nonfinite_in_a_row: int = _f(20, lo=1, hi=checks.MAX_STEPS)


@dataclass(frozen=True)
class LoggingConfig:
    """Where metrics go besides DIR/metrics.jsonl (always written)."""

    wandb: str = _f("offline", choices=("offline", "online", "disabled"))
    wandb_project: str = "adaptive"
    progress: bool = True


@dataclass(frozen=True)
class MeshConfig:
    """Devices and hosts: a mesh of `data` x `expert` devices (0 for data: every device left).

    Parameters are replicated except the experts', sharded on `expert`; batches are split over
    both axes. With `expert` > 1 the MoE layers exchange tokens by all-to-all, each device routing
    its own `moe.num_groups` / devices groups (adaptive/training/parallel.py). Multi-host: with
    `num_processes` > 1, `jax.distributed.initialize(coordinator_address, num_processes,
    process_id)`; with `auto`, JAX reads the cluster from the environment (SLURM, ...). One
    device is a mesh of one.
    """

    data: int = _f(1, lo=0, hi=checks.MAX_DEVICES)
    expert: int = _f(1, lo=1, hi=checks.MAX_DEVICES)
    distributed: str = _f("off", choices=("off", "auto", "explicit"))
    coordinator_address: str = ""  # host:port of process 0 (explicit)
    num_processes: int = _f(1, lo=1, hi=checks.MAX_DEVICES)
    process_id: int = _f(0, lo=0, hi=checks.MAX_DEVICES - 1)

    @property
    def expert_parallel(self) -> bool:
        """Whether this mesh shards experts, so that the MoE layers are built expert-parallel."""
        return self.expert > 1


@dataclass(frozen=True)
class Config:
    """A whole run. `seed` is the only source of randomness (init, dropout, data order)."""

    name: str = "run"
    seed: int = _f(0, lo=0, hi=checks.MAX_SEED)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    halting: HaltingConfig = field(default_factory=HaltingConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)


@dataclass(frozen=True)
class MoELayers(MoEConfig):
    """A MoEConfig as the model's MoE layers are built from it: the section plus how they run.

    Not a config section (config.json never holds it): `expert_parallel` follows the mesh of the
    run that builds the model (`moe_layers`), since a run may resume on another mesh.
    """

    expert_parallel: bool = False  # experts sharded on the context mesh's `expert` axis


def moe_layers(cfg: Config) -> MoELayers:
    """The MoE layers of `cfg`'s model: its `moe` section, expert-parallel when its mesh shards
    experts. A language model's dense feed-forward is 4 * width wide (not 2 * width): by default
    its k experts together are that wide, so MoE and dense cost the same active FLOPs."""
    section = {f.name: getattr(cfg.moe, f.name) for f in dataclasses.fields(MoEConfig)}
    if cfg.model.kind == "lm" and not cfg.moe.expert_hidden:
        section["expert_hidden"] = max(1, 4 * cfg.model.hidden // cfg.moe.k)
    return MoELayers(**section, expert_parallel=cfg.mesh.expert_parallel)


def default_config() -> ml_collections.ConfigDict:
    """The defaults as a ConfigDict, for config files to start from."""
    return ml_collections.ConfigDict(to_dict(Config()))


def to_dict(cfg: Any) -> dict:
    """A plain, JSON-ready dict of a Config (tuples become lists in JSON, restored on load)."""
    return dataclasses.asdict(cfg)


def step_cap(cfg: Config) -> int:
    """The most steps the model of `cfg` can apply: its depth, or its halting cap."""
    return cfg.model.depth if cfg.halting.policy == "none" else cfg.halting.max_steps


def data_dir(cfg: DataConfig) -> str:
    """The folder where TFDS datasets are prepared once and reused."""
    chosen = cfg.data_dir or os.environ.get("ADAPTIVE_DATA_DIR") or "~/.cache/adaptive/tfds"
    return str(Path(chosen).expanduser().resolve())
