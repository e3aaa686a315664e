"""Certified keys and the SPIFFE ID a certificate carries: what the CA client hands out and what
every TLS peer check (``hbone.tls``) reads.

Kept apart from ``ca.client`` (gRPC, CSR making, chain verification) so that the HBONE transport
needs no CA code to check a peer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509

from mesh.identity import InvalidSpiffeId, SpiffeId


class CertificateError(Exception):
    """A certificate could not be obtained, or what the CA returned is not acceptable."""


@dataclass(frozen=True)
class CertifiedKey:
    """A private key with its verified certificate chain (leaf first, root last)."""

    identity: SpiffeId
    key_pem: bytes = field(repr=False)
    chain_pem: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def root_pem(self) -> str:
        return self.chain_pem[-1]

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain_pem[0].encode())

    @property
    def lifetime(self) -> dt.timedelta:
        return self.not_after - self.not_before


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The certificate's SPIFFE ID: its one and only URI SAN."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError("certificate has no subjectAltName") from None
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise CertificateError(f"certificate must carry exactly one URI SAN, it has {len(uris)}: {uris}")
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise CertificateError(f"certificate URI SAN is not a SPIFFE ID: {exc}") from None
