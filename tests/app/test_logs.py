"""Logs: syslog priority prefixes under systemd's journal, JSON that stays JSON (the TFLite
runtime's own stderr lines come through logging), detection of the journal stream."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest

from agent.app.logs import PriorityFormatter, syslog_priority, under_journal
from agent.model.native_stderr import native_stderr_to_logging
from tests.agentproc import AgentProcess, write_config
from tests.broker import Broker, free_port
from tests.fleet.support import agent_config


def test_priorities_are_syslogs() -> None:
    assert [syslog_priority(x) for x in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]
    assert syslog_priority(35) == 4  # in between: the more severe of the two below
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "a\nb", None, None)
    out = PriorityFormatter(logging.Formatter("%(levelname)s %(message)s")).format(record)
    assert out == "<4>WARNING a\n<4>b"  # every line: journald reads lines


def test_under_journal(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w") as f:
        st = os.fstat(f.fileno())
        assert under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f)
        assert not under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f)
        assert under_journal({"INVOCATION_ID": "abc"}, f)  # a unit, stderr not a terminal
        assert not under_journal({}, f)


def test_native_stderr_lines_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="litert")
    with native_stderr_to_logging():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"WARNING: something odd\nno prefix at all")
    got = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "litert"]
    assert got == [
        ("INFO", "Created TensorFlow Lite XNNPACK delegate for CPU."),
        ("WARNING", "something odd"),
        ("WARNING", "no prefix at all"),
    ]
    os.write(2, b"")  # fd 2 is ours again (would raise if it were closed)
    assert os.fstat(2)


_JSON_LINE = re.compile(r"^<(\d)>(\{.*\})$")


@pytest.mark.slow
def test_agent_under_journal_writes_prefixed_json(broker: Broker, tmp_path: Path) -> None:
    """The real agent with ``log_format = "json"`` and its stderr as the journal stream: every
    line is ``<priority>`` + one JSON object — the runtime's XNNPACK line included — and the
    broker warnings carry ``<4>``."""
    port = free_port()  # nothing listens: the link warns
    cfg = agent_config(
        tmp_path, broker, "log-dev", agent={"log_format": "json"}, mqtt={"port": port}
    )
    conf = write_config(tmp_path / "agent.toml", cfg)
    log = tmp_path / "agent.log"
    log.touch()
    st = log.stat()
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "INVOCATION_ID": "test"}
    with AgentProcess(conf, log, env=env) as agent:
        seen: list[str] = []

        def warned() -> bool:
            seen[:] = agent.output().splitlines()
            return any(line.startswith("<4>") for line in seen) and any(
                "XNNPACK" in line for line in seen
            )

        _wait(warned, 30.0)
        agent.terminate()
    lines = [line for line in agent.output().splitlines() if line.strip()]
    records = []
    for line in lines:
        m = _JSON_LINE.match(line)
        assert m, f"not <N>JSON: {line!r}"
        obj = json.loads(m.group(2))
        assert int(m.group(1)) == {"debug": 7, "info": 6, "warning": 4, "error": 3}[obj["level"]]
        records.append(obj)
    xnn = [r for r in records if "XNNPACK" in r["msg"]]
    assert xnn and xnn[0]["logger"] == "litert" and xnn[0]["level"] == "info"
    assert any(r["level"] == "warning" and "cannot connect" in r["msg"] for r in records)


@pytest.mark.slow
def test_agent_without_journal_writes_plain_json(broker: Broker, tmp_path: Path) -> None:
    port = free_port()
    cfg = agent_config(
        tmp_path, broker, "log-dev2", agent={"log_format": "json"}, mqtt={"port": port}
    )
    conf = write_config(tmp_path / "agent.toml", cfg)
    env = {"JOURNAL_STREAM": "", "INVOCATION_ID": ""}
    with AgentProcess(conf, tmp_path / "agent.log", env=env) as agent:
        _wait(lambda: "XNNPACK" in agent.output() and "cannot connect" in agent.output(), 30.0)
        agent.terminate()
    for line in agent.output().splitlines():
        if line.strip():
            assert json.loads(line)["msg"], line  # JSON, no prefix, nothing raw


def _wait(cond: object, timeout: float) -> None:
    import time

    assert callable(cond)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)  # polling a log file: there is no event to await
    raise AssertionError(f"condition not met in {timeout}s")
