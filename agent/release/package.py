"""The model package file (``<name>-<version>.eapkg``): read, write, verify.

A package is a zip holding exactly:

* ``manifest.json`` — the canonical manifest bytes (``agent.release.manifest.canonical_json``),
* ``manifest.sig``  — JSON ``{"algorithm", "key_id", "signature"}``: base64 Ed25519 over exactly
  the ``manifest.json`` bytes (absent when unsigned),
* ``model.tflite``  — the model; its sha256 and size are in the manifest, so the one signature
  covers it too.

Reading is bounded: the manifest and signature have fixed caps and the model is read up to the
size the manifest declares (plus one byte to notice a longer file), so a zip bomb cannot make
us inflate more than we were promised. Problems raise ``PackageError`` with a stable reason:
``malformed``, ``bad_manifest``, ``hash_mismatch``, ``size_mismatch``, and (as
``SignatureError``) ``unsigned``, ``unknown_key``, ``bad_signature``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.durable import atomic_write
from agent.errors import PackageError, SignatureError
from agent.release.manifest import MODEL_FILENAME, Manifest, canonical_json, parse_manifest
from agent.release.signing import PublicKey, SigningKey, verify

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
PACKAGE_SUFFIX = ".eapkg"
BUNDLE_SUFFIX = ".eatuf"
"""An offline TUF bundle: a zip of ``metadata/`` (the root chain, timestamp, snapshot,
targets) and ``targets/<path>`` (the package), made by ``edge-convert tuf bundle``."""
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
MAX_SIGNATURE_BYTES = 4096
MAX_MODEL_BYTES = 1024 * 1024 * 1024
_ENTRIES = {MANIFEST_NAME, SIGNATURE_NAME, MODEL_FILENAME}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same contents give the same package bytes


class SignatureFile(BaseModel):
    """``manifest.sig``: who signed the manifest, and the signature."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = Field(default=1, description="Version of this file's schema.")
    algorithm: Literal["ed25519"] = Field(default="ed25519", description="Signature scheme.")
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="Id of the signing key.")
    signature: str = Field(description="Base64 signature over the manifest.json bytes.")

    def raw(self) -> bytes:
        return base64.b64decode(self.signature, validate=True)

    def to_bytes(self) -> bytes:
        return canonical_json(self)


def sign_manifest(manifest_bytes: bytes, key: SigningKey) -> SignatureFile:
    """Sign the manifest bytes with ``key``."""
    return SignatureFile(
        key_id=key.key_id, signature=base64.b64encode(key.sign(manifest_bytes)).decode("ascii")
    )


def parse_signature(data: bytes) -> SignatureFile:
    """Parse a signature file; raises ``PackageError("malformed")`` when it is not one."""
    try:
        sig = SignatureFile.model_validate_json(data)
        sig.raw()
    except (ValidationError, ValueError, binascii.Error) as exc:
        raise PackageError(
            "malformed", f"{SIGNATURE_NAME} is not a signature file: {exc}"
        ) from None
    return sig


@dataclass(frozen=True)
class Package:
    """A package's parts, as read (nothing is verified until ``verify_package``)."""

    manifest: Manifest
    manifest_bytes: bytes
    model: bytes
    signature: SignatureFile | None = None

    @property
    def signed(self) -> bool:
        return self.signature is not None

    @property
    def key_id(self) -> str | None:
        return self.signature.key_id if self.signature else None

    @property
    def filename(self) -> str:
        return package_filename(self.manifest.name, self.manifest.version)

    def to_bytes(self) -> bytes:
        """The zip file. Deterministic: the same parts give the same bytes."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            parts = [(MANIFEST_NAME, self.manifest_bytes)]
            if self.signature is not None:
                parts.append((SIGNATURE_NAME, self.signature.to_bytes()))
            parts.append((MODEL_FILENAME, self.model))
            for name, data in parts:
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
        return buf.getvalue()


def package_filename(name: str, version: str) -> str:
    """``<name>-<version>.eapkg``."""
    return f"{name}-{version}{PACKAGE_SUFFIX}"


def make_package(manifest: Manifest, model: bytes, key: SigningKey | None) -> Package:
    """Assemble a package, signing the canonical manifest bytes when ``key`` is given."""
    check_artifact(manifest, model)
    manifest_bytes = manifest.to_bytes()
    signature = sign_manifest(manifest_bytes, key) if key is not None else None
    return Package(manifest, manifest_bytes, model, signature)


def write_package(path: Path, pkg: Package) -> Path:
    """Write atomically: temp file, fsync, rename, fsync the directory."""
    atomic_write(path, pkg.to_bytes())
    return path


def _read_bounded(zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes of an entry: enough to tell it is too long."""
    with zf.open(name) as f:
        return _read_up_to(f, limit + 1)


