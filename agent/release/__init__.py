"""The release contract the device and the converters share.

manifest.py  the signed manifest schema (name, version, tensors, preprocessing, ...)
package.py   ``.eapkg`` packages: read, check, write
signing.py   Ed25519 keys and signatures (the only module importing ``cryptography``)
reference.py the drift reference a manifest carries, and the binning/PSI both sides use
"""

__all__ = ["manifest", "package", "reference", "signing"]
