"""agent.wire loads its names on first use and builds each payload model on first use:
every name must still resolve, and every model must build (a broken schema must fail here,
not the first time a device sends that payload)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import agent.wire
from agent.wire.base import Wire


def _wire_models() -> list[type[Wire]]:
    for info in pkgutil.iter_modules(agent.wire.__path__):
        importlib.import_module(f"agent.wire.{info.name}")
    seen: list[type[Wire]] = []
    todo = list(Wire.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("agent.wire.") and cls not in seen:
            seen.append(cls)
        todo += cls.__subclasses__()
    return seen


def test_every_exported_name_resolves_to_its_module() -> None:
    for name in agent.wire.__all__:
        value = getattr(agent.wire, name)
        owner = getattr(value, "__module__", None)
        if owner is not None and isinstance(value, type):
            assert owner.startswith("agent.wire."), (name, owner)
    with pytest.raises(AttributeError):
        _ = agent.wire.NoSuchPayload


@pytest.mark.parametrize("model", _wire_models(), ids=lambda m: m.__name__)
def test_every_payload_model_builds(model: type[Wire]) -> None:
    model.model_rebuild(force=True)
    assert model.__pydantic_complete__
    assert model.model_json_schema()["type"] == "object"
