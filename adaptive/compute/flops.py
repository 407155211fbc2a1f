"""Analytic FLOPs per example: what each block, head, halting unit, router and expert costs.

Counts follow XLA's `cost_analysis()` convention: a multiply-add is 2 FLOPs, elementwise ops
count 1 each, and transcendentals (tanh, exp) are not FLOPs. Two choices match what XLA runs:

- the RNN cell's input projection W_x [x, first] is counted per example, not per step, in a
  static (unrolled) network: the first-step flag is a constant there, so XLA computes the
  projection once with the flag set and once without (shared by every later step). Under an
  adaptive policy the flag is traced inside the scan or while loop, and the compiled loop body
  runs the whole projection at every step, so it is counted per step;
- experts are counted as *executed*: with capacity buffers (`moe.dispatch=capacity`) each expert
  processes its whole buffer, so at capacity factor c a token costs c * k expert passes, not k;
  block dispatch (the default) computes the kept assignments plus fewer than a block of padding
  rows per expert, counted as k passes (the padding is not counted). `useful=True` counts k.

`FlopsModel.at_steps` turns a (differentiable) expected number of steps, and where the work
follows them a number of expert applications, into expected FLOPs: that is how compute penalties
and budgets in FLOPs reach the halting distribution and (top-p) the router. Experts are counted
as applied (a top-p token's own count, a top-k token held to fewer by an expert budget: block
and dropless dispatch do exactly that work), except under capacity buffers, which run whole
whatever the routers ask for. Tests check the
totals against `cost_analysis()` of the compiled forward pass of every policy and model kind
(within 2% for dense models, 10% with experts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adaptive.nn.backbones import BACKBONES
from adaptive.nn.policies import policy_of
from adaptive.nn.routing import capacity


@dataclass(frozen=True)
class FlopsModel:
    """FLOPs per example: `fixed` (the encoder, and the readout of a policy that reads out once)
    plus `per_step` and `halting_per_step` for each step applied."""

    fixed: float
    per_step: float  # everything a step costs, its expert applications included
    # the halting unit, or every step's readout and exit confidence
    halting_per_step: float
    expert_pass: float = 0.0  # one expert applied to one token, and its output combined
    experts_per_step: float = 0.0  # expert applications per example per step counted in per_step
    min_experts_per_step: float = 0.0  # the fewest a step can make (top-p: one per token)
    dynamic_experts: bool = False  # top-p: the count varies per token and is counted as routed
    # the work follows the expert applications made (block or dropless dispatch of token-choice
    # routing: a top-p count, or top-k under an expert budget), not whole capacity buffers
    counted_experts: bool = False

    def at_steps(self, steps, experts=None):
        """FLOPs of an example that ran `steps` steps (a number or a differentiable array) and,
        where the work follows them (`counted_experts`), made `experts` expert applications in
        all (default: the most a step makes)."""
        total = self.fixed + steps * (self.per_step + self.halting_per_step)
        if experts is None or not self.counted_experts:
            return total
        return total + (experts - steps * self.experts_per_step) * self.expert_pass

    def fewest(self, steps):
        """The least FLOPs of `steps` steps (top-p: one expert per token)."""
        return self.at_steps(steps, steps * self.min_experts_per_step)


def layer_norm_flops(width: int) -> float:
    return 8.0 * width  # mean, variance, normalise, scale and shift


def dense_flops(d_in: int, d_out: int, bias: bool = True) -> float:
    return 2.0 * d_in * d_out + (d_out if bias else 0)


def _capped_choice(cfg, train: bool) -> bool:
    """Expert choice at inference, where a token is capped at k (adaptive.nn.moe.limit_experts)
    and the dispatch runs only the kept assignments (not whole capacity buffers)."""
    return cfg.router == "expert_choice" and not train and cfg.dispatch != "capacity"


def moe_flops(width: int, cfg, tokens: int, *, train: bool, useful: bool) -> tuple[float, float, float]:
    """Per token, one MoE feed-forward: (FLOPs in all, expert applications, FLOPs of one
    application with the combine of its output: what one fewer saves where work follows routing)."""
    hidden = cfg.expert_width(width)
    expert = dense_flops(width, hidden) + dense_flops(hidden, width) + 8.0 * hidden  # + GELU's polynomial
    dropless = cfg.dropless if train else cfg.eval_dropless
    if useful or (cfg.dispatch != "capacity" and cfg.router != "expert_choice"):
        passes = cfg.k
    else:
        factor = cfg.capacity_factor if train else cfg.eval_capacity_factor
        group = max(tokens // cfg.num_groups, 1)  # serving routes small batches as one group
        slots = group if dropless and cfg.router != "expert_choice" else capacity(group, cfg.num_experts, cfg.k, factor)
        passes = cfg.num_experts * slots / group
        if _capped_choice(cfg, train):  # inference holds each token to k of the experts that took it
            passes = min(passes, cfg.k)
    router = dense_flops(width, cfg.num_experts, bias=False) + 6.0 * cfg.num_experts
    combine = 2.0 * width  # an assignment's output scaled by its gate and added to its token's
    return router + passes * expert + cfg.k * combine, passes, expert + combine


def flops_model(
    cfg,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    batch: int = 1,
    train: bool = False,
    useful: bool = False,
    ffn_hidden: int | None = None,
    attention_width: int | None = None,
) -> FlopsModel:
    """The FlopsModel of `cfg`'s network (a whole Config). `batch` matters only for experts,
    whose capacity, and so executed work, depends on how many tokens are routed together.
    `ffn_hidden`: the dense feed-forward's hidden units when pruning left fewer than 2 x width;
    `attention_width`: heads x head width when pruning left fewer heads."""
    d_in, width = math.prod(input_shape), cfg.model.hidden
    kind, moe = cfg.model.kind, cfg.moe if cfg.moe.enabled else None
    readout = dense_flops(width, num_classes)  # the head, and on a sequence its pooling (below)
    ffn_width = ffn_hidden or 2 * width
    dense_ffn = dense_flops(width, ffn_width) + dense_flops(ffn_width, width)
    experts = (0.0, 0.0, 0.0)  # (applications per example per step, the fewest, FLOPs of one)
    policy = policy_of(cfg.halting)
    if kind == "rnn":
        projection = dense_flops(d_in + 1, width)
        if policy.unrolled:  # the first step's projection, and one shared by all later steps
            fixed, looped = min(policy.num_steps(cfg.model), 2) * projection, 0.0
        else:
            fixed, looped = 0.0, projection
        per_step = dense_flops(width, width, bias=False) + 2.0 * width + looped  # + the two adds
    elif kind == "mlp":
        fixed = dense_flops(d_in, width) + width
        ffn = dense_ffn + ffn_width  # + the ReLU over the hidden units
        if moe:
            ffn, passes, one = moe_flops(width, moe, batch, train=train, useful=useful)
            experts = (passes, 1.0, one)
        per_step = layer_norm_flops(width) + ffn + width
    else:
        length = d_in
        fixed = length * (dense_flops(1, width) + width)
        readout += length * width + layer_norm_flops(width)  # the mean over positions and its norm
        inner = attention_width or width
        heads = cfg.model.num_heads * inner / width
        attention = 3 * dense_flops(width, inner) + dense_flops(inner, width) + 2 * 2.0 * length * inner
        attention += 5.0 * length * heads
        ffn = dense_ffn + 8.0 * ffn_width
        if moe:
            ffn, passes, one = moe_flops(width, moe, batch * length, train=train, useful=useful)
            experts = (length * passes, length, one)
        per_step = length * (2 * layer_norm_flops(width) + attention + ffn + 3.0 * width)
    sequence = BACKBONES[kind].sequence
    halting = policy.halting_flops(
        unit=dense_flops(width, 1),
        readout=readout,
        num_classes=num_classes,
        positions=d_in,
        sequence=sequence,
    )
    if not policy.reads_out_every_step:  # one readout, of the last or the mean-field state
        fixed += readout
    passes, fewest, one = experts
    dynamic = moe is not None and moe.router == "top_p"
    counted = moe is not None and (useful or moe.dispatch != "capacity")
    counted = counted and (moe.router != "expert_choice" or _capped_choice(moe, train))
    return FlopsModel(
        float(fixed), float(per_step), float(halting), one, passes, fewest if dynamic else passes, dynamic, counted
    )
