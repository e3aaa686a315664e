"""The TLS side of HBONE (port 15008, DESIGN.md section 6): mutual TLS 1.3 with SPIFFE identities.

Both ends present a workload certificate (a leaf whose only URI SAN is
``spiffe://<td>/ns/<ns>/sa/<sa>``) and verify the other's chain against the mesh root only: never the
system store, never a hostname. OpenSSL does the chain (signature, validity dates, CA constraints);
this module then reads the peer's leaf and checks what OpenSSL cannot know:

- the client accepts the server only if its SPIFFE ID is one the outbound plan expects
  (``verify_server_identity``);
- the server accepts any client of its own trust domain and returns the verified identity, which
  policy then uses (``verify_client_identity``);
- both require TLS 1.3 and that ALPN settled on ``h2`` (Python's ssl lets a handshake finish without
  ALPN when the two sides share no protocol, so the check is ours).

``ContextCache`` builds one ``ssl.SSLContext`` per side and certificate generation of an identity
and hands the same object out until the certificate rotates; ``client_handshake`` /
``server_handshake`` run a handshake on a TCP socket (``hbone.tls_stream.TlsStream``) and the
identity check after it.

The private key never touches a file system: ``ssl`` (Python 3.11) loads a key only from a path, so
it is written to an anonymous in-memory file (``memfd_create``), loaded through ``/proc/self/fd/N``
and closed at once; where that is unavailable, a private (0600) temporary file is used and unlinked
at once. Nothing here logs key material.

Note on TLS 1.3: the client finishes its handshake before the server has checked the client's
certificate, so a client the server refuses learns it on its first read (the connection breaks),
not from ``client_handshake``.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, overload

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hbone.tcp_stream import TcpStream
from hbone.tls_stream import TlsStream
from mesh.certs import CertificateError, CertifiedKey, spiffe_id_of
from mesh.identity import SpiffeId, validate_trust_domain

ALPN_H2 = "h2"
TLS_VERSION = "TLSv1.3"


class HboneTlsError(Exception):
    """An HBONE TLS connection could not be established. The message says why."""


class HandshakeFailed(HboneTlsError):
    """The TLS handshake itself failed: the peer's chain does not verify (expired, self-signed,
    another root), no common TLS version, or the connection broke. ``__cause__`` is the ssl error."""


class PeerIdentityError(HboneTlsError):
    """The peer's certificate verified, but its identity is not acceptable (not expected, another
    trust domain, not exactly one SPIFFE URI SAN)."""


class PeerProtocolError(HboneTlsError):
    """The handshake completed without what HBONE requires: TLS 1.3 and ALPN ``h2``."""


# -- credentials -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadCredentials:
    """What one workload identity presents and trusts in HBONE.

    ``chain_pem``: the leaf (whose only URI SAN is ``identity``) then any intermediates, as PEM
    strings; ``key_pem``: the leaf's private key; ``roots_pem``: the mesh root(s) to verify peers
    against (more than one during a root rotation). Built once per certificate generation, usually
    with ``from_certified_key``; equal credentials share one cached context.
    """

    identity: SpiffeId
    chain_pem: tuple[str, ...]
    key_pem: bytes = field(repr=False)
    roots_pem: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.chain_pem:
            raise ValueError(f"credentials for {self.identity}: the certificate chain is empty")
        if not self.roots_pem:
            raise ValueError(f"credentials for {self.identity}: no mesh root to verify peers against")
        try:
            leaf = x509.load_pem_x509_certificate(self.chain_pem[0].encode())
            for pem in (*self.chain_pem[1:], *self.roots_pem):
                x509.load_pem_x509_certificate(pem.encode())
            key = serialization.load_pem_private_key(self.key_pem, password=None)
        except (ValueError, TypeError) as exc:
            # The exception text never contains the key bytes.
            raise ValueError(f"credentials for {self.identity} do not parse: {exc}") from None
        try:
            got = spiffe_id_of(leaf)
        except CertificateError as exc:
            raise ValueError(f"credentials for {self.identity}: {exc}") from None
        if got != self.identity:
            raise ValueError(f"credentials for {self.identity} carry a certificate for {got}")
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise ValueError(f"credentials for {self.identity}: the key does not match the certificate")

    @classmethod
    def from_certified_key(cls, cert: CertifiedKey, roots_pem: tuple[str, ...] | None = None) -> WorkloadCredentials:
        """From what ``SecretManager.get`` returns (chain leaf first, root last). The root is not
        presented (a peer must already trust it); it is what we trust, unless ``roots_pem`` names
        the trusted roots explicitly (e.g. old and new during a root rotation)."""
        if len(cert.chain_pem) < 2:
            raise ValueError(f"certificate for {cert.identity} has no root in its chain")
        return cls(cert.identity, tuple(cert.chain_pem[:-1]), cert.key_pem, roots_pem or (cert.root_pem,))


# -- contexts ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _private_pem_path(data: bytes) -> Iterator[str]:
    """A path that reads as ``data`` while the block runs, then vanishes; see the module docstring."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("hbone-credentials", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="hbone-", suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        os.unlink(path)


