"""TUF on the OTA channel: the build host's repository, the device's check, TUF's attacks.

The first part runs the device's check (``agent.ota.tufcheck.check``, what the child process
runs) against a repository made by ``converters.tufrepo`` and served by a real local HTTP
server, one case per attack in TUF's list. The second part runs the real agent process with
``ota.tuf_url`` against a real Mosquitto: an announcement is only a hint, and what is
installed is what the TUF metadata vouches for.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import MetaFile, TargetFile

from agent.ota.tufcheck import check
from agent.release.manifest import Targets, rollout_position
from agent.release.package import Package
from converters.publish import upload
from converters.store import ArtifactKeys, LocalStore
from converters.tufrepo import TargetInfo, TufRepository, generate_key, load_key
from tests.agentproc import AgentProcess
from tests.broker import Broker
from tests.mqttclient import Collector, publish
from tests.ota import models, pkgs
from tests.ota.conftest import Keys
from tests.ota.httpserver import FileServer
from tests.ota.test_ota_e2e import (
    ANNOUNCE,
    SYNTHETIC,
    agent_config,
    is_committed,
    is_refusal,
    predictions,
    states,
    still_serving,
    wait_state,
)


@dataclass
class Repo:
    store: LocalStore
    repo: TufRepository
    http: FileServer
    device_dir: Path

    def publish(self, pkg: Package, **info: Any) -> None:
        m = pkg.manifest
        upload(pkg, self.store, ArtifactKeys.of(m.name, m.version))
        ti = TargetInfo(
            model=info.get("model", m.name),
            version=info.get("version", m.version),
            channels=info.get("channels", ["stable"]),
            groups=info.get("groups", []),
            percent=info.get("percent", 100.0),
            devices=info.get("devices"),
            shadow=info.get("shadow", False),
        )
        self.repo.add_target(pkg, ti)

    def request(self, **over: Any) -> dict[str, Any]:
        req: dict[str, Any] = {
            "metadata_dir": str(self.device_dir),
            "metadata_url": self.http.url("tuf"),
            "targets_url": self.http.base_url,
            "timeout_s": 10.0,
            "model": "m",
            "channel": "stable",
            "device": "dev-1",
            "groups": [],
        }
        req.update(over)
        return req

    def file(self, key: str) -> Path:
        return self.store.root / key


@pytest.fixture
def tuf_repo(tmp_path: Path, http: FileServer) -> Repo:
    assert http.root is not None
    store = LocalStore(http.root)
    repo = TufRepository(store, tmp_path / "tufkeys")
    repo.init(root_keys=3, threshold=2)
    device = tmp_path / "device-tuf"
    device.mkdir()
    shutil.copy(store.root / "tuf" / "1.root.json", device / "root.json")  # the install's root
    return Repo(store, repo, http, device)


def small_pkg(version: str, keys: Keys, name: str = "m") -> Package:
    return pkgs.build(models.dense(2), version, keys.release, name=name)


# --------------------------------------------------------------------------- TUF's attacks


def test_a_published_target_is_found(tuf_repo: Repo, keys: Keys) -> None:
    tuf_repo.publish(small_pkg("2.0.0", keys))
    ans = check(tuf_repo.request())
    assert ans["ok"], ans
    t = ans["target"]
    assert (t["version"], t["path"]) == ("2.0.0", "m/2.0.0/m-2.0.0.eapkg")
    assert t["url"] == tuf_repo.http.url("m/2.0.0/m-2.0.0.eapkg")
    assert t["length"] == tuf_repo.file(t["path"]).stat().st_size


def freeze(r: Repo, keys: Keys, tmp: Path) -> None:
    """Indefinite freeze: the repository's timestamp is left to expire (or replayed)."""
    r.repo.refresh_timestamp(expires_in=timedelta(seconds=-60))


