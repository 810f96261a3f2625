"""The fleet view and the rollout tracker without a broker: parsing, state, decisions."""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from unittest import mock

import pytest

from agent.errors import ConfigError
from agent.fleet.cli import watch_frames
from agent.fleet.connection import add_broker_args, mqtt_settings
from agent.fleet.rollout import (
    Outcome,
    Rollout,
    RolloutPolicy,
    RolloutStore,
    RolloutTracker,
    manifest_build,
)
from agent.fleet.view import (
    COLUMNS,
    Column,
    FleetView,
    format_table,
    parse_ota_state,
    summary,
)
from agent.release.manifest import Targets
from agent.wire.ota import OtaStateV1, Refusal
from tests.agentproc import write_config
from tests.fleet.support import make_announcement

SHA_OLD = "a" * 64
SHA_NEW = "b" * 64
SHA_OTHER = "c" * 64


def ota(state: str, version: str, running: str = "1.0.0", **kw: object) -> bytes:
    kw.setdefault("sha256", SHA_NEW if version == "1.1.0" else SHA_OLD)
    kw.setdefault("running_sha256", SHA_NEW if running == "1.1.0" else SHA_OLD)
    msg = OtaStateV1(
        device="d",
        model="demo",
        state=state,  # type: ignore[arg-type]
        version=version,
        running=running,
        ts=kw.pop("ts", time.time()),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    return msg.model_dump_json().encode()


def refusal(reason: str, version: str = "1.1.0", sha256: str | None = SHA_NEW) -> Refusal:
    return Refusal(
        version=version,
        sha256=sha256,
        reason=reason,
        detail="-",
        source="channel:canary",
        at=time.time(),
    )


def metrics(device: str, groups: list[str], version: str = "1.0.0", rate: float = 2.5) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "device": device,
            "groups": groups,
            "ota_channels": ["canary"],
            "ts": time.time(),
            "agent_version": "0.1.0",
            "model": {"name": "demo", "version": version},
            "rates": {"samples_per_s": 50.0, "predictions_per_s": rate},
            "queue": {"depth": 3, "dropped": 0},
        }
    ).encode()


# --------------------------------------------------------------------------- OTA state


def test_parse_ota_state_of_the_real_schema() -> None:
    st, ref = parse_ota_state(ota("active", "1.1.0", "1.1.0", health="watching"))
    assert st is not None and ref is None
    assert (st.state, st.version, st.running, st.health) == ("active", "1.1.0", "1.1.0", "watching")
    assert not st.finished  # still in its health window
    st, _ = parse_ota_state(ota("active", "1.1.0", "1.1.0", health="passed"))
    assert st is not None and st.succeeded and not st.failed
    for bad in ("failed", "rolled_back"):
        st, _ = parse_ota_state(ota(bad, "1.1.0", reason="smoke_test"))
        assert st is not None and st.failed and st.reason == "smoke_test"
    st, ref = parse_ota_state(ota("idle", "1.0.0", refusal=refusal("bad_signature")))
    assert st is not None and st.state == "idle" and not st.finished
    assert (
        ref is not None and ref.failed and (ref.version, ref.reason) == ("1.1.0", "bad_signature")
    )
    _, ref = parse_ota_state(ota("idle", "1.0.0", refusal=refusal("not_targeted")))
    assert ref is not None and not ref.failed  # "not for me" is not a failure
    assert parse_ota_state(b"") == (None, None)
    st, _ = parse_ota_state(b"\x00garbage")
    assert st is not None and st.state == "unreadable"


# --------------------------------------------------------------------------- the view