def _build_context(credentials: WorkloadCredentials, *, server_side: bool) -> ssl.SSLContext:
    # PROTOCOL_TLS_* loads no CA certificates (unlike create_default_context): only ours count.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # peers are named by SPIFFE ID, checked after the handshake
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols([ALPN_H2])
    if server_side:
        context.num_tickets = 0  # HBONE clients pool connections; they never resume sessions
    context.load_verify_locations(cadata="".join(credentials.roots_pem))
    # load_cert_chain reads the key from the same file when no keyfile is given.
    bundle = credentials.key_pem + "".join(credentials.chain_pem).encode()
    with _private_pem_path(bundle) as path:
        context.load_cert_chain(path)
    return context


class ContextCache:
    """One server and one client context per identity, rebuilt when its credentials change (a new
    certificate generation). A context in use by open connections stays valid after replacement."""

    def __init__(self) -> None:
        self._contexts: dict[tuple[bool, SpiffeId], tuple[WorkloadCredentials, ssl.SSLContext]] = {}

    def server(self, credentials: WorkloadCredentials) -> ssl.SSLContext:
        return self._get(credentials, server_side=True)

    def client(self, credentials: WorkloadCredentials) -> ssl.SSLContext:
        return self._get(credentials, server_side=False)

    def forget(self, identity: SpiffeId) -> None:
        """Drop the contexts of ``identity`` (its workloads left this node)."""
        self._contexts.pop((True, identity), None)
        self._contexts.pop((False, identity), None)

    def __len__(self) -> int:
        return len(self._contexts)

    def _get(self, credentials: WorkloadCredentials, *, server_side: bool) -> ssl.SSLContext:
        key = (server_side, credentials.identity)
        held = self._contexts.get(key)
        if held is not None and held[0] == credentials:
            return held[1]
        context = _build_context(credentials, server_side=server_side)
        self._contexts[key] = (credentials, context)
        return context


_default_cache = ContextCache()


def server_context(credentials: WorkloadCredentials) -> ssl.SSLContext:
    """The (cached) context for accepting HBONE connections as ``credentials.identity``."""
    return _default_cache.server(credentials)


def client_context(credentials: WorkloadCredentials) -> ssl.SSLContext:
    """The (cached) context for opening HBONE connections as ``credentials.identity``."""
    return _default_cache.client(credentials)


# -- peer checks -------------------------------------------------------------------------------


class TlsSession(Protocol):
    """What the checks read: ``ssl.SSLObject``, ``ssl.SSLSocket``, ``trio.SSLStream`` and
    ``TlsStream`` all have it."""

    @property
    def context(self) -> ssl.SSLContext: ...
    @overload
    def getpeercert(self, binary_form: Literal[False] = False) -> dict[str, Any] | None: ...
    @overload
    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...
    def selected_alpn_protocol(self) -> str | None: ...
    def version(self) -> str | None: ...


