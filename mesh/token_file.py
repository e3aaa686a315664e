"""A bearer token read from its file on every use.

The kubelet rotates a projected service-account token by replacing its file (hourly here, the token
valid 12 h); a process that read the file once at start would present an expired token later. So
every client (the CA client, the discovery client) asks a ``TokenSource`` for the token at each call
or stream, and ``token_file(path)`` reads the file then. An unreadable, empty or oversized file is a
``CertificateError`` naming the file (never its content).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mesh.certs import CertificateError

MAX_TOKEN_FILE_BYTES = 64 * 1024  # a token file is ~1 KiB; a larger file is not one

TokenSource = Callable[[], str]


def token_file(path: Path) -> TokenSource:
    def read() -> str:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_TOKEN_FILE_BYTES + 1)
        except OSError as exc:
            raise CertificateError(f"token file {path}: {exc.strerror or exc}") from None
        if len(data) > MAX_TOKEN_FILE_BYTES:
            raise CertificateError(f"token file {path}: over {MAX_TOKEN_FILE_BYTES} bytes: not a token")
        token = data.decode("utf-8", "replace").strip()
        if not token:
            raise CertificateError(f"token file {path} is empty")
        return token

    return read
