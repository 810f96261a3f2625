"""Promotion gated on the field: which devices' shadow reports pass (``edge-fleet promote
--min-agreement --min-windows``), and which devices drift (``edge-fleet drift``)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from agent.fleet.view import DeviceState


@dataclass
class GateResult:
    """Devices whose shadow report passes the promotion gate, and why the others do not."""

    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Device -> why its report does not pass (or that it has none for the version)."""


def shadow_gate(
    devices: list[DeviceState],
    model: str,
    version: str,
    min_agreement: float,
    min_windows: int,
) -> GateResult:
    """Judge every device of ``model`` that reports a shadow or runs ``model``."""
    out = GateResult()
    for d in devices:
        if d.model is not None and d.model != model:
            continue
        s = d.shadow
        if s is None or s.version != version:
            if d.version == version:
                continue  # runs it already
            if s is not None or d.model == model:
                out.failed[d.device] = f"no shadow report for {version}" + (
                    f" (shadows {s.version})" if s else ""
                )
            continue
        why = s.passes(min_agreement, min_windows)
        if why is None:
            out.passed.append(d.device)
        else:
            out.failed[d.device] = why
    return out


@dataclass
class Promotion:
    """Whom a gated promotion announces the version to, said out loud (``edge-fleet promote``).

    By id (``devices``): the devices whose shadow report passed, named in the announcement's
    ``targets.devices``: a device without a passing report, or one that joins later, is not
    included (promote again once its report passes). By group (``groups``): only when
    ``--group`` is given and every device of those groups that reported passed; then the
    announcement names the groups, and devices that join them later take the version too."""

    by_group: bool
    promoted: list[str]
    """The devices that take it now."""
    left_out: dict[str, str]
    """Device -> why it is not promoted."""

    def describe(self, groups: list[str]) -> str:
        if self.by_group:
            return (
                f"by group {', '.join(groups)}: every device of it passed "
                f"({', '.join(self.promoted) or 'none yet'}); devices that join it later take "
                "it too"
            )
        return (
            f"by device id: {', '.join(self.promoted)} ({len(self.promoted)}); devices without a "
            "passing shadow report, and devices that join later, are not promoted (promote "
            "again to add them)"
        )


def plan_promotion(gate: GateResult, devices: list[DeviceState], groups: list[str]) -> Promotion:
    """By group when ``groups`` are given and none of their devices failed the gate, else by
    the ids of the passing devices (of ``groups``, when given)."""
    if not groups:
        return Promotion(False, sorted(gate.passed), dict(gate.failed))
    members = {d.device for d in devices if set(d.groups) & set(groups)}
    passed = sorted(d for d in gate.passed if d in members)
    left_out = {d: why for d, why in gate.failed.items()}
    left_out |= {d: "not in the groups" for d in gate.passed if d not in members}
    in_groups_failed = [d for d in gate.failed if d in members]
    return Promotion(not in_groups_failed and bool(passed), passed, left_out)


def drifting(devices: list[DeviceState], threshold: float | None) -> dict[str, list[DeviceState]]:
    """Devices whose drift alert is raised (or whose score reaches ``threshold``), by
    ``model version``."""
    groups: dict[str, list[DeviceState]] = defaultdict(list)
    for d in devices:
        over = d.drift_alert or (
            threshold is not None and d.drift_score is not None and d.drift_score >= threshold
        )
        if over:
            groups[f"{d.model or '?'} {d.version or '?'}"].append(d)
    return dict(sorted(groups.items()))


def shadows_reported(devices: list[DeviceState]) -> bool:
    """Every online device whose OTA state says ``shadow`` has its shadow report in."""
    return all(
        d.shadow is not None
        for d in devices
        if d.online and d.ota is not None and d.ota.state == "shadow"
    )