def _peer_identity(session: TlsSession, peer: str) -> SpiffeId:
    if session.context.verify_mode != ssl.CERT_REQUIRED:
        # Without it the peer's chain was never verified: a bug on our side, not the peer's.
        raise RuntimeError("HBONE identity checks need a context with CERT_REQUIRED (use this module's contexts)")
    version = session.version()
    if version != TLS_VERSION:
        raise PeerProtocolError(f"{peer} negotiated {version}, HBONE requires {TLS_VERSION}")
    alpn = session.selected_alpn_protocol()
    if alpn != ALPN_H2:
        raise PeerProtocolError(f"{peer} did not agree on ALPN {ALPN_H2!r} (negotiated: {alpn!r})")
    der = session.getpeercert(binary_form=True)
    if not der:
        raise PeerIdentityError(f"{peer} presented no certificate")
    try:
        return spiffe_id_of(x509.load_der_x509_certificate(der))
    except (CertificateError, ValueError) as exc:
        raise PeerIdentityError(f"{peer} certificate is not a mesh workload certificate: {exc}") from None


def verify_server_identity(session: TlsSession, expected: frozenset[SpiffeId]) -> SpiffeId:
    """The server's verified SPIFFE ID, if it is one of ``expected``; else ``PeerIdentityError``."""
    if not expected:
        raise ValueError("no expected server identity: an HBONE plan always names at least one")
    got = _peer_identity(session, "server")
    if got not in expected:
        names = ", ".join(sorted(str(e) for e in expected))
        raise PeerIdentityError(f"server presented {got}, expected one of {names}")
    return got


def verify_client_identity(session: TlsSession, trust_domain: str) -> SpiffeId:
    """The client's verified SPIFFE ID, if it is in ``trust_domain``; else ``PeerIdentityError``."""
    validate_trust_domain(trust_domain)
    got = _peer_identity(session, "client")
    if got.trust_domain != trust_domain:
        raise PeerIdentityError(
            f"client presented {got}, from trust domain {got.trust_domain!r}, not this mesh's {trust_domain!r}"
        )
    return got


# -- handshakes over trio streams --------------------------------------------------------------


def _handshake_error(exc: BaseException, peer: str) -> HandshakeFailed:
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = f"{peer} certificate did not verify against the mesh root: {exc.verify_message}"
    elif isinstance(exc, (ssl.SSLEOFError, EOFError)):
        reason = f"the {peer} closed the connection during the handshake"
    elif isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
    else:
        reason = str(exc) or "the connection closed"
    return HandshakeFailed(f"TLS handshake with the {peer} failed: {reason}")


async def client_handshake(
    transport: TcpStream | trio.SocketStream, context: ssl.SSLContext, expected: frozenset[SpiffeId]
) -> tuple[TlsStream, SpiffeId]:
    """Open TLS over ``transport``'s socket as the client and check the server's identity. Returns
    the TLS stream and the server's SPIFFE ID. On failure the socket is closed and ``HboneTlsError``
    raised. Bound it with a cancel scope (``trio.fail_after``)."""
    return await _handshake(transport, context, False, lambda tls: verify_server_identity(tls, expected))


async def server_handshake(
    transport: TcpStream | trio.SocketStream, context: ssl.SSLContext, trust_domain: str
) -> tuple[TlsStream, SpiffeId]:
    """Accept TLS over ``transport``'s socket as the server and check the client's identity. Returns
    the TLS stream and the client's verified SPIFFE ID. On failure the socket is closed and
    ``HboneTlsError`` raised. Bound it with a cancel scope (``trio.fail_after``)."""
    return await _handshake(transport, context, True, lambda tls: verify_client_identity(tls, trust_domain))


async def _handshake(transport: TcpStream | trio.SocketStream, context: ssl.SSLContext, server_side: bool,
                     verify: Callable[[TlsStream], SpiffeId]) -> tuple[TlsStream, SpiffeId]:
    try:
        tls = await TlsStream.handshake(transport, context, server_side=server_side)
    except (ssl.SSLError, OSError, EOFError, trio.BrokenResourceError) as exc:
        raise _handshake_error(exc, "client" if server_side else "server") from exc
    try:
        return tls, verify(tls)
    except BaseException:
        await trio.aclose_forcefully(tls)
        raise