def rollback(r: Repo, keys: Keys, tmp: Path) -> None:
    """Rollback: after the device saw targets v3, an attacker serves the older v2 set."""
    old = {n: r.file(f"tuf/{n}").read_bytes() for n in ("targets.json", "snapshot.json")}
    old_ts = r.file("tuf/timestamp.json").read_bytes()
    r.publish(small_pkg("3.0.0", keys))
    assert check(r.request())["target"]["version"] == "3.0.0"
    for n, data in old.items():
        r.file(f"tuf/{n}").write_bytes(data)
    r.file("tuf/timestamp.json").write_bytes(old_ts)


def mix_and_match(r: Repo, keys: Keys, tmp: Path) -> None:
    """Mix-and-match: a current timestamp/snapshot served with an older targets file."""
    old_targets = r.file("tuf/targets.json").read_bytes()
    r.publish(small_pkg("3.0.0", keys))
    r.file("tuf/targets.json").write_bytes(old_targets)


def endless_data(r: Repo, keys: Keys, tmp: Path) -> None:
    """Endless data: the timestamp file never ends (past TUF's length bound)."""
    r.file("tuf/timestamp.json").write_bytes(b" " * (1024 * 1024))


def arbitrary_metadata(r: Repo, keys: Keys, tmp: Path) -> None:
    """Arbitrary package via metadata: a mirror with its own key lists its own target and
    re-signs targets, snapshot and timestamp (what it must do to be fetched at all)."""
    intruder = generate_key(tmp / "intruder.key")
    evil = small_pkg("6.6.6", keys)
    upload(evil, r.store, ArtifactKeys.of("m", "6.6.6"))
    targets = r.repo.load("targets")
    path = ArtifactKeys.of("m", "6.6.6").package
    tf = TargetFile.from_data(path, r.file(path).read_bytes(), ["sha256"])
    tf.unrecognized_fields["custom"] = TargetInfo("m", "6.6.6", ["stable"], [], 100).custom()
    targets.signed.targets[path] = tf
    snap, ts = r.repo.load("snapshot"), r.repo.load("timestamp")
    for md in (targets, snap, ts):
        md.signed.version += 1
    snap.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
    ts.signed.snapshot_meta = MetaFile(version=snap.signed.version)
    for md, name in ((targets, "targets"), (snap, "snapshot"), (ts, "timestamp")):
        md.signatures.clear()
        md.sign(intruder)
        r.file(f"tuf/{name}.json").write_bytes(md.to_bytes())


def below_threshold(r: Repo, keys: Keys, tmp: Path) -> None:
    """Key compromise below threshold: one of three root keys (threshold 2) signs a new root
    that hands the online roles to the attacker."""
    md = r.repo.load("root")
    evil = generate_key(tmp / "evil.key")
    for role in ("targets", "snapshot", "timestamp"):
        for keyid in list(md.signed.roles[role].keyids):
            md.signed.revoke_key(keyid, role)
        md.signed.add_key(evil.public_key, role)
    md.signed.version += 1
    md.signatures.clear()
    md.sign(load_key(r.repo.keydir / "root-1.key"))
    r.file("tuf/2.root.json").write_bytes(md.to_bytes())


ATTACKS: dict[str, Callable[[Repo, Keys, Path], None]] = {
    "freeze": freeze,
    "rollback": rollback,
    "mix_and_match": mix_and_match,
    "endless_data": endless_data,
    "arbitrary_metadata": arbitrary_metadata,
    "below_threshold": below_threshold,
}


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("freeze", "metadata_expired"),
        ("rollback", "metadata_rollback"),
        ("mix_and_match", "metadata_rollback"),
        ("endless_data", "metadata_too_large"),
        ("arbitrary_metadata", "metadata_unsigned"),
        ("below_threshold", "metadata_unsigned"),
    ],
)
def test_tuf_refuses(tuf_repo: Repo, keys: Keys, tmp_path: Path, attack: str, reason: str) -> None:
    tuf_repo.publish(small_pkg("2.0.0", keys))
    assert check(tuf_repo.request())["ok"]  # the device trusts version 2.0.0's metadata
    ATTACKS[attack](tuf_repo, keys, tmp_path)
    ans = check(tuf_repo.request())
    assert not ans["ok"] and ans["reason"] == reason, ans
    # the trusted state did not move: the device's root is still version 1
    root = json.loads((tuf_repo.device_dir / "root.json").read_bytes())
    assert root["signed"]["version"] == 1


