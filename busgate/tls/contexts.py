"""``ssl.SSLContext`` s built from a :class:`~busgate.tls.pem.KeyPair`.

``SSLContext.load_cert_chain`` takes file paths only, so the checked bytes are written to a
private temporary folder (mode 0700, removed at once): what is loaded is exactly what was
checked, even if the files change in between.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path
from typing import Literal

from busgate.tls.pem import KeyPair

Version = Literal["TLSv1.2", "TLSv1.3"]
ClientAuth = Literal["none", "optional", "require"]
_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "require": ssl.CERT_REQUIRED}


def load_pair(ctx: ssl.SSLContext, pair: KeyPair) -> None:
    with tempfile.TemporaryDirectory(prefix="busgate-tls-") as folder:
        cert, key = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert.write_bytes(pair.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pair.key_pem)
        ctx.load_cert_chain(cert, key)


def server_context(
    pair: KeyPair,
    *,
    ca: str = "",
    client_auth: ClientAuth = "none",
    min_version: Version = "TLSv1.2",
    ciphers: str = "",
) -> ssl.SSLContext:
    """A server context; with ``client_auth`` it asks for client certificates signed by
    ``ca`` (``optional``: a client may send none; one that does not verify is refused)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion[min_version.replace(".", "_")]
    if ciphers:
        ctx.set_ciphers(ciphers)
    load_pair(ctx, pair)
    if client_auth != "none":
        ctx.load_verify_locations(cafile=ca)
        ctx.verify_mode = _VERIFY[client_auth]
    return ctx


def client_context(
    pair: KeyPair | None, *, ca: str = "", min_version: Version = "TLSv1.2"
) -> ssl.SSLContext:
    """A client context that verifies the server (against ``ca``, else the system's trust
    store) and its host name, presenting ``pair`` when given (mTLS)."""
    ctx = ssl.create_default_context(cafile=ca or None)
    ctx.minimum_version = ssl.TLSVersion[min_version.replace(".", "_")]
    if pair is not None:
        load_pair(ctx, pair)
    return ctx
