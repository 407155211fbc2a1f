"""`LanguageModel`: a causal byte-level language model with per-token adaptive compute.

Decoder-only, pre-LN blocks (adaptive.nn.lm_blocks), rotary or learned positions, the output
head tied to the embedding. Each mechanism is switched on by its own argument:

- **Per-token early exit** (CALM, Schuster et al. 2022; `exits=True`): after every block but the
  last, an exit reads the state through its own LayerNorm and the shared head. A token leaves
  at the first exit whose confidence reaches the threshold: `max_prob` (top softmax
  probability), `margin` (top-1 minus top-2), `state_saturation` (cosine of the states before
  and after the block) or `classifier` (a learned exit unit, trained to predict that the exit
  agrees with the last layer). With a threshold, the full forward pass copies an exited token's
  state to every block above it (CALM's state propagation), so later tokens attend to it
  exactly as they will when decoding, where its blocks above the exit are never run.
- **Mixture-of-Depths** (Raposo et al. 2024; `mod_capacity` > 0): every `mod_every`-th block
  runs on the `mod_capacity` share of each sequence's tokens with the largest router weight
  (gathered, so the compute is really skipped; the rest pass by the residual) and scales its
  update by the router weight, as in the paper. Top-k over a sequence looks at later tokens, so
  a causal predictor learns which tokens top-k picks; `mod_causal` (the default outside
  training) routes by the predictor instead, as decoding must.
- **Experts**: `moe_cfg` makes every block's feed-forward the framework's MoE layer.
- **ACT per position** (a causal Universal Transformer, Dehghani et al. 2019; `act=True`): one
  shared block applied up to `layers` times; after each step a halting unit gives every position
  its halting probability, and Graves' ACT rule (adaptive.nn.halting) halts it once the mass
  reaches 1 - eps. A halted position's state stops changing (so later positions attend to it as
  decoding will), and the head reads each position's mean-field state sum_t w_t h_t.

`__call__` returns an `LMOutput`; `layers_BxL` counts the blocks each token went through (a
MoD block a token skipped, or blocks above its exit, are not counted), and `reached_NxBxL` /
`ran_NxBxL` / `experts_NxBxL` say block by block what it spent: the model's realized compute
per token, which adaptive.compute.lm_flops prices.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from adaptive.nn import halting as H
from adaptive.nn.lm_blocks import DepthRouter, LMBlock

CONFIDENCES = ("max_prob", "margin", "state_saturation", "classifier")
POSITIONS = ("rotary", "learned")


class LMOutput(NamedTuple):
    logits_BxLxV: jax.Array  # each position's prediction of the next token (at its exit)
    layers_BxL: jax.Array  # float32: blocks applied to each token
    exit_logits_ExBxLxV: jax.Array | None = None  # every exit's prediction (exits only)
    exit_scores_ExBxL: jax.Array | None = None  # every exit's confidence in [0, 1] (exits only)
    aux_loss: jax.Array | float = 0.0  # MoE load balance and z-losses, MoD predictor loss
    metrics: dict | None = None
    experts_BxL: jax.Array | None = None  # expert applications per token (MoE only)
    # Block by block (N = blocks), float32 0/1: the token had not exited before the block (its
    # MoD router, its exit ran), and the block's attention and feed-forward ran for it.
    reached_NxBxL: jax.Array | None = None
    ran_NxBxL: jax.Array | None = None
    experts_NxBxL: jax.Array | None = None  # expert applications per block (MoE only)
    soft_experts_NxBxL: jax.Array | None = None  # the same, differentiable through top-p routers
    mod_logits_MxBxL: jax.Array | None = None  # each MoD block's causal predictor (logit of "runs")
    ponder_BxL: jax.Array | None = None  # ACT: N + R per position, differentiable


class LanguageModel(nnx.Module):
    def __init__(
        self,
        *,
        vocab: int,
        width: int,
        layers: int,
        heads: int,
        max_length: int,
        positions: str = "rotary",
        exits: bool = False,
        confidence: str = "max_prob",
        mod_capacity: float = 0.0,
        mod_every: int = 2,
        moe_cfg=None,
        act: bool = False,
        act_eps: float = 0.01,
        act_bias_init: float = -1.0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if positions not in POSITIONS:
            raise ValueError(f"positions={positions!r} is not one of {POSITIONS}")
        if confidence not in CONFIDENCES:
            raise ValueError(f"confidence={confidence!r} is not one of {CONFIDENCES}")
        if not 0.0 <= mod_capacity <= 1.0:
            raise ValueError(f"mod_capacity={mod_capacity} must be in [0, 1]")
        if layers < 1 or mod_every < 1:
            raise ValueError(f"layers={layers} and mod_every={mod_every} must be >= 1")
        if act and (exits or mod_capacity > 0):
            raise ValueError("act (one shared block, halting per position) does not combine with exits or MoD")
        self.num_layers, self.max_length, self.exits, self.confidence = layers, max_length, exits, confidence
        self.mod_capacity = mod_capacity
        self.mod_layers = tuple(i for i in range(layers) if mod_capacity > 0 and i % mod_every == mod_every - 1)
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.position_embed = nnx.Embed(max_length, width, rngs=rngs) if positions == "learned" else None
        rotary = positions == "rotary"
        self.act, self.act_eps = act, act_eps
        self.blocks = nnx.List(
            [LMBlock(width, heads, moe_cfg, rotary=rotary, dtype=dtype, rngs=rngs) for _ in range(1 if act else layers)]
        )
        bias = nnx.initializers.constant(act_bias_init)
        self.halt_unit = nnx.Linear(width, 1, bias_init=bias, rngs=rngs) if act else None
        self.routers = nnx.Dict({str(i): DepthRouter(width, rngs=rngs) for i in self.mod_layers})
        self.final_norm = nnx.LayerNorm(width, rngs=rngs)
        self.exit_norms = nnx.List([nnx.LayerNorm(width, rngs=rngs) for _ in range(layers - 1)]) if exits else None
        learned = exits and confidence == "classifier"
        self.exit_units = nnx.List([nnx.Linear(width, 1, rngs=rngs) for _ in range(layers - 1)]) if learned else None

    def __call__(
        self,
        tokens_BxL: jax.Array,
        *,
        train: bool = True,
        exit_threshold: jax.Array | float | None = None,
        mod_causal: bool | None = None,
        mod_bias: jax.Array | float = 0.0,
        k_active: jax.Array | None = None,
    ) -> LMOutput:
        """Next-token logits for every position of `tokens_BxL` (int32, < vocab).

        `exit_threshold`: with exits, each token leaves at the first exit whose confidence
        reaches it (its state then propagates upward); None runs every block for every token.
        `mod_causal`: route MoD blocks by the causal predictor (default: when not training): a
        token runs the block when its predictor's logit exceeds `mod_bias` (raise it to run fewer).
        `k_active`: the most experts a token may use (traced; None: the router's k)."""
        batch, length = tokens_BxL.shape
        if length > self.max_length and self.position_embed is not None:
            raise ValueError(f"{length} tokens is longer than the learned positions ({self.max_length})")
        causal = (not train) if mod_causal is None else mod_causal
        positions_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        h = self.embed(tokens_BxL)
        if self.position_embed is not None:
            h = h + self.position_embed(positions_BxL)
        if self.act:
            return self._act(h, positions_BxL, train, k_active)
        layers_BxL = jnp.zeros((batch, length), jnp.float32)
        exited_BxL = jnp.zeros((batch, length), bool)
        exiting = self.exits and exit_threshold is not None
        # a softmax confidence needs every exit's logits; the others need only the chosen state's
        need_logits = not exiting or self.confidence in ("max_prob", "margin")
        exit_logits, exit_scores, chosen_state = [], [], None
        aux, moe_metrics, mod_metrics, experts = 0.0, [], {}, None
        reached, ran, block_experts, soft_experts, mod_logits = [], [], [], [], []
        for i, block in enumerate(self.blocks):

            def layer(h, i=i, block=block):
                if i in self.mod_layers:
                    return self._mod_block(i, block, h, positions_BxL, train, causal, mod_bias, k_active)
                new_h, moe = block(h, positions_BxL, train=train, k_active=k_active)
                ones = jnp.ones((batch, length), bool)
                return new_h, moe, ones, jnp.float32(0), jnp.float32(1), jnp.zeros((batch, length))

            if exiting and i > 0:  # once every token has left, the block is not run at all
                skipped = jax.tree.map(jnp.zeros_like, jax.eval_shape(layer, h))
                new_h, moe, ran_BxL, mod_aux, rate, predicted = jax.lax.cond(
                    exited_BxL.all(), lambda h, s=skipped: (h, *s[1:]), layer, h
                )
            else:
                new_h, moe, ran_BxL, mod_aux, rate, predicted = layer(h)
            if i in self.mod_layers:
                aux = aux + mod_aux
                mod_metrics[f"mod/selected_{i}"] = rate
                mod_logits.append(predicted)
            reached.append((~exited_BxL).astype(jnp.float32))
            if exiting:  # CALM's state propagation: an exited token's state is copied up
                new_h = jnp.where(exited_BxL[..., None], h, new_h)
                ran_BxL = ran_BxL & ~exited_BxL
            layers_BxL = layers_BxL + ran_BxL
            ran.append(ran_BxL.astype(jnp.float32))
            if moe is not None:
                aux = aux + moe.aux_loss
                moe_metrics.append(moe.metrics)
                counted = jnp.where(ran_BxL, moe.experts_T.reshape(batch, length), 0)
                experts = counted if experts is None else experts + counted
                block_experts.append(counted.astype(jnp.float32))
                soft_experts.append(jnp.where(ran_BxL, moe.soft_experts_T.reshape(batch, length), 0.0))
            h_before, h = h, new_h
            if self.exits and i < self.num_layers - 1:
                normed = self.exit_norms[i](h)
                logits = self.embed.attend(normed) if need_logits else None
                score = self._confidence(i, logits, h, h_before)
                if logits is not None:
                    exit_logits.append(logits)
                exit_scores.append(score)
                if exiting:
                    leaving = ~exited_BxL & (score >= exit_threshold)
                    chosen_state = (
                        normed if chosen_state is None else jnp.where(leaving[..., None], normed, chosen_state)
                    )
                    exited_BxL = exited_BxL | leaving
        state = self.final_norm(h)
        if chosen_state is not None:  # the head is linear: reading the chosen state is reading its exit
            state = jnp.where(exited_BxL[..., None], chosen_state, state)
        final = self.embed.attend(state)
        metrics = {**_mean_metrics(moe_metrics), **mod_metrics}
        return LMOutput(
            final,
            layers_BxL,
            jnp.stack(exit_logits) if exit_logits else None,
            jnp.stack(exit_scores) if exit_scores else None,
            aux,
            metrics,
            experts,
            jnp.stack(reached),
            jnp.stack(ran),
            jnp.stack(block_experts) if block_experts else None,
            jnp.stack(soft_experts) if soft_experts else None,
            jnp.stack(mod_logits) if mod_logits else None,
        )

    def _act(self, h, positions_BxL, train, k_active) -> LMOutput:
        """The shared block, step after step, each position halting by ACT."""
        batch, length, _ = h.shape
        halted = jnp.zeros((batch, length), bool)
        mass = jnp.zeros((batch, length), jnp.float32)
        probs, states, ran, aux, moe_metrics, experts, soft = [], [], [], 0.0, [], [], []
        block = self.blocks[0]
        for t in range(self.num_layers):

            def step(h):
                return block(h, positions_BxL, train=train, k_active=k_active)

            if t > 0 and not train:  # once every position has halted, the block is not run
                skipped = jax.tree.map(jnp.zeros_like, jax.eval_shape(step, h))
                new_h, moe = jax.lax.cond(halted.all(), lambda h, s=skipped: (h, s[1]), step, h)
            else:
                new_h, moe = step(h)
            running = ~halted
            new_h = jnp.where(halted[..., None], h, new_h)  # a halted position's state stays
            ran.append(running.astype(jnp.float32))
            if moe is not None:
                aux = aux + moe.aux_loss
                moe_metrics.append(moe.metrics)
                experts.append(jnp.where(running, moe.experts_T.reshape(batch, length), 0).astype(jnp.float32))
                soft.append(jnp.where(running, moe.soft_experts_T.reshape(batch, length), 0.0))
            p = jax.nn.sigmoid(self.halt_unit(new_h)[..., 0].astype(jnp.float32))
            halts = running & ((mass + p >= 1.0 - self.act_eps) | (t + 1 >= self.num_layers))
            mass, halted = mass + jnp.where(running, p, 0.0), halted | halts
            probs.append(p)
            states.append(new_h)
            h = new_h
        limit = jnp.full((batch, length), self.num_layers, jnp.int32)
        halting = H.act_weights(jnp.stack(probs), limit, self.act_eps)
        state = (halting.weights_NxH[..., None] * jnp.stack(states).astype(jnp.float32)).sum(0)
        ran_NxBxL = jnp.stack(ran)
        block_experts = jnp.stack(experts) if experts else None
        return LMOutput(
            self.embed.attend(self.final_norm(state.astype(h.dtype))),
            ran_NxBxL.sum(0),
            aux_loss=aux,
            metrics=_mean_metrics(moe_metrics),
            experts_BxL=None if block_experts is None else block_experts.sum(0),
            reached_NxBxL=ran_NxBxL,
            ran_NxBxL=ran_NxBxL,
            experts_NxBxL=block_experts,
            soft_experts_NxBxL=jnp.stack(soft) if soft else None,
            ponder_BxL=halting.ponder_H,
        )

    def _confidence(self, i: int, logits_BxLxV, h_BxLxD, h_before_BxLxD) -> jax.Array:
        """The exit's confidence in [0, 1] for every token."""
        if self.confidence == "classifier":
            return jax.nn.sigmoid(self.exit_units[i](jax.lax.stop_gradient(h_BxLxD))[..., 0])
        if self.confidence == "state_saturation":
            a, b = h_BxLxD.astype(jnp.float32), h_before_BxLxD.astype(jnp.float32)
            cosine = (a * b).sum(-1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + 1e-6)
            return jnp.clip(cosine, 0.0, 1.0)
        probs = jax.nn.softmax(logits_BxLxV.astype(jnp.float32), -1)
        if self.confidence == "max_prob":
            return probs.max(-1)
        top2 = jax.lax.top_k(probs, 2)[0]
        return top2[..., 0] - top2[..., 1]

    def _mod_block(self, i, block, h, positions_BxL, train, causal, bias, k_active):
        """A Mixture-of-Depths block: (state, MoE output, which tokens ran it, the predictor's
        loss, the share of tokens that ran it, the predictor's logits)."""
        batch, length, _ = h.shape
        weights_BxL, predicted_BxL = self.routers[str(i)](h)
        capacity = max(1, math.ceil(self.mod_capacity * length))
        # top-k membership: the predictor's target (and the routing, unless causal)
        top_BxK = jnp.sort(jax.lax.top_k(weights_BxL, capacity)[1], axis=-1)
        in_top_BxL = jnp.zeros((batch, length), bool).at[jnp.arange(batch)[:, None], top_BxK].set(True)
        predictor_loss = optax.sigmoid_binary_cross_entropy(predicted_BxL, in_top_BxL.astype(jnp.float32)).mean()
        if causal:
            # by the predictor, token by token; the block runs on every row, its update masked
            chosen_BxL = predicted_BxL > bias
            out, moe = block(h, positions_BxL, keys_BxL=chosen_BxL, train=train, k_active=k_active)
            new_h = jnp.where(chosen_BxL[..., None], h + weights_BxL[..., None] * (out - h), h)
            return new_h, moe, chosen_BxL, predictor_loss, chosen_BxL.mean(), predicted_BxL
        rows = jnp.arange(batch)[:, None]
        picked_h, picked_pos = h[rows, top_BxK], positions_BxL[rows, top_BxK]
        out, moe = block(picked_h, picked_pos, train=train, k_active=k_active)
        update = picked_h + weights_BxL[rows, top_BxK][..., None] * (out - picked_h)
        if moe is not None:  # expert counts of the picked tokens, back in their places
            counted = (
                jnp.zeros((batch, length), moe.experts_T.dtype)
                .at[rows, top_BxK]
                .set(moe.experts_T.reshape(batch, capacity))
            )
            soft = (
                jnp.zeros((batch, length), moe.soft_experts_T.dtype)
                .at[rows, top_BxK]
                .set(moe.soft_experts_T.reshape(batch, capacity))
            )
            moe = moe._replace(experts_T=counted.reshape(-1), soft_experts_T=soft.reshape(-1))
        new_h = h.at[rows, top_BxK].set(update)
        return new_h, moe, in_top_BxL, predictor_loss, in_top_BxL.mean(), predicted_BxL


# Per-expert routing figures also kept layer by layer: expert pruning scores each layer's experts.
BY_LAYER = ("moe/expert_usage", "moe/gate_mass")


def _mean_metrics(per_layer: list[dict | None]) -> dict:
    """The MoE blocks' routing metrics averaged over blocks (a per-expert figure expert by expert),
    and BY_LAYER's figures stacked [blocks, experts] as `<name>_by_layer` (an ACT model's shared
    block: a row per step)."""
    per_layer = [m for m in per_layer if m]
    if not per_layer:
        return {}
    stacked = {key: jnp.stack([m[key] for m in per_layer]) for key in per_layer[0]}
    by_layer = {f"{key}_by_layer": stacked[key] for key in BY_LAYER if key in stacked}
    return {**{key: values.mean(0) for key, values in stacked.items()}, **by_layer}
