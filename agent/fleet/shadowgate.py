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
