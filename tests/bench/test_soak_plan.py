"""The soak's timeline: each component killed once, in the order a lab recovers from, within the bound."""

from __future__ import annotations

import pytest

from soak import plan


def test_default_timeline_kills_each_component_once_control_plane_last() -> None:
    phases = plan.plan()
    assert [p.name for p in phases[:2]] == ["warm-up", "baseline"]
    assert [p.kill for p in phases] == [None, None, "ztunnel-node-1", "node-agent-node-1", "controlplane"]
    assert sum(p.seconds for p in phases) == pytest.approx(plan.DEFAULT_DURATION_S)


def test_the_worst_case_stays_within_the_issues_ten_minutes() -> None:
    """Every recovery taking its whole bound still leaves a minute for lab up and down."""
    assert plan.worst_case_seconds(plan.plan(plan.MAX_DURATION_S)) <= 540
    quick = plan.plan(plan.QUICK_DURATION_S)
    assert plan.worst_case_seconds(quick) == pytest.approx(10 + 20 + 3 * (plan.RECOVERY_BOUND_S + plan.MIN_STEADY_S))


def test_quick_timeline_keeps_a_warm_up() -> None:
    assert plan.plan(plan.QUICK_DURATION_S)[0].seconds == plan.MIN_WARMUP_S


@pytest.mark.parametrize("duration", [0, plan.MIN_DURATION_S - 1, plan.MAX_DURATION_S + 1, 3600])
def test_durations_out_of_bounds_are_refused(duration: float) -> None:
    with pytest.raises(ValueError, match="duration must be within"):
        plan.plan(duration)


def test_a_component_named_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="each component once"):
        plan.plan(120, kills=("controlplane", "controlplane"))
