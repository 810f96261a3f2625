"""The package file: round trip, tampering, each failure with its stable reason, zip bombs."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import pytest

from agent.errors import ConfigError, PackageError, SignatureError
from agent.release.manifest import canonical_json
from agent.release.package import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Package,
    check_package,
    make_package,
    read_package,
    verify_package,
    write_package,
)
from agent.release.signing import key_id, load_private_key, load_public_key, verify, write_keypair
from tests.converters.conftest import Keys
from tests.converters.fakes import fake_manifest

MODEL = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4


def _pkg(keys: Keys | None, model: bytes = MODEL) -> Package:
    return make_package(fake_manifest(model), model, keys.key if keys else None)


def _rezip(data: bytes, replace: dict[str, bytes | None]) -> bytes:
    """A copy of a package zip with some entries replaced (or removed with None)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
        for name in src.namelist():
            content = replace.get(name, src.read(name))
            if content is not None:
                out.writestr(name, content)
        for name, content in replace.items():
            if name not in src.namelist() and content is not None:
                out.writestr(name, content)
    return buf.getvalue()


def _reason(data: bytes, keys: list[Keys], allow_unsigned: bool = False) -> str:
    trusted = [load_public_key(k.public) for k in keys]
    with pytest.raises(PackageError) as exc:
        verify_package(read_package(data), trusted, allow_unsigned)
    return exc.value.reason


# --------------------------------------------------------------------------- keys


def test_keygen_modes_and_key_id(tmp_path: Path) -> None:
    key = write_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    pub = load_public_key(tmp_path / "k.pub")
    assert pub.key_id == key.key_id == key_id(pub.raw) and len(pub.key_id) == 16
    assert load_private_key(tmp_path / "k.key").key_id == key.key_id
    with pytest.raises(FileExistsError):
        write_keypair(tmp_path / "k.key", tmp_path / "k.pub")


def test_bad_key_files_are_config_errors(tmp_path: Path, keys: Keys) -> None:
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="cannot read"):
        load_public_key(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="private key"):
        load_private_key(keys.public)


def test_verify_reasons(keys: Keys, other_keys: Keys) -> None:
    trusted = [load_public_key(keys.public)]
    sig = keys.key.sign(b"data")
    assert verify(b"data", sig, keys.key.key_id, trusted).key_id == keys.key.key_id
    for data, signature, signer, reason in [
        (b"data", None, None, "unsigned"),
        (b"data", other_keys.key.sign(b"data"), other_keys.key.key_id, "unknown_key"),
        (b"DATA", sig, keys.key.key_id, "bad_signature"),
    ]:
        with pytest.raises(SignatureError) as exc:
            verify(data, signature, signer, trusted)
        assert exc.value.reason == reason


# --------------------------------------------------------------------------- packages


def test_round_trip(tmp_path: Path, keys: Keys) -> None:
    pkg = _pkg(keys)
    path = write_package(tmp_path / pkg.filename, pkg)
    assert path.name == "fake-1.0.0.eapkg"
    back = read_package(path)
    assert back.manifest == pkg.manifest and back.model == MODEL
    assert back.manifest_bytes == canonical_json(pkg.manifest)
    assert back.key_id == keys.key.key_id
    signer = verify_package(back, [load_public_key(keys.public)])
    assert signer is not None and signer.key_id == keys.key.key_id
    assert pkg.to_bytes() == back.to_bytes()  # deterministic zip


def test_flipped_model_byte_is_a_hash_mismatch(keys: Keys) -> None:
    tampered = bytearray(MODEL)
    tampered[100] ^= 0x01
    data = _rezip(_pkg(keys).to_bytes(), {"model.tflite": bytes(tampered)})
    assert _reason(data, [keys]) == "hash_mismatch"


def test_longer_or_shorter_model_is_a_size_mismatch(keys: Keys) -> None:
    for model in (MODEL + b"\x00", MODEL[:-1]):
        data = _rezip(_pkg(keys).to_bytes(), {"model.tflite": model})
        assert _reason(data, [keys]) == "size_mismatch"


