"""A sparse mixture-of-experts feed-forward layer: route, dispatch, run experts, combine.

Routing decides who goes where and, with a capacity, what is dropped (`dropless` in training,
`eval_dropless` at inference: no capacity, nothing dropped). Dispatch decides where the kept
assignments are computed, with the same results whichever is chosen:

- "blocks" (the default, adaptive/nn/block_dispatch.py): groups sorted by expert and padded to
  blocks of `block_size` rows, each block running its expert's FFN: about the useful FLOPs, on
  CPU as on accelerators.
- "capacity" (adaptive/nn/dispatch.py): [E, C, D] buffers and one batched einsum; every slot up
  to the capacity is computed, used or not. The expert-parallel path always uses it (its
  all-to-alls exchange fixed-size buffers).
- "ragged": `lax.ragged_dot` over tokens sorted by expert, for accelerators with a grouped-matmul
  kernel (XLA:CPU runs it densely: every expert on every row).

Nothing of size tokens x experts x capacity is built, and no expert sees a token it was not given.

A layer built with `expert_parallel=True` (the config's mesh has `expert` > 1) runs
expert-parallel on the mesh it is traced under (`jax.set_mesh`, as the trainer's steps are):
same results as here with the same `num_groups`, experts sharded, tokens exchanged by
all-to-alls (adaptive/nn/expert_parallel.py). A layer built without it never looks at a mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive.nn import expert_parallel
from adaptive.nn import routing as R
from adaptive.nn.block_dispatch import experts_in_blocks
from adaptive.nn.dispatch import MoEOutput, combine_groups, dispatch_groups, per_group
from adaptive.nn.qweight import operand, product

ROUTERS = ("top_k", "top_p", "expert_choice")
DISPATCHES = ("blocks", "capacity", "ragged")


class MoEFeedForward(nnx.Module):
    """E expert MLPs (D -> F -> D, GELU) behind a router, as a drop-in feed-forward layer.

    The output has no residual: the caller adds x, so a dropped token passes through unchanged.
    """

    def __init__(
        self,
        width: int,
        hidden: int,
        num_experts: int,
        *,
        k: int = 2,
        router: str = "top_k",
        top_p: float = 0.5,
        capacity_factor: float = 1.25,
        eval_capacity_factor: float = 2.0,
        renormalize: bool = True,
        priority: str = "top1",
        jitter: float = 0.0,
        balance_weight: float = 1e-2,
        z_weight: float = 1e-3,
        dropless: bool = False,
        eval_dropless: bool = True,
        dispatch: str = "blocks",
        block_size: int = 128,
        num_groups: int = 1,
        expert_parallel: bool = False,
        rngs: nnx.Rngs,
    ):
        if router not in ROUTERS:
            raise ValueError(f"router {router!r} is not one of {ROUTERS}")
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k} must be in [1, num_experts={num_experts}]")
        if priority not in R.PRIORITIES:
            raise ValueError(f"priority {priority!r} is not one of {R.PRIORITIES}")
        if dispatch not in DISPATCHES:
            raise ValueError(f"dispatch {dispatch!r} is not one of {DISPATCHES}")
        self.num_experts, self.k, self.router_kind, self.top_p = num_experts, k, router, top_p
        # Expert choice: experts pick tokens, so a token may get any number of them; an expert
        # budget (k itself at inference) caps each token at that many (routing.expert_choice);
        # `limit_experts` sets `token_cap`.
        self.token_cap = None
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.renormalize, self.jitter, self.dropless = renormalize, jitter, dropless
        self.eval_dropless, self.dispatch, self.block_size = eval_dropless, dispatch, block_size
        self.priority = priority  # who keeps a slot past capacity (routing.py): "top1" or "own"
        self.balance_weight, self.z_weight = balance_weight, z_weight
        # Tokens are routed in `num_groups` independent groups, each with its own capacity
        # (GShard): with experts sharded over G devices, each device routes its own group.
        self.num_groups = num_groups
        # Experts sharded over the context mesh's `expert` axis when traced under a mesh; with no
        # mesh set (the trainer's abstract first trace, a one-device reader) the code below, which
        # gives the same results with the same groups.
        self.expert_parallel = expert_parallel
        self.router = nnx.Linear(
            width, num_experts, use_bias=False, rngs=rngs, kernel_init=nnx.initializers.normal(0.02)
        )
        init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=0)
        self.w_in = nnx.Param(init(rngs.params(), (num_experts, width, hidden)))
        self.b_in = nnx.Param(jnp.zeros((num_experts, hidden)))
        self.w_out = nnx.Param(init(rngs.params(), (num_experts, hidden, width)))
        self.b_out = nnx.Param(jnp.zeros((num_experts, width)))

    def experts(self, buffer_ExCxD: jax.Array) -> jax.Array:
        def by_expert(equation):  # weight scales [E, 1, out] broadcast over the buffer's slots
            return lambda x, w, acc: jnp.einsum(equation, x, w, preferred_element_type=acc)

        h = product(buffer_ExCxD, operand(self.w_in), by_expert("ecd,edf->ecf")) + self.b_in[...][:, None]
        return product(jax.nn.gelu(h), operand(self.w_out), by_expert("ecf,efd->ecd")) + self.b_out[...][:, None]

    def rows_independent_at_inference(self) -> bool:
        """Whether, at inference, a token's output depends on itself alone: no capacity (nothing it
        could lose to a batch neighbour), token choice, one device, and block dispatch (each row
        computed in a block of >= 8 rows, where XLA:CPU gives every row the same bits whatever the
        others). Then a batch may be split or shrunk without changing any answer."""
        return (
            self.eval_dropless
            and self.router_kind != "expert_choice"
            and not self.expert_parallel
            and self.dispatch == "blocks"
        )

    def route(self, x_TxD: jax.Array, *, train: bool, k_active=None, key: jax.Array | None = None):
        """(routing, router logits, capacity) for a batch of tokens."""
        x_route = x_TxD
        if train and self.jitter > 0 and key is not None:  # Switch's multiplicative input jitter
            x_route = x_TxD * jax.random.uniform(key, x_TxD.shape, x_TxD.dtype, 1 - self.jitter, 1 + self.jitter)
        logits = self.router(x_route)
        cap = self.route_capacity(x_TxD.shape[0], train)  # dropless: every expert can take every token
        if self.router_kind == "expert_choice":
            budget = self.token_cap if k_active is None else k_active
            return R.expert_choice(logits, cap, budget), logits, cap
        options = dict(renormalize=self.renormalize, k_active=k_active, priority=self.priority)
        if self.router_kind == "top_p":
            return R.top_p(logits, self.k, self.top_p, cap, **options), logits, cap
        return R.top_k(logits, self.k, cap, **options), logits, cap

    def __call__(self, x_TxD: jax.Array, *, train: bool = True, k_active=None, key=None) -> MoEOutput:
        mesh = expert_parallel.context_mesh() if self.expert_parallel else None
        if mesh is not None:  # experts sharded on the mesh's `expert` axis, two all-to-alls
            return expert_parallel.forward(self, x_TxD, mesh, train=train, k_active=k_active, key=key)
        num_tokens, width = x_TxD.shape
        groups = self.num_groups
        if num_tokens % groups:
            raise ValueError(f"{num_tokens} tokens do not split into num_groups={groups} equal groups")
        x_GxSxD = x_TxD.reshape(groups, num_tokens // groups, width)
        keys = None if key is None else jax.random.split(key, groups)
        routing, logits, cap = self.route_groups(x_GxSxD, train, k_active, keys)
        if self.dispatch == "blocks":  # kept assignments need no buffer per group: flatten them
            weights = (operand(self.w_in), self.b_in[...], operand(self.w_out), self.b_out[...])
            flat = _flatten_groups(routing, x_GxSxD.shape[1])
            y = experts_in_blocks(x_TxD, flat, weights, self.num_experts, self.block_size)
        elif self.dispatch == "ragged":
            y = self._ragged(x_TxD, _flatten_groups(routing, x_GxSxD.shape[1]))
        else:
            buffers = dispatch_groups(x_GxSxD, routing, self.num_experts, cap)
            y = combine_groups(self.grouped_experts(buffers), routing, x_GxSxD.shape[1])
        return self.summarize(y.reshape(num_tokens, width), routing, logits)

    def route_groups(self, x_GxSxD, train, k_active, keys):
        route = lambda x, kk: self.route(x, train=train, k_active=k_active, key=kk)[:2]  # noqa: E731
        if keys is None:
            routing, logits = per_group(lambda x: route(x, None), x_GxSxD)
        else:
            routing, logits = per_group(route, x_GxSxD, keys)
        return routing, logits, self.route_capacity(x_GxSxD.shape[1], train)

    def route_capacity(self, group_tokens: int, train: bool) -> int:
        """Slots per expert in a group of tokens; dropless routing: every expert can take every
        token (the expert-parallel path exchanges buffers of this size, so it keeps the eval
        capacity factor at inference)."""
        dropless = self.dropless if train else self.eval_dropless and not self.expert_parallel
        if self.router_kind != "expert_choice" and dropless:
            return group_tokens
        factor = self.capacity_factor if train else self.eval_capacity_factor
        return R.capacity(group_tokens, self.num_experts, self.k, factor)

    def grouped_experts(self, buffers_GxExCxD: jax.Array) -> jax.Array:
        """Runs every expert once over all groups' buffers for it (one einsum per layer)."""
        groups, experts, cap, width = buffers_GxExCxD.shape
        by_expert = buffers_GxExCxD.transpose(1, 0, 2, 3).reshape(experts, groups * cap, width)
        out = self.experts(by_expert).reshape(experts, groups, cap, width)
        return out.transpose(1, 0, 2, 3)

    def summarize(self, y_TxD, routing, logits) -> MoEOutput:
        """Aux losses and metrics (means over groups) and experts used per token."""
        aux = self.z_weight * R.router_z_loss(logits)
        if self.router_kind != "expert_choice":
            balance = jax.vmap(lambda r: R.load_balancing_loss(r, self.num_experts))(routing)
            aux = aux + self.balance_weight * balance.mean()
        metrics = jax.tree.map(lambda m: m.mean(0), jax.vmap(lambda r: R.routing_metrics(r, self.num_experts))(routing))
        flat = _flatten_groups(routing, logits.shape[1])
        used = jnp.zeros(y_TxD.shape[0], jnp.int32).at[flat.token_A].add(flat.kept_A.astype(jnp.int32))
        requested = flat.soft_experts_T
        if requested is None:  # top-k and expert choice: a count the router cannot be trained on
            requested = jnp.zeros(y_TxD.shape[0]).at[flat.token_A].add(flat.active_A.astype(jnp.float32))
        return MoEOutput(y_TxD, aux, metrics, used, requested)

    def _ragged(self, x_TxD: jax.Array, routing: R.Routing) -> jax.Array:
        """Dropless: sort assignments by expert and run grouped matmuls with lax.ragged_dot."""
        order = jnp.argsort(jnp.where(routing.kept_A, routing.expert_A, self.num_experts), stable=True)
        tokens, experts = routing.token_A[order], routing.expert_A[order]
        active = routing.kept_A[order]
        sizes = jnp.zeros(self.num_experts, jnp.int32).at[experts].add(active.astype(jnp.int32))
        xs = x_TxD[tokens] * active[:, None]
        # Rows of inactive assignments sit after all groups; ragged_dot leaves them zero.
        grouped = lambda x, w, acc: jax.lax.ragged_dot(x, w, sizes, preferred_element_type=acc)  # noqa: E731
        row_scales = lambda s: s[jnp.clip(experts, 0, self.num_experts - 1), 0]  # noqa: E731  each row's expert's
        pre = product(xs, operand(self.w_in), grouped, row_scales) + _bias_rows(self.b_in[...], experts, active)
        y = product(jax.nn.gelu(pre), operand(self.w_out), grouped, row_scales)
        y = y + _bias_rows(self.b_out[...], experts, active)
        weighted = y * routing.gate_A[order][:, None]
        return jnp.zeros_like(x_TxD).at[tokens].add(weighted)


