"""Analytic FLOPs per token of the language model (adaptive.nn.lm), XLA's convention.

As in adaptive.compute.flops: a multiply-add is 2 FLOPs, elementwise ops 1 each, transcendentals
(exp, cos, tanh) none. Attention is priced at the window length `length`: every query is scored
against every key of its window and the causal mask applied afterwards, as the model computes it,
so a token's attention costs 4 * length * width (scores and mixing) whatever its position.

`LMFlops.at_blocks(blocks)` is the FLOPs of a token that went through `blocks` full blocks (the
embedding-side work, the exits it passed and the head included); a MoD block's picked share is
folded into `per_block_mod` so that `full()` of a MoD model is its expected FLOPs per token.
`LMFlops.of_tokens(reached, ran, experts)` prices what each token spent block by block (the
model's `LMOutput` fields, or their differentiable expectations for a budget's penalty): a block
a token reached costs its exit and MoD router; one it ran costs its attention and feed-forward;
experts are counted as routed where the dispatch runs only the kept assignments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from adaptive.compute.flops import dense_flops, layer_norm_flops, moe_flops
from adaptive.config import moe_layers, step_cap


@dataclass(frozen=True)
class LMFlops:
    fixed: float  # the final norm and the head (and learned positions' add)
    per_block: float  # one dense (or MoE) block, for one token
    per_exit: float  # one exit's norm, confidence and (softmax confidences) head
    blocks: int
    exits: int  # exits a token passes when it runs every block
    mod_blocks: int = 0
    per_block_mod: float = 0.0  # a MoD block per token of the sequence: router, predictor, picked share
    mod_layers: tuple[int, ...] = ()
    per_halting: float = 0.0  # ACT: each step's halting unit and mean-field update
    # block by block: what reaching it costs (its exit, its MoD router), and running it
    reach_costs: tuple[float, ...] = ()
    run_costs: tuple[float, ...] = ()
    expert_pass: float = 0.0  # one expert applied to one token
    experts_per_block: float = 0.0  # expert applications counted in a block's run cost
    dynamic_experts: bool = False  # top-p, routed: a token's count varies, and a budget can train it
    routed_experts: bool = False  # counted as routed, token by token (all but capacity buffers)
    # decoding: a block above a token's exit writes its keys and values (and asks its MoD router)
    fill_costs: tuple[float, ...] = ()

    def at_blocks(self, blocks: float) -> float:
        """FLOPs of a token that ran `blocks` dense blocks and passed an exit after each but the
        last (MoD blocks counted at their expected share)."""
        dense = min(blocks, self.blocks - self.mod_blocks)
        return (
            self.fixed
            + dense * self.per_block
            + self.mod_blocks * self.per_block_mod
            + min(blocks, self.exits) * self.per_exit
            + blocks * self.per_halting
        )

    def full(self) -> float:
        return self.at_blocks(self.blocks)

    def of_tokens(self, reached_NxBxL, ran_NxBxL, experts_NxBxL=None):
        """FLOPs of each token (B x L) from what it reached and ran block by block (0/1, or
        expected values: differentiable under jax), and its expert applications per block."""
        reach = self._column(self.reach_costs, reached_NxBxL)
        run = self._column(self.run_costs, ran_NxBxL)
        total = self.fixed + (reached_NxBxL * reach).sum(0) + (ran_NxBxL * run).sum(0)
        if self.fill_costs:
            total = total + ((1.0 - reached_NxBxL) * self._column(self.fill_costs, reached_NxBxL)).sum(0)
        if experts_NxBxL is None or not self.routed_experts:
            return total
        return total + ((experts_NxBxL - ran_NxBxL * self.experts_per_block) * self.expert_pass).sum(0)

    def extremes(self, exits: bool) -> tuple[float, float]:
        """(the least, the most) FLOPs a token can cost: with exits it may leave after the first
        block, MoD blocks may skip it, top-p routers may give it one expert per block."""
        n = self.blocks
        reached = np.array([1.0] + [0.0 if exits else 1.0] * (n - 1)).reshape(n, 1, 1)
        ran = reached * np.array([0.0 if i in self.mod_layers else 1.0 for i in range(n)]).reshape(n, 1, 1)
        fewest = ran * (1.0 if self.dynamic_experts else self.experts_per_block)
        ones = np.ones((n, 1, 1))
        least = self.of_tokens(reached, ran, fewest)[0, 0]
        return float(least), float(self.of_tokens(ones, ones, ones * self.experts_per_block)[0, 0])

    @staticmethod
    def _column(costs, like):
        return np.asarray(costs, np.float32).reshape((-1,) + (1,) * (like.ndim - 1))


def lm_flops(
    cfg,
    length: int,
    vocab: int,
    *,
    batch: int = 1,
    train: bool = False,
    exiting: bool = False,
    decoding: bool = False,
    ffn_hidden: int | None = None,
    attention_width: int | None = None,
) -> LMFlops:
    """The LMFlops of `cfg`'s language model on windows of `length` tokens. `exiting`: inference
    with a threshold (classifier and saturation confidences then skip the exits' heads).
    `decoding`: one token at a time over a KV cache of `length` slots (adaptive.nn.lm_decode): a
    MoD block a token runs attends over the whole cache, and the blocks above a token's exit
    cost their key/value projection (`fill_costs`). `ffn_hidden`: the dense feed-forward's hidden
    units when pruning left fewer than 4 x width; `attention_width`: heads x head width when pruning
    left fewer heads."""
    width, heads, lm = cfg.model.hidden, cfg.model.num_heads, cfg.lm
    moe = moe_layers(cfg) if cfg.moe.enabled else None  # the experts as the model builds them
    head = dense_flops(width, vocab, bias=False)
    fixed = layer_norm_flops(width) + head + (width if lm.positions == "learned" else 0)

    def block(keys: int) -> float:
        inner = attention_width or width
        kept_heads = heads * inner / width
        rotary = 6.0 * inner if lm.positions == "rotary" else 0.0
        attention = dense_flops(width, 3 * inner, bias=False) + rotary + 4.0 * keys * inner + 7.0 * keys * kept_heads
        attention += dense_flops(inner, width, bias=False)
        if moe:
            ffn = moe_flops(width, moe, batch * length, train=train, useful=False)[0]
        else:
            hidden = ffn_hidden or 4 * width
            ffn = dense_flops(width, hidden) + dense_flops(hidden, width) + 8.0 * hidden
        return 2 * layer_norm_flops(width) + attention + ffn + 2.0 * width

    depth = step_cap(cfg)  # ACT: the cap on its shared block's steps
    per_exit = 0.0
    if lm.exits:
        softmax = lm.confidence in ("max_prob", "margin")
        confidence = {"classifier": dense_flops(width, 1), "state_saturation": 6.0 * width}.get(
            lm.confidence, 4.0 * vocab
        )
        per_exit = layer_norm_flops(width) + confidence + (head if softmax or not exiting else 0.0)
    mod_blocks = [i for i in range(depth) if lm.mod_capacity > 0 and i % lm.mod_every == lm.mod_every - 1]
    # ACT: the halting unit, and adding the step's weighted state to the mean field
    halting = dense_flops(width, 1) + 3.0 * width if cfg.halting.policy == "act" else 0.0
    per_block_mod, router, mod_run = 0.0, 0.0, 0.0
    if mod_blocks:
        picked = max(1, math.ceil(lm.mod_capacity * length))
        router = dense_flops(width, 1) + dense_flops(width, max(8, width // 4)) + dense_flops(max(8, width // 4), 1)
        mod_run = block(length if decoding else picked) + 3.0 * width  # + scaling the update
        per_block_mod = router + picked / length * mod_run
    # block and ragged dispatch run the kept assignments (a token given fewer experts, by top-p or
    # by an expert budget, costs less); capacity buffers and expert choice run whole
    routed = moe is not None and moe.router != "expert_choice" and moe.dispatch != "capacity"
    passes, expert_pass = moe_flops(width, moe, batch * length, train=train, useful=False)[1:] if moe else (0.0, 0.0)
    inner = attention_width or width
    fill = layer_norm_flops(width) + dense_flops(width, 2 * inner, bias=False)
    fill += 3.0 * inner if lm.positions == "rotary" else 0.0
    fill_costs = tuple(float(fill + (router if i in mod_blocks else 0.0)) for i in range(depth)) if decoding else ()
    return LMFlops(
        fixed=float(fixed),
        per_block=float(block(length)),
        per_exit=float(per_exit),
        blocks=depth,
        exits=depth - 1 if lm.exits else 0,
        mod_blocks=len(mod_blocks),
        per_block_mod=float(per_block_mod),
        mod_layers=tuple(mod_blocks),
        per_halting=float(halting),
        reach_costs=tuple(
            float((router if i in mod_blocks else 0.0) + (per_exit if lm.exits and i < depth - 1 else 0.0) + halting)
            for i in range(depth)
        ),
        run_costs=tuple(float(mod_run if i in mod_blocks else block(length)) for i in range(depth)),
        expert_pass=float(expert_pass),
        experts_per_block=float(passes),
        dynamic_experts=routed and moe.router == "top_p",
        routed_experts=routed,
        fill_costs=fill_costs,
    )