def test_edited_manifest_field_is_a_bad_signature(keys: Keys) -> None:
    pkg = _pkg(keys)
    obj = json.loads(pkg.manifest_bytes)
    obj["labels"] = ["b", "a"]
    data = _rezip(pkg.to_bytes(), {MANIFEST_NAME: canonical_json(obj)})
    assert _reason(data, [keys]) == "bad_signature"


def test_edited_manifest_with_matching_hash_is_still_a_bad_signature(keys: Keys) -> None:
    """Swap in another model *and* fix up its hash and size: the signature catches it."""
    pkg = _pkg(keys)
    evil = MODEL[::-1]
    forged = fake_manifest(evil).to_bytes()
    data = _rezip(pkg.to_bytes(), {MANIFEST_NAME: forged, "model.tflite": evil})
    assert _reason(data, [keys]) == "bad_signature"


def test_other_key_is_unknown_and_unsigned_is_refused(keys: Keys, other_keys: Keys) -> None:
    assert _reason(_pkg(other_keys).to_bytes(), [keys]) == "unknown_key"
    assert _reason(_pkg(None).to_bytes(), [keys]) == "unsigned"
    unsigned = read_package(_pkg(None).to_bytes())
    assert verify_package(unsigned, [], allow_unsigned=True) is None
    # allow_unsigned still checks the artifact
    bad = _rezip(_pkg(None).to_bytes(), {"model.tflite": MODEL + b"x"})
    assert _reason(bad, [], allow_unsigned=True) == "size_mismatch"


def test_check_package_reports_every_problem(keys: Keys) -> None:
    pkg = _pkg(keys)
    obj = json.loads(pkg.manifest_bytes)
    obj["description"] = "changed"
    data = _rezip(pkg.to_bytes(), {MANIFEST_NAME: canonical_json(obj), "model.tflite": b"xx"})
    signer, problems = check_package(read_package(data), [load_public_key(keys.public)])
    assert signer is None
    assert [p.reason for p in problems] == ["bad_signature", "size_mismatch"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not a zip at all", "malformed"),
        (b"", "malformed"),
    ],
)
def test_not_a_zip(data: bytes, reason: str) -> None:
    with pytest.raises(PackageError) as exc:
        read_package(data)
    assert exc.value.reason == reason


def test_structural_problems(keys: Keys) -> None:
    good = _pkg(keys).to_bytes()
    cases: dict[str, tuple[dict[str, bytes | None], str]] = {
        "no manifest": ({MANIFEST_NAME: None}, "malformed"),
        "no model": ({"model.tflite": None}, "malformed"),
        "extra entry": ({"../evil.sh": b"#!"}, "malformed"),
        "manifest not json": ({MANIFEST_NAME: b"{nope"}, "bad_manifest"),
        "manifest wrong schema": ({MANIFEST_NAME: b'{"name": "x"}'}, "bad_manifest"),
        "garbage signature": ({SIGNATURE_NAME: b"zzz"}, "malformed"),
    }
    for what, (replace, reason) in cases.items():
        with pytest.raises(PackageError) as exc:
            read_package(_rezip(good, replace))
        assert exc.value.reason == reason, what


def test_zip_bomb_is_read_only_up_to_the_declared_size(keys: Keys) -> None:
    """A model entry that inflates to 64 MiB is read only to size+1 bytes."""
    bomb = b"\x00" * (64 * 1024 * 1024)
    data = _rezip(_pkg(keys).to_bytes(), {"model.tflite": bomb})
    assert len(data) < 1024 * 1024
    pkg = read_package(data)
    assert len(pkg.model) == len(MODEL) + 1
    assert _reason(data, [keys]) == "size_mismatch"


def test_oversized_manifest_is_malformed(keys: Keys) -> None:
    huge = b"{" + b" " * (9 * 1024 * 1024) + b"}"
    with pytest.raises(PackageError, match=r"manifest\.json is over"):
        read_package(_rezip(_pkg(keys).to_bytes(), {MANIFEST_NAME: huge}))


def test_declared_size_over_limit(keys: Keys) -> None:
    with pytest.raises(PackageError, match="over the 100-byte limit"):
        read_package(_pkg(keys).to_bytes(), max_model_bytes=100)
