"""Continuous batching: requests join and leave fixed decode slots, each under its own limits,
generating what the whole-generation decoder does, with nothing recompiled."""

from __future__ import annotations

import numpy as np
import pytest

from adaptive.inference.generate import Decoder
from adaptive.inference.slots import SlotDecoder
from adaptive.serving.lm_engine import LMEngine
from tests.test_generate import NEW, PROMPTS, _decoder


def _run_through_slots(engine: LMEngine, prompts, limits: list[dict]) -> list[list[int]]:
    """Every request through the engine's slots, joining as slots free (more requests than
    slots: some join mid-way through others' generation); each one's tokens."""
    tokens = {i: [] for i in range(len(prompts))}
    owner, waiting = {}, list(range(len(prompts)))
    while waiting or engine.in_use:
        while waiting and engine.free:
            i = waiting.pop(0)
            first = engine.join(prompts[i], engine.limits(**limits[i]))
            tokens[i].append(first.token)
            if first.stop == "running":
                owner[first.slot] = i
        for made in engine.step():
            if made.token >= 0:
                tokens[owner[made.slot]].append(made.token)
    return [tokens[i] for i in range(len(prompts))]


@pytest.fixture(scope="module")
def decoder():
    return _decoder(["--config.lm.exits=true", "--config.moe.enabled=true", "--config.moe.k=2"])


def test_slots_generate_what_the_decoder_does_with_requests_joining_mid_way(decoder):
    slots = SlotDecoder.of(decoder, 2)
    engine = LMEngine(slots)
    requests = [
        dict(threshold=0.5, max_new_tokens=3),
        dict(layer_cap=2, expert_cap=1, temperature=1.0, seed=7),
        dict(flops_budget=3e5, threshold=0.3),
        dict(max_new_tokens=NEW, temperature=0.8, top_p=0.9, seed=3),
        dict(threshold=0.6, expert_cap=1),
    ]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(requests))]
    got = _run_through_slots(engine, prompts, requests)
    for prompt, request, tokens in zip(prompts, requests, got, strict=True):
        want = decoder([prompt], decoder.limits(1, **request))
        assert tokens == np.asarray(want.tokens_BxM[0, : int(want.count_B[0])]).tolist(), request
    assert any(0 < len(t) < NEW for t in got)  # some ended early (a cap, a budget): slots were reused
    again = _run_through_slots(engine, prompts[::-1], requests[::-1])  # other orders, other slots
    assert again == got[::-1]
    assert slots.traces == {"prefill": 1, "step": 1}
    assert engine.in_use == 0 and sorted(engine.free) == [0, 1]


def test_a_prompt_that_does_not_fit_is_refused_and_the_slot_kept(decoder):
    engine = LMEngine(SlotDecoder.of(decoder, 1))
    with pytest.raises(ValueError, match="a prompt is 1 to 8 tokens"):
        engine.join(np.arange(20), engine.limits())
    with pytest.raises(ValueError, match="threshold=nan"):
        engine.limits(threshold=float("nan"))
    assert engine.free == [0]


def test_a_sequence_that_leaves_frees_its_slot_for_the_next(decoder):
    engine = LMEngine(SlotDecoder.of(decoder, 1))
    first = engine.join(PROMPTS[0], engine.limits(threshold=2.0))
    engine.step()
    assert engine.in_use == 1 and engine.tokens_left() == [NEW - 2]
    engine.leave(first.slot)  # its client went away mid-generation
    assert engine.in_use == 0 and engine.free == [0] and engine.step() == []
    got = _run_through_slots(engine, [PROMPTS[1]], [dict(threshold=0.5)])
    want = decoder([PROMPTS[1]], decoder.limits(1, threshold=0.5))
    assert got[0] == np.asarray(want.tokens_BxM[0, : int(want.count_B[0])]).tolist()


def test_a_step_degrades_the_slots_it_is_told_to_and_no_others(decoder):
    slots = SlotDecoder.of(decoder, 2)
    runs = {}
    for name, threshold_S, expert_cap_S in [
        ("none", None, None),
        ("nan", [np.nan, np.nan], None),  # NaN degrades nothing
        ("slot 1", [2.0, 0.0], [2, 1]),  # slot 1 exits at its first block, with one expert
    ]:
        engine = LMEngine(slots)
        for prompt in PROMPTS[:2]:
            engine.join(prompt, engine.limits(max_new_tokens=NEW, threshold=2.0))
        made = [engine.step(threshold_S, expert_cap_S) for _ in range(4)]
        runs[name] = [[(t.token, t.layers, t.experts) for t in step] for step in made]
    assert runs["nan"] == runs["none"]
    for step_none, step_degraded in zip(runs["none"], runs["slot 1"], strict=True):
        assert step_degraded[0] == step_none[0]  # slot 0 untouched
        assert step_degraded[1][1] == 1 and step_degraded[1][2] <= 1 < step_none[1][1]
    assert slots.traces["step"] == 1


def test_slots_whose_caches_cannot_fit_the_device_are_refused_in_one_line(decoder):
    with pytest.raises(
        ValueError, match=r"the key/value cache of 1000000000 sequence\(s\) takes [\d,.]+ GiB and .*; the device has"
    ):
        SlotDecoder.of(decoder, 10**9)
    with pytest.raises(ValueError, match=r"cache of 1000000000 sequence\(s\)"):
        decoder.limits(10**9)  # a generation call of that many sequences, likewise
    # a prompt whose attention at prefill would not fit (it grows with the prompt's square)
    with pytest.raises(ValueError, match=r"their prompts' attention at prefill [\d,.]+ GiB; the device has"):
        Decoder(decoder.graphdef, decoder.params, decoder.flops, prompt_capacity=400_000, new_capacity=1)
