"""The development store server (ranges for resumable downloads) and progress output."""

from __future__ import annotations

import io
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from converters.progress import Progress, step
from converters.serve import make_server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    data = bytes(range(256)) * 40
    (tmp_path / "m" / "1.0.0").mkdir(parents=True)
    (tmp_path / "m" / "1.0.0" / "model.tflite").write_bytes(data)
    server = make_server(tmp_path, "127.0.0.1", 0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", data
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def _get(url: str, range_: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Range": range_} if range_ else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), b""


def test_serve_whole_file_and_ranges(served: tuple[str, bytes]) -> None:
    base, data = served
    url = f"{base}/m/1.0.0/model.tflite"
    status, headers, body = _get(url)
    assert status == 200 and body == data and headers["Accept-Ranges"] == "bytes"
    status, headers, body = _get(url, "bytes=1000-")
    assert status == 206 and body == data[1000:]
    assert headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert _get(url, "bytes=10-19")[2] == data[10:20]
    assert _get(url, "bytes=-5")[2] == data[-5:]
    assert _get(url, f"bytes={len(data)}-")[0] == 416
    assert _get(f"{base}/m/")[0] == 404  # no listings
    assert _get(f"{base}/nope")[0] == 404


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal() -> None:
    out = _Tty()
    with Progress("verifying", total=4, stream=out) as p:
        for _ in range(4):
            p.advance()
    text = out.getvalue()
    assert "verifying: 100%" in text and "4/4" in text and text.endswith("\n")
    assert "<00:00" in text  # tqdm's ETA
    out = _Tty()
    with step("converting", stream=out):
        pass
    assert "converting" in out.getvalue() and out.getvalue().endswith("done\n")


def test_progress_logs_plain_lines_when_not_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    caplog.set_level(logging.INFO, logger="converters.progress")
    with Progress("uploading", total=2, stream=out) as p:
        p.advance(2)
    with pytest.raises(RuntimeError), step("converting", stream=out):
        raise RuntimeError("boom")
    assert out.getvalue() == ""
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "uploading: started (2 items)"
    assert messages[1].startswith("uploading: done in")
    assert messages[3].startswith("converting: failed after")
