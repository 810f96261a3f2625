"""Gated promotion says whom it promotes: by device id (the passing devices, nobody who joins
later), or by group only when every device of the group passed."""

from __future__ import annotations

from agent.fleet.shadowgate import plan_promotion, shadow_gate
from agent.fleet.view import DeviceState, ShadowSummary

GOOD = ShadowSummary(version="2", windows=500, agreement=0.99, errors=0)
BAD = ShadowSummary(version="2", windows=500, agreement=0.90, errors=0)


def _fleet() -> list[DeviceState]:
    return [
        DeviceState("a1", model="m", version="1", groups=["a"], shadow=GOOD),
        DeviceState("a2", model="m", version="1", groups=["a"], shadow=GOOD),
        DeviceState("a3", model="m", version="2", groups=["a"]),  # runs it already
        DeviceState("b1", model="m", version="1", groups=["b"], shadow=GOOD),
        DeviceState("b2", model="m", version="1", groups=["b"], shadow=BAD),
        DeviceState("b3", model="m", version="1", groups=["b"]),  # no report
    ]


def _plan(groups: list[str]) -> tuple[bool, list[str], dict[str, str]]:
    fleet = _fleet()
    p = plan_promotion(shadow_gate(fleet, "m", "2", 0.98, 100), fleet, groups)
    return p.by_group, p.promoted, p.left_out


def test_without_groups_the_passing_devices_are_promoted_by_id_and_the_rest_named() -> None:
    by_group, promoted, left_out = _plan([])
    assert not by_group and promoted == ["a1", "a2", "b1"]
    assert set(left_out) == {"b2", "b3"}
    assert "agreement 0.9000 < 0.98" in left_out["b2"] and "no shadow report" in left_out["b3"]


def test_a_group_whose_every_device_passed_is_promoted_by_group() -> None:
    by_group, promoted, left_out = _plan(["a"])
    assert by_group and promoted == ["a1", "a2"]
    assert left_out["b1"] == "not in the groups" and "agreement" in left_out["b2"]


def test_a_group_with_a_failing_device_is_promoted_by_id_only() -> None:
    by_group, promoted, left_out = _plan(["b"])
    assert not by_group and promoted == ["b1"]
    assert set(left_out) >= {"b2", "b3", "a1", "a2"}


def test_the_description_says_who_is_left_out() -> None:
    fleet = _fleet()
    gate = shadow_gate(fleet, "m", "2", 0.98, 100)
    by_id = plan_promotion(gate, fleet, []).describe([])
    assert by_id.startswith("by device id: a1, a2, b1 (3)")
    assert "devices that join later, are not promoted" in by_id
    by_group = plan_promotion(gate, fleet, ["a"]).describe(["a"])
    assert "by group a: every device of it passed (a1, a2)" in by_group
    assert "join it later take it too" in by_group