def test_view_follows_status_metrics_and_ota() -> None:
    v = FleetView("site/a")
    v.handle("site/a/dev-1/status", b"online")
    v.handle("site/a/dev-2/status", b"offline")
    v.handle("site/a/dev-1/metrics", metrics("dev-1", ["lab"]))
    v.handle("site/a/dev-1/ota", ota("failed", "1.1.0", reason="smoke_test"))
    v.handle("site/a/dev-1/ota", ota("idle", "1.0.0"))  # moved on: the failure is remembered
    v.handle("site/a/ota/canary/demo", b"{}")  # an announcement: not a device
    v.handle("site/a/dev-3/prediction/demo", b"{}")
    v.handle("other/dev-9/status", b"online")
    v.handle("site/a/dev-2/metrics", b"not json")  # logged, ignored
    d1, d2 = v.devices()
    assert (d1.device, d1.online, d1.model, d1.version) == ("dev-1", True, "demo", "1.0.0")
    assert d1.groups == ["lab"] and d1.ota_channels == ["canary"]
    assert d1.prediction_rate == 2.5 and d1.queue_depth == 3 and d1.has_metrics
    assert d1.ota is not None and d1.ota.state == "idle"
    assert d1.outcomes[("1.1.0", SHA_NEW)].state == "failed"
    assert d1.last_rollback is not None and d1.last_rollback.reason == "smoke_test"
    assert (d2.device, d2.online, d2.has_metrics) == ("dev-2", False, False)
    table = format_table(v.devices(), now=time.time())
    lines = table.splitlines()
    assert lines[0].split() == [
        "DEVICE",
        "ONLINE",
        "AGE",
        "MODEL",
        "OTA",
        "LAST",
        "REFUSAL",
        "LAST",
        "ROLLBACK",
        "PRED/S",
        "QUEUE",
        "DRIFT",
        "SHADOW",
    ]
    assert lines[1].split()[:6] == ["dev-1", "yes", "0s", "demo", "1.0.0", "idle"]
    assert lines[1].split()[-4:-2] == ["2.50", "3"]  # then DRIFT and SHADOW: "-" "-"
    assert lines[2].split()[:3] == ["dev-2", "OFFLINE", "-"]
    assert lines[-3] == "2 device(s), 1 online, 1 offline"
    j = d1.to_json()
    assert j["ota"]["state"] == "idle" and j["last_seen_age_s"] is not None
    json.dumps([d.to_json() for d in v.devices()])
    # the drift alert and the shadow report (retained, on their own topics)
    v.handle("site/a/dev-1/drift", b'{"active": true, "channels": ["ch1"]}')
    v.handle(
        "site/a/dev-1/shadow/demo",
        b'{"candidate": {"name": "demo", "version": "1.2.0"}, "windows_compared": 200,'
        b' "top1_agreement": 0.985, "errors": {"invoke_failed": 2}}',
    )
    d1 = v.devices()[0]
    assert d1.drift_alert and d1.drift_channels == ["ch1"]
    assert d1.shadow is not None and (d1.shadow.version, d1.shadow.windows) == ("1.2.0", 200)
    assert d1.shadow.errors == 2
    row = format_table(v.devices(), now=time.time()).splitlines()[1]
    assert "ALERT ch1" in row and "1.2.0 98.50% of 200" in row


def test_view_wait_for_wakes_on_change() -> None:
    v = FleetView("edge")
    assert not v.wait_for(lambda ds: bool(ds), 0.05)
    import threading

    threading.Timer(0.1, v.handle, ("edge/x/status", b"online")).start()
    assert v.wait_for(lambda ds: any(d.online for d in ds), 5)


# --------------------------------------------------------------------------- the tracker


def tracker(targets: Targets, fraction: float = 0.2) -> tuple[FleetView, RolloutTracker]:
    v = FleetView("edge")
    t = RolloutTracker(
        "demo", "1.1.0", SHA_NEW, "canary", targets, RolloutPolicy(fraction), time.time()
    )
    return v, t


def device(v: FleetView, name: str, groups: list[str]) -> None:
    v.handle(f"edge/{name}/status", b"online")
    v.handle(f"edge/{name}/metrics", metrics(name, groups))


def test_tracker_aborts_above_the_failure_fraction() -> None:
    v, t = tracker(Targets(groups=["lab"]), fraction=0.3)
    for i in range(4):
        device(v, f"lab-{i}", ["lab"])
    device(v, "field-0", ["field"])
    t.update(v.devices())
    assert t.targeted == {"lab-0", "lab-1", "lab-2", "lab-3"}
    v.handle("edge/lab-0/ota", ota("active", "1.1.0", "1.1.0", health="passed"))
    v.handle("edge/lab-1/ota", ota("failed", "1.1.0", reason="smoke_test"))
    v.handle("edge/field-0/ota", ota("failed", "1.1.0"))  # not targeted: ignored
    events = t.update(v.devices())
    assert "lab-1: failed (smoke_test) 1.1.0" in events
    assert t.failure_fraction == 0.25 and t.decision() is None  # 1 of 4 is not > 0.3
    v.handle("edge/lab-2/ota", ota("idle", "1.0.0", refusal=refusal("bad_signature")))
    t.update(v.devices())
    assert t.failed == {"lab-1": "failed (smoke_test)", "lab-2": "refused (bad_signature)"}
    assert t.decision() is Outcome.ABORTED  # 2 of 4


