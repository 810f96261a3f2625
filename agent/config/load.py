"""Loading a config: TOML file or embedded defaults, environment overrides, relative paths.

``load_config`` collects *every* problem with its key path (``mqtt.tls.ca_file: ...``) into one
``ConfigError``. Environment overrides use ``EDGE_AGENT__<TABLE>__<KEY>`` (double underscore
between levels, case-insensitive, list items by index: ``EDGE_AGENT__SOURCES__0__RATE_HZ=25``).
Values are read as TOML literals when they parse (``25``, ``true``, ``["a","b"]``) and as plain
strings otherwise. Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from agent.config.profiles import profile_problems
from agent.config.schema import NO_MODEL, Config, MqttSection, PostprocessConfig, SourceConfig
from agent.errors import ConfigError

ENV_PREFIX = "EDGE_AGENT__"


def _type_tags() -> frozenset[str]:
    """The ``type`` values of the tagged unions: pydantic puts them in error locations."""
    tags: set[str] = set()
    for union in (SourceConfig, PostprocessConfig):
        for member in get_args(get_args(union)[0]):
            tags.update(get_args(member.model_fields["type"].annotation))
    return frozenset(tags)


_TYPE_TAGS = _type_tags()


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS and (out.endswith("]") or out.endswith("postprocess")):
            continue  # discriminator tag pydantic adds to the location
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env_overrides(data: dict[str, Any], environ: dict[str, str]) -> list[tuple[str, str]]:
    """Apply ``EDGE_AGENT__A__B=value`` overrides to ``data`` in place; return problems."""
    problems: list[tuple[str, str]] = []
    for key in sorted(environ):
        if not key.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node: Any = data
        path = ""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    problems.append((f"{key}", f"{path}[{part}] is not an existing list item"))
                    break
                idx = int(part)
                path += f"[{idx}]"
                if last:
                    node[idx] = _parse_env_value(environ[key])
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if part.isdigit():
                    problems.append(
                        (key, f"{path}[{part}]: list items can be overridden, not created")
                    )
                    break
                path += f".{part}" if path else part
                if last:
                    node[part] = _parse_env_value(environ[key])
                else:
                    node = node.setdefault(part, {})
            else:
                problems.append((key, f"{path} is not a table"))
                break
    return problems


def _is_path_field(info: FieldInfo) -> bool:
    """A field holding a filesystem path: typed ``Path`` (alone, optional or in a list), or a
    string field marked ``json_schema_extra={"path": True}`` (``model.path``: also ``builtin:``)."""
    extra = info.json_schema_extra
    if isinstance(extra, dict) and "path" in extra:
        return extra["path"] is True  # "credential": resolved when read (read_password)
    ann = info.annotation
    return ann is Path or Path in get_args(ann) or any(Path in get_args(a) for a in get_args(ann))


def _resolve_paths(obj: BaseModel, base: Path) -> BaseModel:
    """Make every relative path field (found from the schema) relative to ``base``.

    ``mqtt.password_file`` is resolved when it is read (``read_password``): in
    ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``) first, then in ``base``.
    """

    def fix(p: Any) -> Any:
        if isinstance(p, list):
            return [fix(x) for x in p]
        if isinstance(p, str):
            if p.startswith("builtin:") or p == NO_MODEL or Path(p).is_absolute():
                return p
            return str(base / p)
        if not isinstance(p, Path) or p.is_absolute():
            return p
        return base / p

    if isinstance(obj, MqttSection):
        obj._config_dir = base
    update: dict[str, Any] = {}
    for name, info in type(obj).model_fields.items():
        value = getattr(obj, name)
        if isinstance(value, BaseModel):
            update[name] = _resolve_paths(value, base)
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            update[name] = [_resolve_paths(v, base) for v in value]
        elif _is_path_field(info) and value is not None:
            update[name] = fix(value)
    return obj.model_copy(update=update)


def _apply_state_directory(cfg: Config, environ: dict[str, str]) -> Config:
    """systemd's ``StateDirectory=`` wins over ``agent.state_dir``."""
    state_dir = environ.get("STATE_DIRECTORY")
    if not state_dir:
        return cfg
    agent = cfg.agent.model_copy(update={"state_dir": Path(state_dir)})
    return cfg.model_copy(update={"agent": agent})


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a config mapping, reporting every problem with its key path."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            problems.append((_loc_to_path(tuple(err["loc"])), msg))
        raise ConfigError(problems, source) from None
    platform = profile_problems(cfg)
    if platform:
        raise ConfigError(platform, source)
    return cfg


def load_config(path: Path | None, environ: dict[str, str] | None = None) -> Config:
    """Read ``path`` (or the embedded defaults when None), apply env overrides, validate."""
    environ = dict(os.environ) if environ is None else environ
    data: dict[str, Any] = {}
    base = Path.cwd()
    source = "embedded defaults"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([("(file)", f"{path} does not exist")], source) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([("(file)", f"cannot read {path}: {exc}")], source) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([("(syntax)", f"not valid TOML: {exc}")], source) from None
        base = path.resolve().parent
    problems = apply_env_overrides(data, environ)
    if problems:
        raise ConfigError(problems, source)
    resolved = _resolve_paths(parse_config(data, source), base)
    assert isinstance(resolved, Config)
    return _apply_state_directory(resolved, environ)


def read_password(cfg: MqttSection, environ: dict[str, str] | None = None) -> str | None:
    """The MQTT password from its file (systemd credentials first) or environment variable."""
    environ = dict(os.environ) if environ is None else environ
    if cfg.password_env:
        if cfg.password_env not in environ:
            raise ConfigError(
                [("mqtt.password_env", f"environment variable {cfg.password_env} is not set")]
            )
        return environ[cfg.password_env]
    if cfg.password_file:
        candidates = [cfg.password_file]
        if not cfg.password_file.is_absolute():
            candidates = [
                Path(d) / cfg.password_file
                for d in (environ.get("CREDENTIALS_DIRECTORY"), cfg.config_dir or Path.cwd())
                if d
            ]
        for cand in candidates:
            try:
                return cand.read_text(encoding="utf-8").strip()
            except OSError:
                continue
        raise ConfigError([("mqtt.password_file", f"cannot read {cfg.password_file}")])
    return None