def test_slow_retrieval_ends_at_the_deadline(tuf_repo: Repo, keys: Keys) -> None:
    tuf_repo.publish(small_pkg("2.0.0", keys))
    ts = tuf_repo.file("tuf/timestamp.json").read_bytes()
    tuf_repo.http.add("tuf/timestamp.json", ts + b" " * 8192, "slow", delay_s=0.5)
    ans = check(tuf_repo.request(timeout_s=1.0))
    assert not ans["ok"] and ans["reason"] == "metadata_timeout", ans


def test_extraneous_targets_are_never_chosen(tuf_repo: Repo, keys: Keys) -> None:
    """Other models, other channels and other groups' builds are signed but not for us."""
    tuf_repo.publish(small_pkg("2.0.0", keys))
    tuf_repo.publish(small_pkg("9.0.0", keys, name="other"))
    tuf_repo.publish(small_pkg("8.0.0", keys), channels=["canary"])
    tuf_repo.publish(small_pkg("7.0.0", keys), groups=["field"])
    ans = check(tuf_repo.request())
    assert ans["ok"] and ans["target"]["version"] == "2.0.0", ans
    assert check(tuf_repo.request(channel="canary"))["target"]["version"] == "8.0.0"
    assert check(tuf_repo.request(groups=["field"]))["target"]["version"] == "7.0.0"


def test_the_shadow_flag_and_devices_are_signed_custom_metadata(tuf_repo: Repo, keys: Keys) -> None:
    pkg = small_pkg("2.0.0", keys)
    tuf_repo.publish(pkg)
    plain = json.loads(tuf_repo.file("tuf/targets.json").read_bytes())
    edge = plain["signed"]["targets"]["m/2.0.0/m-2.0.0.eapkg"]["custom"]["edge"]
    assert "shadow" not in edge and "devices" not in edge  # an active target is as it was
    ans = check(tuf_repo.request())
    assert ans["target"]["shadow"] is False and ans["target"]["devices"] is None
    tuf_repo.publish(pkg, shadow=True, devices=["dev-1", "dev-3"])
    signed = json.loads(tuf_repo.file("tuf/targets.json").read_bytes())
    edge = signed["signed"]["targets"]["m/2.0.0/m-2.0.0.eapkg"]["custom"]["edge"]
    assert (edge["shadow"], edge["devices"]) == (True, ["dev-1", "dev-3"])
    ans = check(tuf_repo.request())
    assert ans["target"]["shadow"] is True and ans["target"]["devices"] == ["dev-1", "dev-3"]
    assert check(tuf_repo.request(device="dev-2"))["target"] is None  # not named
    # added again without the flag: promoted (the device reads it as active)
    tuf_repo.publish(pkg)
    assert check(tuf_repo.request())["target"]["shadow"] is False


def test_a_malformed_signed_shadow_flag_is_never_guessed(tuf_repo: Repo, keys: Keys) -> None:
    tuf_repo.publish(small_pkg("2.0.0", keys))
    targets = tuf_repo.repo.load("targets")
    tf = targets.signed.targets["m/2.0.0/m-2.0.0.eapkg"]
    tf.unrecognized_fields["custom"]["edge"]["shadow"] = "false"  # a string, not a boolean
    targets.signed.version += 1
    root = tuf_repo.repo.load("root").signed
    tuf_repo.repo._write(targets, tuf_repo.repo._signers("targets", root))
    tuf_repo.repo._snapshot_and_timestamp(root)
    ans = check(tuf_repo.request())
    assert ans["ok"] and ans["target"] is None, ans


