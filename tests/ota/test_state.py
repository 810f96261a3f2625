"""The persisted state machine: allowed transitions, persistence, the runaway bound, the hook."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest

from agent.errors import UpdateError
from agent.ota.state import (
    ALLOWED,
    MAX_TRANSITIONS,
    PAUSE_ENV,
    RESTING,
    PauseHook,
    Record,
    State,
    StateMachine,
)

HAPPY = [
    State.DOWNLOADING,
    State.VERIFYING,
    State.STAGED,
    State.ACTIVATING,
    State.TRIAL,
    State.ACTIVE,
]


def _at(tmp_path: Path, state: State) -> StateMachine:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(Record(state=state, version="1.0.0").to_json()))
    return StateMachine(path)


def test_happy_path_is_persisted_and_read_back(tmp_path: Path) -> None:
    sm = StateMachine(tmp_path / "state.json")
    assert sm.state is State.IDLE
    sm.transition(State.DOWNLOADING, version="2.0.0", sha256="ab" * 32, source="channel:stable")
    for s in HAPPY[1:]:
        sm.transition(s)
    again = StateMachine(tmp_path / "state.json")
    assert again.record.state is State.ACTIVE
    assert again.record.version == "2.0.0"
    assert again.record.source == "channel:stable"
    assert again.record.transitions == len(HAPPY)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp files left


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(State, State)))
def test_only_the_table_s_transitions_are_allowed(tmp_path: Path, src: State, dst: State) -> None:
    sm = _at(tmp_path, src)
    if dst in ALLOWED[src]:
        assert sm.transition(dst).state is dst
        assert StateMachine(sm.path).state is dst
    else:
        with pytest.raises(UpdateError) as err:
            sm.transition(dst)
        assert err.value.reason == "bad_transition"
        assert StateMachine(sm.path).state is src  # nothing written


def test_a_new_attempt_starts_a_fresh_record(tmp_path: Path) -> None:
    sm = StateMachine(tmp_path / "state.json")
    sm.transition(State.DOWNLOADING, version="2.0.0")
    sm.transition(State.FAILED, reason="hash_mismatch", detail="x")
    rec = sm.transition(State.DOWNLOADING, version="2.0.1")
    assert rec.reason is None and rec.detail is None and rec.transitions == 1


def test_runaway_loops_are_cut_but_can_still_abort(tmp_path: Path) -> None:
    sm = StateMachine(tmp_path / "state.json")
    sm.transition(State.DOWNLOADING, version="2.0.0")
    for s in HAPPY[1:5]:
        sm.transition(s)
    with pytest.raises(UpdateError) as err:
        for _ in range(MAX_TRANSITIONS):
            sm.transition(State.TRIAL)  # a model that crashes the agent at every start
    assert err.value.reason == "runaway"
    assert sm.state is State.TRIAL
    assert sm.transition(State.ROLLED_BACK, reason="runaway").state is State.ROLLED_BACK


def test_resting_states_are_exactly_those_an_attempt_starts_from() -> None:
    for s in State:
        assert (State.DOWNLOADING in ALLOWED[s]) == (s in RESTING)


@pytest.mark.parametrize("content", ["{not json", '{"state": "exploded"}', "[1, 2]"])
def test_an_unreadable_state_file_means_idle(tmp_path: Path, content: str) -> None:
    (tmp_path / "state.json").write_text(content)
    assert StateMachine(tmp_path / "state.json").state is State.IDLE


def test_pause_hook_writes_a_marker_and_blocks_until_stopped(tmp_path: Path) -> None:
    stop = threading.Event()
    hook = PauseHook(tmp_path, stop, {PAUSE_ENV: "staged, trial"})
    hook("verifying")  # not named: returns at once
    assert not hook.marker("verifying").exists()
    t = threading.Thread(target=hook, args=("staged",))
    t.start()
    t.join(0.2)
    assert t.is_alive()  # blocked at the pause point
    assert hook.marker("staged").read_text().strip().isdigit()
    stop.set()
    t.join(5)
    assert not t.is_alive()


def test_pause_hook_is_inert_without_the_variable(tmp_path: Path) -> None:
    hook = PauseHook(tmp_path, threading.Event(), {})
    for s in State:
        hook(s.value)
    assert list(tmp_path.iterdir()) == []