def test_tracker_completes_when_every_target_finished() -> None:
    v, t = tracker(Targets(), fraction=0.5)
    device(v, "a", [])
    device(v, "b", [])
    t.update(v.devices())
    v.handle("edge/a/ota", ota("active", "1.1.0", "1.1.0", health="watching"))
    t.update(v.devices())
    assert t.decision() is None and t.pending == {"a", "b"}
    v.handle("edge/a/ota", ota("active", "1.1.0", "1.1.0", health="passed"))
    v.handle("edge/b/ota", ota("rolled_back", "1.1.0", reason="error_rate"))
    t.update(v.devices())
    assert t.succeeded == {"a"} and set(t.failed) == {"b"}
    assert t.decision() is Outcome.COMPLETED  # 1 of 2 failed: not more than half


def test_tracker_ignores_stale_reports_and_untargeted_percent() -> None:
    v, t = tracker(Targets(percent=0.0), fraction=0.0)
    device(v, "a", [])
    v.handle("edge/a/ota", ota("failed", "1.1.0", ts=time.time() - 3600))  # an old attempt
    t.update(v.devices())
    assert t.targeted == set() and t.failed == {} and t.decision() is None


# --------------------------------------------------------------------------- broker options


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_broker_args(p)
    return p.parse_args(argv)


def test_broker_options(tmp_path: Path) -> None:
    s = mqtt_settings(parse([]))
    assert (s.host, s.port, s.topic_prefix, s.tls.enabled) == ("localhost", 1883, "edge", False)
    conf = write_config(
        tmp_path / "agent.toml",
        {"mqtt": {"host": "broker.lan", "port": 8883, "topic_prefix": "farm", "username": "ops"}},
    )
    s = mqtt_settings(parse(["--config", str(conf), "--port", "1884", "--ca-file", "ca.pem"]))
    assert (s.host, s.port, s.topic_prefix, s.username) == ("broker.lan", 1884, "farm", "ops")
    assert s.tls.enabled and s.tls.ca_file == Path("ca.pem")
    with pytest.raises(ConfigError) as err:
        mqtt_settings(parse(["--cert-file", "c.pem"]))
    assert [k for k, _ in err.value.problems] == ["mqtt.tls"]
    with pytest.raises(ConfigError) as err:
        mqtt_settings(parse(["--prefix", "bad/+"]))
    assert "topic_prefix" in str(err.value)


# --------------------------------------------------------------------------- issue 14 findings


def test_a_refused_rebuild_of_the_running_version_is_a_failure_not_a_success() -> None:
    """Finding 1: the device runs 1.1.0 (SHA_OTHER) and refuses the re-built 1.1.0 (SHA_NEW)
    as version_reused; its state still says 'active 1.1.0 passed' -- about its own build."""
    v, t = tracker(Targets(), fraction=0.0)
    device(v, "a", [])
    v.handle(
        "edge/a/ota",
        ota(
            "active",
            "1.1.0",
            "1.1.0",
            health="passed",
            sha256=SHA_OTHER,
            running_sha256=SHA_OTHER,
            refusal=refusal("version_reused", "1.1.0", SHA_NEW),
        ),
    )
    t.update(v.devices())
    assert t.succeeded == set() and t.already == set()
    assert t.failed == {"a": "refused (version_reused)"}
    assert t.decision() is Outcome.ABORTED


def test_success_needs_the_announced_hash_past_the_health_window() -> None:
    v, t = tracker(Targets(), fraction=0.5)
    device(v, "a", [])
    t.update(v.devices())
    v.handle("edge/a/ota", ota("active", "1.1.0", "1.1.0", health="passed", sha256=SHA_OTHER))
    t.update(v.devices())
    assert t.succeeded == set() and t.pending == {"a"}  # another build of 1.1.0
    v.handle("edge/a/ota", ota("active", "1.1.0", "1.1.0", health="watching"))
    t.update(v.devices())
    assert t.succeeded == set()
    v.handle("edge/a/ota", ota("active", "1.1.0", "1.1.0", health="passed"))
    t.update(v.devices())
    assert t.succeeded == {"a"} and t.decision() is Outcome.COMPLETED