def test_root_rotation_is_followed_and_a_revoked_key_is_not(
    tuf_repo: Repo, keys: Keys, tmp_path: Path
) -> None:
    tuf_repo.publish(small_pkg("2.0.0", keys))
    assert check(tuf_repo.request())["ok"]
    # rotation: add root-4, revoke root-3 (signed by the old threshold and the new one)
    kd = tuf_repo.repo.keydir
    generate_key(kd / "root-4.key")
    revoked = load_key(kd / "root-3.key").public_key.keyid
    assert tuf_repo.repo.rotate_root(add=[kd / "root-4.key"], revoke=[revoked]) == 2
    ans = check(tuf_repo.request())
    assert ans["ok"] and ans["root_version"] == 2, ans
    # a root v3 signed by the revoked key and one valid key is below the new threshold
    md = tuf_repo.repo.load("root")
    md.signed.version = 3
    md.signatures.clear()
    md.sign(load_key(kd / "root-3.key"))
    md.sign(load_key(kd / "root-1.key"), append=True)
    tuf_repo.file("tuf/3.root.json").write_bytes(md.to_bytes())
    ans = check(tuf_repo.request())
    assert not ans["ok"] and ans["reason"] == "metadata_unsigned", ans
    root = json.loads((tuf_repo.device_dir / "root.json").read_bytes())
    assert root["signed"]["version"] == 2


# --------------------------------------------------------------------------- the real agent


def tuf_agent_config(tmp: Path, broker: Broker, keys: Keys, r: Repo, **ota: Any) -> Path:
    root = tmp / "install-root.json"
    shutil.copy(r.store.root / "tuf" / "1.root.json", root)
    return agent_config(
        tmp,
        broker,
        keys,
        SYNTHETIC,
        tuf_url=r.http.url("tuf"),
        tuf_targets_url=r.http.base_url,
        tuf_root=str(root),
        **ota,
    )


def hint(broker: Broker) -> None:
    """An announcement is only a hint: its content does not matter."""
    publish(broker.host, broker.port, ANNOUNCE, os.urandom(8).hex().encode(), retain=False)


@pytest.mark.slow
def test_the_agent_installs_what_tuf_vouches_for_and_refuses_the_rest(
    tmp_path: Path, broker: Broker, keys: Keys, tuf_repo: Repo
) -> None:
    conf = tuf_agent_config(tmp_path, broker, keys, tuf_repo)
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: len(predictions(m)) >= 3 and bool(states(m)), 30)
        # 1. a release through TUF: the hint triggers a refresh; the target is installed
        mark = len(col.messages)
        tuf_repo.publish(small_pkg("2.0.0", keys))
        hint(broker)
        s = wait_state(col, mark, is_committed("2.0.0"), timeout=60)
        assert s.source == "tuf:stable" and s.tuf is not None and not s.tuf.expired
        still_serving(col, "2.0.0")
        # 2. arbitrary package: the stored file is swapped for another signed build
        pkg3 = small_pkg("3.0.0", keys)
        tuf_repo.publish(pkg3)
        stored = tuf_repo.file(ArtifactKeys.of("m", "3.0.0").package)
        stored.write_bytes(os.urandom(stored.stat().st_size))
        mark = len(col.messages)
        hint(broker)
        # the refusal names the version TUF vouched for (its bytes are not what TUF signed)
        wait_state(col, mark, is_refusal("3.0.0", "hash_mismatch"), timeout=60)
        still_serving(col, "2.0.0")
        # 3. freeze: the timestamp expires; the device says so and takes nothing
        tuf_repo.repo.refresh_timestamp(expires_in=timedelta(seconds=-60))
        mark = len(col.messages)
        hint(broker)
        s = wait_state(col, mark, is_refusal(None, "metadata_expired"), timeout=60)  # type: ignore[arg-type]
        assert s.tuf is not None and s.tuf.expired
        still_serving(col, "2.0.0")
        code, _ = agent.terminate()
        assert code == 0, agent.output()
    seqs = sorted({p["seq"] for p in predictions(col.messages)})
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a prediction was lost"