def _read_up_to(f: IO[bytes], n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class PackageHead:
    """A package's manifest and signature, read without inflating the model.

    What a device checks *before* it inflates anything: the signature covers the manifest,
    and the manifest declares the model's size and sha256, so once the signature verifies
    the declared size is a trustworthy cap for ``read_model_entry``.
    """

    manifest: Manifest
    manifest_bytes: bytes
    signature: SignatureFile | None

    @property
    def key_id(self) -> str | None:
        return self.signature.key_id if self.signature else None


PackageSource = Path | bytes | IO[bytes]


def _zip(source: PackageSource) -> zipfile.ZipFile:
    if isinstance(source, bytes):
        return zipfile.ZipFile(io.BytesIO(source))
    return zipfile.ZipFile(source)


def _where(source: PackageSource) -> str:
    return str(source) if isinstance(source, Path) else "<package>"


def _translate(where: str, exc: BaseException) -> PackageError:
    if isinstance(exc, OSError):
        return PackageError("malformed", f"{where}: cannot read: {exc}")
    return PackageError("malformed", f"{where}: not a readable package zip: {exc}")


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError)


def _head(zf: zipfile.ZipFile, where: str, max_model_bytes: int) -> PackageHead:
    names = zf.namelist()
    if len(names) != len(set(names)):
        raise PackageError("malformed", f"{where}: duplicate entries in the zip")
    unknown = sorted(set(names) - _ENTRIES)
    if unknown:
        raise PackageError("malformed", f"{where}: unexpected entries {unknown}")
    for required in (MANIFEST_NAME, MODEL_FILENAME):
        if required not in names:
            raise PackageError("malformed", f"{where}: no {required} in the package")
    manifest_bytes = _read_bounded(zf, MANIFEST_NAME, MAX_MANIFEST_BYTES)
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise PackageError(
            "malformed", f"{where}: {MANIFEST_NAME} is over {MAX_MANIFEST_BYTES} bytes"
        )
    manifest = parse_manifest(manifest_bytes)
    if manifest.artifact.size > max_model_bytes:
        raise PackageError(
            "malformed",
            f"{where}: model declares {manifest.artifact.size} bytes, over the "
            f"{max_model_bytes}-byte limit",
        )
    signature = None
    if SIGNATURE_NAME in names:
        sig_bytes = _read_bounded(zf, SIGNATURE_NAME, MAX_SIGNATURE_BYTES)
        if len(sig_bytes) > MAX_SIGNATURE_BYTES:
            raise PackageError("malformed", f"{where}: {SIGNATURE_NAME} is too long")
        signature = parse_signature(sig_bytes)
    return PackageHead(manifest, manifest_bytes, signature)


def read_package_head(
    source: PackageSource, *, max_model_bytes: int = MAX_MODEL_BYTES
) -> PackageHead:
    """The manifest and signature of a package; the model entry is not inflated."""
    where = _where(source)
    try:
        with _zip(source) as zf:
            return _head(zf, where, max_model_bytes)
    except PackageError:
        raise
    except _ZIP_ERRORS as exc:
        raise _translate(where, exc) from exc


