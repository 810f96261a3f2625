"""Deciding on offers: every refusal reason, the persisted version floor, targeting."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import Config, parse_config
from agent.errors import PackageError, UpdateError
from agent.ota.decide import (
    Decider,
    Offer,
    Running,
    check_shadow_claim,
    offer_from_announcement,
    offer_from_file,
    offer_from_package,
)
from agent.ota.floor import VersionFloor
from agent.ota.store import ModelStore
from agent.release.manifest import (
    Artifact,
    BuildInfo,
    EncodedArray,
    GoldenSample,
    Manifest,
    PostprocessSpec,
    PreprocessSpec,
    Targets,
    TensorSpec,
    rollout_position,
    utc_now,
)
from agent.release.package import make_package, read_model_entry
from agent.release.signing import SigningKey
from tests.ota.conftest import Keys

MODEL_BYTES = b"TFL3-not-really-a-model"
SHA = hashlib.sha256(MODEL_BYTES).hexdigest()
RUNNING = Running("1.0.0", "11" * 32)


def manifest(version: str = "2.0.0", **over: Any) -> Manifest:
    x = EncodedArray.from_numpy(np.zeros((1, 32, 3), np.float32))
    y = EncodedArray.from_numpy(np.zeros((1, 2), np.float32))
    fields: dict[str, Any] = {
        "name": "m",
        "version": version,
        "created": utc_now(),
        "mode": "float32",
        "artifact": Artifact(sha256=SHA, size=len(MODEL_BYTES)),
        "inputs": [TensorSpec(name="x", shape=[1, 32, 3], dtype="float32")],
        "outputs": [TensorSpec(name="y", shape=[1, 2], dtype="float32")],
        "postprocess": PostprocessSpec(type="raw"),
        "min_agent_version": "0.1.0",
        "build": BuildInfo(converter="test", runtime="test"),
        "golden": [GoldenSample(name="g", inputs=[x], outputs=[y], atol=1e-4)],
    }
    fields.update(over)
    return Manifest(**fields)


def config(tmp_path: Path, keys: Keys, **over: Any) -> Config:
    data: dict[str, Any] = {
        "agent": {"device_id": "dev-1", "groups": ["lab"], "state_dir": str(tmp_path)},
        "model": {"name": "m"},
        "window": {"length": 32, "hop": 16},
        "postprocess": {"type": "raw"},
        "ota": {"enabled": True, "trusted_keys": [str(keys.release_pub)]},
    }
    for k, v in over.items():
        data[k] = {**data.get(k, {}), **v}
    return parse_config(data)


def offer(m: Manifest, key: SigningKey | None, **over: Any) -> Offer:
    data = m.to_bytes()
    fields: dict[str, Any] = {
        "source": "channel:stable",
        "manifest_bytes": data,
        "signature": key.sign(data) if key else None,
        "key_id": key.key_id if key else None,
        "url": "http://127.0.0.1:1/model.tflite",
        "targets": Targets(),
    }
    fields.update(over)
    return Offer(**fields)


def decider(tmp_path: Path, keys: Keys, cfg: Config | None = None) -> Decider:
    from agent.release.signing import load_trusted_keys

    cfg = cfg or config(tmp_path, keys)
    return Decider(
        cfg,
        load_trusted_keys(cfg.ota.trusted_keys),
        VersionFloor(tmp_path / "ota" / "floor.json"),
        ModelStore(tmp_path),
    )


def refusal(d: Decider, o: Offer, running: Running = RUNNING) -> str:
    with pytest.raises(UpdateError) as err:
        d.decide(o, running)
    return err.value.reason


def test_a_signed_compatible_newer_version_is_accepted(tmp_path: Path, keys: Keys) -> None:
    d = decider(tmp_path, keys)
    acc = d.decide(offer(manifest(), keys.release), RUNNING)
    assert acc.version == "2.0.0" and acc.sha256 == SHA
    assert acc.signer == keys.release.key_id


def test_signature_refusals(tmp_path: Path, keys: Keys) -> None:
    d = decider(tmp_path, keys)
    m = manifest()
    assert refusal(d, offer(m, None)) == "unsigned"
    assert refusal(d, offer(m, keys.other)) == "unknown_key"
    forged = offer(m, keys.release, manifest_bytes=manifest("9.0.0").to_bytes())
    assert refusal(d, forged) == "bad_signature"
    garbage = offer(m, keys.release, signature=b"\x00" * 64)
    assert refusal(d, garbage) == "bad_signature"


def test_key_rotation_any_trusted_key_signs(tmp_path: Path, keys: Keys) -> None:
    cfg = config(tmp_path, keys, ota={"trusted_keys": [str(keys.release_pub), str(keys.other_pub)]})
    d = decider(tmp_path, keys, cfg)
    assert d.decide(offer(manifest(), keys.other), RUNNING).signer == keys.other.key_id


def test_allow_unsigned_accepts_unsigned_and_unknown_but_never_a_bad_signature(
    tmp_path: Path, keys: Keys
) -> None:
    cfg = config(tmp_path, keys, ota={"allow_unsigned": True})
    d = decider(tmp_path, keys, cfg)
    assert d.decide(offer(manifest(), None), RUNNING).signer is None
    assert d.decide(offer(manifest(), keys.other), RUNNING).signer is None
    forged = offer(manifest(), keys.release, manifest_bytes=manifest("9.0.0").to_bytes())
    assert refusal(d, forged) == "bad_signature"


def test_signed_garbage_is_a_bad_manifest(tmp_path: Path, keys: Keys) -> None:
    d = decider(tmp_path, keys)
    data = b'{"schema_version": 1, "name": "m"}'
    o = offer(manifest(), keys.release, manifest_bytes=data, signature=keys.release.sign(data))
    assert refusal(d, o) == "bad_manifest"


def test_another_model_is_refused(tmp_path: Path, keys: Keys) -> None:
    assert refusal(decider(tmp_path, keys), offer(manifest(name="other"), keys.release)) == (
        "wrong_model"
    )


def test_version_floor_refuses_replays_and_reused_versions(tmp_path: Path, keys: Keys) -> None:
    d = decider(tmp_path, keys)
    acc = d.decide(offer(manifest("2.0.0"), keys.release), RUNNING)
    d.commit("m", acc.version, acc.sha256)
    # the floor is on disk: a new Decider (a restart) still knows it
    d = decider(tmp_path, keys)
    assert refusal(d, offer(manifest("1.5.0"), keys.release)) == "version_rollback"
    other = manifest("2.0.0", artifact=Artifact(sha256="ab" * 32, size=10))
    assert refusal(d, offer(other, keys.release)) == "version_reused"
    # the accepted version itself may be retried (a download that failed, a kill)
    assert d.decide(offer(manifest("2.0.0"), keys.release), RUNNING).version == "2.0.0"
    assert d.decide(offer(manifest("2.0.1"), keys.release), RUNNING).version == "2.0.1"


def test_accepting_an_offer_does_not_raise_the_floor(tmp_path: Path, keys: Keys) -> None:
    """Finding 1: a signed 9.0.0 accepted (then never installed) must not freeze updates."""
    d = decider(tmp_path, keys)
    d.decide(offer(manifest("9.0.0"), keys.release), RUNNING)
    assert d.floor.get("m") is None
    assert d.decide(offer(manifest("4.0.0"), keys.release), RUNNING).version == "4.0.0"
    d.commit("m", "4.0.0", SHA)
    d.commit("m", "3.0.0", SHA)  # never lowers
    assert d.floor.get("m") == ("4.0.0", SHA)


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"m": {"version": "x"}}', b"[1]"])
def test_an_unreadable_floor_fails_closed(tmp_path: Path, keys: Keys, damage: bytes) -> None:
    """Finding 2: a damaged floor stops updates; it never falls back to the running version."""
    d = decider(tmp_path, keys)
    d.floor.path.parent.mkdir(parents=True, exist_ok=True)
    d.floor.path.write_bytes(damage)
    assert refusal(d, offer(manifest("1.5.0"), keys.release)) == "floor_unreadable"
    assert refusal(d, offer(manifest("9.0.0"), keys.release)) == "floor_unreadable"
    with pytest.raises(UpdateError, match="floor_unreadable"):
        d.commit("m", "9.0.0", SHA)
    assert d.floor.path.read_bytes() == damage


def test_the_running_version_is_a_floor_too(tmp_path: Path, keys: Keys) -> None:
    d = decider(tmp_path, keys)
    assert refusal(d, offer(manifest("0.9.0"), keys.release)) == "version_rollback"
    assert refusal(d, offer(manifest("1.0.0"), keys.release)) == "version_reused"
    assert refusal(d, offer(manifest("1.0.0"), keys.release), Running("1.0.0", SHA)) == (
        "up_to_date"
    )


def test_a_build_marked_bad_is_not_retried(tmp_path: Path, keys: Keys) -> None:
    d = decider(tmp_path, keys)
    ModelStore(tmp_path).mark_bad("2.0.0", SHA, "golden_mismatch")
    assert refusal(d, offer(manifest("2.0.0"), keys.release)) == "marked_bad"


@pytest.mark.parametrize(
    ("targets", "taken"),
    [
        (Targets(), True),
        (Targets(groups=["lab"]), True),
        (Targets(groups=["field", "lab"]), True),
        (Targets(groups=["field"]), False),
        (Targets(percent=0.0), False),
        (Targets(percent=100.0), True),
    ],
)
def test_targeting(tmp_path: Path, keys: Keys, targets: Targets, taken: bool) -> None:
    d = decider(tmp_path, keys)
    o = offer(manifest(), keys.release, targets=targets)
    if taken:
        assert d.decide(o, RUNNING).version == "2.0.0"
    else:
        assert refusal(d, o) == "not_targeted"


def test_rollout_percentage_is_a_stable_hash_of_the_device(tmp_path: Path, keys: Keys) -> None:
    pos = rollout_position("dev-1", "m", "2.0.0")
    d = decider(tmp_path, keys)
    below = offer(manifest(), keys.release, targets=Targets(percent=min(100.0, pos + 0.01)))
    above = offer(manifest(), keys.release, targets=Targets(percent=pos))
    for _ in range(3):
        assert d.decide(below, RUNNING).version == "2.0.0"
        assert refusal(d, above) == "not_targeted"
    # across a fleet, about `percent` of the devices are in
    share = np.mean([rollout_position(f"dev-{i}", "m", "2.0.0") < 25.0 for i in range(4000)])
    assert 0.22 < share < 0.28


@pytest.mark.parametrize(
    ("over", "cfg_over", "reason"),
    [
        ({"min_agent_version": "99.0.0"}, {}, "agent_too_old"),
        (
            {"inputs": [TensorSpec(name="x", shape=[1, 16, 3], dtype="float32")]},
            {},
            "incompatible_input",
        ),
        (
            {
                "inputs": [
                    TensorSpec(name="a", shape=[1, 32, 3], dtype="float32"),
                    TensorSpec(name="b", shape=[1, 4], dtype="float32"),
                ]
            },
            {},
            "incompatible_input",
        ),
        ({"postprocess": PostprocessSpec(type="classification")}, {}, "incompatible_postprocess"),
        (
            {"postprocess": PostprocessSpec(type="classification"), "labels": ["a", "b", "c"]},
            {"postprocess": {"type": "classification"}},
            "incompatible_output",
        ),
        (
            {"postprocess": PostprocessSpec(type="classification"), "labels": ["a", "b"]},
            {"postprocess": {"type": "classification", "labels": ["x", "y"]}},
            "incompatible_output",
        ),
        ({"preprocess": PreprocessSpec(window=64, hop=16)}, {}, "incompatible_preprocess"),
        (
            {
                "preprocess": PreprocessSpec(
                    window=32, hop=16, normalize="standard", mean=[0.0] * 3, std=[1.0] * 3
                )
            },
            {},
            "incompatible_preprocess",
        ),
    ],
)
def test_compatibility_refusals(
    tmp_path: Path, keys: Keys, over: dict[str, Any], cfg_over: dict[str, Any], reason: str
) -> None:
    if "inputs" in over:
        x = [EncodedArray.from_numpy(np.zeros(t.shape, np.float32)) for t in over["inputs"]]
        y = [EncodedArray.from_numpy(np.zeros((1, 2), np.float32))]
        over["golden"] = [GoldenSample(name="g", inputs=x, outputs=y, atol=1e-4)]
    d = decider(tmp_path, keys, config(tmp_path, keys, **cfg_over))
    assert refusal(d, offer(manifest(**over), keys.release)) == reason


def test_a_configured_input_name_must_match(tmp_path: Path, keys: Keys) -> None:
    d = decider(tmp_path, keys, config(tmp_path, keys, model={"input": "window"}))
    assert refusal(d, offer(manifest(), keys.release)) == "incompatible_input"
    d = decider(tmp_path, keys, config(tmp_path, keys, model={"input": "x"}))
    assert d.decide(offer(manifest(), keys.release), RUNNING).version == "2.0.0"


def test_matching_preprocess_and_labels_are_fine(tmp_path: Path, keys: Keys) -> None:
    cfg = config(tmp_path, keys, postprocess={"type": "classification", "labels": ["a", "b"]})
    m = manifest(
        postprocess=PostprocessSpec(type="classification"),
        labels=["a", "b"],
        preprocess=PreprocessSpec(window=32, hop=16, channels=3),
    )
    assert decider(tmp_path, keys, cfg).decide(offer(m, keys.release), RUNNING).version == "2.0.0"


def test_announcement_parsing(keys: Keys) -> None:
    from agent.release.manifest import Announcement

    m = manifest()
    sig = base64.b64encode(keys.release.sign(m.to_bytes())).decode()
    ann = Announcement(
        channel="stable",
        manifest=m.to_bytes().decode(),
        signature=sig,
        key_id=keys.release.key_id,
        url="http://x/m.tflite",
        published_at=utc_now(),
    )
    o = offer_from_announcement(ann.to_bytes(), "stable", "m")
    assert o.manifest_bytes == m.to_bytes() and o.signature == keys.release.sign(m.to_bytes())
    with pytest.raises(UpdateError, match="wrong_channel"):
        offer_from_announcement(ann.to_bytes(), "canary", "m")
    with pytest.raises(UpdateError, match="bad_announcement"):
        offer_from_announcement(b"{not json", "stable", "m")
    bad = ann.model_copy(update={"signature": "!!!not base64"}).to_bytes()
    with pytest.raises(UpdateError, match="bad_signature"):
        offer_from_announcement(bad, "stable", "m")


def _announced(version: str, shadow: bool | None, channel: str = "stable") -> bytes:
    from agent.release.manifest import Announcement

    return Announcement(
        channel=channel,
        manifest=manifest(version).to_bytes().decode(),
        url="http://x/m.tflite",
        targets=Targets(shadow=shadow),
        published_at=utc_now(),
    ).to_bytes()


_SAID_SHADOW, _SAID_ACTIVE = (
    "says shadow (targets.shadow=true)",
    "says active (targets.shadow=false)",
)
_SIGNED_SHADOW = "says shadow (custom.edge.shadow=true)"
_SIGNED_ACTIVE = "says active (custom.edge.shadow=false)"


@pytest.mark.parametrize(
    ("announced", "signed", "said", "says"),
    [
        (True, False, _SAID_SHADOW, _SIGNED_ACTIVE),
        (None, True, _SAID_ACTIVE, _SIGNED_SHADOW),
        (False, True, _SAID_ACTIVE, _SIGNED_SHADOW),
    ],
)
def test_an_announcement_contradicting_the_signed_shadow_flag_is_refused_naming_both(
    announced: bool | None, signed: bool, said: str, says: str
) -> None:
    with pytest.raises(UpdateError) as err:
        check_shadow_claim(_announced("2.0.0", announced), "stable", "m", "2.0.0", signed)
    assert err.value.reason == "shadow_mismatch"
    assert f"the announcement on stable {said}" in err.value.detail
    assert f"the signed TUF target {says}" in err.value.detail


def test_a_hint_that_claims_nothing_about_the_target_passes() -> None:
    for shadow in (True, False):
        # agreeing with the signed flag
        check_shadow_claim(_announced("2.0.0", shadow or None), "stable", "m", "2.0.0", shadow)
        # another version, no announcement at all, garbage, another channel's announcement
        check_shadow_claim(_announced("3.0.0", not shadow), "stable", "m", "2.0.0", shadow)
        check_shadow_claim(b"", "stable", "m", "2.0.0", shadow)
        check_shadow_claim(b"0f3a9c", "stable", "m", "2.0.0", shadow)
        check_shadow_claim(_announced("2.0.0", not shadow, "x"), "stable", "m", "2.0.0", shadow)


def test_package_offers(keys: Keys) -> None:
    pkg = make_package(manifest(), MODEL_BYTES, keys.release)
    o = offer_from_package("m-2.0.0.eapkg", pkg.to_bytes())
    assert o.content == MODEL_BYTES and o.key_id == keys.release.key_id and o.targets is None
    with pytest.raises(UpdateError, match="malformed"):
        offer_from_package("half.eapkg", pkg.to_bytes()[:100])


def test_a_file_offer_reads_no_model_before_the_signature(tmp_path: Path, keys: Keys) -> None:
    """Finding 3: the model entry of a dropped-in package is not inflated by the offer."""
    big = 128 * 1024 * 1024
    m = manifest(artifact=Artifact(sha256="00" * 32, size=big))
    path = tmp_path / "bomb.eapkg"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", m.to_bytes())
        with zf.open("model.tflite", "w", force_zip64=True) as f:
            zero = bytes(1 << 20)
            for _ in range(big >> 20):
                f.write(zero)
    size = path.stat().st_size
    assert size > 64 * 1024  # the compressed model entry alone is bigger than what is read

    class Counting(io.FileIO):
        read_bytes = 0

        def read(self, n: int | None = -1, /) -> bytes:
            data = super().read(n)
            Counting.read_bytes += len(data)
            return data

    with Counting(path, "r") as fh:
        o = offer_from_file(path.name, fh)
        assert o.content is None and o.package is fh
        assert refusal(decider(tmp_path, keys), o) == "unsigned"
    assert Counting.read_bytes < 32 * 1024, f"read {Counting.read_bytes} of {size} bytes"


def test_the_model_entry_is_read_with_the_signed_size_as_cap(keys: Keys) -> None:
    pkg = make_package(manifest(), MODEL_BYTES, keys.release)
    assert read_model_entry(pkg.to_bytes(), pkg.manifest) == MODEL_BYTES
    short = manifest(artifact=Artifact(sha256=SHA, size=len(MODEL_BYTES) - 3))
    with pytest.raises(PackageError, match="size_mismatch"):
        read_model_entry(pkg.to_bytes(), short)
    other = manifest(artifact=Artifact(sha256="ab" * 32, size=len(MODEL_BYTES)))
    with pytest.raises(PackageError, match="hash_mismatch"):
        read_model_entry(pkg.to_bytes(), other)
