"""The generation server's degradation ladder: rungs from the artifact, step times learned from
steps, the least important slots degraded first, and routing of waiting requests."""

from __future__ import annotations

import pytest

from adaptive.serving.lm_controller import LMController, StepTime, ladder

META = {
    "caps": {"layers": 4, "experts_per_token": 2},
    "exit_threshold": {
        "calibrated": {
            "tested": [
                {"threshold": 0.8, "disagreement": 0.05, "blocks": 2.5},
                {"threshold": 0.9, "disagreement": 0.02, "blocks": 3.0},
            ]
        }
    },
}


def _controller(policy="adaptive", tpot_ms=10.0, ttft_ms=100.0, ms_per_block=1.0):
    controller = LMController(ladder(META), tpot_ms=tpot_ms, ttft_ms=ttft_ms, policy=policy)
    for blocks in (4, 8, 12):
        controller.step_time.observe(blocks, ms_per_block * blocks)
    return controller


def test_the_ladder_goes_from_full_depth_through_the_calibrated_thresholds_to_fewer_experts():
    rungs = ladder(META)
    assert [(r.threshold, r.experts) for r in rungs] == [(2.0, 2), (0.9, 2), (0.8, 2), (0.8, 1)]
    assert [r.agreement for r in rungs] == [1.0, 0.98, 0.95, None]
    assert [r.blocks for r in ladder({"caps": {"layers": 3, "experts_per_token": 1}})] == [3.0]


def test_step_times_are_a_line_in_the_blocks_run():
    line = StepTime()
    assert line.predict(5) is None
    line.observe(10, 7.0)
    assert line.predict(20) == pytest.approx(14.0)  # one load seen: proportional
    for blocks in (4, 8, 16):
        line.observe(blocks, 2.0 + 0.5 * blocks)
    assert line.predict(12) == pytest.approx(8.0, rel=0.05)


def test_the_least_important_youngest_slots_degrade_first_and_only_as_far_as_needed():
    controller = _controller(tpot_ms=10.0)  # 1 ms a block: 3 slots at full depth take 12 ms
    slots = [(0, 0, 1.0, 0), (1, 5, 1.0, 0), (2, 5, 2.0, 0)]  # (slot, priority, joined at, own rung)
    plan = controller.plan_step(slots)
    assert plan[0] == 0 and plan[2] >= plan[1] and controller.predicted_step_ms(list(plan.values())) <= 10
    assert _controller(policy="static", tpot_ms=10.0).plan_step(slots) == {0: 0, 1: 0, 2: 0}
    tight = _controller(tpot_ms=0.1).plan_step(slots)
    assert tight == {0: 3, 1: 3, 2: 3}  # nothing left to give: every slot at the loosest rung
    assert _controller(tpot_ms=10.0).plan_step(slots, other_ms=5.0)[0] > 0  # a fallback's step counts


def test_a_request_starts_at_the_loosest_rung_that_changes_nothing_for_it():
    controller = _controller()
    assert controller.start_rung(2.0) == 0 and controller.start_rung(0.95) == 0
    assert controller.start_rung(0.85) == 1 and controller.start_rung(0.5) == 2


def test_waiting_requests_go_to_a_free_slot_the_fallback_or_away():
    def route(policy, **state):
        return _controller(policy=policy).route(**{"occupancy": 1, "fallback_free": False, **state})

    assert route("adaptive", primary_free=True, wait_ms=0.0) == "primary"
    assert route("adaptive", primary_free=False, fallback_free=True, wait_ms=500.0) == "fallback"
    assert route("adaptive", primary_free=False, wait_ms=500.0) == "reject"
    assert route("adaptive", primary_free=False, wait_ms=50.0) == "wait"
    assert route("shed", primary_free=False, fallback_free=True, wait_ms=500.0) == "reject"
    assert route("static", primary_free=False, wait_ms=500.0) == "wait"
    # a free slot the SLA cannot afford even at the loosest rungs: the fallback takes the request
    assert route("adaptive", primary_free=True, occupancy=40, fallback_free=True, wait_ms=0.0) == "fallback"
    with pytest.raises(ValueError, match="policy 'fast' is not one of adaptive, static, shed"):
        LMController(ladder(META), tpot_ms=1, ttft_ms=1, policy="fast")


def test_free_slots_admit_waiting_requests_only_while_each_keeps_steps_within_the_tpot():
    # 1 ms a block, 2.5 blocks a sequence at the loosest rung: 4 sequences take 10 ms a step, 5
    # take 12.5 ms, past the 10 ms TPOT
    controller = _controller(tpot_ms=10.0)
    loosest = controller.blocks(len(controller.rungs) - 1)
    fits = max(n for n in range(1, 10) if n * loosest <= 10.0)
    assert fits == 4
    assert controller.admits(free=8, occupancy=0) == fits  # the first of an idle server is always taken
    assert controller.admits(free=8, occupancy=fits) == 0 and controller.admits(free=1, occupancy=0) == 1
    assert controller.admits(free=8, occupancy=fits - 1) == 1
    assert _controller(policy="static", tpot_ms=10.0).admits(free=8, occupancy=5) == 8  # static: every slot
