"""In-batch compaction: the shrinking-batch loop gives the outputs of the whole-batch loop, steps
exactly and logits to float32 rounding (bitwise on some CPUs, not all: `assert_as_whole`)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive import config as config_lib
from adaptive.nn.compaction import REDUCTION_KERNEL_SWITCH, bucket_sizes, smallest_bucket, while_compacting
from adaptive.nn.models import build_model
from tests.helpers import ROOT

CAP, BATCH, N_IN = 8, 32, 12
VARIANTS = [
    ("mlp", "act", False, {}),
    ("mlp", "early_exit", False, {"exit_threshold": 2.0}),  # never confident: halts at its budget
    ("mlp", "pondernet", False, {}),
    ("rnn", "act", True, {}),
    ("rnn", "pondernet", True, {"pondernet_inference": "sample"}),
    ("transformer", "act", True, {}),  # every position halts on its own
    ("transformer", "early_exit", True, {"exit_threshold": 2.0}),
    ("mlp", "act", False, {"moe": True}),  # dropless top-2 experts: each row routed on its own
    ("transformer", "act", True, {"moe": True}),
]


class Spec:
    input_shape = (N_IN,)
    num_classes = 3


@functools.cache
def model_of(kind: str, policy: str, shared: bool, halting: tuple = (), hidden: int = 64, cap: int = CAP):
    graphdef, params = built(kind, policy, shared, halting, hidden, cap)
    infer = jax.jit(
        lambda p, x, b, compact: nnx.merge(graphdef, p).infer(x, b, compact=compact), static_argnames="compact"
    )
    return nnx.to_pure_dict(params), infer


def built(kind: str, policy: str, shared: bool, halting: tuple = (), hidden: int = 64, cap: int = CAP):
    halting = dict(halting)
    moe = ["--config.moe.enabled=true", "--config.moe.num_experts=4"] if halting.pop("moe", False) else []
    cfg = config_lib.load(
        f"{ROOT}/configs/parity.py",
        [
            f"--config.model.kind={kind}",
            f"--config.halting.policy={policy}",
            f"--config.model.hidden={hidden}",
            f"--config.halting.max_steps={cap}",
            f"--config.model.share_weights={shared}",
            *moe,
        ],
    )
    cfg = dataclasses.replace(cfg, halting=dataclasses.replace(cfg.halting, **halting))
    return nnx.split(build_model(cfg, Spec), nnx.Param)


def random_params(params: dict, seed: int, halt_bias: float, scale: float = 0.5) -> dict:
    """Random parameters; the halting bias sets how early rows tend to halt."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noise = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    out = jax.tree.unflatten(tree, noise)
    if "halt_unit" in out:
        out["halt_unit"]["bias"] = jnp.full_like(out["halt_unit"]["bias"], halt_bias)
    return out


def assert_as_whole(params, infer, x, budget, whole, compacted) -> None:
    """The compacted loop's steps are the whole batch's, and its logits theirs to float32
    rounding: bitwise on some CPUs, a few logits off in the last bits on others
    (experiments/design_measurements.md)."""
    np.testing.assert_array_equal(compacted.steps_B, whole.steps_B)
    np.testing.assert_allclose(compacted.logits_BxC, whole.logits_BxC, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind, policy, shared, halting", VARIANTS)
@pytest.mark.parametrize("seed, halt_bias", [(0, -1.5), (2, -1e4)])
def test_compacted_inference_matches_the_whole_batch_loop(kind, policy, shared, halting, seed, halt_bias):
    params, infer = model_of(kind, policy, shared, tuple(halting.items()))
    params = random_params(params, seed, halt_bias)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, N_IN)).astype(np.float32)
    budget = rng.integers(1, CAP + 1, BATCH).astype(np.int32)  # mixed depths: the batch compacts
    whole, compacted = infer(params, x, budget, False), infer(params, x, budget, True)
    assert len(set(np.asarray(whole.steps_B).tolist())) > 1, "the rows must halt at different steps"
    assert_as_whole(params, infer, x, budget, whole, compacted)


# Models whose rows changed bits when compacted before the bucket floor and the halting unit's
# rewrite. Their reductions over features run at or above XLA:CPU's reduction-kernel switch in the
# whole batch (256 x 32 rows >= 4096 elements) and would run below it in buckets under the floor,
# or (width 64) below it throughout. A cap of 20 takes the chain through the buckets, and small
# weights keep halting probabilities off 0 and 1 (saturated, as with `random_params`' default
# scale, they hide the halting unit's bits). Without the floor the first five cases fail; with the
# unit as a one-column matmul the ACT cases on MLPs and the RNN do.
WIDE = [
    ("mlp", "act", 256, 0),
    ("rnn", "act", 256, 1),  # the halting unit is the step's only reduction
    ("transformer", "act", 32, 5),  # 12 positions x 32: its norms need 11 rows
    ("mlp", "pondernet", 256, 2),
    ("mlp", "early_exit", 256, 3),  # never confident: each row runs to its budget
    ("mlp", "act", 512, 4),
    ("mlp", "act", 64, 6),  # below the switch throughout: only the halting unit matters
]