def read_model_entry(source: PackageSource, manifest: Manifest) -> bytes:
    """The model entry, streamed with a cap: at most the declared size (plus one byte to
    notice a longer entry) is ever inflated, and its sha256 is computed on the way.

    Call it only once the manifest is trusted (its signature verified): the declared size is
    then the signer's, not an attacker's. Raises ``size_mismatch`` / ``hash_mismatch``.
    """
    where = _where(source)
    want = manifest.artifact
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    n = 0
    try:
        with _zip(source) as zf, zf.open(MODEL_FILENAME) as f:
            while n <= want.size:
                chunk = f.read(min(want.size + 1 - n, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                chunks.append(chunk)
                n += len(chunk)
    except _ZIP_ERRORS as exc:
        raise _translate(where, exc) from exc
    except KeyError as exc:
        raise PackageError("malformed", f"{where}: no {MODEL_FILENAME} in the package") from exc
    if n != want.size:
        raise PackageError(
            "size_mismatch",
            f"{manifest.name} {manifest.version}: model is {n} bytes"
            f"{' or more' if n > want.size else ''}, manifest says {want.size}",
        )
    got = digest.hexdigest()
    if got != want.sha256:
        raise PackageError(
            "hash_mismatch",
            f"{manifest.name} {manifest.version}: model sha256 {got}, manifest says {want.sha256}",
        )
    return b"".join(chunks)


def read_package(source: PackageSource, *, max_model_bytes: int = MAX_MODEL_BYTES) -> Package:
    """Read a package from a path, its bytes or an open file; ``PackageError`` if it cannot be
    parsed. Hash, size and signature are *not* checked here: call ``verify_package``.

    This inflates the model up to the size the (unverified) manifest declares: code that
    takes packages from untrusted places reads ``read_package_head`` first, checks the
    signature, and only then ``read_model_entry`` (as ``agent.ota`` does).
    """
    where = _where(source)
    try:
        with _zip(source) as zf:
            head = _head(zf, where, max_model_bytes)
            # One byte past the declared size is enough to report a size mismatch.
            model = _read_bounded(zf, MODEL_FILENAME, head.manifest.artifact.size)
    except PackageError:
        raise
    except _ZIP_ERRORS as exc:
        raise _translate(where, exc) from exc
    return Package(head.manifest, head.manifest_bytes, model, head.signature)


def check_artifact(manifest: Manifest, data: bytes) -> None:
    """``size_mismatch`` or ``hash_mismatch`` unless ``data`` is the manifest's artifact."""
    want = manifest.artifact
    if len(data) != want.size:
        raise PackageError(
            "size_mismatch",
            f"{manifest.name} {manifest.version}: model is {len(data)} bytes"
            f"{' or more' if len(data) > want.size else ''}, manifest says {want.size}",
        )
    got = hashlib.sha256(data).hexdigest()
    if got != want.sha256:
        raise PackageError(
            "hash_mismatch",
            f"{manifest.name} {manifest.version}: model sha256 {got}, manifest says {want.sha256}",
        )


def check_package(
    pkg: Package, trusted_keys: Sequence[PublicKey], allow_unsigned: bool = False
) -> tuple[PublicKey | None, list[PackageError]]:
    """Every problem of a package (signature first, then the artifact), and the signer."""
    problems: list[PackageError] = []
    signer: PublicKey | None = None
    try:
        signer = verify_signature(pkg, trusted_keys, allow_unsigned)
    except SignatureError as exc:
        problems.append(exc)
    try:
        check_artifact(pkg.manifest, pkg.model)
    except PackageError as exc:
        problems.append(exc)
    return signer, problems


def verify_signature(
    pkg: Package, trusted_keys: Sequence[PublicKey], allow_unsigned: bool = False
) -> PublicKey | None:
    """The trusted key that signed the package (None if unsigned and that is allowed).

    With ``allow_unsigned`` (development), a package signed by a key we do not know is treated
    as unsigned; a signature by a *known* key that does not verify always fails.
    """
    if pkg.signature is None:
        if allow_unsigned:
            log.warning("accepting unsigned package %s %s", pkg.manifest.name, pkg.manifest.version)
            return None
        raise SignatureError("unsigned", f"{pkg.filename} carries no signature")
    try:
        return verify(pkg.manifest_bytes, pkg.signature.raw(), pkg.key_id, trusted_keys)
    except SignatureError as exc:
        if exc.reason == "unknown_key" and allow_unsigned:
            log.warning(
                "accepting %s signed by unknown key %s as unsigned", pkg.filename, pkg.key_id
            )
            return None
        raise


def verify_package(
    pkg: Package, trusted_keys: Sequence[PublicKey], allow_unsigned: bool = False
) -> PublicKey | None:
    """Raise the first problem (signature before artifact); return the signing key."""
    signer, problems = check_package(pkg, trusted_keys, allow_unsigned)
    if problems:
        raise problems[0]
    return signer


def manifest_summary(pkg: Package) -> dict[str, object]:
    """A short description of a package for logs and the CLI."""
    m = pkg.manifest
    return {
        "name": m.name,
        "version": m.version,
        "mode": m.mode,
        "size": m.artifact.size,
        "sha256": m.artifact.sha256,
        "signed_by": pkg.key_id,
        "inputs": [(t.name, t.shape, t.dtype) for t in m.inputs],
        "outputs": [(t.name, t.shape, t.dtype) for t in m.outputs],
        "golden_samples": len(m.golden),
        "created": m.created.isoformat(),
    }