def limit_experts(model: nnx.Module, k: int | None) -> nnx.Module:
    """A copy of `model` for inference on one device: every MoE layer capped at k experts per
    token (None: its trained k; expert choice, uncapped in training, is capped there too), not
    expert-parallel, and routing each call's tokens as one group,
    since a request batch has any size and the groups a run trained with (a multiple of its
    devices) need not divide it. Static: an executable traced from the copy has buffers and work
    sized for k, so a smaller k saves time. `model` itself is left as it is (the copy shares its
    parameter arrays), so whoever else holds it keeps the model as trained."""
    limited = nnx.clone(model)
    for _, module in limited.iter_modules():
        if isinstance(module, MoEFeedForward):
            module.num_groups = 1
            module.expert_parallel = False
            if k is not None:
                module.k = k
    return cap_tokens_at_k(limited)


def cap_tokens_at_k(model: nnx.Module) -> nnx.Module:
    """`model`, changed in place: each MoE layer's tokens capped at its k, as inference runs it
    (expert choice lets an expert take any token, so a token may get every expert; training
    leaves that so, as the router is defined; token choice takes k anyway)."""
    for _, module in model.iter_modules():
        if isinstance(module, MoEFeedForward):
            module.token_cap = module.k
    return model


def _flatten_groups(routing: R.Routing, group_tokens: int) -> R.Routing:
    """Per-group routings [G, A] as one routing over all tokens (token ids offset by group)."""
    offset = jnp.arange(routing.token_A.shape[0])[:, None] * group_tokens
    flat = routing._replace(token_A=routing.token_A + offset)
    probs = flat.probs_TxE.reshape(-1, flat.probs_TxE.shape[-1])
    return R.Routing(*(f.reshape(-1) for f in flat[:6]), probs, jax.tree.map(lambda f: f.reshape(-1), flat[7]))


def _bias_rows(bias_ExF: jax.Array, experts_A: jax.Array, active_A: jax.Array) -> jax.Array:
    return bias_ExF[jnp.clip(experts_A, 0, bias_ExF.shape[0] - 1)] * active_A[:, None]