@pytest.mark.slow
def test_under_tuf_the_signed_target_decides_shadow_and_an_announcement_cannot_flip_it(
    tmp_path: Path, broker: Broker, keys: Keys, tuf_repo: Repo
) -> None:
    """The shadow flag is the signed target's: a forged announcement saying "active" for a
    shadow release (or "shadow" for an active one) is refused naming both values, and the
    shadow release never serves until the build host's signed metadata says so."""
    conf = tuf_agent_config(tmp_path, broker, keys, tuf_repo)
    pkg = small_pkg("2.0.0", keys)

    def announce(shadow: bool | None) -> None:
        ann = pkgs.announcement(pkg, "http://127.0.0.1:9/x", targets=Targets(shadow=shadow))
        publish(broker.host, broker.port, ANNOUNCE, ann, retain=False)

    mismatch = is_refusal("2.0.0", "shadow_mismatch")
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: len(predictions(m)) >= 3 and bool(states(m)), 30)
        # 1. a signed shadow target runs as a shadow (the hint says nothing about it)
        tuf_repo.publish(pkg, shadow=True)
        mark = len(col.messages)
        hint(broker)
        s = wait_state(col, mark, lambda s: (s.state, s.version) == ("shadow", "2.0.0"), 60)
        assert s.source == "tuf:stable"
        deadline = time.monotonic() + 30  # logged just after the state is reported
        while "2.0.0 runs as a shadow beside 1.0.0" not in agent.output():
            assert time.monotonic() < deadline and agent.alive(), agent.output()[-3000:]
            time.sleep(0.05)  # another process's log: nothing to await
        still_serving(col, "1.0.0")
        # 2. an attacker's announcement says "active" for the shadow release: refused
        mark = len(col.messages)
        announce(None)
        s = wait_state(col, mark, mismatch, timeout=60)
        assert s.refusal is not None
        assert "says active (targets.shadow=false)" in s.refusal.detail, s.refusal
        assert "signed TUF target says shadow (custom.edge.shadow=true)" in s.refusal.detail
        assert (s.state, s.version) == ("shadow", "2.0.0")
        still_serving(col, "1.0.0")
        assert "shadow_mismatch" in agent.output()
        # 3. the build host promotes it (signed, no flag); an announcement saying "shadow"
        # contradicts that: refused too, nothing activated
        tuf_repo.publish(pkg)
        mark = len(col.messages)
        announce(True)
        s = wait_state(
            col,
            mark,
            lambda s: (
                mismatch(s) and "says shadow (targets" in (s.refusal.detail if s.refusal else "")
            ),
            timeout=60,
        )
        assert s.refusal is not None
        assert "the signed TUF target says active (custom.edge.shadow=false)" in s.refusal.detail
        still_serving(col, "1.0.0")
        # 4. an announcement that agrees: activated from what the signed metadata says
        mark = len(col.messages)
        announce(None)
        wait_state(col, mark, is_committed("2.0.0"), timeout=60)
        still_serving(col, "2.0.0")
        code, _ = agent.terminate()
        assert code == 0, agent.output()


