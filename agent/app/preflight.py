"""One validation: every check the agent runs before it starts, shared with ``check-config``.

``preflight(cfg, load)`` loads the model, lets its package decide (``agent.model.compat``),
validates the pipeline stages against the real tensors, builds the sources the way the
pipeline will (replay files read and shaped, command programs found), and checks TLS files,
the MQTT password, trusted keys and the HTTP token. It collects *every* problem as
``(key path, reason)``. ``Agent.build`` runs it first, and ``edge-agent check-config`` runs the
same function, so both say the same words and a config that ``check-config`` accepts does not
make ``run`` exit 2 or 78.

Problems the configuration must fix (a package conflict, a missing TLS or key file, a runtime
that cannot work here) make ``PreflightError.config`` true: ``run`` exits 78 (EX_CONFIG, not
restarted by systemd); a model or input that cannot be used exits 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agent.config import Config, MqttSource, ReplaySource, read_password
from agent.delivery.mqtt import tls_problems
from agent.errors import (
    ConfigError,
    EdgeAgentError,
    ModelError,
    PackageConflict,
    RuntimeUnavailable,
)
from agent.ingest.sources import SourceContext, build_source
from agent.metrics import Metrics
from agent.model.active import ActiveModel
from agent.model.loading import load_active_model
from agent.model.runtime import numpy_problem
from agent.pipeline.threads import build_stages
from agent.wire.topics import Topics

Loader = Callable[[Config], ActiveModel | None]


@dataclass(frozen=True)
class Problem:
    """One preflight problem: the config key, why, and whether the config must change."""

    key: str
    reason: str
    config: bool
    """True when the configuration must change (exit 78); False: the model or input (exit 2)."""


class PreflightError(ModelError):
    """Start-up checks failed; ``problems`` holds every one of them."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        self.config = any(p.config for p in problems)
        lines = [f"{len(problems)} problem(s)"] + [f"  {p.key}: {p.reason}" for p in problems]
        super().__init__("\n".join(lines))


@dataclass
class Prepared:
    """What start-up runs: the configuration the model decided, and the loaded model."""

    cfg: Config
    active: ActiveModel | None
    """None: no model yet (``model.path = "none"``); the first one comes over OTA."""
    problems: list[Problem] = field(default_factory=list)


def _from(exc: EdgeAgentError, key: str, config: bool = False) -> list[Problem]:
    if isinstance(exc, ConfigError):
        return [Problem(k, r, True) for k, r in exc.problems]
    if isinstance(exc, RuntimeUnavailable):
        return [Problem("model.runtime", str(exc), True)]
    return [Problem(key, str(exc), config)]


def _model(cfg: Config, load: Loader) -> tuple[Config, ActiveModel | None, list[Problem]]:
    problem = numpy_problem(cfg.model.runtime)
    if problem is not None:
        return cfg, None, [Problem("model.runtime", problem, True)]
    try:
        active = load(cfg)
    except EdgeAgentError as exc:
        return cfg, None, _from(exc, "model.path")
    if active is None:
        return cfg, None, []  # awaiting the first model over OTA: nothing to fit yet
    eff = cfg
    if active.manifest is not None:
        from agent.model.compat import check_compatible, resolve  # the manifest models

        try:
            eff = resolve(cfg, active.manifest)
            check_compatible(active.manifest, eff)
        except PackageConflict as exc:
            return cfg, active, _from(exc, "model.path")
        except EdgeAgentError as exc:
            return eff, active, _from(exc, "model.path")
    try:
        build_stages(eff, active, Topics(eff.mqtt.topic_prefix, eff.agent.device_id))
    except EdgeAgentError as exc:
        return eff, active, _from(exc, "model.path")
    return eff, active, []


def _sources(cfg: Config) -> list[Problem]:
    """Build every source the way the pipeline does (a replay file read and shaped, a command's
    program found), without starting it; MQTT sources need the link and are checked by it."""
    problems = []
    ctx = SourceContext(metrics=Metrics())
    for i, src in enumerate(cfg.sources):
        if isinstance(src, MqttSource):
            continue
        key = f"sources[{i}].path" if isinstance(src, ReplaySource) else f"sources[{i}]"
        try:
            build_source(src, ctx)
        except EdgeAgentError as exc:
            problems.append(Problem(key, str(exc), False))
    return problems


def _files(cfg: Config) -> list[Problem]:
    problems = [Problem(k, r, True) for k, r in tls_problems(cfg.mqtt)]
    try:
        read_password(cfg.mqtt)
    except ConfigError as exc:
        problems += _from(exc, "mqtt.password_file")
    if cfg.ota.enabled or cfg.model.path.endswith(".eapkg"):
        from agent.release.signing import load_trusted_keys  # cryptography: ~7 MB, ~25 ms

        try:
            load_trusted_keys(cfg.ota.trusted_keys)
        except ConfigError as exc:
            problems += [Problem(f"ota.trusted_keys ({k})", r, True) for k, r in exc.problems]
    if cfg.http.enabled and cfg.http.token_file is not None:
        from agent.observe.httpapi import read_token

        try:
            read_token(cfg.http)
        except ConfigError as exc:
            problems += _from(exc, "http.token_file")
    return problems


def load_configured(cfg: Config) -> ActiveModel | None:
    """``model.path``'s model, or None when there is none yet (``model.path = "none"``)."""
    return None if cfg.awaiting_model else load_active_model(cfg)


def check(
    cfg: Config, load: Loader = load_configured, *, replay: bool = True
) -> tuple[Config, ActiveModel | None, list[Problem]]:
    """Run every start-up check; the decided configuration, the model and every problem.

    ``replay = False`` leaves the sources to the pipeline (it builds them with the same
    function when it is built).
    """
    eff, active, problems = _model(cfg, load)
    if replay:
        problems += _sources(eff)
    problems += _files(eff)
    return eff, active, problems


def preflight(cfg: Config, load: Loader = load_configured, *, replay: bool = True) -> Prepared:
    """``check``, raising ``PreflightError`` with every problem when there is one."""
    eff, active, problems = check(cfg, load, replay=replay)
    if problems:
        raise PreflightError(problems)
    if active is None and not cfg.awaiting_model:
        raise PreflightError([Problem("model.path", "no model loaded", False)])
    return Prepared(eff, active)