def test_a_rollout_to_devices_already_on_the_build_completes_at_once() -> None:
    """Finding 3."""
    v, t = tracker(Targets(), fraction=0.0)
    for name in ("a", "b"):
        device(v, name, [])
        v.handle(f"edge/{name}/ota", ota("idle", "1.1.0", "1.1.0"))
    events = t.update(v.devices())
    assert t.already == {"a", "b"} and t.succeeded == {"a", "b"}
    assert "a: already runs 1.1.0" in events
    assert t.decision() is Outcome.COMPLETED


def test_status_shows_refusals_rollbacks_ages_and_blanks_offline_rates() -> None:
    """Findings 2 and 4, and the summary per version and OTA state."""
    v = FleetView("edge")
    v.handle("edge/a/status", b"online")
    v.handle("edge/a/metrics", metrics("a", [], rate=3.1))
    v.handle("edge/a/ota", ota("idle", "1.0.0", refusal=refusal("version_reused")))
    v.handle("edge/b/status", b"offline")  # went away; its metrics are retained
    v.handle("edge/b/metrics", metrics("b", [], rate=3.1))
    v.handle("edge/b/ota", ota("rolled_back", "1.1.0", reason="error_rate"))
    now = time.time() + 120
    a, b = v.devices()
    ja, jb = a.to_json(now), b.to_json(now)
    assert ja["last_refusal"]["reason"] == "version_reused"
    assert ja["last_refusal"]["version"] == "1.1.0" and ja["last_refusal"]["sha256"] == SHA_NEW
    assert jb["last_rollback"]["reason"] == "error_rate" and jb["last_refusal"] is None
    assert ja["prediction_rate"] == 3.1 and jb["prediction_rate"] is None
    assert jb["queue_depth"] is None and jb["last_seen_age_s"] >= 119
    rows = {line.split()[0]: line for line in format_table([a, b], now=now).splitlines()}
    assert "1.1.0 version_reused" in rows["a"] and "3.10" in rows["a"]
    assert "OFFLINE" in rows["b"] and "1.1.0 error_rate" in rows["b"]
    assert "3.10" not in rows["b"] and "2m" in rows["b"]
    s = summary([a, b])
    assert s["versions"] == {"demo 1.0.0": 2}
    assert s["ota_states"] == {"idle": 1, "rolled_back": 1}
    assert (s["online"], s["offline"]) == (1, 1)


def test_watch_writes_no_control_codes_into_a_pipe() -> None:
    """Finding 6."""
    v = FleetView("edge")
    v.handle("edge/a/status", b"online")

    class Pipe(io.StringIO):
        def isatty(self) -> bool:
            return False

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for out, codes in ((Pipe(), False), (Tty(), True)):
        calls: list[int] = []

        def stop(_: float, calls: list[int] = calls) -> None:
            calls.append(1)
            if len(calls) >= 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt), mock.patch("agent.fleet.cli.time.sleep", stop):
            watch_frames(v, out, every_s=0.0)
        text = out.getvalue()
        assert ("\033" in text) is codes
        assert text.count("DEVICE") == 2


def test_rollout_state_round_trips_through_the_store(tmp_path: Path) -> None:
    ann = make_announcement("demo", "1.1.0", "canary")
    prev = make_announcement("demo", "1.0.0", "canary")
    _, version, sha = manifest_build(ann)
    t = RolloutTracker("demo", version, sha, "canary", Targets(), RolloutPolicy(0.1), time.time())
    t.targeted = {"a", "b"}
    t.failed = {"b": "refused (bad_signature)"}
    store = RolloutStore(tmp_path)
    store.save(Rollout(ann, prev, RolloutPolicy(0.1), t, "edge/ota/canary/demo"))
    back = store.load("canary", "demo")
    assert back.tracker.targeted == {"a", "b"} and back.tracker.failed == t.failed
    assert back.previous is not None and manifest_build(back.previous)[1] == "1.0.0"
    assert back.tracker.sha256 == sha and back.outcome is Outcome.RUNNING


def test_other_features_extend_the_view_with_their_own_topics_and_columns() -> None:
    v = FleetView("edge")
    v.add_kind("shadow", lambda st, p: st.extra.update(shadow_agreement=float(p)))
    assert "edge/+/shadow" in v.filters()
    v.handle("edge/a/status", b"online")
    v.handle("edge/a/shadow", b"0.97")
    (a,) = v.devices()
    assert a.to_json()["shadow_agreement"] == 0.97
    column = Column("SHADOW", lambda d, now: f"{d.extra.get('shadow_agreement', '-')}")
    assert "0.97" in format_table([a], columns=[*COLUMNS, column]).splitlines()[1]
