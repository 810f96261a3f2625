"""The release contract the device and the converters share.

manifest.py  the signed manifest schema (name, version, tensors, preprocessing, ...)
package.py   ``.eapkg`` packages: read, check, write
signing.py   Ed25519 keys and signatures (the only module importing ``cryptography``)
"""

__all__ = ["manifest", "package", "signing"]
