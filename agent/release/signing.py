"""Ed25519 keys and signatures: the only module that imports ``cryptography``.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public). A key is named by its
``key_id``: the first 16 hex characters of the sha256 of the raw 32-byte public key, so a
signature can say which key made it and a device with several trusted keys (key rotation)
knows which one to try.

``verify`` raises ``SignatureError`` with a stable ``reason``: ``unsigned``, ``unknown_key`` or
``bad_signature``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.errors import ConfigError, SignatureError

log = logging.getLogger(__name__)

SIGNATURE_ALGORITHM = "ed25519"


def key_id(public_raw: bytes) -> str:
    """First 16 hex characters of sha256(raw 32-byte Ed25519 public key)."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    """A trusted Ed25519 public key."""

    _key: Ed25519PublicKey
    raw: bytes
    key_id: str
    source: str = ""

    def verifies(self, signature: bytes, data: bytes) -> bool:
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key; ``public`` is what devices are configured to trust."""

    _key: Ed25519PrivateKey
    public: PublicKey

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)


def _public(key: Ed25519PublicKey, source: str) -> PublicKey:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(key, raw, key_id(raw), source)


def generate_keypair() -> tuple[bytes, bytes]:
    """A new key pair as (private PEM, public PEM). The private PEM is not encrypted."""
    priv = Ed25519PrivateKey.generate()
    priv_pem = priv.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return priv_pem, _public(priv.public_key(), "").to_pem()


def write_keypair(private_path: Path, public_path: Path, *, overwrite: bool = False) -> SigningKey:
    """Generate a key pair and write it; the private key file gets mode 0600 from the start.

    Refuses to replace existing files unless ``overwrite``: losing a signing key locks every
    device that trusts it out of updates.
    """
    priv_pem, pub_pem = generate_keypair()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    for path, data, mode in ((private_path, priv_pem, 0o600), (public_path, pub_pem, 0o644)):
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError:
            raise FileExistsError(f"{path} exists; refusing to overwrite a key") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        path.chmod(mode)  # os.open's mode is filtered by the umask; make it exact
    return load_private_key(priv_pem, str(private_path))


def _read(pem_or_path: bytes | Path) -> tuple[bytes, str]:
    if isinstance(pem_or_path, Path):
        try:
            return pem_or_path.read_bytes(), str(pem_or_path)
        except OSError as exc:
            raise _key_error(str(pem_or_path), f"cannot read: {exc.strerror or exc}") from exc
    return pem_or_path, "<bytes>"


def _key_error(where: str, reason: str) -> ConfigError:
    return ConfigError([(where, reason)], source="signing key")


def load_private_key(pem_or_path: bytes | Path, source: str | None = None) -> SigningKey:
    """Load an unencrypted PKCS#8 PEM Ed25519 private key; ``ConfigError`` when it is not one."""
    data, where = _read(pem_or_path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise _key_error(source or where, f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise _key_error(source or where, f"not an Ed25519 key ({type(key).__name__})")
    return SigningKey(key, _public(key.public_key(), source or where))


def load_public_key(pem_or_path: bytes | Path, source: str | None = None) -> PublicKey:
    """Load a PEM Ed25519 public key; ``ConfigError`` when it is not one."""
    data, where = _read(pem_or_path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise _key_error(source or where, f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise _key_error(source or where, f"not an Ed25519 key ({type(key).__name__})")
    return _public(key, source or where)


def load_trusted_keys(paths: Sequence[Path]) -> list[PublicKey]:
    """Load every trusted public key; one ``ConfigError`` naming every bad one."""
    keys: list[PublicKey] = []
    problems: list[tuple[str, str]] = []
    for p in paths:
        try:
            keys.append(load_public_key(p))
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems, source="trusted keys")
    return keys


def verify(
    data: bytes, signature: bytes | None, signer_id: str | None, trusted: Sequence[PublicKey]
) -> PublicKey:
    """Check ``signature`` over ``data``; return the trusted key that made it.

    Raises ``SignatureError`` with reason ``unsigned`` (no signature), ``unknown_key`` (no
    trusted key has ``signer_id``) or ``bad_signature`` (the named key did not make it).
    """
    if signature is None:
        raise SignatureError("unsigned", "the package carries no signature")
    candidates = [k for k in trusted if k.key_id == signer_id] if signer_id else list(trusted)
    if not candidates:
        known = ", ".join(k.key_id for k in trusted) or "none"
        raise SignatureError(
            "unknown_key", f"signed by key {signer_id}, which is not trusted (trusted: {known})"
        )
    for key in candidates:
        if key.verifies(signature, data):
            return key
    raise SignatureError(
        "bad_signature",
        f"signature does not verify with key {signer_id or candidates[0].key_id}: "
        "the manifest was changed after signing, or the signature is corrupt",
    )