def test_the_cli_makes_a_repository_a_device_trusts(
    tmp_path: Path, keys: Keys, http: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from converters.cli import main

    assert http.root is not None
    store, kd = str(http.root), tmp_path / "k"
    assert main(["tuf", "init", "--store", store, "--keys", str(kd), "--threshold", "2"]) == 0
    pkg = small_pkg("2.0.0", keys)
    upload(pkg, LocalStore(http.root), ArtifactKeys.of("m", "2.0.0"))
    pkg_file = tmp_path / "m-2.0.0.eapkg"
    pkg_file.write_bytes(pkg.to_bytes())
    args = ["--store", store, "--keys", str(kd)]
    shadow = ["--shadow", "--devices", "dev-1,dev-2,dev-3,dev-4"]
    assert main(["tuf", "add", str(pkg_file), *args, "--channel", "stable", *shadow]) == 0
    targets = json.loads((http.root / "tuf" / "targets.json").read_bytes())["signed"]["targets"]
    edge = targets["m/2.0.0/m-2.0.0.eapkg"]["custom"]["edge"]
    assert edge["shadow"] is True and edge["devices"] == ["dev-1", "dev-2", "dev-3", "dev-4"]
    assert main(["tuf", "add", str(pkg_file), *args, "--channel", "stable", "--percent", "50"]) == 0
    assert main(["tuf", "timestamp", *args]) == 0
    generate_key(kd / "root-9.key")
    assert main(["tuf", "rotate", *args, "--add-key", str(kd / "root-9.key")]) == 0
    assert main(["tuf", "status", *args]) == 0
    assert '"root_version": 2' in capsys.readouterr().out
    device = tmp_path / "dev"
    device.mkdir()
    shutil.copy(http.root / "tuf" / "1.root.json", device / "root.json")
    r = Repo(LocalStore(http.root), TufRepository(LocalStore(http.root), kd), http, device)
    # the 50 % rollout in the signed custom metadata decides per device, as announcements do
    for d in ("dev-1", "dev-2", "dev-3", "dev-4"):
        ans = check(r.request(device=d))
        assert ans["root_version"] == 2
        assert (ans["target"] is not None) == (rollout_position(d, "m", "2.0.0") < 50), d


@pytest.mark.slow
def test_an_offline_bundle_is_verified_against_the_trusted_root(
    tmp_path: Path, broker: Broker, keys: Keys, tuf_repo: Repo
) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    conf = tuf_agent_config(tmp_path, broker, keys, tuf_repo, incoming_dir=str(incoming))
    pkg = small_pkg("2.0.0", keys)
    tuf_repo.publish(pkg, channels=["canary"])  # offline: channel and targeting do not apply
    bundle = tuf_repo.repo.bundle("m", "2.0.0")
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: len(predictions(m)) >= 3 and bool(states(m)), 30)
        # a bare package is not enough in TUF mode
        mark = len(col.messages)
        (tmp_path / "bare.eapkg").write_bytes(pkg.to_bytes())
        os.rename(tmp_path / "bare.eapkg", incoming / "m-2.0.0.eapkg")
        wait_state(col, mark, is_refusal(None, "tuf_required"))  # type: ignore[arg-type]
        # a bundle whose package was swapped: TUF's sha256 says no
        forged = tmp_path / "forged.eatuf"
        with zipfile.ZipFile(io.BytesIO(bundle)) as src, zipfile.ZipFile(forged, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename.startswith("targets/"):
                    data = small_pkg("2.0.0", keys, name="m").to_bytes()[:-1] + b"\0"
                dst.writestr(info, data)
        mark = len(col.messages)
        os.rename(forged, incoming / "forged.eatuf")
        wait_state(col, mark, is_refusal(None, "hash_mismatch"))  # type: ignore[arg-type]
        still_serving(col, "1.0.0")
        # the genuine bundle goes through
        mark = len(col.messages)
        (tmp_path / "b.eatuf").write_bytes(bundle)
        os.rename(tmp_path / "b.eatuf", incoming / "m-2.0.0.eatuf")
        s = wait_state(col, mark, is_committed("2.0.0"), timeout=60)
        assert s.source == "incoming:m-2.0.0.eatuf"
        still_serving(col, "2.0.0")
        code, _ = agent.terminate()
        assert code == 0, agent.output()


@pytest.mark.slow
def test_an_offline_bundle_of_a_signed_shadow_target_runs_as_a_shadow(
    tmp_path: Path, broker: Broker, keys: Keys, tuf_repo: Repo
) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    conf = tuf_agent_config(tmp_path, broker, keys, tuf_repo, incoming_dir=str(incoming))
    tuf_repo.publish(small_pkg("2.0.0", keys), channels=["canary"], shadow=True)  # not followed
    bundle = tuf_repo.repo.bundle("m", "2.0.0")
    with (
        Collector(broker.host, broker.port, ["edge/dev-1/#"]) as col,
        AgentProcess(conf, tmp_path / "agent.log") as agent,
    ):
        col.wait_for(lambda m: len(predictions(m)) >= 3 and bool(states(m)), 30)
        mark = len(col.messages)
        (tmp_path / "b.eatuf").write_bytes(bundle)
        os.rename(tmp_path / "b.eatuf", incoming / "m-2.0.0.eatuf")
        s = wait_state(col, mark, lambda s: (s.state, s.version) == ("shadow", "2.0.0"), 60)
        assert s.source == "incoming:m-2.0.0.eatuf"
        still_serving(col, "1.0.0")
        code, _ = agent.terminate()
        assert code == 0, agent.output()