@pytest.mark.parametrize("kind, policy, hidden, seed", WIDE)
def test_compaction_keeps_every_rows_bits_at_widths_across_the_reduction_kernel_switch(kind, policy, hidden, seed):
    halting = (("exit_threshold", 2.0),) if policy == "early_exit" else ()
    params, infer = model_of(kind, policy, True, halting, hidden=hidden, cap=20)
    params = random_params(params, seed, -3.0, scale=0.05)  # wide layers: small weights, rows halt late
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, N_IN)).astype(np.float32)
    budget = rng.integers(1, 21, BATCH).astype(np.int32)
    whole, compacted = infer(params, x, budget, False), infer(params, x, budget, True)
    assert max(np.asarray(whole.steps_B)) > 12, "some rows must reach the small buckets"
    assert_as_whole(params, infer, x, budget, whole, compacted)


def test_a_model_whose_every_bucket_would_cross_the_switch_runs_whole():
    model = nnx.merge(*built("mlp", "act", True, hidden=128, cap=20))
    assert model.compaction_buckets(BATCH) == (BATCH,)  # 128 x 32 rows: the whole batch is at the switch
    assert model.compaction_buckets(64)[-1] == 32  # 64 rows: buckets down to 32 stay above it
    assert nnx.merge(*built("mlp", "act", True, hidden=64, cap=20)).compaction_buckets(BATCH)[-1] == 8


def test_the_smallest_bucket_keeps_each_reduction_on_the_whole_batchs_side_of_the_kernel_switch():
    assert smallest_bucket(32) == 8 and smallest_bucket(32, (64,)) == 8  # 2048 elements: below throughout
    assert smallest_bucket(32, (128,)) == 32  # 4096: the whole batch is at the switch, every bucket below
    assert smallest_bucket(32, (256,)) == 16 and smallest_bucket(64, (512, 10)) == 8
    assert smallest_bucket(32, (256, 128)) == 32  # the narrowest reduction above the switch decides
    for batch, n in [(32, 256), (64, 100), (500, 10)]:
        floor = smallest_bucket(batch, (n,))
        assert floor * n >= REDUCTION_KERNEL_SWITCH and (floor - 1) * n < REDUCTION_KERNEL_SWITCH
    assert bucket_sizes(32, smallest=smallest_bucket(32, (256,))) == (32, 30, 27, 24, 22, 19, 16)


def test_bucket_sizes_shrink_evenly_down_to_eight_rows_and_a_small_batch_runs_whole():
    assert bucket_sizes(32) == (32, 28, 24, 20, 16, 12, 8)
    assert bucket_sizes(1000) == (1000, 835, 670, 504, 339, 174, 8)
    assert bucket_sizes(12) == (12, 11, 10, 9, 8)
    assert bucket_sizes(32, count=3) == (32, 20, 8)
    assert bucket_sizes(9) == (9, 8)
    assert bucket_sizes(8) == (8,) and bucket_sizes(1) == (1,) and bucket_sizes(32, count=1) == (32,)
    with pytest.raises(ValueError, match="at least one bucket"):
        bucket_sizes(32, count=0)


def test_rows_are_scattered_back_in_order_and_each_runs_its_own_steps():
    """A toy loop: row i counts up to its own limit; the chain must stop each row there."""
    limits = jnp.asarray([5, 1, 7, 2, 2, 8, 3, 1], jnp.int32)
    rows = {"count": jnp.zeros(8, jnp.int32), "limit": limits, "id": jnp.arange(8)}

    def body(t, rows):
        running = rows["count"] < rows["limit"]
        return {**rows, "count": rows["count"] + running}

    out = while_compacting(body, rows, cap=10, active=lambda r: r["count"] < r["limit"], sizes=(8, 4, 2))
    np.testing.assert_array_equal(out["count"], limits)
    np.testing.assert_array_equal(out["id"], np.arange(8))


@pytest.mark.parametrize(
    "moe, compacts",
    [
        (["--config.moe.eval_dropless=false"], False),  # capacity: tokens compete for slots
        (["--config.moe.router=expert_choice"], False),  # experts pick tokens from the whole batch
        (["--config.moe.dispatch=ragged"], False),  # not shown to match the whole batch
        ([], True),  # dropless top-k in blocks (the default): each row routed on its own
    ],
)
def test_a_moe_model_compacts_only_when_its_rows_are_independent(moe, compacts):
    cfg = config_lib.load(
        f"{ROOT}/configs/parity.py",
        [
            "--config.model.kind=mlp",
            "--config.model.hidden=16",
            f"--config.halting.max_steps={CAP}",
            "--config.moe.enabled=True",
            "--config.moe.num_experts=4",
            "--config.moe.k=2",
            *moe,
        ],
    )
    graphdef, params = nnx.split(build_model(cfg, Spec), nnx.Param)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((BATCH, N_IN)), jnp.float32)
    budget = jnp.arange(BATCH, dtype=jnp.int32) % CAP + 1
    loops = lambda **kw: (  # noqa: E731  (block dispatch adds loops of its own: compare)
        jax.jit(lambda p: nnx.merge(graphdef, p).infer(x, budget, **kw))
        .lower(params)
        .as_text()
        .count("stablehlo.while")
    )
    assert (loops() > loops(compact=False)) == compacts
    assert nnx.merge(graphdef, params).compacts_at_inference() == compacts  # what export asks
