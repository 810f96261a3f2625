"""Downloads over a real HTTP server: resume, limits, faults, deadline, bandwidth cap."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from agent.errors import UpdateError
from agent.ota.download import DownloadSettings, HttpFetcher, TokenBucket
from tests.ota.httpserver import FileServer

DATA = os.urandom(300 * 1024 + 7)
SHA = hashlib.sha256(DATA).hexdigest()
FAST = DownloadSettings(timeout_s=20, retries=3, backoff_min_s=0.01, backoff_max_s=0.05)


def fetch(url: str, part: Path, settings: DownloadSettings = FAST, **kw: object) -> bytes:
    return HttpFetcher(settings).fetch(url, len(DATA), SHA, part, **kw)  # type: ignore[arg-type]


def reason(url: str, part: Path, settings: DownloadSettings = FAST) -> str:
    with pytest.raises(UpdateError) as err:
        fetch(url, part, settings)
    return err.value.reason


def test_plain_download_with_progress(http: FileServer, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    data = fetch(
        http.add("m.tflite", DATA),
        tmp_path / "dl" / "x.part",
        progress=lambda d, t: seen.append((d, t)),
    )
    assert data == DATA
    assert seen[-1] == (len(DATA), len(DATA)) and len(seen) > 1
    assert http.ranges("m.tflite") == [None]


def test_a_cut_connection_resumes_with_range(http: FileServer, tmp_path: Path) -> None:
    url = http.add("m.tflite", DATA, "cut_once")
    assert fetch(url, tmp_path / "x.part") == DATA
    ranges = http.ranges("m.tflite")
    assert ranges[0] is None
    assert ranges[1] == f"bytes={len(DATA) // 2}-"


def test_a_partial_file_from_an_earlier_run_resumes(http: FileServer, tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(DATA[:100_000])
    assert fetch(http.add("m.tflite", DATA), part) == DATA
    assert http.ranges("m.tflite") == ["bytes=100000-"]


def test_a_server_that_ignores_range_means_starting_over(http: FileServer, tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(DATA[:100_000])
    assert fetch(http.add("m.tflite", DATA, "ignore_range"), part) == DATA


def test_a_corrupt_partial_file_is_downloaded_again_once(http: FileServer, tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(b"\xff" * 100_000)
    assert fetch(http.add("m.tflite", DATA), part) == DATA
    assert http.ranges("m.tflite") == ["bytes=100000-", None]


@pytest.mark.parametrize("mode", ["more", "more_nolength"])
def test_more_than_announced_is_refused(http: FileServer, tmp_path: Path, mode: str) -> None:
    part = tmp_path / "x.part"
    assert reason(http.add("m.tflite", DATA, mode), part) == "too_large"
    assert not part.exists()


def test_a_truncated_file_is_refused(http: FileServer, tmp_path: Path) -> None:
    assert reason(http.add("m.tflite", DATA, "truncated"), tmp_path / "x.part") == "truncated"


def test_a_truncated_file_is_noticed_on_resume_too(http: FileServer, tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(DATA[: len(DATA) // 2 + 10])
    assert reason(http.add("m.tflite", DATA, "truncated"), part) == "truncated"


def test_other_bytes_are_a_hash_mismatch(http: FileServer, tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    assert reason(http.add("m.tflite", os.urandom(len(DATA))), part) == "hash_mismatch"
    assert not part.exists()


def test_not_found_is_not_retried(http: FileServer, tmp_path: Path) -> None:
    assert reason(http.add("m.tflite", DATA, "missing"), tmp_path / "x.part") == "download_failed"
    assert len(http.ranges("m.tflite")) == 1


def test_server_errors_are_retried_with_backoff(http: FileServer, tmp_path: Path) -> None:
    assert fetch(http.add("m.tflite", DATA, "flaky", failures=2), tmp_path / "x.part") == DATA
    assert len(http.ranges("m.tflite")) == 3
    url = http.add("n.tflite", DATA, "flaky", failures=10)
    assert reason(url, tmp_path / "y.part") == "download_failed"
    assert len(http.ranges("n.tflite")) == FAST.retries + 1


def test_nothing_listening_is_retried_then_fails(tmp_path: Path) -> None:
    from tests.broker import free_port

    url = f"http://127.0.0.1:{free_port()}/m.tflite"
    assert reason(url, tmp_path / "x.part") == "download_failed"


def test_a_slow_server_hits_the_deadline(http: FileServer, tmp_path: Path) -> None:
    url = http.add("m.tflite", DATA, "slow", delay_s=0.02)
    t0 = time.monotonic()
    settings = DownloadSettings(timeout_s=0.5, retries=0, socket_timeout_s=0.5)
    assert reason(url, tmp_path / "x.part", settings) == "download_timeout"
    assert time.monotonic() - t0 < 3.0


def test_stopping_cancels_a_download(http: FileServer, tmp_path: Path) -> None:
    url = http.add("m.tflite", DATA, "slow", delay_s=0.02)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(UpdateError) as err:
        fetch(url, tmp_path / "x.part", stop=stop)
    assert err.value.reason == "cancelled"
    assert (tmp_path / "x.part").stat().st_size > 0  # kept for a resume


def test_bandwidth_cap(http: FileServer, tmp_path: Path) -> None:
    data = DATA[: 48 * 1024]
    url = http.add("m.tflite", data)
    settings = DownloadSettings(bandwidth_bps=64 * 1024)
    t0 = time.monotonic()
    got = HttpFetcher(settings).fetch(
        url, len(data), hashlib.sha256(data).hexdigest(), tmp_path / "x.part"
    )
    took = time.monotonic() - t0
    assert got == data
    assert 0.45 < took < 3.0  # 48 KiB at 64 KiB/s, minus the first 16 KiB burst: >= 0.5 s


def test_token_bucket_rate() -> None:
    bucket = TokenBucket(rate=100_000.0, burst=10_000.0)
    stop = threading.Event()
    t0 = time.monotonic()
    total = sum(bucket.take(10_000, stop) for _ in range(6))
    assert total == 60_000
    assert 0.45 < time.monotonic() - t0 < 2.0


def test_file_urls(tmp_path: Path) -> None:
    src = tmp_path / "m.tflite"
    src.write_bytes(DATA)
    assert fetch(src.as_uri(), tmp_path / "x.part") == DATA
    src.write_bytes(DATA + b"x")
    assert reason(src.as_uri(), tmp_path / "y.part") == "too_large"
    src.write_bytes(DATA[:-1])
    assert reason(src.as_uri(), tmp_path / "z.part") == "truncated"


def test_unsupported_scheme(tmp_path: Path) -> None:
    assert reason("ftp://example.com/m.tflite", tmp_path / "x.part") == "bad_url"


def test_free_space_is_checked_first(http: FileServer, tmp_path: Path) -> None:
    url = http.add("m.tflite", DATA)
    with pytest.raises(UpdateError) as err:
        HttpFetcher(FAST).fetch(url, 2**60, SHA, tmp_path / "x.part")
    assert err.value.reason == "no_space"
    assert http.ranges("m.tflite") == []
