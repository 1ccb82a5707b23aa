"""A certificate chain and its private key, read and checked once (with ``cryptography``).

Checked before any ``SSLContext`` sees them, so that a file that does not parse, or a key
that is not the certificate's, is reported with the paths involved instead of OpenSSL's
``[SSL] PEM lib``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from busgate.contracts.config import ConfigError

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class PemError(ConfigError):
    """A certificate or key that cannot be used; the message names the file. At start that
    is a configuration error; at a rotation, the current certificate stays (``tls.watch``)."""


class KeyMismatch(PemError):
    """The private key is not the certificate's; the message names the key's path."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    cert_pem: bytes
    """The leaf certificate first, then its chain."""
    key_pem: bytes
    not_after: datetime
    fingerprint: str
    """SHA-256 of the leaf certificate (DER), hex: what tells one certificate from the next."""
    subject: str


def parse(cert_pem: bytes, key_pem: bytes, *, cert_name: str, key_name: str) -> KeyPair:
    """Check that both parse and that the key is the leaf certificate's; raises PemError."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise PemError(f"{cert_name}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise PemError(f"{key_name}: not an unencrypted PEM private key") from None
    leaf = chain[0]
    if key.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise KeyMismatch(f"{key_name}: the private key does not match the certificate {cert_name}")
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject = str(names[0].value) if names else leaf.subject.rfc4514_string()
    return KeyPair(
        cert_pem=cert_pem,
        key_pem=key_pem,
        not_after=leaf.not_valid_after_utc,
        fingerprint=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        subject=subject,
    )


def read(cert_path: str | Path, key_path: str | Path, *, key_name: str = "") -> KeyPair:
    """Read and check a certificate file and its key file. ``key_name`` is the config key of
    the key (``gateway.tls.key``), put before the path in a mismatch's message."""
    try:
        cert_pem = Path(cert_path).read_bytes()
        key_pem = Path(key_path).read_bytes()
    except OSError as exc:
        raise PemError(f"cannot read {exc.filename}: {exc.strerror}") from None
    label = f"{key_name} ({key_path})" if key_name else str(key_path)
    return parse(cert_pem, key_pem, cert_name=str(cert_path), key_name=label)
